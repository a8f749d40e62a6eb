"""``pint-sample``: sample a diffusion model with SRDS (or the serial sampler) and write a
sample grid, a convergence figure and a JSON report.

    pint-sample --model digits --out out/
    pint-sample --model path/to/stable-diffusion --prompt "a photo of a cat" --out out/

A local text-to-image pipeline folder (``model_index.json`` of a StableDiffusionPipeline)
is sampled through :func:`adapters.text_to_image.srds_pipeline` (prompt, guidance,
latents, VAE decode); it also writes every image and the latents.
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pint-sample",
        description="Sample a diffusion model with SRDS (Parareal) or the serial DDIM sampler.",
    )
    p.add_argument("--model", default="digits",
                   help="bundled model name (digits), a local diffusers UNet folder, or a local "
                        "text-to-image pipeline folder (with --prompt)")
    p.add_argument("--sampler", choices=["srds", "serial", "quasi_newton", "picard", "auto"],
                   default="srds",
                   help="srds (Parareal), serial, the sliding-window samplers quasi_newton / "
                        "picard, or auto (the widest quasi-Newton window --max-batch allows); "
                        "window samplers: unconditional models only")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="steps per call of the window samplers (default 32)")
    p.add_argument("--max-batch", type=_positive_int, default=None,
                   help="network rows per call for --sampler auto")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps N (default 1000; 50 for a text-to-image pipeline)")
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
    t2i = p.add_argument_group("text-to-image pipelines (StableDiffusion-class folders)")
    t2i.add_argument("--prompt", default=None, help="the text prompt (required for a pipeline)")
    t2i.add_argument("--negative-prompt", default=None,
                     help="what to steer away from (needs --guidance-scale > 1)")
    t2i.add_argument("--guidance-scale", type=_finite_float, default=None,
                     help="classifier-free guidance (default 7.5; <= 1: none)")
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


def save_convergence(history: list[float], iterates: torch.Tensor | np.ndarray | None,
                     tol: float, path: Path, show: int = 8,
                     ylabel: str = "max |change| of the final sample") -> None:
    """The change per iteration and the first ``show`` samples after every iteration:
    ``iterates`` ``[rows, n, C, H, W]`` in [-1, 1] or numpy ``[rows, n, H, W, C]`` in [0, 1]
    (``None``: the curve only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if iterates is None:
        iterates = np.zeros((0, 0, 1, 1, 1))
    rows = max(1, iterates.shape[0])
    show = min(show, iterates.shape[1])
    fig = plt.figure(figsize=(4 + show * 0.8, max(3.0, rows * 0.8)))
    gs = fig.add_gridspec(rows, show + 4)
    ax = fig.add_subplot(gs[:, :3])
    if history:
        ax.semilogy(range(1, len(history) + 1), history, "o-", label="change of the sample")
        ax.axhline(tol, color="gray", ls="--", label=f"tol = {tol:g}")
        ax.legend(fontsize=7)
    window = iterates.shape[0] == 0
    ax.set(xlabel="model call (window iteration)" if window else "Parareal iteration",
           ylabel="worst per-step change / noise scale" if window else ylabel,
           title="window sampler convergence" if window else "SRDS convergence")
    if isinstance(iterates, np.ndarray):
        imgs = iterates
    else:
        imgs = to_images(iterates.reshape(-1, *iterates.shape[2:]))
        imgs = imgs.reshape(rows, iterates.shape[1], *imgs.shape[1:])
    for r in range(iterates.shape[0]):
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


def _error(msg: str) -> int:
    print(f"pint-sample: error: {msg}", file=sys.stderr)
    return 2


def _progress_bar():
    """A tqdm bar and the SRDS callback that advances it."""
    from tqdm.auto import tqdm

    bar = tqdm(desc="SRDS", unit="iter", file=sys.stderr)

    def progress(info) -> None:
        if info.iteration > 0:
            bar.update(1)
            bar.set_postfix(change=f"{info.change:.2e}")

    return bar, progress


def _srds_report(out, steps: int, pipelined: bool, t0: float, units: str) -> dict[str, Any]:
    return dict(
        wall_s=time.perf_counter() - t0, blocks=out.num_blocks, tol=out.tol,
        pipelined=pipelined, iterations=out.iterations, converged=out.converged,
        history=out.history, model_calls=out.stats.model_calls,
        model_rows=out.stats.model_rows, depth=out.stats.depth,
        speedup_in_sequential_calls=steps / out.stats.depth,
        tol_note=f"tol is compared with the change of the final sample in one iteration "
                 f"(max-abs, {units}); the error against the serial sample is typically far "
                 "below it (--compare-serial measures it)",
    )


def _is_text_to_image(model: str) -> bool:
    from adapters.text_to_image import TEXT_TO_IMAGE_PIPELINES

    index = Path(model).expanduser() / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") in TEXT_TO_IMAGE_PIPELINES
    except (OSError, ValueError):
        return False


def _write_outputs(args, report: dict[str, Any], grid, title: str, out, iterates,
                   ylabel: str) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(grid, args.out / "samples.png", title)
    if out is not None:
        save_convergence(out.history, iterates, out.tol, args.out / "convergence.png",
                         ylabel=ylabel)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    summary = {k: report[k] for k in ("iterations", "depth", "speedup_in_sequential_calls",
                                      "wall_s", "max_abs_diff_vs_serial") if k in report}
    print(json.dumps(summary, indent=None))
    print(f"wrote {args.out / 'samples.png'}, "
          f"{'convergence.png, ' if out is not None else ''}report.json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is not None or _is_text_to_image(args.model):
        return _main_text_to_image(args)
    given = [f for f, v in (("--negative-prompt", args.negative_prompt),
                            ("--guidance-scale", args.guidance_scale),
                            ("--scheduler", args.scheduler)) if v is not None]
    if given:
        return _error(f"{', '.join(given)} need(s) --prompt and a text-to-image pipeline folder")
    from adapters.diffusion import serial_sample, srds_sample
    from adapters.diffusion.pretrained import PretrainedNotFoundError, load_pretrained

    dtype = DTYPES[args.dtype]
    try:
        model, schedule = load_pretrained(args.model, device=args.device, dtype=dtype)
    except PretrainedNotFoundError as err:
        return _error(str(err))
    steps = args.steps or 1000
    if steps > schedule.num_train_timesteps:
        return _error(f"--steps must be <= {schedule.num_train_timesteps}, the model's "
                      "training timesteps")
    if args.blocks is not None and args.blocks > steps:
        return _error("--blocks must be <= --steps")
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.num_samples, *model.sample_shape, generator=g).to(args.device, dtype)

    report: dict[str, Any] = {
        "model": str(args.model), "sampler": args.sampler, "steps": steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
    }
    with torch.inference_mode():
        t0 = time.perf_counter()
        if args.sampler == "serial":
            sample = serial_sample(model, schedule, x_T, steps)
            report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
            out = None
        elif args.sampler != "srds":
            from adapters.diffusion import sample as sample_with

            kw: dict[str, Any] = {"tol": args.tol if args.tol is not None else 1e-4}
            if args.sampler == "auto":
                kw["max_batch"] = args.max_batch
            else:
                kw["window"] = min(args.window or 32, steps)
            if args.max_iters is not None:
                kw["max_iters"] = args.max_iters
            out = sample_with(model, schedule, x_T, steps, sampler=args.sampler, **kw)
            sample = out.sample
            report.update(wall_s=time.perf_counter() - t0, window=out.num_blocks, tol=out.tol,
                          iterations=out.iterations, converged=out.converged,
                          history=out.history, model_calls=out.stats.model_calls,
                          model_rows=out.stats.model_rows, depth=out.stats.depth,
                          speedup_in_sequential_calls=steps / max(1, out.stats.depth),
                          tol_note="window samplers: per-step tolerance relative to the step's "
                                   "noise scale (ParaDiGMS's rule)")
        else:
            bar, progress = _progress_bar()
            out = srds_sample(model, schedule, x_T, steps, num_blocks=args.blocks,
                              tol=args.tol, max_iters=args.max_iters, pipelined=args.pipelined,
                              callback=progress, return_iterates=True)
            bar.close()
            sample = out.sample
            report.update(_srds_report(out, steps, args.pipelined, t0, "data in [-1, 1]"))
        if args.compare_serial:
            t1 = time.perf_counter()
            ref = serial_sample(model, schedule, x_T, steps)
            serial_s = time.perf_counter() - t1
            alone = serial_sample(model, schedule, x_T[:1], steps)
            report.update(serial_wall_s=serial_s, wall_clock_speedup=serial_s / report["wall_s"],
                          max_abs_diff_vs_serial=float((sample - ref).abs().max()),
                          serial_floor=float((ref[:1] - alone).abs().max()),
                          floor_note="serial_floor: the serial sampler's own change when the "
                                     "first sample is drawn alone instead of in the batch")

        iterates = None if out is None else out.iterates
        vae_dir = Path(str(args.model)) / "vae"
        if vae_dir.is_dir():  # a latent model: show decoded images, sample in latent space
            from diffusers import AutoencoderKL

            from adapters.diffusers import decode_latents

            vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).to(args.device)
            sample = decode_latents(vae, sample)
            if out is not None:
                iterates = torch.stack([decode_latents(vae, row[:8]) for row in out.iterates])
            report["decoded_with_vae"] = str(vae_dir)

    _write_outputs(args, report, sample, f"{args.model}: {args.sampler}, N = {steps}", out,
                   iterates, "max |change| of the final sample")
    return 0


