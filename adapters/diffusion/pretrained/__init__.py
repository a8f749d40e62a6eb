"""Pretrained models: the bundled ones, and any local folder in diffusers layout.

``load_pretrained("digits")`` loads the model trained on scikit-learn's 8x8 digits that
ships with pint (``train_digits.py`` beside this file reproduces it); a path loads a local
folder holding a ``UNet2DModel``/``UNet2DConditionModel`` and a DDIM/DDPM scheduler config,
either as ``unet/`` + ``scheduler/`` subfolders (a ``DDPMPipeline`` folder) or side by side.
Weights load from ``safetensors`` only. Needs the ``diffusers`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..schedule import VPSchedule

BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED = {"digits": BUNDLED_DIR / "digits"}
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


class PretrainedNotFoundError(ValueError):
    """Neither a bundled model name nor a usable local folder."""


def available() -> list[str]:
    """Names of the bundled models."""
    return sorted(k for k, v in BUNDLED.items() if (v / "unet" / "config.json").exists())


def _locate(folder: Path) -> tuple[Path, Path]:
    if (folder / "unet" / "config.json").exists():
        unet_dir = folder / "unet"
    elif (folder / "config.json").exists():
        unet_dir = folder
    else:
        raise PretrainedNotFoundError(
            f"{folder} holds no UNet: expected unet/config.json (a pipeline folder) or "
            "config.json with the UNet's weights"
        )
    for cand in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if cand.exists():
            return unet_dir, cand
    raise PretrainedNotFoundError(
        f"{folder} holds no scheduler config: expected scheduler/scheduler_config.json or "
        "scheduler_config.json"
    )


def _check_safetensors(unet_dir: Path) -> None:
    if any(unet_dir.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in unet_dir.glob("*.bin")) + sorted(
        p.name for p in unet_dir.glob("*.pt*"))
    what = f"only pickled weights ({', '.join(pickles)})" if pickles else "no weights"
    raise PretrainedNotFoundError(
        f"{unet_dir} holds {what}; pint loads safetensors only, because unpickling runs "
        "arbitrary code. Convert a folder you trust once with: "
        f"python -c \"from diffusers import UNet2DModel; "
        f"UNet2DModel.from_pretrained('{unet_dir}').save_pretrained('{unet_dir}', "
        "safe_serialization=True)\" (UNet2DConditionModel likewise)"
    )


def load_pretrained(name_or_path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None):
    """``(model, schedule)`` for a bundled model name or a local diffusers folder.

    Args:
        name_or_path: ``"digits"`` (see :func:`available`) or a folder path.
        device, dtype: where and in which dtype to put the UNet (default: CPU, float32).

    Raises:
        PretrainedNotFoundError: unknown name, a folder without a UNet or scheduler config,
            or a folder with pickled weights only (the message says how to convert).
    """
    import diffusers

    from adapters.diffusers import from_diffusers

    key = str(name_or_path)
    if key in BUNDLED:
        folder = BUNDLED[key]
        if not (folder / "unet" / "config.json").exists():
            raise PretrainedNotFoundError(
                f"the bundled model {key!r} is missing from {folder}; re-create it with "
                "python -m adapters.diffusion.pretrained.train_digits"
            )
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise PretrainedNotFoundError(
                f"unknown model {key!r}: not a bundled model ({', '.join(available()) or 'none'})"
                " and not a local folder"
            )
    unet_dir, sched_cfg = _locate(folder)
    _check_safetensors(unet_dir)
    unet_cls_name = json.loads((unet_dir / "config.json").read_text()).get(
        "_class_name", "UNet2DModel")
    if unet_cls_name not in UNET_CLASSES:
        raise PretrainedNotFoundError(
            f"{unet_dir} holds a {unet_cls_name}; supported: {', '.join(UNET_CLASSES)}")
    unet = getattr(diffusers, unet_cls_name).from_pretrained(unet_dir, use_safetensors=True)
    unet = unet.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    sched_name = json.loads(sched_cfg.read_text()).get("_class_name", "DDIMScheduler")
    if sched_name not in ("DDIMScheduler", "DDPMScheduler"):
        sched_name = "DDIMScheduler"  # same betas; pint samples with DDIM/DDPM steps
    scheduler = getattr(diffusers, sched_name).from_pretrained(sched_cfg.parent)
    return from_diffusers(unet, scheduler)


__all__ = ["load_pretrained", "available", "PretrainedNotFoundError", "VPSchedule"]
