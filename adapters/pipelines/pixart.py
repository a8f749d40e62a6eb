"""PixArt-Sigma and Sana (one kind of family): a text encoder with attention masks (T5;
Sana: Gemma 2 after its instruction), a transformer whose learned-sigma output keeps its
first half, resolution bins; Sana scales the timestep and draws float32 latents."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from .core import check_size, vae_decode
from .family import Call, Conditioning, PipelineFamily

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_BINS = {256: "ASPECT_RATIO_2048_BIN", 128: "ASPECT_RATIO_1024_BIN",
         64: "ASPECT_RATIO_512_BIN", 32: "ASPECT_RATIO_256_BIN"}
_SANA_BINS = {128: "ASPECT_RATIO_4096_BIN", 64: "ASPECT_RATIO_2048_BIN",
              32: "ASPECT_RATIO_1024_BIN", 16: "ASPECT_RATIO_512_BIN"}


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """``height``/``width`` (default: the transformer's sample size times the VAE factor).
    With ``use_resolution_binning`` (the pipeline's default) the size must be one of the
    aspect-ratio bins, which the pipeline would otherwise sample at and resize."""
    sf, net = pipe.vae_scale_factor, pipe.transformer
    sana = call.name == "SanaPipeline"
    d = 1024 if sana else net.config.sample_size * sf
    H, W = call.get("height", d), call.get("width", d)
    check_size(call.name, H, W, 32 if sana else sf * net.config.patch_size)  # Sana checks 32
    if call.get("use_resolution_binning", True):
        from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as pa

        name = (_SANA_BINS if sana else _BINS).get(net.config.sample_size)
        if name is None:
            sizes = sorted(_SANA_BINS if sana else _BINS)
            raise ValueError(f"use_resolution_binning=True needs a transformer sample_size in "
                             f"{sizes}, got {net.config.sample_size} (the pipeline raises too); "
                             "pass use_resolution_binning=False")
        bins = getattr(pa, name)
        binned = pipe.image_processor.classify_height_width_bin(H, W, ratios=bins)
        if tuple(binned) != (H, W):
            raise ValueError(f"{H}x{W} is not an aspect-ratio bin; the pipeline would sample "
                             f"{binned[0]}x{binned[1]} and resize: give that size, or "
                             "use_resolution_binning=False")
    C = net.config.in_channels
    return H, W, C, (call.n, C, H // sf, W // sf)


def encode(pipe: Any, call: Call) -> Conditioning:
    """T5 embeddings and their attention masks (and the negative ones with CFG)."""
    g = call.get
    pe, pm, npe, nm = pipe.encode_prompt(
        g("prompt"), call.cfg, negative_prompt=g("negative_prompt", ""),
        num_images_per_prompt=call.n_img, device=call.device, prompt_embeds=g("prompt_embeds"),
        negative_prompt_embeds=g("negative_prompt_embeds"),
        prompt_attention_mask=g("prompt_attention_mask"),
        negative_prompt_attention_mask=g("negative_prompt_attention_mask"),
        clean_caption=g("clean_caption", call.name != "SanaPipeline"),
        max_sequence_length=g("max_sequence_length", 300), **_sana_args(call))
    if call.name == "SanaPipeline":  # Sana draws float32 latents, the network casts
        dtype = pipe.transformer.dtype
        pe, npe = pe.to(dtype), (npe.to(dtype) if npe is not None else None)
        call.dtype = torch.float32
    cond = {"encoder_hidden_states": pe, "encoder_attention_mask": pm}
    unc = {"encoder_hidden_states": npe, "encoder_attention_mask": nm} if call.cfg else None
    return Conditioning(cond, unc)


def _sana_args(call: Call) -> dict[str, Any]:
    if call.name != "SanaPipeline":
        return {}
    from diffusers import SanaPipeline

    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"]
    chi = call.inputs.get("complex_human_instruction", default.default)
    return {"complex_human_instruction": chi,
            "lora_scale": (call.get("attention_kwargs") or {}).get("scale")}


def network(pipe: Any, call: Call):
    """The transformer; a learned-sigma output keeps its first half (the noise). Sana: the
    timestep times ``timestep_scale``, its ``attention_kwargs``."""
    net = pipe.transformer
    C = net.config.in_channels
    learned = net.config.out_channels // 2 == C
    if call.name == "SanaPipeline":
        scale, attn = net.config.timestep_scale, call.get("attention_kwargs")

        def sana(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
            out = net(x.to(net.dtype), timestep=t * scale, attention_kwargs=attn,
                      return_dict=False, **kw)[0].float()
            return out[:, :C] if learned else out
        return sana

    def fn(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        out = net(x, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                  return_dict=False, **kw)[0]
        return out[:, :C] if learned else out
    return fn


def decode(pipe: Any, latents: Tensor, output_type: str, height: Any, width: Any):
    """``latents / scaling_factor`` through the VAE."""
    return vae_decode(pipe, latents, output_type, shift=False)


FAMILIES = {
    "PixArtSigmaPipeline": PipelineFamily(
        "transformer", COMPONENTS, 20, 4.5,
        inputs=("prompt_attention_mask", "negative_prompt_attention_mask", "clean_caption",
                "use_resolution_binning"),
        geometry=geometry, encode=encode, network=network, decode=decode),
    "SanaPipeline": PipelineFamily(
        "transformer", COMPONENTS, 20, 4.5,
        inputs=("prompt_attention_mask", "negative_prompt_attention_mask", "clean_caption",
                "use_resolution_binning", "complex_human_instruction", "attention_kwargs"),
        geometry=geometry, encode=encode, network=network, decode=decode),
}
