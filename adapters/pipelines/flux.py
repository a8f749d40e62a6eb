"""Flux.1 (dev, schnell), Flux img2img and Flux Kontext: packed latents, embedded guidance,
true CFG as a second encoding of the negative prompt; Kontext's image tokens appended to
every call's sequence and cut from its output."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .core import check_size, vae_decode
from .family import Call, Conditioning, PipelineFamily
from .sd3 import TEXT2


def check(pipe: Any, call: Call) -> None:
    """Flux's own rules: a negative prompt means ``negative_prompt`` (or its embeddings),
    never ``negative_prompt_2`` alone; negative pooled embeddings need true CFG."""
    if call.get("negative_prompt_2") is not None and call.get("negative_prompt") is None \
            and call.get("negative_prompt_embeds") is None:
        raise ValueError(
            f"negative_prompt_2 alone: a {call.name} runs true CFG only with negative_prompt "
            "(or negative_prompt_embeds), and would ignore negative_prompt_2 and "
            "true_cfg_scale; give negative_prompt as well (negative_prompt_2 then goes to the "
            "T5 encoder)")
    if not call.cfg and call.get("negative_pooled_prompt_embeds") is not None:
        raise ValueError("negative_pooled_prompt_embeds needs true_cfg_scale > 1")


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """Packed latents ``[n, h w / 4, 4 C]``; ``channels`` per unpacked latent."""
    sf = pipe.vae_scale_factor
    d = pipe.default_sample_size * sf
    H, W = call.get("height", d), call.get("width", d)
    check_size(call.name, H, W, sf * 2)
    C = pipe.transformer.config.in_channels
    h, w = H // sf, W // sf
    return H, W, C // 4, (call.n, (h // 2) * (w // 2), C)


def timesteps(pipe: Any, call: Call) -> dict[str, Any]:
    """Flux's sigmas ``linspace(1, 1/N, N)`` and ``mu`` from the image's token count."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = pipe.scheduler.config
    kw: dict[str, Any] = {}
    if cfg.get("use_dynamic_shifting", None):
        kw["mu"] = calculate_shift(
            call.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    if not cfg.get("use_flow_sigmas", False):
        kw["sigmas"] = lambda N: np.linspace(1.0, 1 / N, N)
    return kw


def encode(pipe: Any, call: Call) -> Conditioning:
    """The prompt (and, with true CFG, the negative prompt) through ``encode_prompt``;
    embedded guidance as a per-sample input; ``txt_ids`` shared."""
    g = call.get
    common = dict(device=call.device, num_images_per_prompt=call.n_img,
                  lora_scale=(g("joint_attention_kwargs") or {}).get("scale"),
                  max_sequence_length=g("max_sequence_length", 512))
    pe, ppe, txt_ids = pipe.encode_prompt(
        prompt=g("prompt"), prompt_2=g("prompt_2"), prompt_embeds=g("prompt_embeds"),
        pooled_prompt_embeds=g("pooled_prompt_embeds"), **common)
    cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
    unc = None
    if call.cfg:
        npe, nppe, neg_ids = pipe.encode_prompt(
            prompt=g("negative_prompt"), prompt_2=g("negative_prompt_2"),
            prompt_embeds=g("negative_prompt_embeds"),
            pooled_prompt_embeds=g("negative_pooled_prompt_embeds"), **common)
        if neg_ids.shape != txt_ids.shape:
            raise ValueError(f"the negative prompt encodes to {neg_ids.shape[0]} tokens, the "
                             f"prompt to {txt_ids.shape[0]}; give embeddings of the same length")
        unc = {"encoder_hidden_states": npe, "pooled_projections": nppe}
    if call.embedded is not None:
        gd = torch.full([1], call.embedded, device=call.device, dtype=torch.float32)
        cond["guidance"] = gd.expand(call.n)
        if unc is not None:
            unc["guidance"] = cond["guidance"]
    return Conditioning(cond, unc, {"txt_ids": txt_ids})


def latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents``: packed noise and the image's position ids."""
    x, call.constants["img_ids"] = pipe.prepare_latents(
        call.n, call.channels, call.height, call.width, call.dtype, call.device,
        call.generator, call.get("latents"))
    return x


def decode(pipe: Any, latents: Tensor, output_type: str, height: int | None,
           width: int | None):
    """Unpack, then ``latents / scaling_factor + shift_factor`` through the VAE."""
    if height is None or width is None:
        side = math.isqrt(latents.shape[1]) * 2 * pipe.vae_scale_factor
        height, width = height or side, width or side
    z = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return vae_decode(pipe, z, output_type)


# ---- img2img -------------------------------------------------------------------------------

def img2img_check(pipe: Any, call: Call) -> None:
    check(pipe, call)
    if call.get("image") is None:
        raise ValueError(f"image is required for a {call.name} (the image to start from)")


def img2img_latents(pipe: Any, call: Call) -> Tensor:
    """The pipeline's own timesteps (its ``scale_noise`` reads them), then
    ``prepare_latents(image, t_start, ...)``: the VAE-encode sample, then the noise."""
    image = pipe.image_processor.preprocess(call.get("image"), height=call.height,
                                            width=call.width).to(dtype=torch.float32)
    kw = {k: (v(call.num_steps) if callable(v) else v) for k, v in call.timestep_kwargs.items()}
    pipe.scheduler.set_timesteps(call.num_steps if "sigmas" not in kw else None,
                                 device=call.device, **kw)
    ts = pipe.scheduler.timesteps[call.begin:]
    pipe.scheduler.set_begin_index(call.begin)
    x, call.constants["img_ids"] = pipe.prepare_latents(
        image, ts[:1].repeat(call.n), call.n, call.channels, call.height, call.width,
        call.dtype, call.device, call.generator, call.get("latents"))
    return x


# ---- Kontext ---------------------------------------------------------------------------------

def kontext_geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """The size the pipeline samples at: ``height``/``width``'s aspect ratio at ``max_area``
    pixels, rounded to multiples of ``2 f``."""
    sf = pipe.vae_scale_factor
    d = pipe.default_sample_size * sf
    H, W = call.get("height", d), call.get("width", d)
    check_size(call.name, H, W, 1)
    area = call.get("max_area", 1024**2)
    if isinstance(area, bool) or not isinstance(area, int) or area < 1:
        raise ValueError(f"max_area must be an int >= 1, got {area!r}")
    m = sf * 2
    W2, H2 = round((area * W / H) ** 0.5) // m * m, round((area * H / W) ** 0.5) // m * m
    if H2 < m or W2 < m:
        raise ValueError(f"max_area={area} leaves no latent pixels at this aspect ratio")
    call.inputs.update(height=H2, width=W2)
    return geometry(pipe, call)


def kontext_latents(pipe: Any, call: Call) -> Tensor:
    """The noise and, with an ``image``, its packed latents (appended to every call's
    tokens, ``call.more``) and their position ids, as the pipeline prepares them."""
    image = call.get("image")
    if image is not None and not (isinstance(image, Tensor) and image.size(1) == pipe.latent_channels):
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        img = image[0] if isinstance(image, list) else image
        h, w = pipe.image_processor.get_default_height_width(img)
        if call.get("_auto_resize", True):
            _, w, h = min((abs(w / h - a / b), a, b) for a, b in PREFERRED_KONTEXT_RESOLUTIONS)
        m = pipe.vae_scale_factor * 2
        h, w = h // m * m, w // m * m
        image = pipe.image_processor.preprocess(pipe.image_processor.resize(image, h, w), h, w)
    x, image_latents, ids, image_ids = pipe.prepare_latents(
        image, call.n, call.channels, call.height, call.width, call.dtype, call.device,
        call.generator, call.get("latents"))
    if image_ids is not None:
        ids = torch.cat([ids, image_ids], dim=0)
        call.more["image_latents"] = image_latents
    call.constants["img_ids"] = ids
    return x


def kontext_network(pipe: Any, call: Call):
    """The transformer on ``[latents, image tokens]``, its output cut to the latents'."""
    net = pipe.transformer

    def fn(x: Tensor, t: Tensor, image_latents: Tensor | None = None, **kw: Any) -> Tensor:
        inp = x if image_latents is None else torch.cat([x, image_latents.to(x.dtype)], dim=1)
        out = net(hidden_states=inp, timestep=t / 1000, return_dict=False, **kw)[0]
        return out[:, :x.shape[1]]
    return fn


_COMPONENTS = ("transformer", "vae", *TEXT2)
_FLUX = dict(cfg_arg="true_cfg_scale", pooled=True, geometry=geometry, timesteps=timesteps,
             encode=encode, decode=decode)
FAMILIES = {
    "FluxPipeline": PipelineFamily("transformer", _COMPONENTS, 28, 3.5, check=check,
                                   latents=latents, **_FLUX),
    "FluxImg2ImgPipeline": PipelineFamily(
        "transformer", _COMPONENTS, 28, 7.0, inputs=("image", "strength"), strength=0.6,
        begin=lambda N, s: int(max(N - min(N * s, N), 0)),  # its get_timesteps
        check=img2img_check, latents=img2img_latents, **_FLUX),
    "FluxKontextPipeline": PipelineFamily(
        "transformer", _COMPONENTS, 28, 3.5, inputs=("image", "max_area", "_auto_resize"),
        check=check, latents=kontext_latents, network=kontext_network,
        **{**_FLUX, "geometry": kontext_geometry}),
}
