"""Parallel-in-time sampling of diffusers pipelines with the pipeline's own components.

``srds_pipeline(pipe, prompt, ...)`` encodes the inputs as the pipeline does, draws the
initial latents from the caller's ``generator`` in the pipeline's order, maps the scheduler
(with the shift / ``mu`` / truncated img2img grid the pipeline uses) onto a pint schedule,
samples the latents with any pint sampler (serial, SRDS, Picard, quasi-Newton, auto) with
classifier-free guidance in one batched network call per step, and decodes the final latents
once. With the same scheduler, seed and guidance the serial path gives the latents of
``pipe(..., output_type="latent")``, and the parallel samplers converge to them.

One small module per family beside a shared core:

- :mod:`.family`: :class:`PipelineFamily` (the description), :class:`Call`,
  :class:`Conditioning`, the registry (:func:`register_family`);
- :mod:`.checks`, :mod:`.core`, :mod:`.run`, :mod:`.loading`: what every family shares;
- :mod:`.sd`, :mod:`.sdxl`, :mod:`.sd3`, :mod:`.flux`, :mod:`.controlnet`, :mod:`.pixart`,
  :mod:`.wan`, :mod:`.chroma`, :mod:`.ltx`, :mod:`.qwenimage`: the families.

Needs the ``diffusers`` extra (with ``transformers``).
"""

from __future__ import annotations

from . import chroma, controlnet, flux, ltx, pixart, qwenimage, sd, sd3, sdxl, wan
from .checks import check_guidance, pipeline_family
from .core import OUTPUT_TYPES, SAMPLERS, TextToImageOutput, latents_to_images
from .family import (
    FAMILIES,
    Call,
    Conditioning,
    PipelineFamily,
    register_family,
    supported_pipelines,
)
from .loading import load_text_to_image
from .run import srds_pipeline

for _module in (sd, sdxl, sd3, flux, controlnet, pixart, wan, chroma, ltx, qwenimage):
    for _name, _family in _module.FAMILIES.items():
        register_family(_name, _family, replace=True)

__all__ = ["FAMILIES", "OUTPUT_TYPES", "SAMPLERS", "Call", "Conditioning", "PipelineFamily",
           "TextToImageOutput", "check_guidance", "latents_to_images", "load_text_to_image",
           "pipeline_family", "register_family", "srds_pipeline", "supported_pipelines"]
