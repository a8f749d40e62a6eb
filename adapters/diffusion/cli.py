"""``pint-sample``: sample a diffusion model with SRDS (or the serial sampler) and write a
sample grid, a convergence figure and a JSON report.

    pint-sample --model digits --out out/
    pint-sample --model path/to/stable-diffusion --prompt "a photo of a cat" --out out/

A local text-to-image pipeline folder (``model_index.json`` of a StableDiffusionPipeline,
StableDiffusion3Pipeline or FluxPipeline) is sampled through
:func:`adapters.text_to_image.srds_pipeline` (prompt, guidance, latents, VAE decode) with
any sampler; it also writes every image and the latents.

Under ``torchrun`` the model is loaded on every rank and SRDS, the window samplers
(``quasi_newton``, ``picard``) and ``auto`` split every model call over the ranks
(:class:`pint.DistributedExecutor`; gloo for ``--device cpu``, NCCL with one GPU per rank
for ``--device cuda``); every rank computes the same sample and rank 0 writes the outputs::

    torchrun --nproc-per-node 4 -m adapters.diffusion.cli --device cuda --sampler quasi_newton --out out/

Every argument and the output folder are checked before a model is loaded. The outputs are
written under temporary names in ``--out`` and moved into place at the end (``report.json``
last), replacing the files of a previous run there; an interrupted run leaves the previous
outputs as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


WINDOW_SAMPLERS = ("quasi_newton", "picard")
# what pint-sample writes into --out; nothing else there is ever deleted
OUTPUT_FILES = ("samples.png", "convergence.png", "report.json", "latents.safetensors")
IMAGES_DIR = "images"
IMAGE_NAME = re.compile(r"\d{3,}\.png")
TMP_PREFIX = ".pint-tmp-"
OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")  # tolerated in --out, left alone

EPILOG = f"""\
outputs: --out holds one run: samples.png, convergence.png (iterative samplers),
report.json, and for a pipeline images/NNN.png and latents.safetensors. They are written
under temporary names and moved into place at the end (report.json last); files of a
previous run that this run does not write (e.g. images/003.png, convergence.png) are
removed. --out must be new, empty, or hold only these names (and OS metadata:
{", ".join(OS_METADATA)}); a folder with other files is refused, never cleaned.
Ctrl-C leaves the previous outputs as they were (exit 130). All arguments, the device
and --out are checked before the model loads.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pint-sample",
        description="Sample a diffusion model with SRDS (Parareal) or the serial DDIM sampler.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="digits",
                   help="a bundled model name (digits; always the bundled model, even where "
                        "a folder of that name exists: give ./digits for the folder), a local "
                        "diffusers UNet folder, or a local text-to-image pipeline folder "
                        "(with --prompt)")
    p.add_argument("--sampler", choices=["srds", "serial", "quasi_newton", "picard", "auto"],
                   default="srds",
                   help="srds (Parareal), serial, the sliding-window samplers quasi_newton / "
                        "picard, or auto (measures the model on this device, prints the "
                        "candidates with their predicted time, runs the fastest)")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="steps per call of --sampler quasi_newton / picard (default 32)")
    p.add_argument("--max-batch", type=_positive_int, default=None,
                   help="network rows one call may hold (memory), --sampler auto only")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps N (default 1000; for a text-to-image pipeline its own: "
                        "50 for SD, 28 for SD3 and Flux)")
    p.add_argument("--num-blocks", type=_positive_int, default=None, dest="blocks",
                   help="Parareal blocks (the API's num_blocks), --sampler srds only, <= "
                        "--steps (default round(2 sqrt(N)) pipelined, round(sqrt(N)) for the "
                        "sweep)")
    # the former name, still accepted (same dest), no longer listed
    p.add_argument("--blocks", type=_positive_int, default=None, dest="blocks",
                   help=argparse.SUPPRESS)
    p.add_argument("--tol", type=_positive_float, default=None,
                   help="stop when the final sample moves less than this in one iteration "
                        "(default 2e-3 in float32, 1e-6 in float64; window samplers: 1e-4 per "
                        "step); not for --sampler serial")
    p.add_argument("--max-iters", type=_nonneg_int, default=None,
                   help="iteration limit (>= 1 for the window samplers); not for serial")
    p.add_argument("--pipelined", action=argparse.BooleanOptionalAction, default=None,
                   help="wavefront schedule, --sampler srds only (default on)")
    p.add_argument("--num-samples", type=_positive_int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N, mps or xpu (checked before loading; default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--compare-serial", action="store_true",
                   help="also run the serial sampler: wall-clock ratio, max difference, and "
                        "the serial sampler's own round-off floor")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new, empty, or a previous pint-sample output (its "
                        "files are replaced; see below)")
    t2i = p.add_argument_group("text-to-image pipelines (StableDiffusion, SD3, Flux folders)")
    t2i.add_argument("--prompt", default=None, help="the text prompt (required for a pipeline)")
    t2i.add_argument("--negative-prompt", default=None,
                     help="what to steer away from (needs --guidance-scale > 1; Flux: "
                          "--true-cfg-scale > 1)")
    t2i.add_argument("--guidance-scale", type=_finite_float, default=None,
                     help="SD/SD3: classifier-free guidance (default 7.5 / 7.0; <= 1: none); "
                          "Flux: the embedded guidance of a guidance-distilled transformer "
                          "(default 3.5)")
    t2i.add_argument("--true-cfg-scale", type=_finite_float, default=None,
                     help="Flux only: classifier-free guidance with --negative-prompt")
    t2i.add_argument("--height", type=_positive_int, default=None,
                     help="image height in pixels (default: the pipeline's)")
    t2i.add_argument("--width", type=_positive_int, default=None,
                     help="image width in pixels (default: the pipeline's)")
    t2i.add_argument("--scheduler", choices=["ddim", "ddpm"], default=None,
                     help="replace the folder's scheduler by DDIM/DDPM steps on its betas "
                          "(needed when it ships another scheduler, e.g. PNDM)")
    return p


def to_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` tensor in [-1, 1] -> float images in [0, 1], numpy ``[n, H, W, C]``;
    numpy images ``[..., H, W, C]`` in [0, 1] pass through."""
    if isinstance(x, np.ndarray):
        return x
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def _show(ax, img) -> None:
    """Draw one ``[H, W, C]`` image in [0, 1] (grey when ``C == 1``), pixels unsmoothed."""
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")


def _mosaic(imgs: np.ndarray, cols: int, scale: int, gap: int = 4) -> np.ndarray:
    """``[n, H, W, C]`` images in [0, 1] -> one ``[rows * (H s + gap) - gap, ..., C]`` image,
    every pixel repeated ``scale`` times in both directions (nearest neighbour), white gaps."""
    n, H, W, C = imgs.shape
    rows = math.ceil(n / cols)
    h, w = H * scale, W * scale
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, C), dtype=np.float32)
    big = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = big[k]
    return out


#: samples.png draws every sample at least this many pixels wide (integer upscaling)
GRID_MIN_PX = 160


def save_grid(x: torch.Tensor, path: Path, title: str | None = None) -> None:
    """The samples as one PNG, pixel for pixel: each sample upscaled by an integer factor to
    at least :data:`GRID_MIN_PX` pixels (nearest neighbour, no smoothing; larger images at
    their own size), in a square-ish grid, with ``title`` above it."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = to_images(x)
    n, H, W, _ = imgs.shape
    cols = math.ceil(math.sqrt(n))
    mosaic = _mosaic(imgs, cols, scale=max(1, math.ceil(GRID_MIN_PX / max(H, W))))
    mh, mw = mosaic.shape[:2]
    dpi, margin = 100, 8
    fig_w = max(mw + 2 * margin, 480)
    lines = textwrap.wrap(title, width=max(20, fig_w // 7)) if title else []
    title_px = 16 * len(lines) + (10 if lines else 0)
    fig_h = mh + 2 * margin + title_px
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes([(fig_w - mw) / 2 / fig_w, margin / fig_h, mw / fig_w, mh / fig_h])
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest", aspect="equal")
    ax.axis("off")
    if lines:
        fig.text(0.5, 1 - 6 / fig_h, "\n".join(lines), ha="center", va="top", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def save_convergence(history: list[float], iterates: torch.Tensor | np.ndarray | None,
                     tol: float, path: Path, show: int = 4,
                     ylabel: str = "max |change| of the final sample") -> None:
    """The change per iteration (left) and, for the first ``show`` samples, what each
    iteration still had to change (right): the final samples on top, then per iteration
    (the coarse sweep first) its difference to the final sample, all on one symmetric
    colour scale with a colourbar. ``iterates`` ``[rows, n, C, H, W]`` in [-1, 1] or numpy
    ``[rows, n, H, W, C]`` in [0, 1], the last row the final sample (``None``: the curve
    only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if iterates is None:
        iterates = np.zeros((0, 0, 1, 1, 1))
    window = iterates.shape[0] == 0
    if isinstance(iterates, np.ndarray):
        imgs = iterates
    elif not window:
        imgs = to_images(iterates.reshape(-1, *iterates.shape[2:]))
        imgs = imgs.reshape(iterates.shape[0], iterates.shape[1], *imgs.shape[1:])
    show = min(show, iterates.shape[1])
    K = iterates.shape[0] - 1  # iterations after the coarse sweep
    rows = K + 1 if show else 0  # the final samples, then coarse and iterations 1 .. K - 1
    cell, curve_w, label_w = 1.1, 5.0, 1.1  # inches
    fig_w = curve_w + (label_w + show * cell + 1.4 if show else 0)
    fig_h = max(3.6, rows * cell + 1.0)
    fig = plt.figure(figsize=(fig_w, fig_h))
    if show:
        outer = fig.add_gridspec(1, 2, width_ratios=[curve_w - 0.8, fig_w - curve_w],
                                 left=0.8 / fig_w, right=1 - 0.6 / fig_w, wspace=0,
                                 top=1 - 0.6 / fig_h, bottom=0.5 / fig_h)
        gs = outer[0, 1].subgridspec(rows, show + 3, wspace=0.1, hspace=0.1,
                                     width_ratios=[label_w / cell, *[1] * show, 0.1, 0.2])
        ax = fig.add_subplot(outer[0, 0])
    else:
        ax = fig.add_subplot(1, 1, 1)
    if history:
        ax.semilogy(range(1, len(history) + 1), history, "o-", label="change of the sample")
        ax.axhline(tol, color="gray", ls="--", label=f"tol = {tol:g}")
        ax.legend(fontsize=9)
    ax.set(xlabel="model call (window iteration)" if window else "Parareal iteration",
           ylabel="worst per-step change / noise scale" if window else ylabel,
           title="window sampler convergence" if window else "SRDS convergence")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if show:
        final = imgs[-1, :show]
        diff = (imgs[:-1, :show] - final[None]).mean(-1)  # [K, show, H, W], channels averaged
        vmax = (float(np.abs(diff).max()) if diff.size else 0.0) or 1.0
        im = None
        for r in range(rows):
            for c in range(show):
                a = fig.add_subplot(gs[r, 1 + c])
                if r == 0:
                    _show(a, final[c])
                else:
                    im = a.imshow(diff[r - 1, c], cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                                  interpolation="nearest")
                a.set_xticks([])
                a.set_yticks([])
                if c == 0:
                    label = "final" if r == 0 else "coarse" if r == 1 else f"iter {r - 1}"
                    if r:
                        label += f"\nmax {np.abs(diff[r - 1]).max():.1g}"
                    a.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        fig.text((gs[0, 1].get_position(fig).x0 + gs[0, show].get_position(fig).x1) / 2,
                 1 - 0.1 / fig_h,
                 "final samples; below: each iteration's\ndifference to them (pixels in [0, 1])",
                 ha="center", va="top", fontsize=10)
        if im is not None:
            fig.colorbar(im, cax=fig.add_subplot(gs[1:, show + 2]))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _error(msg: str) -> int:
    """Print ``msg`` as one ``pint-sample: error:`` line; the exit status 2."""
    line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    print(f"pint-sample: error: {line}", file=sys.stderr)
    return 2


#: sampler state memory (estimated) above which the CLI says so before it starts
MEMORY_NOTE_BYTES = 1 << 30


def _memory_note(args, steps: int, sample_shape: tuple[int, ...], dtype: torch.dtype,
                 pipelined: bool) -> str | None:
    """One line on the batch and the sampler's state memory when the estimate exceeds
    :data:`MEMORY_NOTE_BYTES`, else ``None``. The window samplers keep every sample's whole
    trajectory (``N + 1`` states) plus a few per window step; SRDS a few states per block
    boundary (current, next, coarse values, iterates); the serial sampler a few. The
    network's own activations come on top. ``auto`` is counted as the window sampler it
    may choose (the most it can hold)."""
    sampler, window = args.sampler, min(args.window or 32, steps)
    if sampler == "auto" and args.max_batch:
        window = max(1, min(args.max_batch // args.num_samples, steps))
    if sampler == "serial":
        states, held = 4, "a few states per sample"
    elif sampler == "srds":
        blocks = args.blocks or min(steps, max(1, round((2 if pipelined else 1) *
                                                        math.sqrt(steps))))
        iters = min(args.max_iters or blocks, blocks)  # one iterate each, for convergence.png
        states = 4 * (blocks + 1) + iters + 1
        held = (f"per sample ~4 states per block boundary ({blocks} blocks) and one per "
                "iteration")
    else:
        states = steps + 1 + 6 * window
        held = (f"each sample's N + 1 = {steps + 1} trajectory states plus ~6 per step of "
                f"the {window}-step window")
    per_sample = math.prod(sample_shape) * torch.empty((), dtype=dtype).element_size()
    total = args.num_samples * per_sample * states
    if total <= MEMORY_NOTE_BYTES:
        return None
    shape = "x".join(map(str, sample_shape))
    return (f"pint-sample: {args.num_samples} samples of {shape} {args.dtype}: the {sampler} "
            f"sampler's states take ~{total / (1 << 30):.1f} GiB (a rough estimate: "
            f"{held}; the network's activations come on top); fewer "
            "--num-samples per run need less")


def _srds_report(out, steps: int, pipelined: bool, t0: float, units: str) -> dict[str, Any]:
    return dict(
        wall_s=time.perf_counter() - t0, blocks=out.num_blocks, tol=out.tol,
        pipelined=pipelined, iterations=out.iterations, converged=out.converged,
        history=out.history, model_calls=out.stats.model_calls,
        model_rows=out.stats.model_rows, depth=out.stats.depth,
        sequential_model_calls_ratio_vs_serial=steps / out.stats.depth,
        tol_note=f"tol is compared with the change of the final sample in one iteration "
                 f"(max-abs, {units}); the error against the serial sample is typically far "
                 "below it (--compare-serial measures it)",
        ratio_note="sequential_model_calls_ratio_vs_serial counts model calls on the critical "
                   "path, not time; --compare-serial measures wall_clock_ratio_vs_serial_measured",
    )


def _window_report(out, steps: int, t0: float) -> dict[str, Any]:
    return dict(wall_s=time.perf_counter() - t0, window=out.num_blocks, tol=out.tol,
                iterations=out.iterations, converged=out.converged, history=out.history,
                model_calls=out.stats.model_calls, model_rows=out.stats.model_rows,
                depth=out.stats.depth,
                sequential_model_calls_ratio_vs_serial=steps / max(1, out.stats.depth),
                tol_note="window samplers: per-step tolerance relative to the step's noise "
                         "scale (ParaDiGMS's rule)")


def _serial_comparison(serial_s: float, wall_s: float) -> dict[str, float]:
    return {"serial_wall_s": serial_s, "wall_clock_ratio_vs_serial_measured": serial_s / wall_s}


# ---- checks before anything loads -----------------------------------------------------------

def _check_device(device: str) -> str | None:
    """Why ``--device`` can't be used here, or ``None``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device: expected cpu, cuda, cuda:N, mps or xpu, got {device!r}"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            return f"--device {device}: CUDA is not available ({why}); use --device cpu"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return f"--device {device}: there are only {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})"
        return None
    if dev.type == "mps":
        return None if torch.backends.mps.is_available() else \
            f"--device {device}: MPS is not available on this machine; use --device cpu"
    if dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        return None if xpu is not None and xpu.is_available() else \
            f"--device {device}: XPU is not available on this machine; use --device cpu"
    return f"--device: expected cpu, cuda, cuda:N, mps or xpu, got {device!r}"


def _check_sampler_flags(args) -> str | None:
    """Flags the chosen sampler would ignore, and limits that don't depend on the model."""
    s = args.sampler
    if args.window is not None and s not in WINDOW_SAMPLERS:
        hint = "; it sizes the window from --max-batch" if s == "auto" else ""
        return (f"--window is for --sampler quasi_newton or picard, not --sampler {s}{hint}")
    if args.max_batch is not None and s != "auto":
        return f"--max-batch is for --sampler auto, not --sampler {s}"
    if args.blocks is not None and s != "srds":
        return f"--num-blocks (Parareal blocks) is for --sampler srds, not --sampler {s}"
    if args.pipelined is not None and s != "srds":
        flag = "--pipelined" if args.pipelined else "--no-pipelined"
        return f"{flag} is for --sampler srds, not --sampler {s}"
    if s == "serial":
        given = [f for f, v in (("--tol", args.tol), ("--max-iters", args.max_iters))
                 if v is not None]
        if given:
            return f"{', '.join(given)}: --sampler serial does not iterate; drop the flag"
    if args.max_iters == 0 and s in (*WINDOW_SAMPLERS, "auto"):
        return f"--max-iters must be >= 1 with --sampler {s}, got 0"
    if args.blocks is not None and args.steps is not None and args.blocks > args.steps:
        return (f"--num-blocks must be <= --steps, got --num-blocks {args.blocks} and "
                f"--steps {args.steps}")
    return None


def _pint_owned(rel: str) -> bool:
    """Whether ``rel`` (a path in --out, with ``/``) is a name pint-sample writes."""
    parts = rel.split("/")
    if parts[-1].startswith(TMP_PREFIX):
        return len(parts) == 1 or (len(parts) == 2 and parts[0] == IMAGES_DIR)
    if len(parts) == 1:
        return rel in OUTPUT_FILES
    return len(parts) == 2 and parts[0] == IMAGES_DIR and bool(IMAGE_NAME.fullmatch(parts[1]))


def _scan_out(out: Path) -> tuple[list[Path], list[str]]:
    """``(pint's files, foreign entries)`` in an existing output folder."""
    owned: list[Path] = []
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.name in OS_METADATA:
            continue
        if entry.name == IMAGES_DIR and entry.is_dir() and not entry.is_symlink():
            for sub in sorted(entry.iterdir()):
                rel = f"{IMAGES_DIR}/{sub.name}"
                if sub.name in OS_METADATA:
                    continue
                if _pint_owned(rel) and sub.is_file() and not sub.is_symlink():
                    owned.append(sub)
                else:
                    foreign.append(rel)
        elif _pint_owned(entry.name) and entry.is_file() and not entry.is_symlink():
            owned.append(entry)
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return owned, foreign


def _check_out(out: Path) -> str | None:
    """Why ``--out`` can't take this run's outputs, or ``None``; creates nothing."""
    try:
        if out.exists() and not out.is_dir():
            return f"--out {out} is an existing file; give a folder"
        if out.is_dir():
            _, foreign = _scan_out(out)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                                 if len(foreign) > 3 else "")
                return (f"--out {out} holds files pint-sample did not write ({shown}); give a "
                        "new or empty folder, or one a previous pint-sample run wrote")
            with tempfile.NamedTemporaryFile(dir=out, prefix=TMP_PREFIX + "probe-"):
                pass
            return None
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            return f"--out {out}: {parent} is a file, so the folder cannot be created"
        try:
            with tempfile.TemporaryDirectory(dir=parent, prefix=TMP_PREFIX + "probe-"):
                pass
        except OSError as err:
            return (f"--out {out} cannot be created: no new folder can be made in {parent} "
                    f"({err.strerror or err})")
    except OSError as err:
        return f"--out {out} is not writable: {err.strerror or err}"
    return None


def _is_text_to_image(model: str) -> bool:
    """Whether ``model`` is a local text-to-image pipeline folder (never a bundled name)."""
    from adapters.diffusion.pretrained import BUNDLED
    from adapters.text_to_image import TEXT_TO_IMAGE_PIPELINES

    if model in BUNDLED:
        return False
    index = Path(model).expanduser() / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") in TEXT_TO_IMAGE_PIPELINES
    except (OSError, ValueError, AttributeError):
        return False


def _pipeline_train_timesteps(model: str) -> int | None:
    cfg = Path(model).expanduser() / "scheduler" / "scheduler_config.json"
    try:
        v = json.loads(cfg.read_text()).get("num_train_timesteps", 1000)
    except (OSError, ValueError, AttributeError):
        return None  # load_text_to_image says what is wrong
    return v if isinstance(v, int) else None


def _check_steps(args, steps: int, train_timesteps: int | None) -> str | None:
    if train_timesteps is not None and steps > train_timesteps:
        return f"--steps must be <= {train_timesteps}, the model's training timesteps, got {steps}"
    if args.blocks is not None and args.blocks > steps:
        return f"--num-blocks must be <= --steps ({steps}), got --num-blocks {args.blocks}"
    return None


# ---- writing the outputs --------------------------------------------------------------------

@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the outputs are moved into place; raise it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


class _OutputWriter:
    """Stages a run's outputs under temporary names in ``out``, then moves them into place.

    ``path(name)`` gives the temporary path to write output ``name`` to; ``commit()`` removes
    the previous run's files that this run does not replace and ``os.replace``-s every staged
    file into place, ``report.json`` last; leaving the ``with`` block without a commit
    deletes the temporaries (and the folders it created).
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.token = secrets.token_hex(4)
        self.staged: dict[Path, Path] = {}
        self.created: list[Path] = []
        self.committed = False

    def _mkdir(self, d: Path) -> None:
        missing = [p for p in (d, *d.parents) if not p.exists()]
        d.mkdir(parents=True, exist_ok=True)
        self.created.extend(missing)  # innermost first

    def path(self, name: str) -> Path:
        final = self.out / name
        self._mkdir(final.parent)
        tmp = final.parent / f"{TMP_PREFIX}{self.token}-{final.name}"
        self.staged[final] = tmp
        return tmp

    def commit(self) -> None:
        report = self.out / "report.json"
        with _sigint_deferred():
            owned, _ = _scan_out(self.out)
            ours = set(self.staged.values())
            # no report while the folder is mixed, so a crash here can't pair old and new
            report.unlink(missing_ok=True)
            for f in owned:
                if f not in self.staged and f not in ours:
                    f.unlink(missing_ok=True)
            for final in sorted(self.staged, key=lambda f: f == report):
                os.replace(self.staged[final], final)
            images = self.out / IMAGES_DIR
            if images.is_dir() and not any(images.iterdir()):
                images.rmdir()
            self.committed = True

    def __enter__(self) -> _OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed:
            return
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        for d in self.created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty


def _write_outputs(args, report: dict[str, Any], grid, title: str, out, iterates,
                   ylabel: str, images: list | None = None,
                   latents: dict[str, torch.Tensor] | None = None) -> int:
    """Write samples.png, convergence.png (iterative samplers), images/ and latents (given),
    and report.json into ``args.out``: all or none of them, see :class:`_OutputWriter`.
    Returns the exit status. Under torchrun only rank 0 writes (the others return 0)."""
    if getattr(args, "rank", 0) != 0:
        return 0
    try:
        with _OutputWriter(args.out) as w:
            args.writer = w
            save_grid(grid, w.path("samples.png"), title)
            if out is not None:
                save_convergence(out.history, iterates, out.tol, w.path("convergence.png"),
                                 ylabel=ylabel)
            for k, img in enumerate(images or []):
                img.save(w.path(f"{IMAGES_DIR}/{k:03d}.png"))
            if latents is not None:
                from safetensors.torch import save_file

                save_file(latents, str(w.path("latents.safetensors")))
            w.path("report.json").write_text(json.dumps(report, indent=2))
            w.commit()
    except OSError as err:
        done = "" if w.committed else "; the previous outputs there were left as they were"
        return _error(f"cannot write the outputs to --out {args.out}: {err}{done}")
    summary = {k: report[k] for k in ("iterations", "depth",
                                      "sequential_model_calls_ratio_vs_serial",
                                      "wall_clock_ratio_vs_serial_measured", "wall_s",
                                      "max_abs_diff_vs_serial") if k in report}
    print(json.dumps(summary, indent=None))
    extra = [n for n, cond in (("convergence.png", out is not None),
                               (f"{IMAGES_DIR}/", bool(images)),
                               ("latents.safetensors", latents is not None)) if cond]
    line = f"wrote {args.out / 'samples.png'}, {', '.join([*extra, 'report.json'])}"
    if "wall_clock_ratio_vs_serial_measured" in report:
        line += (f"; wall clock vs serial (measured): "
                 f"{report['wall_clock_ratio_vs_serial_measured']:.2f}x")
    print(line)
    return 0


# ---- the command ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run ``pint-sample``; returns the exit status (2: bad input, 130: interrupted)."""
    args = build_parser().parse_args(argv)
    args.writer = None
    try:
        return _run(args)
    except KeyboardInterrupt:
        w = args.writer
        done = ("the outputs were written" if w is not None and w.committed
                else f"{args.out} was left as it was")
        print(f"pint-sample: interrupted; {done}", file=sys.stderr)
        return 130


def _distributed(args) -> str | None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (gloo for
    ``--device cpu``, NCCL with this rank's GPU ``cuda:LOCAL_RANK`` for ``--device cuda``)
    and set ``args.executor`` to a :class:`pint.DistributedExecutor`, which SRDS, the
    window samplers and ``auto`` split their model calls over; every rank samples, rank 0
    alone shows progress and writes the outputs. Returns why not, or ``None``."""
    args.executor, args.rank, args.world = None, 0, 1
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

    import pint

    dev = torch.device(args.device)
    if dev.type == "cuda":
        if dev.index is None:  # one GPU per rank
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK") or 0))
            args.device = str(dev)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        return f"--device {args.device}: under torchrun the ranks need cpu (gloo) or cuda (nccl)"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    args.executor = pint.DistributedExecutor()
    args.rank, args.world = dist.get_rank(), dist.get_world_size()
    return None


def _run(args) -> int:
    for err in (_check_device(args.device), _check_sampler_flags(args), _check_out(args.out)):
        if err:
            return _error(err)
    err = _distributed(args)
    if err:
        return _error(err)
    args.progress = args.rank == 0
    if args.prompt is not None or _is_text_to_image(args.model):
        return _main_text_to_image(args)
    given = [f for f, v in (("--negative-prompt", args.negative_prompt),
                            ("--guidance-scale", args.guidance_scale),
                            ("--true-cfg-scale", args.true_cfg_scale),
                            ("--height", args.height), ("--width", args.width),
                            ("--scheduler", args.scheduler)) if v is not None]
    if given:
        return _error(f"{', '.join(given)} need(s) --prompt and a text-to-image pipeline folder")
    from adapters.diffusion import pretrained

    try:
        info = pretrained.inspect_pretrained(args.model)
    except pretrained.PretrainedNotFoundError as err:
        return _error(str(err))
    steps = args.steps or 1000
    err = _check_steps(args, steps, info.num_train_timesteps)
    if err:
        return _error(err)

    from adapters.diffusion import serial_sample, srds_sample

    dtype = DTYPES[args.dtype]
    try:
        model, schedule = pretrained.load_pretrained(args.model, device=args.device, dtype=dtype)
    except pretrained.PretrainedNotFoundError as err:
        return _error(str(err))
    err = _check_steps(args, steps, getattr(schedule, "num_train_timesteps", None))
    if err:
        return _error(err)
    pipelined = True if args.pipelined is None else args.pipelined
    note = _memory_note(args, steps, tuple(model.sample_shape), dtype, pipelined)
    if note and args.rank == 0:
        print(note, file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.num_samples, *model.sample_shape, generator=g).to(args.device, dtype)
    plan = None
    if args.sampler == "auto":  # measure this device, print the candidates and the choice
        from adapters.diffusion.planner import plan_sampling

        with torch.inference_mode():
            plan = plan_sampling(model, schedule, x_T, steps, max_batch=args.max_batch,
                                 tol=args.tol if args.tol is not None else 1e-4,
                                 executor=args.executor)
        if args.rank == 0:
            print(plan.table(), file=sys.stderr)

    report: dict[str, Any] = {
        "model": str(args.model), "sampler": args.sampler, "steps": steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
        "world_size": args.world,
    }
    with torch.inference_mode():
        t0 = time.perf_counter()
        if args.sampler == "serial":
            sample = serial_sample(model, schedule, x_T, steps, progress=args.progress)
            report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
            out = None
        elif args.sampler != "srds":
            from adapters.diffusion import sample as sample_with

            kw: dict[str, Any] = {"tol": args.tol if args.tol is not None else 1e-4}
            iterative = True
            if plan is not None:
                kw["plan"] = plan
                iterative = plan.choice.sampler != "serial"
            else:
                kw["window"] = min(args.window or 32, steps)
            if args.max_iters is not None and iterative:  # auto may pick the serial sampler
                kw["max_iters"] = args.max_iters
            if args.executor is not None:
                kw["executor"] = args.executor
            out = sample_with(model, schedule, x_T, steps, sampler=args.sampler, progress=args.progress,
                              **kw)
            sample = out.sample
            if plan is not None and plan.choice.sampler == "serial":
                report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
                out = None
            elif plan is not None and plan.choice.sampler == "srds":
                report.update(_srds_report(out, steps, plan.choice.options["pipelined"], t0,
                                           "data in [-1, 1]"))
            else:
                report.update(_window_report(out, steps, t0))
            if plan is not None:
                report.update(plan=plan.as_dict(), predicted_s=plan.choice.predicted_s)
        else:
            out = srds_sample(model, schedule, x_T, steps, num_blocks=args.blocks,
                              tol=args.tol, max_iters=args.max_iters, pipelined=pipelined,
                              return_iterates=True, progress=args.progress,
                              executor=args.executor)
            sample = out.sample
            report.update(_srds_report(out, steps, pipelined, t0, "data in [-1, 1]"))
        if args.compare_serial:
            t1 = time.perf_counter()
            ref = serial_sample(model, schedule, x_T, steps, progress=args.progress)
            serial_s = time.perf_counter() - t1
            alone = serial_sample(model, schedule, x_T[:1], steps, progress=args.progress)
            if plan is not None:
                report.update(serial_predicted_s=plan.serial.predicted_s)
                print(f"auto: predicted {plan.choice.predicted_s:.2f} s ({plan.choice.label}), "
                      f"measured {report['wall_s']:.2f} s; serial predicted "
                      f"{plan.serial.predicted_s:.2f} s, measured {serial_s:.2f} s",
                      file=sys.stderr)
            report.update(_serial_comparison(serial_s, report["wall_s"]),
                          max_abs_diff_vs_serial=float((sample - ref).abs().max()),
                          serial_floor=float((ref[:1] - alone).abs().max()),
                          floor_note="serial_floor: the serial sampler's own change when the "
                                     "first sample is drawn alone instead of in the batch")

        iterates = None if out is None else out.iterates
        vae_dir = info.folder / "vae"  # the resolved folder: a bundled name never means ./name
        if vae_dir.is_dir():  # a latent model: show decoded images, sample in latent space
            from diffusers import AutoencoderKL

            from adapters.diffusers import decode_latents

            vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True,
                                                low_cpu_mem_usage=False).to(args.device)
            sample = decode_latents(vae, sample)
            if out is not None:
                iterates = torch.stack([decode_latents(vae, row[:8]) for row in out.iterates])
            report["decoded_with_vae"] = str(vae_dir)

    return _write_outputs(args, report, sample, f"{args.model}: {args.sampler}, N = {steps}",
                          out, iterates, "max |change| of the final sample")


def _pipeline_guidance(args, name: str) -> str | None:
    """Why the guidance flags don't fit the pipeline folder's model, or ``None`` (checked
    from its configs, before loading)."""
    from adapters.text_to_image import FAMILIES, check_guidance

    cfg_flag = "--" + FAMILIES[name].cfg_arg.replace("_", "-")
    embeds = False
    if name == "FluxPipeline":
        try:
            cfg = json.loads((Path(args.model).expanduser() / "transformer" / "config.json")
                             .read_text())
            embeds = bool(cfg.get("guidance_embeds", False))
        except (OSError, ValueError, AttributeError):
            pass  # load_text_to_image says what is wrong
    try:
        check_guidance(name, embeds, args.guidance_scale, args.true_cfg_scale,
                       args.negative_prompt is not None)
    except (TypeError, ValueError) as err:
        if args.negative_prompt is not None and "a negative prompt needs" in str(err):
            return f"--negative-prompt needs {cfg_flag} > 1 (classifier-free guidance)"
        msg = str(err)
        for a in ("guidance_scale", "true_cfg_scale", "negative_prompt"):
            msg = msg.replace(a, "--" + a.replace("_", "-"))
        return msg
    return None


def _main_text_to_image(args) -> int:
    """``pint-sample --model <pipeline folder> --prompt ...``: any sampler through the
    pipeline's components (StableDiffusion, SD3, Flux); writes samples.png,
    convergence.png (iterative samplers), report.json, images/ and latents.safetensors
    (final and initial latents, in the pipeline's layout: Flux's packed)."""
    from adapters.diffusion.pretrained import BUNDLED

    if not _is_text_to_image(args.model):
        what = ("a bundled unconditional model" if args.model in BUNDLED
                else "not a local folder" if not Path(args.model).expanduser().is_dir()
                else "a folder without a model_index.json naming a text-to-image pipeline")
        return _error(f"--prompt needs a text-to-image pipeline folder; --model {args.model} is "
                      f"{what}, not a text-to-image pipeline folder")
    if args.prompt is None:
        return _error(f"{args.model} is a text-to-image pipeline: give --prompt")
    from adapters.text_to_image import FAMILIES

    name = json.loads((Path(args.model).expanduser() / "model_index.json").read_text())[
        "_class_name"]
    err = _pipeline_guidance(args, name)
    if err:
        return _error(err)
    steps = args.steps or FAMILIES[name].steps
    err = _check_steps(args, steps, _pipeline_train_timesteps(args.model))
    if err:
        return _error(err)

    from adapters.text_to_image import latents_to_images, load_text_to_image, srds_pipeline

    dtype = DTYPES[args.dtype]
    try:
        pipe = load_text_to_image(args.model, device=args.device, dtype=dtype,
                                  scheduler=args.scheduler)
    except (ValueError, TypeError) as err:  # PretrainedNotFoundError, unmappable scheduler
        return _error(str(err))
    pipe.set_progress_bar_config(disable=True)
    err = _check_steps(args, steps, pipe.scheduler.config.num_train_timesteps)
    if err:
        return _error(err)
    pipelined = True if args.pipelined is None else args.pipelined
    common = dict(negative_prompt=args.negative_prompt, true_cfg_scale=args.true_cfg_scale,
                  height=args.height, width=args.width, output_type="latent")
    report: dict[str, Any] = {
        "model": str(args.model), "pipeline": type(pipe).__name__, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "scheduler": type(pipe.scheduler).__name__, "sampler": args.sampler, "steps": steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
        "world_size": args.world,
    }
    opts: dict[str, Any] = {}
    if args.sampler != "serial":
        opts = dict(max_iters=args.max_iters, tol=args.tol)
        if args.executor is not None:
            opts["executor"] = args.executor
        if args.sampler == "srds":
            opts.update(num_blocks=args.blocks, pipelined=pipelined, return_iterates=True)
        else:  # window samplers: ParaDiGMS's per-step rule, as for unconditional models
            opts["tol"] = 1e-4 if args.tol is None else args.tol
            if args.sampler == "auto":
                opts["max_batch"] = args.max_batch
            else:
                opts["window"] = min(args.window or 32, steps)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(args.seed)  # CPU: the same noise on every device
        t0 = time.perf_counter()
        try:
            res = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale,
                                sampler=args.sampler, num_images_per_prompt=args.num_samples,
                                generator=g, progress=args.progress, **opts, **common)
        except (ValueError, TypeError) as err:  # what only the loaded model can tell
            return _error(str(err))
        report.update(guidance_scale=res.guidance_scale, sampler_run=res.sampler)
        plan = getattr(res.sampling, "plan", None)
        if plan is not None and args.rank == 0:
            print(plan.table(), file=sys.stderr)
            report.update(plan=plan.as_dict(), predicted_s=plan.choice.predicted_s)
        out = None if res.sampler == "serial" else res.sampling
        if out is None:
            report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
        elif res.sampler == "srds":
            report.update(_srds_report(out, steps, pipelined, t0, "latents"))
        else:
            report.update(_window_report(out, steps, t0))
        report.update(latent_shape=list(res.latents.shape[1:]), model_rows=res.stats.model_rows)
        if args.compare_serial:
            x_T = res.initial_latents
            t1 = time.perf_counter()
            ref = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale, sampler="serial",
                                num_images_per_prompt=args.num_samples, latents=x_T,
                                progress=args.progress, **common)
            serial_s = time.perf_counter() - t1
            alone = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale,
                                  sampler="serial", latents=x_T[:1], progress=args.progress, **common)
            report.update(_serial_comparison(serial_s, report["wall_s"]),
                          max_abs_diff_vs_serial=float((res.latents - ref.latents).abs().max()),
                          serial_floor=float((ref.latents[:1] - alone.latents).abs().max()),
                          floor_note="in latent space; serial_floor: the serial sampler's own "
                                     "change when the first sample is drawn alone")
        # decode only what is shown: the final images, and 8 per iteration for the figure
        size = dict(height=res.height, width=res.width)
        images, nsfw = latents_to_images(pipe, res.latents, "np", **size)
        iterates = None if out is None or out.iterates is None else np.stack(
            [latents_to_images(pipe, row[:8], "np", **size)[0] for row in out.iterates])
    report.update(image_size=list(images.shape[1:3]), nsfw_content_detected=nsfw)
    return _write_outputs(
        args, report, images, f"{args.prompt[:60]!r}: {res.sampler}, N = {steps}", out,
        iterates, "max |change| of the final latents",
        images=pipe.image_processor.numpy_to_pil(images),
        latents={"latents": res.latents.contiguous().cpu(),
                 "initial_latents": res.initial_latents.contiguous().cpu()})

if __name__ == "__main__":
    sys.exit(main())
