"""Pretrained models: the bundled ones, and any local folder in diffusers layout.

``load_pretrained("digits")`` loads the model trained on scikit-learn's 8x8 digits that
ships with pint (``train_digits.py`` beside this file reproduces it); a path loads a local
folder holding a ``UNet2DModel``/``UNet2DConditionModel`` and a scheduler config, either as
``unet/`` + ``scheduler/`` subfolders (a ``DDPMPipeline`` folder) or side by side. The
folder's own scheduler class is built and handed to :func:`adapters.diffusers.from_diffusers`,
which decides whether pint can sample it. Weights load from ``safetensors`` only. Needs the
``diffusers`` extra.

A bundled model name always means the bundled model, never a folder of that name in the
working directory (give ``./digits`` for that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..schedule import VPSchedule

BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED = {"digits": BUNDLED_DIR / "digits", "digits-flow": BUNDLED_DIR / "digits-flow"}
# the command that re-creates each bundled model
TRAINING_COMMANDS = {
    "digits": "python -m adapters.diffusion.pretrained.train_digits",
    "digits-flow": "python -m adapters.diffusion.pretrained.train_digits_flow",
}
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


class PretrainedNotFoundError(ValueError):
    """Neither a bundled model name nor a usable local folder (missing, unreadable or
    malformed files, or a scheduler pint cannot sample)."""


@dataclass(frozen=True)
class PretrainedFolder:
    """A model folder located and checked without loading any weights."""

    folder: Path
    unet_dir: Path
    scheduler_config_path: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    bundled: bool

    @property
    def scheduler_class(self) -> str:
        """The diffusers scheduler class the folder names (default ``DDIMScheduler``)."""
        return self.scheduler_config.get("_class_name", "DDIMScheduler")

    @property
    def num_train_timesteps(self) -> int | None:
        """The scheduler config's training timesteps, if it gives an int."""
        v = self.scheduler_config.get("num_train_timesteps", 1000)
        return v if isinstance(v, int) and not isinstance(v, bool) else None


def available() -> list[str]:
    """Names of the bundled models."""
    return sorted(k for k, v in BUNDLED.items() if (v / "unet" / "config.json").exists())


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise PretrainedNotFoundError(f"{path} is not a readable JSON {what}: {err}") from err
    if not isinstance(cfg, dict):
        raise PretrainedNotFoundError(
            f"{path} is not a valid {what}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


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
    files = sorted(unet_dir.glob("*.safetensors"))
    if not files:
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
    from safetensors import safe_open

    for f in files:  # reads the header only; a truncated file fails here ("not fully covered")
        try:
            with safe_open(str(f), "pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError (not exported under a stable name), OSError
            raise PretrainedNotFoundError(
                f"{f} is not a valid safetensors file (truncated or corrupt?): {err}") from err


def _folder_of(name_or_path: str | Path) -> tuple[Path, bool]:
    key = str(name_or_path)
    if key in BUNDLED:
        folder = BUNDLED[key]
        if not (folder / "unet" / "config.json").exists():
            raise PretrainedNotFoundError(
                f"the bundled model {key!r} is missing from {folder}; re-create it with "
                f"{TRAINING_COMMANDS.get(key, 'its training script')}"
            )
        return folder, True
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise PretrainedNotFoundError(
            f"unknown model {key!r}: not a bundled model ({', '.join(available()) or 'none'})"
            " and not a local folder"
        )
    return folder, False


def _scheduler_class(info: PretrainedFolder) -> type:
    import diffusers

    name = info.scheduler_class
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise PretrainedNotFoundError(
            f"{info.scheduler_config_path} names the scheduler class {name!r}, which is not a "
            f"scheduler of the installed diffusers {diffusers.__version__}")
    return cls


def inspect_pretrained(name_or_path: str | Path) -> PretrainedFolder:
    """Locate a bundled model or local folder and check its files without loading weights.

    Raises:
        PretrainedNotFoundError: as :func:`load_pretrained`, except for what only building
            the model finds (weights that don't fit the config, a scheduler pint can't sample).
    """
    folder, bundled = _folder_of(name_or_path)
    unet_dir, sched_path = _locate(folder)
    unet_cfg = _read_json(unet_dir / "config.json", "UNet config")
    unet_cls = unet_cfg.get("_class_name", "UNet2DModel")
    if unet_cls not in UNET_CLASSES:
        raise PretrainedNotFoundError(
            f"{unet_dir} holds a {unet_cls}; supported: {', '.join(UNET_CLASSES)}")
    _check_safetensors(unet_dir)
    info = PretrainedFolder(folder, unet_dir, sched_path, unet_cfg,
                            _read_json(sched_path, "scheduler config"), bundled)
    _scheduler_class(info)
    return info


def _dtype_kwarg() -> str:
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name)
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def load_pretrained(name_or_path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None):
    """``(model, schedule)`` for a bundled model name or a local diffusers folder.

    Args:
        name_or_path: a bundled name (see :func:`available`) or a folder path.
        device, dtype: where and in which dtype to put the UNet (default: CPU, float32).

    Raises:
        PretrainedNotFoundError: unknown name, a folder without a UNet or scheduler config,
            pickled weights only (the message says how to convert), a malformed config or
            safetensors file (named), a scheduler class diffusers doesn't have, or one that
            :func:`adapters.diffusers.from_diffusers` can't sample (it names the class).
    """
    import diffusers

    from adapters.diffusers import from_diffusers

    info = inspect_pretrained(name_or_path)
    sched_cls = _scheduler_class(info)
    try:
        scheduler = sched_cls.from_config(info.scheduler_config)
    except Exception as err:  # bad values in the config: TypeError, ValueError, KeyError...
        raise PretrainedNotFoundError(
            f"{info.scheduler_config_path}: cannot build a {sched_cls.__name__} from it: "
            f"{type(err).__name__}: {err}") from err
    unet_cls = getattr(diffusers, info.unet_config.get("_class_name", "UNet2DModel"))
    # low_cpu_mem_usage=False: without accelerate diffusers warns and falls back to it anyway;
    # the dtype goes to from_pretrained, as diffusers asks (.to(dtype) logs a float32 notice)
    try:
        unet = unet_cls.from_pretrained(
            info.unet_dir, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False,
            **{_dtype_kwarg(): dtype or torch.float32})
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise PretrainedNotFoundError(
            f"{info.unet_dir}: cannot load the {unet_cls.__name__} "
            f"({type(err).__name__}: {' '.join(str(err).split())})") from err
    unet = unet.to(device=device or "cpu").eval()
    try:
        return from_diffusers(unet, scheduler)
    except (TypeError, ValueError) as err:
        raise PretrainedNotFoundError(
            f"{info.scheduler_config_path.parent} holds a {type(scheduler).__name__}, which pint "
            f"cannot sample: {err}") from err


__all__ = ["load_pretrained", "inspect_pretrained", "available", "PretrainedFolder",
           "PretrainedNotFoundError", "VPSchedule", "BUNDLED", "TRAINING_COMMANDS"]
