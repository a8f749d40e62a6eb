"""The bridge to diffusers: its networks as pint models, its schedulers as schedules.

``from_diffusers(net, scheduler)`` keeps the scheduler's grid, prediction type and solver
(DDIM/DDPM, flow-matching Euler, Euler (Karras), Euler ancestral, DPM-Solver++ 2M, UniPC),
so that ``serial_sample(model, schedule, x, num_steps=K)`` reproduces diffusers' own loop
after ``scheduler.set_timesteps(K)`` (a DDPMScheduler's ancestral loop included: a schedule
samples with its scheduler's solver unless told otherwise). Needs the ``diffusers`` extra.

Pipelines (StableDiffusion, SDXL, SD3, Flux, img2img, inpainting, ControlNet, ...):
``srds_pipeline``, ``load_text_to_image``, ``latents_to_images``, ``TextToImageOutput`` and
``register_family`` from :mod:`adapters.pipelines`, re-exported here.

The code lives in :mod:`adapters.bridge` (schedulers, networks) and :mod:`adapters.pipelines`;
both import downwards only (the pipelines import the bridge, never this module), so this
public module sits on top of both and nothing imports in a circle.
"""

from __future__ import annotations

from typing import Any

from adapters.bridge import (
    SUPPORTED_MODELS,
    SUPPORTED_SCHEDULERS,
    DiffusersModel,
    decode_latents,
    from_diffusers,
    schedule_from_scheduler,
)

__all__ = ["SUPPORTED_MODELS", "SUPPORTED_SCHEDULERS", "DiffusersModel", "decode_latents",
           "from_diffusers", "schedule_from_scheduler"]

_PIPELINES = ("srds_pipeline", "load_text_to_image", "latents_to_images", "TextToImageOutput",
              "register_family", "PipelineFamily")


def __getattr__(name: str) -> Any:  # lazy: importing the pipelines pulls in the samplers
    if name in _PIPELINES:
        from adapters import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
