"""Sequential network calls per pipeline family: every family ``srds_pipeline`` samples, on a
tiny random pipeline built from configs (offline), at the family's default number of steps
and its usual scheduler, with the serial sampler (the pipeline's own loop) and SRDS / Picard
/ quasi-Newton at their default tolerances. Reports per family and sampler the sequential
calls (depth), the calls and rows, and the max-abs latent error against the serial path.

The builders here (``tiny_sd``, ``tiny_sdxl``, ``tiny_controlnet``, ...) are what
``tests/diffusion/test_pipelines_*.py`` sample. The network sizes are tiny (random weights),
so the numbers say how many sequential calls each sampler needs on each family's grid and
guidance, not how good the images are.

Run: ``python benchmarks/bench_pipelines.py [--quick]`` -> ``benchmarks/results/pipelines.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("bench_text_to_image",
                                               ROOT / "benchmarks" / "bench_text_to_image.py")
t2i = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(t2i)
MAX_TOKENS = t2i.MAX_TOKENS
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                num_train_timesteps=1000)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16)


def _clip(tmp: Path, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = t2i.clip_tokenizer(tmp / "clip_vocab")
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    extra = {"projection_dim": 16} if projection else {}
    enc = cls(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0,
        eos_token_id=1, pad_token_id=1, **extra))
    return enc, tok


def _unet(in_channels: int = 4, cross: int = 16, xl: bool = False):
    from diffusers import UNet2DConditionModel

    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=4 * 6 + 16) if xl else {}
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, cross_attention_dim=cross, attention_head_dim=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra)


def sd_scheduler(kind: str = "ddim"):
    """StableDiffusion's schedulers with its betas: DDIM (``steps_offset=1``), Euler, DPM++,
    UniPC, PNDM (SD's shipped default, which pint refuses)."""
    import diffusers

    name = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "ddpm": "DDPMScheduler",
            "dpmpp": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}[kind]
    extra = dict(set_alpha_to_one=False, clip_sample=False) if kind == "ddim" else {}
    if kind == "ddpm":
        extra = dict(clip_sample=False)
    return getattr(diffusers, name)(**SD_BETAS, steps_offset=1, **extra)


def tiny_sd(tmp: Path, cls: str = "StableDiffusionPipeline", scheduler: str = "ddim",
            seed: int = 0):
    """A StableDiffusion pipeline of class ``cls`` (text-to-image, img2img, inpainting: a
    9-channel UNet) with random weights: 16 x 16 images, 8 x 8 x 4 latents."""
    import diffusers

    torch.manual_seed(seed)
    enc, tok = _clip(tmp)
    unet = _unet(9 if "Inpaint" in cls else 4)
    return t2i.ready(getattr(diffusers, cls)(
        vae=_vae(), text_encoder=enc, tokenizer=tok, unet=unet,
        scheduler=sd_scheduler(scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False))


def tiny_sdxl(tmp: Path, cls: str = "StableDiffusionXLPipeline", scheduler: str = "euler",
              seed: int = 0):
    """An SDXL pipeline of class ``cls`` with random weights: two CLIP encoders (the second
    with a projection: pooled embeddings), a ``text_time`` UNet, 16 x 16 images."""
    import diffusers

    torch.manual_seed(seed)
    enc1, tok = _clip(tmp)
    enc2, _ = _clip(tmp, projection=True)
    parts = dict(vae=_vae(), text_encoder=enc1, tokenizer=tok, text_encoder_2=enc2,
                 tokenizer_2=tok, unet=_unet(9 if "Inpaint" in cls else 4, cross=32, xl=True),
                 scheduler=sd_scheduler(scheduler))
    if "ControlNet" in cls:
        parts["controlnet"] = tiny_controlnet(xl=True)
    pipe = getattr(diffusers, cls)(**parts)
    return t2i.ready(pipe)


def tiny_controlnet(xl: bool = False):
    """A ControlNetModel matching the tiny UNets (SD or SDXL)."""
    from diffusers import ControlNetModel

    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=4 * 6 + 16) if xl else {}
    return ControlNetModel(
        in_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        cross_attention_dim=32 if xl else 16, attention_head_dim=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        conditioning_embedding_out_channels=(4, 8), **extra)


