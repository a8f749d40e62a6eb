"""The bridge to diffusers: its UNets as pint models, its scheduler configs as schedules.

``from_diffusers(unet, scheduler)`` keeps the scheduler's betas, prediction type, timestep
spacing, steps offset, final alpha and clipping, so that ``serial_sample(model, schedule,
x, num_steps=K)`` reproduces diffusers' own loop after ``scheduler.set_timesteps(K)``
(``sampler="ddpm"`` for a DDPMScheduler's ancestral loop). Needs the ``diffusers`` extra.

Text-to-image pipelines (StableDiffusion-class): ``srds_pipeline``, ``load_text_to_image``
and ``TextToImageOutput`` from :mod:`adapters.text_to_image`, re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adapters.diffusion.schedule import VPSchedule

SUPPORTED_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")


class DiffusersModel(torch.nn.Module):
    """A diffusers UNet as a pint model: ``model(x, t, **kwargs) -> tensor``.

    ``x``: ``[R, C, H, W]``; ``t``: int64 ``[R]``; keyword arguments
    (``encoder_hidden_states``, ``class_labels``, ...) go to the UNet unchanged.
    ``sample_shape`` is ``(C, H, W)`` from the UNet's config.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        cfg = unet.config
        size = cfg.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (cfg.in_channels, *size)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the UNet's parameters."""
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the UNet's parameters."""
        return next(self.unet.parameters()).device

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        """The UNet's raw output for ``x [R, C, H, W]`` at integer timesteps ``t [R]``:
        ``[R, C, H, W]`` (noise, x0 or v, as the scheduler's ``prediction_type`` says)."""
        return self.unet(x, t, return_dict=False, **kwargs)[0]


def schedule_from_scheduler(scheduler: Any) -> VPSchedule:
    """A :class:`VPSchedule` from a diffusers ``DDIMScheduler`` or ``DDPMScheduler``."""
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise TypeError(
            f"scheduler must be one of {SUPPORTED_SCHEDULERS} (the DDIM/DDPM family whose "
            f"steps pint reproduces), got {name}; build one from the same config with "
            f"DDIMScheduler.from_config(scheduler.config)"
        )
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        raise ValueError("scheduler.config.thresholding=True (dynamic thresholding) is not "
                         "supported; use clip_sample instead")
    if name == "DDPMScheduler" and cfg.variance_type not in ("fixed_small", None):
        raise ValueError(f"DDPMScheduler variance_type {cfg.variance_type!r} is not supported "
                         "(only 'fixed_small')")
    ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    if name == "DDIMScheduler":
        final = float(scheduler.final_alpha_cumprod)
    else:
        final = 1.0
    return VPSchedule.from_alphas_cumprod(
        ac,
        prediction_type=cfg.prediction_type,
        timestep_spacing=cfg.timestep_spacing,
        steps_offset=int(cfg.steps_offset),
        final_alpha_cumprod=final,
        clip_sample=bool(cfg.clip_sample),
        clip_sample_range=float(getattr(cfg, "clip_sample_range", 1.0)),
    )


def decode_latents(vae: torch.nn.Module, latents: Tensor,
                   scaling_factor: float | None = None) -> Tensor:
    """Decode a latent diffusion model's final sample with its VAE (``AutoencoderKL``).

    ``latents``: ``[b, c, h, w]`` as sampled; they are divided by ``scaling_factor``
    (default ``vae.config.scaling_factor``) first, as diffusers' pipelines do. Returns images
    ``[b, 3, H, W]`` in the VAE's output range (about ``[-1, 1]``). Decode only what you
    show: SRDS itself holds latents, never images.
    """
    if not hasattr(vae, "decode"):
        raise TypeError(f"vae must be a diffusers autoencoder with .decode, got {type(vae).__name__}")
    sf = scaling_factor if scaling_factor is not None else getattr(vae.config, "scaling_factor", 1.0)
    z = latents.to(dtype=next(vae.parameters()).dtype) / sf
    return vae.decode(z, return_dict=False)[0]


def from_diffusers(unet: torch.nn.Module, scheduler: Any) -> tuple[DiffusersModel, VPSchedule]:
    """``(model, schedule)`` for pint's samplers from a diffusers UNet and scheduler.

    Args:
        unet: ``UNet2DModel`` or ``UNet2DConditionModel`` (any module with the diffusers
            call convention and ``config.in_channels`` / ``config.sample_size``).
        scheduler: ``DDIMScheduler`` or ``DDPMScheduler``.
    """
    if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "config"):
        raise TypeError(f"unet must be a diffusers UNet model, got {type(unet).__name__}")
    return DiffusersModel(unet), schedule_from_scheduler(scheduler)


_TEXT_TO_IMAGE = ("srds_pipeline", "load_text_to_image", "latents_to_images", "TextToImageOutput")


def __getattr__(name: str) -> Any:  # lazy: adapters.text_to_image imports this module
    if name in _TEXT_TO_IMAGE:
        from adapters import text_to_image

        return getattr(text_to_image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
