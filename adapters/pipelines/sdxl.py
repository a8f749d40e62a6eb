"""StableDiffusion XL: two text encoders, pooled embeddings and added time ids as the UNet's
``added_cond_kwargs``, ``guidance_rescale``; text-to-image, img2img and inpainting
(9-channel UNets)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .core import check_size, rescaled_guide
from .family import Call, Conditioning, PipelineFamily
from .sd import (
    check_rescale,
    image_geometry,
    img2img_latents,
    inpaint_geometry,
    inpaint_latents,
    need_image,
    need_inpaint_inputs,
)

COMPONENTS = ("unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler")
TIME_INPUTS = ("original_size", "crops_coords_top_left", "target_size",
               "negative_original_size", "negative_crops_coords_top_left", "negative_target_size")


def check(pipe: Any, call: Call) -> None:
    """An SDXL UNet (``text_time`` added conditioning, no guidance embedding), sizes as
    pairs of ints, ``guidance_rescale`` in ``[0, 1]``."""
    ucfg = pipe.unet.config
    if getattr(ucfg, "time_cond_proj_dim", None) is not None:
        raise ValueError("pipe.unet has time_cond_proj_dim (a guidance-distilled UNet, as in "
                         "LCM-SDXL); not supported")
    if getattr(ucfg, "addition_embed_type", None) != "text_time":
        raise ValueError(f"pipe.unet must take SDXL's added conditioning (addition_embed_type="
                         f"'text_time'), got {getattr(ucfg, 'addition_embed_type', None)!r}")
    for k in TIME_INPUTS:
        v = call.get(k)
        if v is not None and not (isinstance(v, (tuple, list)) and len(v) == 2
                                  and all(isinstance(i, int) for i in v)):
            raise ValueError(f"{k} must be a pair of ints (height, width), got {v!r}")
    check_rescale(call)


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """``height``/``width`` (default: ``default_sample_size`` times the VAE factor)."""
    sf = pipe.vae_scale_factor
    d = pipe.default_sample_size * sf
    H, W = call.get("height", d), call.get("width", d)
    check_size(call.name, H, W, 8)
    C = pipe.unet.config.in_channels
    return H, W, C, (call.n, C, H // sf, W // sf)


def _prompts(pipe: Any, call: Call) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = call.get
    return pipe.encode_prompt(
        prompt=g("prompt"), prompt_2=g("prompt_2"), device=call.device,
        num_images_per_prompt=call.n_img, do_classifier_free_guidance=call.cfg,
        negative_prompt=g("negative_prompt"), negative_prompt_2=g("negative_prompt_2"),
        prompt_embeds=g("prompt_embeds"), negative_prompt_embeds=g("negative_prompt_embeds"),
        pooled_prompt_embeds=g("pooled_prompt_embeds"),
        negative_pooled_prompt_embeds=g("negative_pooled_prompt_embeds"),
        lora_scale=(g("cross_attention_kwargs") or {}).get("scale"), clip_skip=g("clip_skip"))


def _projection_dim(pipe: Any, pooled: Tensor) -> int:
    if pipe.text_encoder_2 is None:
        return int(pooled.shape[-1])
    return pipe.text_encoder_2.config.projection_dim


def encode(pipe: Any, call: Call) -> Conditioning:
    """Text embeddings, pooled embeddings and the added time ids (and their negatives)."""
    pe, npe, ppe, nppe = _prompts(pipe, call)
    g, size = call.get, (call.height, call.width)
    orig, target = tuple(g("original_size", size)), tuple(g("target_size", size))
    crops = tuple(g("crops_coords_top_left", (0, 0)))
    dim = _projection_dim(pipe, ppe)
    ids = pipe._get_add_time_ids(orig, crops, target, dtype=pe.dtype,
                                 text_encoder_projection_dim=dim)
    neg_ids = ids
    if g("negative_original_size") is not None and g("negative_target_size") is not None:
        neg_ids = pipe._get_add_time_ids(
            tuple(g("negative_original_size")),
            tuple(g("negative_crops_coords_top_left", (0, 0))), tuple(g("negative_target_size")),
            dtype=pe.dtype, text_encoder_projection_dim=dim)
    if call.cfg:  # as the pipeline lays them out: the pair [neg, pos] repeated per sample,
        # so with several samples the rows alternate between the halves (diffusers' layout)
        both = torch.cat([neg_ids, ids]).to(call.device).repeat(call.n, 1)
        neg_ids, ids = both[:call.n], both[call.n:]
    return _conditioning(call, pe, npe, ppe, nppe, ids, neg_ids)


def _conditioning(call: Call, pe: Tensor, npe: Tensor, ppe: Tensor, nppe: Tensor,
                  ids: Tensor, neg_ids: Tensor) -> Conditioning:
    """Per-sample inputs; ``ids``/``neg_ids``: one row for all samples, or one per sample."""
    dev, n = call.device, call.n

    def rows(t: Tensor) -> Tensor:
        return t.to(dev) if t.shape[0] == n else t.to(dev).repeat(n, 1)

    cond = {"encoder_hidden_states": pe, "text_embeds": ppe, "time_ids": rows(ids)}
    unc = None
    if call.cfg:
        unc = {"encoder_hidden_states": npe, "text_embeds": nppe, "time_ids": rows(neg_ids)}
    return Conditioning(cond, unc)


def network(pipe: Any, call: Call):
    """The UNet with ``added_cond_kwargs={"text_embeds", "time_ids"}``."""
    unet = pipe.unet

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor,
           time_ids: Tensor, **kw: Any) -> Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                    return_dict=False, **kw)[0]
    return fn


def guide(pipe: Any, call: Call):
    """``rescale_noise_cfg`` where ``guidance_rescale > 0``."""
    r = call.get("guidance_rescale", 0.0)
    return rescaled_guide(call.cfg_scale, r) if r > 0 else None


def decode(pipe: Any, latents: Tensor, output_type: str, height: Any, width: Any):
    """SDXL's decode: ``latents_mean``/``latents_std`` where the VAE has them, the
    watermark where the pipeline has one; no safety checker."""
    vae = pipe.vae
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        C = latents.shape[1]
        mean = torch.tensor(cfg.latents_mean).view(1, C, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(cfg.latents_std).view(1, C, 1, 1).to(latents.device, latents.dtype)
        z = latents * std / cfg.scaling_factor + mean
    else:
        z = latents / cfg.scaling_factor
    image = vae.decode(z.to(next(vae.parameters()).dtype), return_dict=False)[0]
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type=output_type), None


# ---- img2img -----------------------------------------------------------------------------------

def img2img_check(pipe: Any, call: Call) -> None:
    check(pipe, call)
    need_image(call)


def img2img_encode(pipe: Any, call: Call) -> Conditioning:
    """As text-to-image, with the img2img time ids (``aesthetic_score`` where the pipeline
    ``requires_aesthetics_score``)."""
    pe, npe, ppe, nppe = _prompts(pipe, call)
    g, size = call.get, (call.height, call.width)
    orig, target = tuple(g("original_size", size)), tuple(g("target_size", size))
    ids, neg_ids = pipe._get_add_time_ids(
        orig, tuple(g("crops_coords_top_left", (0, 0))), target, g("aesthetic_score", 6.0),
        g("negative_aesthetic_score", 2.5), tuple(g("negative_original_size", orig)),
        tuple(g("negative_crops_coords_top_left", (0, 0))),
        tuple(g("negative_target_size", target)), dtype=pe.dtype,
        text_encoder_projection_dim=_projection_dim(pipe, ppe))
    return _conditioning(call, pe, npe, ppe, nppe, ids, neg_ids)


# ---- inpainting -------------------------------------------------------------------------------

def inpaint_check(pipe: Any, call: Call) -> None:
    """SDXL's checks, an image and a mask, a 9-channel UNet."""
    check(pipe, call)
    need_inpaint_inputs(pipe, call)


