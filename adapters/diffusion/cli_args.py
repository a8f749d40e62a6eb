"""``pint-sample``'s arguments: the parser, and the checks every argument, the device and
the model folder pass before a model is loaded (each returns why not, or ``None``)."""


from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .cli_output import OS_METADATA

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


WINDOW_SAMPLERS = ("quasi_newton", "picard", "taa")
SAMPLERS = ("srds", "serial", "quasi_newton", "picard", "taa", "auto")
# --scheduler: the API's solver names (``sampler=`` of every sampler), by model family
VP_SCHEDULERS = ("ddim", "ddpm")
SIGMA_SCHEDULERS = ("euler", "euler_ancestral", "dpmpp_2m", "unipc")
SCHEDULERS = (*VP_SCHEDULERS, *SIGMA_SCHEDULERS)

DESCRIPTION = """Sample a diffusion model parallel in time; write a sample grid, a convergence figure and
report.json (every field explained in the docs' CLI page).

samplers (--sampler):
  srds          default. SRDS: Parareal over blocks of the solver's steps (a 1-step coarse
                jump per block, batched fine solves); the serial sample after at most
                --num-blocks iterations, usually 3-5. --num-blocks, --pipelined, --tol
  serial        the solver alone, one model call per step: the reference
  picard        ParaDiGMS's sliding window: one batched call evaluates --window steps,
                Picard (fixed-point) update; per-step --tol relative to the noise scale
  quasi_newton  the same window with a secant estimate of each step's gain (fewer calls)
  taa           ParaTAA: the window with triangular Anderson acceleration (ParaTAA itself
                uses --window N: all steps in every call); one-step solvers only
  auto          times the model on this device, prices the candidates (serial, srds,
                picard, quasi_newton, taa), prints the table and runs the fastest;
                serial when no parallel sampler beats it. --max-batch caps rows per call

schedulers (--scheduler; default: the model's own, from its scheduler config):
  ddim, ddpm    VP (DDPM-trained, e.g. digits) models: DDIM (eta = 0) or DDPM steps on the
                model's betas; for a StableDiffusion folder they replace its scheduler
                (needed for PNDM)
  euler, euler_ancestral, dpmpp_2m, unipc
                Euler, Euler ancestral, DPM-Solver++ 2M, UniPC: flow-matching models
                (digits-flow) and VP unconditional models (on the model's betas, as
                diffusers' scheduler of that name builds them from its config). SD3 and
                Flux folders sample with their own flow-matching Euler scheduler.
  Stochastic solvers (ddpm, euler_ancestral) draw their noise from --seed."""
