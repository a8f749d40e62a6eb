"""ControlNet pipelines (StableDiffusion, SDXL; one ControlNet): the ControlNet runs inside
the same batched network call as the UNet, on the step's latents and time, and its residuals
are scaled per row by ``controlnet_conditioning_scale`` and the
``control_guidance_start``/``end`` window of the row's step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import sd, sdxl
from .checks import number
from .family import Call, PipelineFamily

INPUTS = ("image", "controlnet_conditioning_scale", "control_guidance_start",
          "control_guidance_end", "guess_mode")


def _single(call: Call, key: str, default: float) -> float:
    v = call.get(key, default)
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise ValueError(f"{key}: one value per ControlNet; pint runs one ControlNet, got {v!r}")
        v = v[0]
    out = number(key, v)
    return default if out is None else out


def check(pipe: Any, call: Call) -> None:
    """One ControlNet, no guess mode, a control image, a guidance window in ``[0, 1]``."""
    if type(pipe.controlnet).__name__ != "ControlNetModel":
        raise ValueError(f"pipe.controlnet is a {type(pipe.controlnet).__name__}; pint runs one "
                         "ControlNetModel (not MultiControlNetModel / union ControlNets)")
    if call.get("guess_mode"):
        raise ValueError("guess_mode=True runs the ControlNet on the conditional half only; "
                         "not supported (guess_mode=False)")
    sd.need_image(call)
    start = _single(call, "control_guidance_start", 0.0)
    end = _single(call, "control_guidance_end", 1.0)
    if not 0 <= start < end <= 1:
        raise ValueError(f"control_guidance_start/end must satisfy 0 <= start < end <= 1, got "
                         f"{start:g}, {end:g}")
    _single(call, "controlnet_conditioning_scale", 1.0)


def geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """The preprocessed control image (kept in ``call.state``) sets the size, as the
    pipeline's ``prepare_image``."""
    image = pipe.control_image_processor.preprocess(
        sd.need_image(call), height=call.get("height"), width=call.get("width"))
    call.state["control"] = image.to(dtype=torch.float32)
    H, W = image.shape[-2:]
    sf = pipe.vae_scale_factor
    C = pipe.unet.config.in_channels
    return H, W, C, (call.n, C, H // sf, W // sf)


def _control_image(pipe: Any, call: Call) -> Tensor:
    image = call.state["control"]
    repeat = call.n if image.shape[0] == 1 else call.n_img
    return image.repeat_interleave(repeat, dim=0).to(call.device, pipe.controlnet.dtype)


def latents(pipe: Any, call: Call) -> Tensor:
    """Noise as the text-to-image pipeline draws it; the control image as conditioning."""
    from .core import default_latents

    x = default_latents(pipe, call)
    call.more["controlnet_cond"] = _control_image(pipe, call)
    return x


def _keep(pipe: Any, call: Call) -> tuple[Tensor, Tensor]:
    """``(timesteps [N], conditioning scale per step [N])``: the pipeline's
    ``controlnet_keep`` times ``controlnet_conditioning_scale``."""
    sched = pipe.scheduler
    sched.set_timesteps(call.num_steps, device="cpu", **call.timestep_kwargs)
    ts = sched.timesteps.detach().to("cpu", torch.float64)
    start = _single(call, "control_guidance_start", 0.0)
    end = _single(call, "control_guidance_end", 1.0)
    scale = _single(call, "controlnet_conditioning_scale", 1.0)
    L = len(ts)
    keep = [scale * (1.0 - float(i / L < start or (i + 1) / L > end)) for i in range(L)]
    return ts, torch.tensor(keep, dtype=torch.float64)


def _residuals(controlnet: Any, x: Tensor, t: Tensor, ehs: Tensor, cond: Tensor,
               ts: Tensor, keep: Tensor, **extra: Any) -> tuple[list[Tensor], Tensor]:
    idx = (t.detach().to("cpu", torch.float64).view(-1, 1) - ts.view(1, -1)).abs().argmin(1)
    s = keep[idx].to(x.device, x.dtype)
    down, mid = controlnet(x, t, encoder_hidden_states=ehs, controlnet_cond=cond.to(x.dtype),
                           conditioning_scale=1.0, guess_mode=False, return_dict=False, **extra)
    view = (-1,) + (1,) * (x.dim() - 1)
    return [d * s.view(view).to(d.dtype) for d in down], mid * s.view(view).to(mid.dtype)


def network(pipe: Any, call: Call):
    """ControlNet then UNet, one batched call per step."""
    unet, controlnet = pipe.unet, pipe.controlnet
    ts, keep = _keep(pipe, call)

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor, controlnet_cond: Tensor,
           **kw: Any) -> Tensor:
        down, mid = _residuals(controlnet, x, t, encoder_hidden_states, controlnet_cond, ts,
                               keep)
        return unet(x, t, encoder_hidden_states=encoder_hidden_states,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid,
                    return_dict=False, **kw)[0]
    return fn


def xl_network(pipe: Any, call: Call):
    """SDXL: ControlNet and UNet with ``added_cond_kwargs``."""
    unet, controlnet = pipe.unet, pipe.controlnet
    ts, keep = _keep(pipe, call)

    def fn(x: Tensor, t: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor,
           time_ids: Tensor, controlnet_cond: Tensor, **kw: Any) -> Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        down, mid = _residuals(controlnet, x, t, encoder_hidden_states, controlnet_cond, ts,
                               keep, added_cond_kwargs=added)
        return unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid,
                    return_dict=False, **kw)[0]
    return fn


def _check_sd(pipe: Any, call: Call) -> None:
    sd.check_unet(pipe, call)
    check(pipe, call)


def _check_xl(pipe: Any, call: Call) -> None:
    sdxl.check(pipe, call)
    check(pipe, call)


FAMILIES = {
    "StableDiffusionControlNetPipeline": PipelineFamily(
        "unet", (*sd.COMPONENTS, "controlnet"), 50, 7.5, inputs=INPUTS, check=_check_sd,
        geometry=geometry, encode=sd.encode, latents=latents, network=network, decode=sd.decode),
    "StableDiffusionXLControlNetPipeline": PipelineFamily(
        "unet", (*sdxl.COMPONENTS, "controlnet"), 50, 5.0,
        inputs=(*INPUTS, *sdxl.TIME_INPUTS), pooled=True, check=_check_xl, geometry=geometry,
        encode=sdxl.encode, latents=latents, network=xl_network, decode=sdxl.decode),
}