def _main_text_to_image(args) -> int:
    """``pint-sample --model <pipeline folder> --prompt ...``: SRDS through the pipeline's
    components; writes samples.png, convergence.png, report.json, images/ and
    latents.safetensors (final and initial latents)."""
    from safetensors.torch import save_file

    from adapters.text_to_image import latents_to_images, load_text_to_image, srds_pipeline

    if args.prompt is None:
        return _error(f"{args.model} is a text-to-image pipeline: give --prompt")
    if args.sampler not in ("srds", "serial"):
        return _error(f"--sampler {args.sampler} is for unconditional models; a text-to-image "
                      "pipeline samples with srds or serial")
    guidance = 7.5 if args.guidance_scale is None else args.guidance_scale
    if args.negative_prompt is not None and guidance <= 1:
        return _error(f"--negative-prompt needs --guidance-scale > 1 (classifier-free guidance), "
                      f"got {guidance:g}")
    dtype = DTYPES[args.dtype]
    try:
        pipe = load_text_to_image(args.model, device=args.device, dtype=dtype,
                                  scheduler=args.scheduler)
    except (ValueError, TypeError) as err:  # PretrainedNotFoundError, unmappable scheduler
        return _error(str(err))
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or 50
    T = pipe.scheduler.config.num_train_timesteps
    if steps > T:
        return _error(f"--steps must be <= {T}, the model's training timesteps")
    if args.blocks is not None and args.blocks > steps:
        return _error("--blocks must be <= --steps")
    common = dict(negative_prompt=args.negative_prompt, output_type="latent")
    report: dict[str, Any] = {
        "model": str(args.model), "pipeline": type(pipe).__name__, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt, "guidance_scale": guidance,
        "scheduler": type(pipe.scheduler).__name__, "sampler": args.sampler, "steps": steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
    }
    with torch.inference_mode():
        g = torch.Generator().manual_seed(args.seed)  # CPU: the same noise on every device
        t0 = time.perf_counter()
        if args.sampler == "serial":
            res = srds_pipeline(pipe, args.prompt, steps, guidance, sampler="serial",
                                num_images_per_prompt=args.num_samples, generator=g, **common)
            report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
            out = None
        else:
            bar, progress = _progress_bar()
            res = srds_pipeline(pipe, args.prompt, steps, guidance, args.tol,
                                num_images_per_prompt=args.num_samples, generator=g,
                                num_blocks=args.blocks, max_iters=args.max_iters,
                                pipelined=args.pipelined, callback=progress,
                                return_iterates=True, **common)
            bar.close()
            out = res.sampling
            report.update(_srds_report(out, steps, args.pipelined, t0, "latents"))
        report.update(latent_shape=list(res.latents.shape[1:]), model_rows=res.stats.model_rows)
        if args.compare_serial:
            x_T = res.initial_latents
            t1 = time.perf_counter()
            ref = srds_pipeline(pipe, args.prompt, steps, guidance, sampler="serial",
                                num_images_per_prompt=args.num_samples, latents=x_T, **common)
            serial_s = time.perf_counter() - t1
            alone = srds_pipeline(pipe, args.prompt, steps, guidance, sampler="serial",
                                  latents=x_T[:1], **common)
            report.update(serial_wall_s=serial_s, wall_clock_speedup=serial_s / report["wall_s"],
                          max_abs_diff_vs_serial=float((res.latents - ref.latents).abs().max()),
                          serial_floor=float((ref.latents[:1] - alone.latents).abs().max()),
                          floor_note="in latent space; serial_floor: the serial sampler's own "
                                     "change when the first sample is drawn alone")
        # decode only what is shown: the final images, and 8 per iteration for the figure
        images, nsfw = latents_to_images(pipe, res.latents, "np")
        iterates = None if out is None else np.stack(
            [latents_to_images(pipe, row[:8], "np")[0] for row in out.iterates])
    report.update(image_size=list(images.shape[1:3]), nsfw_content_detected=nsfw)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "images").mkdir(exist_ok=True)
    for k, img in enumerate(pipe.image_processor.numpy_to_pil(images)):
        img.save(args.out / "images" / f"{k:03d}.png")
    save_file({"latents": res.latents.contiguous().cpu(),
               "initial_latents": res.initial_latents.contiguous().cpu()},
              str(args.out / "latents.safetensors"))
    _write_outputs(args, report, images, f"{args.prompt[:60]!r}: {args.sampler}, N = {steps}",
                   out, iterates, "max |change| of the final latents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