def inpaint_network(pipe: Any, call: Call):
    """The UNet on ``[latents, mask, masked-image latents]`` with SDXL's added conditioning."""
    unet = pipe.unet

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor,
           time_ids: Tensor, mask: Tensor, masked_image_latents: Tensor, **kw: Any) -> Tensor:
        inp = torch.cat([x, mask.to(x.dtype), masked_image_latents.to(x.dtype)], dim=1)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return unet(inp, t, encoder_hidden_states=encoder_hidden_states,
                    added_cond_kwargs=added, return_dict=False, **kw)[0]
    return fn


_COMMON = dict(pooled=True, network=network, guide=guide, decode=decode)
_IMG_INPUTS = ("image", "strength", "guidance_rescale", "aesthetic_score",
               "negative_aesthetic_score", *TIME_INPUTS)
FAMILIES = {
    "StableDiffusionXLPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 5.0, inputs=("guidance_rescale", *TIME_INPUTS), check=check,
        geometry=geometry, encode=encode, **_COMMON),
    "StableDiffusionXLImg2ImgPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 5.0,
        inputs=_IMG_INPUTS, strength=0.3, check=img2img_check,
        geometry=image_geometry, encode=img2img_encode, latents=img2img_latents, **_COMMON),
    "StableDiffusionXLInpaintPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 7.5, inputs=(*_IMG_INPUTS, "mask_image"), strength=0.9999,
        check=inpaint_check, geometry=inpaint_geometry, encode=img2img_encode,
        latents=inpaint_latents, **{**_COMMON, "network": inpaint_network}),
}