def tiny_sd_controlnet(tmp: Path, scheduler: str = "ddim", seed: int = 0):
    """A StableDiffusionControlNetPipeline with random weights (16 x 16 control images)."""
    from diffusers import StableDiffusionControlNetPipeline

    torch.manual_seed(seed)
    enc, tok = _clip(tmp)
    return t2i.ready(StableDiffusionControlNetPipeline(
        vae=_vae(), text_encoder=enc, tokenizer=tok, unet=_unet(), controlnet=tiny_controlnet(),
        scheduler=sd_scheduler(scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False))


def tiny_flux_img2img(tmp: Path, seed: int = 0):
    """FluxImg2ImgPipeline over the tiny Flux's components."""
    from diffusers import FluxImg2ImgPipeline

    return t2i.ready(FluxImg2ImgPipeline(**t2i.tiny_flux(tmp, seed).components))


def tiny_pixart(tmp: Path, cls: str = "PixArtSigmaPipeline", seed: int = 0):
    """A PixArt pipeline (Sigma, or Alpha for the registration example) with random
    weights: a T5 encoder, a one-layer learned-sigma PixArt transformer, DPM-Solver++ on
    linear betas, 16 x 16 images."""
    import diffusers
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = t2i.t5_encoder(tok)
    net = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=32,
        norm_num_groups=4)
    # DPM-Solver++ as PixArt-Sigma ships it, on SD's betas: an untrained network's x0 at the
    # first level stays moderate (PixArt's linear betas divide by alpha = 0.006 there)
    sched = DPMSolverMultistepScheduler(**SD_BETAS)
    return t2i.ready(getattr(diffusers, cls)(tokenizer=tok, text_encoder=enc, vae=_vae(),
                                          transformer=net, scheduler=sched))


def tiny_wan(tmp: Path, two_experts: bool = False, seed: int = 0):
    """A WanPipeline with random weights: a UMT5 encoder, a two-layer Wan transformer (two of
    them switched at ``boundary_ratio=0.875`` for Wan 2.2), a tiny Wan VAE (9 frames of
    16 x 16 -> latents 16 x 3 x 2 x 2), UniPC on flow sigmas (``flow_shift=3``) as Wan ships."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = t2i.t5_encoder(tok, umt5=True)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])

    def net():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=3.0)
    extra = dict(transformer_2=net(), boundary_ratio=0.875) if two_experts else {}
    return t2i.ready(WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=net(),
                              scheduler=sched, **extra))


def tiny_chroma(tmp: Path, seed: int = 0):
    """A ChromaPipeline with random weights: a T5 encoder, a one-layer Chroma transformer
    (16 x 16 images: 16 packed tokens of 16 channels), Flux's shifted flow-matching
    scheduler."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = t2i.t5_encoder(tok)
    net = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16)
    sched = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return t2i.ready(ChromaPipeline(scheduler=sched, vae=t2i._vae(4), text_encoder=enc,
                                 tokenizer=tok, transformer=net))


def tiny_kontext(tmp: Path, seed: int = 0):
    """FluxKontextPipeline over the tiny Flux's components."""
    from diffusers import FluxKontextPipeline

    return t2i.ready(FluxKontextPipeline(**t2i.tiny_flux(tmp, seed).components))


