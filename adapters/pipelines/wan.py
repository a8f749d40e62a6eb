"""Wan 2.1 / 2.2 text-to-video: a UMT5 encoder, video latents ``[B, C, F, H, W]``, UniPC on
flow sigmas; Wan 2.2's two transformers switched at ``boundary_ratio * num_train_timesteps``
row by row (a window that spans the boundary sends each row to its own expert), with
``guidance_scale_2`` below the boundary."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checks import number, positive_int
from .family import Call, Conditioning, PipelineFamily

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def check(pipe: Any, call: Call) -> None:
    """No ``expand_timesteps`` (Wan 2.2 TI2V); ``guidance_scale_2`` only with two experts."""
    if getattr(pipe.config, "expand_timesteps", False):
        raise ValueError("a WanPipeline with expand_timesteps=True (Wan 2.2 TI2V) gives every "
                         "latent token its own timestep; not supported")
    g2 = number("guidance_scale_2", call.get("guidance_scale_2"))
    if g2 is not None and getattr(pipe.config, "boundary_ratio", None) is None:
        raise ValueError("guidance_scale_2 is only supported when the pipeline's boundary_ratio "
                         "is not None (Wan 2.2's two experts)")
    if getattr(pipe.config, "boundary_ratio", None) is not None and pipe.transformer_2 is None:
        raise ValueError("boundary_ratio is set but pipe.transformer_2 is None")


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """Frames and size rounded as the pipeline rounds them; video latents
    ``[n, C, (F - 1) / t + 1, H / s, W / s]``."""
    if call.get("num_videos_per_prompt") is not None:
        call.n_img = positive_int("num_videos_per_prompt", call.get("num_videos_per_prompt"))
        call.n = call.b * call.n_img
    ft, fs = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    frames = positive_int("num_frames", call.get("num_frames", 81))
    if frames % ft != 1:
        frames = frames // ft * ft + 1
    call.state["num_frames"] = max(frames, 1)
    patch = pipe.transformer.config.patch_size
    H, W = call.get("height", 480), call.get("width", 832)
    for k, v in (("height", H), ("width", W)):
        positive_int(k, v)
    H, W = H // (fs * patch[1]) * fs * patch[1], W // (fs * patch[2]) * fs * patch[2]
    C = pipe.transformer.config.in_channels
    return H, W, C, (call.n, C, (call.state["num_frames"] - 1) // ft + 1, H // fs, W // fs)


def encode(pipe: Any, call: Call) -> Conditioning:
    """UMT5 embeddings padded to ``max_sequence_length`` (and the negative ones)."""
    g = call.get
    pe, npe = pipe.encode_prompt(
        prompt=g("prompt"), negative_prompt=g("negative_prompt"),
        do_classifier_free_guidance=call.cfg, num_videos_per_prompt=call.n_img,
        prompt_embeds=g("prompt_embeds"), negative_prompt_embeds=g("negative_prompt_embeds"),
        max_sequence_length=g("max_sequence_length", 512), device=call.device)
    dtype = pipe.transformer.dtype
    call.dtype = torch.float32  # the pipeline draws its latents in float32
    return Conditioning({"encoder_hidden_states": pe.to(dtype)},
                        {"encoder_hidden_states": npe.to(dtype)} if call.cfg else None)


def latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents`` (float32 noise)."""
    return pipe.prepare_latents(call.n, call.channels, call.height, call.width,
                                call.state["num_frames"], torch.float32, call.device,
                                call.generator, call.get("latents"))


def _boundary(pipe: Any) -> float | None:
    r = getattr(pipe.config, "boundary_ratio", None)
    return None if r is None else r * pipe.scheduler.config.num_train_timesteps


def network(pipe: Any, call: Call):
    """The transformer, or Wan 2.2's experts: rows at ``t >= boundary`` to ``transformer``,
    the rest to ``transformer_2``."""
    boundary, attn = _boundary(pipe), call.get("attention_kwargs")
    experts = (pipe.transformer, pipe.transformer_2)

    def run(net: Any, x: Tensor, t: Tensor, ehs: Tensor) -> Tensor:
        return net(hidden_states=x.to(net.dtype), timestep=t, encoder_hidden_states=ehs,
                   attention_kwargs=attn, return_dict=False)[0]

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        if boundary is None:
            return run(experts[0], x, t, encoder_hidden_states)
        high = t >= boundary
        if bool(high.all()) or not bool(high.any()):
            return run(experts[0 if bool(high.all()) else 1], x, t, encoder_hidden_states)
        out = torch.empty_like(x)
        for rows, net in ((high, experts[0]), (~high, experts[1])):
            out[rows] = run(net, x[rows], t[rows], encoder_hidden_states[rows]).to(x.dtype)
        return out
    return fn


def guide(pipe: Any, call: Call):
    """Wan 2.2 with ``guidance_scale_2``: each row's scale by its expert."""
    boundary = _boundary(pipe)
    g2 = call.get("guidance_scale_2")
    if boundary is None or g2 is None or g2 == call.cfg_scale:
        return None
    g1 = call.cfg_scale

    def combine(c: Tensor, u: Tensor, t: Tensor) -> Tensor:
        w = torch.where(t >= boundary, g1, float(g2)).to(c.dtype).view(-1, *[1] * (c.dim() - 1))
        return u + w * (c - u)
    return combine


def decode(pipe: Any, latents: Tensor, output_type: str, height: Any, width: Any):
    """Latents de-normalised by the VAE's ``latents_mean``/``latents_std``, decoded to
    frames, ``postprocess_video`` (``"np"``: ``[B, F, H, W, 3]``)."""
    vae = pipe.vae
    z = latents.to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
    video = vae.decode(z / std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=output_type), None


FAMILIES = {
    "WanPipeline": PipelineFamily(
        "transformer", COMPONENTS, 50, 5.0,
        inputs=("num_frames", "guidance_scale_2", "num_videos_per_prompt", "attention_kwargs"),
        check=check, geometry=geometry, encode=encode, latents=latents, network=network,
        guide=guide, decode=decode),
}
