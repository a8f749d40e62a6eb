"""``load_text_to_image``: a local pipeline folder of a registered family, offline, from
safetensors only, every check made before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adapters.bridge import SUPPORTED_SCHEDULERS, schedule_from_scheduler
from adapters.diffusion.pretrained import PretrainedNotFoundError

from .family import FAMILIES, HOW_TO_ADD, supported_pipelines


def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        cfg = json.loads(file.read_text())
    except OSError as err:
        raise PretrainedNotFoundError(f"cannot read {file} ({what}): {err.strerror or err}") from None
    except ValueError as err:
        raise PretrainedNotFoundError(f"{file} ({what}) is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise PretrainedNotFoundError(f"{file} ({what}) must hold a JSON object, got "
                                      f"{type(cfg).__name__}")
    return cfg


def _dynamic_mu(cfg: Any) -> dict[str, float]:
    """A placeholder ``mu`` that lets a dynamically shifted scheduler be checked."""
    return {"mu": 0.0} if getattr(cfg, "use_dynamic_shifting", False) else {}


def load_text_to_image(folder: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, scheduler: str | None = None):
    """Load a local pipeline folder of a registered family (``StableDiffusionPipeline``,
    ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline``, their
    img2img / inpainting / ControlNet variants, ...; as written by ``save_pretrained``),
    offline and from safetensors only, with the folder's own scheduler.

    Args:
        folder: the pipeline folder (``model_index.json`` and one folder per component).
        device, dtype: where and in which dtype to put the pipeline (default CPU, float32).
        scheduler: UNet families only: ``"ddim"`` or ``"ddpm"`` replaces the folder's
            scheduler by a ``DDIMScheduler``/``DDPMScheduler`` built from its config (same
            betas); ``None`` keeps it, which must then be one of pint's. SD3 and Flux
            sample with their own flow-matching scheduler.

    Raises:
        PretrainedNotFoundError: not a folder, a malformed ``model_index.json`` or scheduler
            config (naming the file), not a supported pipeline, a missing component,
            pickled weights only, or a scheduler pint can't map (all checked before any
            weight is loaded).
    """
    import diffusers

    path = Path(folder).expanduser()
    index = path / "model_index.json"
    if not index.is_file():
        raise PretrainedNotFoundError(
            f"{folder} is not a text-to-image pipeline folder: no model_index.json (expected "
            f"a folder written by {' / '.join(supported_pipelines())}.save_pretrained)")
    cfg = _read_json(index, "the pipeline index")
    name = cfg.get("_class_name")
    if name not in FAMILIES:
        raise PretrainedNotFoundError(
            f"{folder} holds a {name}, not a supported text-to-image pipeline; supported: "
            f"{', '.join(supported_pipelines())}; {HOW_TO_ADD}")
    fam = FAMILIES[name]

    def given(c: str) -> bool:
        v = cfg.get(c)
        return isinstance(v, list) and len(v) == 2 and bool(v[0]) and bool(v[1])

    missing = [c for c in fam.components if not (given(c) and (path / c).is_dir())]
    if missing:
        raise PretrainedNotFoundError(f"{folder} lacks the component(s) {', '.join(missing)} "
                                      f"(a {name} needs {', '.join(fam.components)})")
    # every model component (a config.json beside its weights) must ship safetensors
    for c in sorted(k for k in cfg if given(k) and (path / k / "config.json").is_file()):
        if not any((path / c).glob("*.safetensors")):
            raise PretrainedNotFoundError(
                f"{path / c} holds no safetensors weights; pint loads safetensors only, because "
                "unpickling runs arbitrary code. Convert a folder you trust once with "
                f"{name}.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched_cfg = _read_json(sched_file, "the scheduler config")
    kinds = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}
    if scheduler is not None and scheduler not in kinds:
        raise ValueError(f"scheduler must be None, 'ddim' or 'ddpm', got {scheduler!r}")
    if scheduler is not None and fam.net != "unet":
        raise ValueError(f"scheduler={scheduler!r} replaces a UNet pipeline's scheduler "
                         f"(StableDiffusion, SDXL); a {name} samples with its own "
                         "flow-matching scheduler (scheduler=None)")
    sched_name = kinds[scheduler] if scheduler else sched_cfg.get("_class_name")
    if sched_name not in SUPPORTED_SCHEDULERS:
        hint = (". Use the same betas with DDIM steps: scheduler='ddim' (pint-sample "
                "--scheduler ddim)" if fam.net == "unet" else "")
        raise PretrainedNotFoundError(
            f"{path / 'scheduler'} holds a {sched_name}; pint samples with "
            f"{SUPPORTED_SCHEDULERS} steps{hint}")
    try:
        sched = getattr(diffusers, sched_name).from_config(sched_cfg)
        schedule_from_scheduler(sched, **_dynamic_mu(sched.config))  # before any weight loads
    except (TypeError, ValueError, KeyError) as err:
        raise PretrainedNotFoundError(f"{sched_file}: {err}") from None
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name)
    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipe = getattr(diffusers, name).from_pretrained(
            path, scheduler=sched, use_safetensors=True, local_files_only=True,
            low_cpu_mem_usage=False, **{key: dtype or torch.float32})
    except (ValueError, NameError) as err:
        if "keep_in_fp32_modules" not in str(err) and "accelerate" not in str(err):
            raise
        raise PretrainedNotFoundError(
            f"{folder}: a {name} keeps some modules in float32, which diffusers loads only "
            "with the accelerate package installed (pip install accelerate)") from None
    return pipe.to(device or "cpu")