def tiny_sana(tmp: Path, seed: int = 0):
    """A SanaPipeline with random weights: a Gemma 2 encoder, a one-layer Sana transformer,
    a tiny DC-AE (factor 2: 16 x 16 images, 8 x 8 x 4 latents), DPM-Solver++ on flow sigmas
    as Sana ships."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = Gemma2Model(Gemma2Config(
        vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=1))
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    net = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
        cross_attention_dim=8, caption_channels=8, sample_size=32)
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                        prediction_type="flow_prediction")
    return t2i.ready(SanaPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=net,
                               scheduler=sched))


def tiny_ltx(tmp: Path, seed: int = 0):
    """An LTXPipeline with random weights: a T5 encoder, a one-layer LTX transformer, a tiny
    LTX VAE (9 frames of 32 x 32 -> 3 x 8 x 8 latents of 8 channels, 192 tokens), Flux-style
    dynamically shifted flow matching as LTX ships."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = t2i.t5_encoder(tok)
    net = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096)
    return t2i.ready(LTXPipeline(scheduler=sched, vae=vae, text_encoder=enc, tokenizer=tok,
                              transformer=net))


def tiny_qwenimage(tmp: Path, seed: int = 0):
    """A QwenImagePipeline with random weights: a two-layer Qwen2.5-VL text model (the T5
    vocabulary of the other tiny pipelines), a two-layer Qwen-Image transformer, a tiny
    Qwen-Image VAE (factor 4: 16 x 16 images, 16 packed tokens of 16 channels), Flux-style
    dynamically shifted flow matching as Qwen-Image ships."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = t2i.t5_tokenizer(tmp / "t5_vocab")
    enc = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default",
                                      "type": "default"}, "rope_theta": 1000000.0,
                     "vocab_size": len(tok)},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tok), vision_end_token_id=len(tok) + 1,
        vision_start_token_id=len(tok) + 2, vision_token_id=len(tok) + 3, sliding_window=32))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4)
    net = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4))
    sched = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192)
    return t2i.ready(QwenImagePipeline(scheduler=sched, vae=vae, text_encoder=enc, tokenizer=tok,
                                    transformer=net))


def image(seed: int = 0, size: int = 16) -> torch.Tensor:
    """A random image ``[1, 3, size, size]`` in ``[0, 1]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g)


def mask(size: int = 16) -> torch.Tensor:
    """The right half masked ``[1, 1, size, size]``."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 2:] = 1
    return m


# ---- the benchmark ----------------------------------------------------------------------------

def cases(tmp: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Per family: the pipeline and ``pipe(...)`` arguments (default steps and guidance)."""
    p = dict(prompt="a photo of a cat", negative_prompt="blurry")
    img = dict(image=image())
    return {
        "StableDiffusionPipeline (DDIM)": (tiny_sd(tmp), p),
        "StableDiffusionImg2ImgPipeline (DDIM, strength 0.8)": (
            tiny_sd(tmp, "StableDiffusionImg2ImgPipeline"), {**p, **img}),
        "StableDiffusionInpaintPipeline (DDIM)": (
            tiny_sd(tmp, "StableDiffusionInpaintPipeline"), {**p, **img, "mask_image": mask()}),
        "StableDiffusionControlNetPipeline (DDIM)": (tiny_sd_controlnet(tmp), {**p, **img}),
        "StableDiffusionXLPipeline (Euler)": (tiny_sdxl(tmp), dict(p, height=16, width=16)),
        "StableDiffusionXLImg2ImgPipeline (Euler, strength 0.3)": (
            tiny_sdxl(tmp, "StableDiffusionXLImg2ImgPipeline"), {**p, **img}),
        "StableDiffusion3Pipeline (FlowMatch)": (
            t2i.tiny_sd3(tmp), dict(p, max_sequence_length=MAX_TOKENS)),
        "FluxPipeline (FlowMatch)": (
            t2i.tiny_flux(tmp), dict(prompt="a cat", height=16, width=16,
                                     max_sequence_length=MAX_TOKENS)),
        "PixArtSigmaPipeline (DPM-Solver++)": (
            tiny_pixart(tmp), dict(p, height=16, width=16, use_resolution_binning=False,
                                   max_sequence_length=MAX_TOKENS)),
        "StableDiffusionXLControlNetPipeline (Euler)": (
            tiny_sdxl(tmp, "StableDiffusionXLControlNetPipeline"), {**p, **img}),
        "ChromaPipeline (FlowMatch)": (
            tiny_chroma(tmp), dict(p, height=16, width=16, max_sequence_length=MAX_TOKENS)),
        "WanPipeline 2.1 (UniPC, flow)": (
            tiny_wan(tmp), dict(p, height=16, width=16, num_frames=9,
                                max_sequence_length=MAX_TOKENS)),
        "WanPipeline 2.2 (two experts, UniPC, flow)": (
            tiny_wan(tmp, two_experts=True), dict(p, height=16, width=16, num_frames=9,
                                                  guidance_scale_2=3.0,
                                                  max_sequence_length=MAX_TOKENS)),
        "FluxKontextPipeline (FlowMatch, image tokens)": (
            tiny_kontext(tmp), dict(prompt="a cat", image=image(), height=16, width=16,
                                    max_area=256, _auto_resize=False,
                                    max_sequence_length=MAX_TOKENS)),
        "QwenImagePipeline (FlowMatch, norm-rescaled true CFG 4.0)": (
            tiny_qwenimage(tmp), dict(prompt="a photo of a cat", negative_prompt="blurry",
                                      height=16, width=16)),
        "SanaPipeline (DPM-Solver++, flow)": (
            tiny_sana(tmp), dict(p, height=32, width=32, use_resolution_binning=False,
                                 complex_human_instruction=None, max_sequence_length=MAX_TOKENS)),
        "LTXPipeline (FlowMatch, video)": (
            tiny_ltx(tmp), dict(p, height=32, width=32, num_frames=9,
                                max_sequence_length=MAX_TOKENS)),
        "FluxImg2ImgPipeline (FlowMatch, strength 0.6)": (
            tiny_flux_img2img(tmp), dict(prompt="a cat", image=image(), height=16, width=16,
                                         max_sequence_length=MAX_TOKENS)),
    }