# what pint-sample writes into --out; nothing else there is ever deleted
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``pint-sample: error: ...`` and exit status 2; the
    usage is printed by ``--help`` only."""

    def error(self, message: str) -> None:  # type: ignore[override]
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (pint-sample --help lists the arguments)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pint-sample", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="digits",
                   help="a bundled model: digits (DDPM-trained UNet, 8x8 digits, DDIM) or "
                        "digits-flow (rectified flow, flow-matching Euler); always the "
                        "bundled model, even where a folder of that name exists (give "
                        "./digits for the folder); or a local diffusers UNet folder, or a "
                        "local text-to-image pipeline folder (with --prompt). Default digits")
    p.add_argument("--sampler", choices=SAMPLERS, default="srds", metavar="SAMPLER",
                   help="srds (default), serial, picard, quasi_newton, taa or auto (see "
                        "above)")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="steps per call of --sampler picard / quasi_newton / taa (default 32)")
    p.add_argument("--max-batch", type=_positive_int, default=None,
                   help="network rows one call may hold (memory), --sampler auto only")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps N (default 1000; for a pipeline folder its own, e.g. "
                        "50 for SD/SDXL, 28 for SD3 and Flux)")
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
                        "step; in bfloat16/float16 the network's own precision, see "
                        "report.json's precision); not for --sampler serial")
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
    t2i = p.add_argument_group("pipeline folders (SD, SDXL, SD3, Flux, Qwen-Image, Wan, ...: "
                               "docs/pipelines.md)")
    t2i.add_argument("--prompt", default=None, help="the text prompt (required for a pipeline)")
    t2i.add_argument("--negative-prompt", default=None,
                     help="what to steer away from (needs --guidance-scale > 1; Flux: "
                          "--true-cfg-scale > 1)")
    t2i.add_argument("--guidance-scale", type=_finite_float, default=None,
                     help="SD/SD3: classifier-free guidance (default 7.5 / 7.0; <= 1: none); "
                          "Flux: the embedded guidance of a guidance-distilled transformer "
                          "(default 3.5)")
    t2i.add_argument("--true-cfg-scale", type=_finite_float, default=None,
                     help="Flux, Flux Kontext, Qwen-Image: classifier-free guidance with "
                          "--negative-prompt")
    t2i.add_argument("--height", type=_positive_int, default=None,
                     help="image height in pixels (default: the pipeline's)")
    t2i.add_argument("--width", type=_positive_int, default=None,
                     help="image width in pixels (default: the pipeline's)")
    t2i.add_argument("--image", default=None, help="an image file for img2img and ControlNet "
                     "pipeline folders (the image to start from / the control image)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, metavar="SCHEDULER",
                   help="the solver: ddim, ddpm, euler, euler_ancestral, dpmpp_2m or unipc "
                        "(see above for which model takes which; default the model's own)")
    return p



def error(msg: str) -> int:
    """Print ``msg`` as one ``pint-sample: error:`` line; the exit status 2."""
    line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    print(f"pint-sample: error: {line}", file=sys.stderr)
    return 2


#: sampler state memory (estimated) above which the CLI says so before it starts
MEMORY_NOTE_BYTES = 1 << 30


def memory_note(args, steps: int, sample_shape: tuple[int, ...], dtype: torch.dtype,
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



def check_device(device: str) -> str | None:
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


def check_sampler_flags(args) -> str | None:
    """Flags the chosen sampler would ignore, and limits that don't depend on the model."""
    s = args.sampler
    if args.window is not None and s not in WINDOW_SAMPLERS:
        hint = "; it sizes the window from --max-batch" if s == "auto" else ""
        return (f"--window is for --sampler picard, quasi_newton or taa, not --sampler {s}{hint}")
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
    if s == "taa" and args.scheduler in ("dpmpp_2m", "unipc"):
        return (f"--sampler taa needs a one-step solver (ddim, ddpm, euler, euler_ancestral), "
                f"not --scheduler {args.scheduler}; or use --sampler quasi_newton")
    if args.max_iters == 0 and s in (*WINDOW_SAMPLERS, "auto"):
        return f"--max-iters must be >= 1 with --sampler {s}, got 0"
    if args.blocks is not None and args.steps is not None and args.blocks > args.steps:
        return (f"--num-blocks must be <= --steps, got --num-blocks {args.blocks} and "
                f"--steps {args.steps}")
    return None



def is_text_to_image(model: str) -> bool:
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


def pipeline_train_timesteps(model: str) -> int | None:
    cfg = Path(model).expanduser() / "scheduler" / "scheduler_config.json"
    try:
        v = json.loads(cfg.read_text()).get("num_train_timesteps", 1000)
    except (OSError, ValueError, AttributeError):
        return None  # load_text_to_image says what is wrong
    return v if isinstance(v, int) else None


def check_steps(args, steps: int, train_timesteps: int | None) -> str | None:
    if train_timesteps is not None and steps > train_timesteps:
        return f"--steps must be <= {train_timesteps}, the model's training timesteps, got {steps}"
    if args.blocks is not None and args.blocks > steps:
        return f"--num-blocks must be <= --steps ({steps}), got --num-blocks {args.blocks}"
    return None



def pipeline_guidance(args, name: str) -> str | None:
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


def window_tol(args) -> float | None:
    """The window samplers' (and the planner's) ``tol``: ``--tol``, else 1e-4 per step in
    float32/float64 and, for a half precision ``--dtype``, ``None``: the samplers' default
    for the network's precision (:data:`adapters.diffusion.precision.WINDOW_TOL`)."""
    if args.tol is not None:
        return args.tol
    return 1e-4 if args.dtype in ("float32", "float64") else None
