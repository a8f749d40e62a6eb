"""``pint-sample``: sample a diffusion model with SRDS (or the serial sampler) and write a
sample grid, a convergence figure and a JSON report.

    pint-sample --model digits --out out/
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pint-sample",
        description="Sample a diffusion model with SRDS (Parareal) or the serial DDIM sampler.",
    )
    p.add_argument("--model", default="digits",
                   help="bundled model name (digits) or a local diffusers folder")
    p.add_argument("--sampler", choices=["srds", "serial"], default="srds")
    p.add_argument("--steps", type=_positive_int, default=1000, help="sampler steps N")
    p.add_argument("--blocks", type=_positive_int, default=None,
                   help="Parareal blocks (default round(2 sqrt(N)) pipelined, round(sqrt(N)) "
                        "for the sweep)")
    p.add_argument("--tol", type=_positive_float, default=None,
                   help="stop when the final sample moves less than this in one iteration "
                        "(default 2e-3 in float32, 1e-6 in float64)")
    p.add_argument("--max-iters", type=_nonneg_int, default=None)
    p.add_argument("--pipelined", action=argparse.BooleanOptionalAction, default=True,
                   help="wavefront schedule (default on)")
    p.add_argument("--num-samples", type=_positive_int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--compare-serial", action="store_true",
                   help="also run the serial sampler: wall-clock ratio, max difference, and "
                        "the serial sampler's own round-off floor")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def to_images(x: torch.Tensor) -> torch.Tensor:
    """``[n, C, H, W]`` in [-1, 1] -> float images in [0, 1], numpy ``[n, H, W, C]``."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def _show(ax, img) -> None:
    """Draw one ``[H, W, C]`` image in [0, 1] (grey when ``C == 1``), pixels unsmoothed."""
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")


def save_grid(x: torch.Tensor, path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = to_images(x)
    n = imgs.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.0 + (0.4 if title else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            _show(ax, imgs[k])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_convergence(history: list[float], iterates: torch.Tensor, tol: float, path: Path,
                     show: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = iterates.shape[0]
    show = min(show, iterates.shape[1])
    fig = plt.figure(figsize=(4 + show * 0.8, max(3.0, rows * 0.8)))
    gs = fig.add_gridspec(rows, show + 4)
    ax = fig.add_subplot(gs[:, :3])
    if history:
        ax.semilogy(range(1, len(history) + 1), history, "o-", label="change of the sample")
        ax.axhline(tol, color="gray", ls="--", label=f"tol = {tol:g}")
        ax.legend(fontsize=7)
    ax.set(xlabel="Parareal iteration", ylabel="max |change| of the final sample",
           title="SRDS convergence")
    imgs = to_images(iterates.reshape(-1, *iterates.shape[2:]))
    imgs = imgs.reshape(rows, iterates.shape[1], *imgs.shape[1:])
    for r in range(rows):
        for c in range(show):
            a = fig.add_subplot(gs[r, 4 + c])
            _show(a, imgs[r, c])
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel("coarse" if r == 0 else f"iter {r}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from adapters.diffusion import serial_sample, srds_sample
    from adapters.diffusion.pretrained import PretrainedNotFoundError, load_pretrained

    dtype = DTYPES[args.dtype]
    try:
        model, schedule = load_pretrained(args.model, device=args.device, dtype=dtype)
    except PretrainedNotFoundError as err:
        print(f"pint-sample: error: {err}", file=sys.stderr)
        return 2
    if args.steps > schedule.num_train_timesteps:
        print(f"pint-sample: error: --steps must be <= {schedule.num_train_timesteps}, the "
              "model's training timesteps", file=sys.stderr)
        return 2
    if args.blocks is not None and args.blocks > args.steps:
        print("pint-sample: error: --blocks must be <= --steps", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.num_samples, *model.sample_shape, generator=g).to(args.device, dtype)

    report: dict[str, Any] = {
        "model": str(args.model), "sampler": args.sampler, "steps": args.steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
    }
    with torch.inference_mode():
        t0 = time.perf_counter()
        if args.sampler == "serial":
            sample = serial_sample(model, schedule, x_T, args.steps)
            report.update(wall_s=time.perf_counter() - t0, model_calls=args.steps,
                          depth=args.steps)
            out = None
        else:
            bar = tqdm(desc="SRDS", unit="iter", file=sys.stderr)

            def progress(info) -> None:
                if info.iteration > 0:
                    bar.update(1)
                    bar.set_postfix(change=f"{info.change:.2e}")

            out = srds_sample(model, schedule, x_T, args.steps, num_blocks=args.blocks,
                              tol=args.tol, max_iters=args.max_iters, pipelined=args.pipelined,
                              callback=progress, return_iterates=True)
            bar.close()
            sample = out.sample
            report.update(
                wall_s=time.perf_counter() - t0, blocks=out.num_blocks, tol=out.tol,
                pipelined=args.pipelined, iterations=out.iterations, converged=out.converged,
                history=out.history, model_calls=out.stats.model_calls,
                model_rows=out.stats.model_rows, depth=out.stats.depth,
                speedup_in_sequential_calls=args.steps / out.stats.depth,
                tol_note="tol is compared with the change of the final sample in one "
                         "iteration (max-abs, data in [-1, 1]); the error against the serial "
                         "sample is typically far below it (--compare-serial measures it)",
            )
        if args.compare_serial:
            t1 = time.perf_counter()
            ref = serial_sample(model, schedule, x_T, args.steps)
            serial_s = time.perf_counter() - t1
            alone = serial_sample(model, schedule, x_T[:1], args.steps)
            report.update(serial_wall_s=serial_s, wall_clock_speedup=serial_s / report["wall_s"],
                          max_abs_diff_vs_serial=float((sample - ref).abs().max()),
                          serial_floor=float((ref[:1] - alone).abs().max()),
                          floor_note="serial_floor: the serial sampler's own change when the "
                                     "first sample is drawn alone instead of in the batch")

        vae_dir = Path(str(args.model)) / "vae"
        if vae_dir.is_dir():  # a latent model: show decoded images, sample in latent space
            from diffusers import AutoencoderKL

            from adapters.diffusers import decode_latents

            vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).to(args.device)
            sample = decode_latents(vae, sample)
            if out is not None:
                shown = out.iterates[:, :8]
                dec = decode_latents(vae, shown.reshape(-1, *shown.shape[2:]))
                out.iterates = dec.reshape(*shown.shape[:2], *dec.shape[1:])
            report["decoded_with_vae"] = str(vae_dir)

    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(sample, args.out / "samples.png",
              f"{args.model}: {args.sampler}, N = {args.steps}")
    if out is not None:
        save_convergence(out.history, out.iterates, out.tol, args.out / "convergence.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    summary = {k: report[k] for k in ("iterations", "depth", "speedup_in_sequential_calls",
                                      "wall_s", "max_abs_diff_vs_serial") if k in report}
    print(json.dumps(summary, indent=None))
    print(f"wrote {args.out / 'samples.png'}, "
          f"{'convergence.png, ' if out is not None else ''}report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