SAMPLERS = {"srds": dict(sampler="srds"), "picard": dict(sampler="picard"),
            "quasi_newton": dict(sampler="quasi_newton")}


def run(quick: bool = False) -> dict[str, Any]:
    """Every family x sampler: depth, calls, rows, error vs serial (max-abs, latents)."""
    from adapters.pipelines import srds_pipeline

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        for family, (pipe, kw) in cases(Path(d)).items():
            if quick and any(k in family for k in ("Flux", "Wan", "Qwen", "LTX", "Sana")):
                continue
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            ref = srds_pipeline(pipe, sampler="serial", generator=g, output_type="latent", **kw)
            serial_s = time.perf_counter() - t0
            for name, opts in SAMPLERS.items():
                t0 = time.perf_counter()
                out = srds_pipeline(pipe, generator=torch.Generator().manual_seed(0),
                                    output_type="latent", **opts, **kw)
                wall = time.perf_counter() - t0
                st = out.stats
                rows.append(dict(
                    family=family, pipeline=type(pipe).__name__,
                    scheduler=type(pipe.scheduler).__name__, steps=ref.stats.depth,
                    sampler=name, depth=st.depth, model_calls=st.model_calls,
                    model_rows=st.model_rows, tol=out.sampling.tol,
                    iterations=out.sampling.iterations, converged=bool(out.sampling.converged),
                    max_abs_err=float((out.latents - ref.latents).abs().max()),
                    latent_scale=float(ref.latents.abs().max()), wall_s=wall,
                    serial_wall_s=serial_s))
                r = rows[-1]
                print(f"{family:55s} {name:13s} {r['depth']:3d} / {r['steps']:3d} calls, "
                      f"err {r['max_abs_err']:.1e}", flush=True)
    return {"what": "sequential network calls per pipeline family (tiny random pipelines, "
                    "default steps and scheduler; error: max-abs latent difference to the "
                    "serial path, the pipeline's own loop)",
            "torch": torch.__version__, "numpy": np.__version__, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the Flux, Wan, Qwen, Sana and LTX families")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipelines.json"))
    args = ap.parse_args(argv)
    res = run(args.quick)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
