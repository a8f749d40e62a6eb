"""The text-to-image names as they were first published (kept working): a thin re-export of
:mod:`adapters.pipelines`, where the pipeline families, the shared core and the registry
live.

``srds_pipeline``, ``load_text_to_image``, ``latents_to_images``, ``TextToImageOutput``,
``PipelineFamily``, ``pipeline_family``, ``check_guidance`` and ``FAMILIES`` are the same
objects as there; ``TEXT_TO_IMAGE_PIPELINES`` lists the classes supported now (registered
ones included).
"""

from __future__ import annotations

from typing import Any

from adapters.pipelines import (
    FAMILIES,
    OUTPUT_TYPES,
    SAMPLERS,
    PipelineFamily,
    TextToImageOutput,
    check_guidance,
    latents_to_images,
    load_text_to_image,
    pipeline_family,
    register_family,
    srds_pipeline,
    supported_pipelines,
)

__all__ = ["FAMILIES", "OUTPUT_TYPES", "SAMPLERS", "PipelineFamily", "TextToImageOutput",
           "check_guidance", "latents_to_images", "load_text_to_image", "pipeline_family",
           "register_family", "srds_pipeline", "supported_pipelines"]

#: what a StableDiffusionPipeline must have (kept for older callers)
COMPONENTS = FAMILIES["StableDiffusionPipeline"].components


def __getattr__(name: str) -> Any:
    if name == "TEXT_TO_IMAGE_PIPELINES":  # live: registered families included
        return supported_pipelines()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
