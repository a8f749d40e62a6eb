"""LTX-Video text-to-video: a T5 encoder with masks, video latents packed into tokens
``[B, F h w, C]``, flow-matching sigmas shifted by ``mu`` from the video's length,
``guidance_rescale``; decoded by the LTX VAE (without its timestep conditioning, whose decode
noise pint does not draw)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checks import positive_int
from .core import rescaled_guide
from .family import Call, Conditioning, PipelineFamily
from .sd import check_rescale

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def check(pipe: Any, call: Call) -> None:
    """``guidance_rescale`` in ``[0, 1]``; a timestep-conditioned VAE only without decoding."""
    check_rescale(call)
    if getattr(pipe.vae.config, "timestep_conditioning", False) and \
            call.get("output_type") != "latent":
        raise ValueError("this LTX VAE decodes with timestep conditioning, mixing in noise the "
                         "pipeline draws after sampling; pint does not reproduce that draw: "
                         "use output_type='latent' (and decode with the pipeline's VAE)")


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """Packed video latents ``[n, F' h' w', C]`` with ``F' = (F - 1) / t + 1``."""
    if call.get("num_videos_per_prompt") is not None:
        call.n_img = positive_int("num_videos_per_prompt", call.get("num_videos_per_prompt"))
        call.n = call.b * call.n_img
    H, W = call.get("height", 512), call.get("width", 704)
    F = positive_int("num_frames", call.get("num_frames", 161))
    s, t = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
    for k, v in (("height", H), ("width", W)):
        positive_int(k, v)
        if v % 32:
            raise ValueError(f"{k} must be divisible by 32 for a {call.name}, got {v}")
    lf, lh, lw = (F - 1) // t + 1, H // s, W // s
    p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    call.state.update(frames=F, latent=(lf, lh, lw))
    C = pipe.transformer.config.in_channels
    return H, W, C, (call.n, (lf // pt) * (lh // p) * (lw // p), C * p * p * pt)


def timesteps(pipe: Any, call: Call) -> dict[str, Any]:
    """``sigmas = linspace(1, 1/N, N)`` and, for a dynamically shifting scheduler, ``mu``
    from the video's latent length."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = pipe.scheduler.config
    kw: dict[str, Any] = {"sigmas": lambda N: np.linspace(1.0, 1 / N, N)}
    if cfg.get("use_dynamic_shifting", None):
        lf, lh, lw = call.state["latent"]
        kw["mu"] = calculate_shift(lf * lh * lw, cfg.get("base_image_seq_len", 256),
                                   cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                   cfg.get("max_shift", 1.15))
    return kw


def encode(pipe: Any, call: Call) -> Conditioning:
    """T5 embeddings and masks (and the negative ones with CFG)."""
    g = call.get
    pe, pm, npe, nm = pipe.encode_prompt(
        prompt=g("prompt"), negative_prompt=g("negative_prompt"),
        do_classifier_free_guidance=call.cfg, num_videos_per_prompt=call.n_img,
        prompt_embeds=g("prompt_embeds"), negative_prompt_embeds=g("negative_prompt_embeds"),
        prompt_attention_mask=g("prompt_attention_mask"),
        negative_prompt_attention_mask=g("negative_prompt_attention_mask"),
        max_sequence_length=g("max_sequence_length", 128), device=call.device)
    call.dtype = torch.float32  # the pipeline's latents
    cond = {"encoder_hidden_states": pe, "encoder_attention_mask": pm}
    unc = {"encoder_hidden_states": npe, "encoder_attention_mask": nm} if call.cfg else None
    return Conditioning(cond, unc)


def latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents`` (float32 noise, packed)."""
    return pipe.prepare_latents(call.n, call.channels, call.height, call.width,
                                call.state["frames"], torch.float32, call.device,
                                call.generator, call.get("latents"))


def network(pipe: Any, call: Call):
    """The LTX transformer with the video's latent size and RoPE interpolation scale."""
    net = pipe.transformer
    lf, lh, lw = call.state["latent"]
    rate = call.get("frame_rate", 25)
    rope = (pipe.vae_temporal_compression_ratio / rate, pipe.vae_spatial_compression_ratio,
            pipe.vae_spatial_compression_ratio)
    attn = call.get("attention_kwargs")

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor, **kw: Any) -> Tensor:
        return net(hidden_states=x.to(encoder_hidden_states.dtype),
                   encoder_hidden_states=encoder_hidden_states, timestep=t, num_frames=lf,
                   height=lh, width=lw, rope_interpolation_scale=rope, attention_kwargs=attn,
                   return_dict=False, **kw)[0].float()
    return fn


def guide(pipe: Any, call: Call):
    """``rescale_noise_cfg`` where ``guidance_rescale > 0``."""
    r = call.get("guidance_rescale", 0.0)
    return rescaled_guide(call.cfg_scale, r) if r > 0 else None


def decode(pipe: Any, latents: Tensor, output_type: str, height: int | None,
           width: int | None):
    """Unpack (the frame count follows from the tokens and the size), de-normalise, decode,
    ``postprocess_video``."""
    s = pipe.vae_spatial_compression_ratio
    p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    lh, lw = height // s, width // s
    lf = latents.shape[1] * p * p * pt // (lh * lw)
    z = pipe._unpack_latents(latents, lf, lh, lw, p, pt)
    z = pipe._denormalize_latents(z, pipe.vae.latents_mean, pipe.vae.latents_std,
                                  pipe.vae.config.scaling_factor)
    video = pipe.vae.decode(z.to(pipe.vae.dtype), None, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=output_type), None


FAMILIES = {
    "LTXPipeline": PipelineFamily(
        "transformer", COMPONENTS, 50, 3.0,
        inputs=("num_frames", "frame_rate", "guidance_rescale", "num_videos_per_prompt",
                "prompt_attention_mask", "negative_prompt_attention_mask", "attention_kwargs"),
        check=check, geometry=geometry, timesteps=timesteps, encode=encode, latents=latents,
        network=network, guide=guide, decode=decode),
}
