"""StableDiffusion (1.x / 2.x): text-to-image, img2img and inpainting (9-channel UNet)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checks import number
from .core import rescaled_guide, vae_decode
from .family import Call, Conditioning, PipelineFamily

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_unet(pipe: Any, call: Call) -> None:
    """A StableDiffusion-class UNet: no guidance embedding, no added conditioning."""
    ucfg = pipe.unet.config
    if getattr(ucfg, "time_cond_proj_dim", None) is not None:
        raise ValueError("pipe.unet has time_cond_proj_dim (a guidance-distilled UNet, as in "
                         "LCM); not supported")
    if getattr(ucfg, "addition_embed_type", None) is not None:
        raise ValueError(f"pipe.unet needs added conditioning ({ucfg.addition_embed_type!r}, "
                         f"as in SDXL); a {call.name} has a StableDiffusion-class UNet")


def check_rescale(call: Call) -> None:
    """``guidance_rescale`` in ``[0, 1]``."""
    r = number("guidance_rescale", call.get("guidance_rescale"))
    if r is not None and not 0 <= r <= 1:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {r:g}")


def encode(pipe: Any, call: Call) -> Conditioning:
    """``pipe.encode_prompt``: the CLIP embeddings (and the negative ones with CFG)."""
    lora = (call.get("cross_attention_kwargs") or {}).get("scale")
    cond, unc = pipe.encode_prompt(
        call.get("prompt"), call.device, call.n_img, call.cfg, call.get("negative_prompt"),
        prompt_embeds=call.get("prompt_embeds"),
        negative_prompt_embeds=call.get("negative_prompt_embeds"),
        clip_skip=call.get("clip_skip"), lora_scale=lora)
    return Conditioning({"encoder_hidden_states": cond},
                        {"encoder_hidden_states": unc} if call.cfg else None)


def guide(pipe: Any, call: Call):
    """diffusers' ``rescale_noise_cfg`` where ``guidance_rescale > 0``; else the samplers'
    linear guidance."""
    r = call.get("guidance_rescale", 0.0)
    return rescaled_guide(call.cfg_scale, r) if r > 0 else None


def decode(pipe: Any, latents: Tensor, output_type: str, height: Any, width: Any):
    """``latents / scaling_factor`` through the VAE and the safety checker."""
    return vae_decode(pipe, latents, output_type, shift=False)


def _check_t2i(pipe: Any, call: Call) -> None:
    check_unet(pipe, call)
    check_rescale(call)


# ---- img2img -----------------------------------------------------------------------------------

def need_image(call: Call) -> Any:
    """The ``image`` input (``ValueError`` when missing)."""
    image = call.get("image")
    if image is None:
        raise ValueError(f"image is required for a {call.name} (the image to start from)")
    return image


def image_geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """The size of the preprocessed ``image`` (kept in ``call.state``); latents
    ``[n, latent_channels, H / f, W / f]``."""
    image = pipe.image_processor.preprocess(need_image(call))
    call.state["image"] = image
    sf = pipe.vae_scale_factor
    C = pipe.vae.config.latent_channels
    if image.shape[1] == C:  # image latents given
        h, w = image.shape[-2:]
        return h * sf, w * sf, C, (call.n, C, h, w)
    H, W = image.shape[-2:]
    return H, W, C, (call.n, C, H // sf, W // sf)


def start_timestep(pipe: Any, call: Call) -> Tensor:
    """The pipeline's ``set_timesteps`` + ``get_timesteps`` on its own scheduler (which its
    ``add_noise`` reads): the first timestep that runs, repeated per sample."""
    pipe.scheduler.set_timesteps(call.num_steps, device=call.device, **call.timestep_kwargs)
    ts = pipe.scheduler.timesteps[call.begin:]
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(call.begin)
    return ts[:1].repeat(call.n)


def img2img_latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents(image, t_start, ...)``: the VAE-encode sample, then the noise,
    drawn from the generator in the pipeline's order."""
    t0 = start_timestep(pipe, call)
    return pipe.prepare_latents(call.state["image"], t0, call.b, call.n_img, call.dtype,
                                call.device, call.generator)


# ---- inpainting --------------------------------------------------------------------------------

def inpaint_geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """``height``/``width`` (default: the UNet's sample size), latents of the VAE's
    channels."""
    sf = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size
    H, W = call.get("height", size * sf), call.get("width", size * sf)
    from .core import check_size

    check_size(call.name, H, W, 8)
    C = pipe.vae.config.latent_channels
    return H, W, C, (call.n, C, H // sf, W // sf)


def _check_inpaint(pipe: Any, call: Call) -> None:
    check_unet(pipe, call)
    need_inpaint_inputs(pipe, call)


def need_inpaint_inputs(pipe: Any, call: Call) -> None:
    """An inpainting call's image and mask, and a 9-channel UNet (SD and SDXL)."""
    need_image(call)
    if call.get("mask_image") is None:
        raise ValueError(f"mask_image is required for a {call.name}")
    c = pipe.unet.config.in_channels
    if c != 9:
        raise ValueError(
            f"pipe.unet has {c} input channels; pint samples 9-channel inpainting UNets (mask and "
            "masked-image latents as conditioning). A 4-channel UNet blends the known region "
            "back after every step, which is not a step of the sampler's ODE")


def inpaint_latents(pipe: Any, call: Call) -> Tensor:
    """The pipeline's latents (noise at strength 1, else the noised image latents) and the
    mask / masked-image latents as conditioning (``call.more``)."""
    t0 = start_timestep(pipe, call)
    H, W = call.height, call.width
    init = pipe.image_processor.preprocess(call.get("image"), height=H, width=W)
    init = init.to(dtype=torch.float32)
    strength = call.get("strength", call.family.strength)
    x, _ = pipe.prepare_latents(
        call.n, call.channels, H, W, call.dtype, call.device, call.generator,
        call.get("latents"), image=init, timestep=t0, is_strength_max=strength == 1.0,
        return_noise=True, return_image_latents=False)
    mask_cond = pipe.mask_processor.preprocess(call.get("mask_image"), height=H, width=W)
    mask, masked = pipe.prepare_mask_latents(
        mask_cond, init * (mask_cond < 0.5), call.n, H, W, call.dtype, call.device,
        call.generator, False)
    call.more.update(mask=mask, masked_image_latents=masked)
    return x


def inpaint_network(pipe: Any, call: Call):
    """The UNet on ``[latents, mask, masked-image latents]`` (channels concatenated)."""
    unet = pipe.unet

    def fn(x: Tensor, t: Tensor, mask: Tensor, masked_image_latents: Tensor,
           **kw: Any) -> Tensor:
        inp = torch.cat([x, mask.to(x.dtype), masked_image_latents.to(x.dtype)], dim=1)
        return unet(inp, t, return_dict=False, **kw)[0]
    return fn


FAMILIES = {
    "StableDiffusionPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 7.5, inputs=("guidance_rescale",), check=_check_t2i,
        encode=encode, guide=guide, decode=decode),
    "StableDiffusionImg2ImgPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 7.5, inputs=("image", "strength"), strength=0.8,
        check=lambda p, c: (check_unet(p, c), need_image(c)) and None,
        geometry=image_geometry, encode=encode, latents=img2img_latents, decode=decode),
    "StableDiffusionInpaintPipeline": PipelineFamily(
        "unet", COMPONENTS, 50, 7.5, inputs=("image", "mask_image", "strength"),
        strength=1.0, check=_check_inpaint, geometry=inpaint_geometry, encode=encode,
        latents=inpaint_latents, network=inpaint_network, decode=decode),
}
