"""``pint-sample --prompt ...`` on a local pipeline folder of any family pint samples
(StableDiffusion, SDXL, SD3, Flux, img2img and ControlNet variants with ``--image``, ...)
through :func:`adapters.text_to_image.srds_pipeline`."""


from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli_args import (
    DTYPES,
    check_steps,
    error,
    is_text_to_image,
    pipeline_guidance,
    pipeline_train_timesteps,
    window_tol,
)
from .cli_output import Outputs, serial_comparison, srds_report, window_report


def run_text_to_image(args) -> int:
    """``pint-sample --model <pipeline folder> --prompt ...``: any sampler through the
    pipeline's components (every registered family); writes samples.png,
    convergence.png (iterative samplers), report.json, images/ and latents.safetensors
    (final and initial latents, in the pipeline's layout: Flux's packed)."""
    checked = _checked_folder(args)
    if isinstance(checked, int):
        return checked
    (steps,) = checked

    from adapters.text_to_image import latents_to_images, load_text_to_image, srds_pipeline

    dtype = DTYPES[args.dtype]
    try:
        pipe = load_text_to_image(args.model, device=args.device, dtype=dtype,
                                  scheduler=args.scheduler)
    except (ValueError, TypeError) as err:  # PretrainedNotFoundError, unmappable scheduler
        return error(str(err))
    pipe.set_progress_bar_config(disable=True)
    err = check_steps(args, steps, pipe.scheduler.config.num_train_timesteps)
    if err:
        return error(err)
    pipelined = True if args.pipelined is None else args.pipelined
    common = dict(negative_prompt=args.negative_prompt, true_cfg_scale=args.true_cfg_scale,
                  height=args.height, width=args.width, output_type="latent")
    if args.image is not None:
        try:
            common["image"] = _load_image(args.image)
        except OSError as err:
            return error(f"--image {args.image}: cannot read it as an image ({err})")
    report = _report_header(args, pipe, steps)
    opts = _sampler_options(args, steps, pipelined)
    with torch.inference_mode():
        g = torch.Generator().manual_seed(args.seed)  # CPU: the same noise on every device
        t0 = time.perf_counter()
        try:
            res = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale,
                                sampler=args.sampler, num_images_per_prompt=args.num_samples,
                                generator=g, progress=args.progress, **opts, **common)
        except (ValueError, TypeError) as err:  # what only the loaded model can tell
            return error(str(err))
        out = _sampling_report(args, res, steps, pipelined, t0, report)
        if args.compare_serial:
            _compare_serial(args, pipe, steps, res, common, report)
        # decode only what is shown: the final images, and 8 per iteration for the figure
        size = dict(height=res.height, width=res.width)
        images, nsfw = latents_to_images(pipe, res.latents, "np", **size)
        video = images.ndim == 5  # [n, frames, H, W, 3]
        iterates = None if out is None or out.iterates is None or video else np.stack(
            [latents_to_images(pipe, row[:8], "np", **size)[0] for row in out.iterates])
    grid, frames = _frames(images, report) if video else (images, images)
    report.update(image_size=list(grid.shape[1:3]), nsfw_content_detected=nsfw)
    from diffusers.image_processor import VaeImageProcessor

    videos = [VaeImageProcessor.numpy_to_pil(v) for v in images] if video else None
    return Outputs(
        report, grid, f"{args.prompt[:60]!r}: {res.sampler}, N = {steps}", out,
        iterates, "max |change| of the final latents", videos=videos,
        images=VaeImageProcessor.numpy_to_pil(frames),
        latents={"latents": res.latents.contiguous().cpu(),
                 "initial_latents": res.initial_latents.contiguous().cpu()})


def _checked_folder(args) -> tuple[int] | int:
    """``(steps,)`` to run, or ``error(...)``'s exit status: the folder, the prompt, the
    guidance, ``--image`` and the steps checked before anything loads."""
    from adapters.diffusion.pretrained import BUNDLED

    if not is_text_to_image(args.model):
        what = ("a bundled unconditional model" if args.model in BUNDLED
                else "not a local folder" if not Path(args.model).expanduser().is_dir()
                else "a folder without a model_index.json naming a text-to-image pipeline")
        return error(f"--prompt needs a text-to-image pipeline folder; --model {args.model} is "
                      f"{what}, not a text-to-image pipeline folder")
    if args.prompt is None:
        return error(f"{args.model} is a text-to-image pipeline: give --prompt")
    from adapters.text_to_image import FAMILIES

    name = json.loads((Path(args.model).expanduser() / "model_index.json").read_text())[
        "_class_name"]
    err = pipeline_guidance(args, name) or _image_error(args, name, FAMILIES[name].inputs)
    if err:
        return error(err)
    steps = args.steps or FAMILIES[name].steps
    err = check_steps(args, steps, pipeline_train_timesteps(args.model))
    if err:
        return error(err)
    return (steps,)


def _report_header(args, pipe, steps: int) -> dict[str, Any]:
    """The run's settings, as report.json opens."""
    return {
        "model": str(args.model), "pipeline": type(pipe).__name__, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "scheduler": type(pipe.scheduler).__name__, "sampler": args.sampler, "steps": steps,
        "image": args.image,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
        "world_size": args.world,
    }


def _sampling_report(args, res, steps: int, pipelined: bool, t0: float,
                     report: dict[str, Any]):
    """The sampler's entries of the report (and auto's plan on stderr); returns the
    sampler's output (``None`` for the serial sampler: no convergence figure)."""
    report.update(guidance_scale=res.guidance_scale, sampler_run=res.sampler)
    plan = getattr(res.sampling, "plan", None)
    if plan is not None and args.rank == 0:
        print(plan.table(), file=sys.stderr)
        report.update(plan=plan.as_dict(), predicted_s=plan.choice.predicted_s)
    out = None if res.sampler == "serial" else res.sampling
    if out is None:
        report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
    elif res.sampler == "srds":
        report.update(srds_report(out, steps, pipelined, t0, "latents"))
    else:
        report.update(window_report(out, steps, t0))
    report.update(latent_shape=list(res.latents.shape[1:]), model_rows=res.stats.model_rows)
    return out


def _frames(video: np.ndarray, report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A video family's ``[n, F, H, W, 3]``: samples.png shows each sample's middle frame;
    images/ holds every frame, sample after sample (``images/NNN.png``, ``N = s F + f``)."""
    n, F = video.shape[:2]
    report.update(num_frames=F, frames_layout="images/NNN.png: sample * num_frames + frame",
                  videos="video_NNN.gif: sample NNN's frames, animated (8 frames per second)")
    return video[:, F // 2], video.reshape(n * F, *video.shape[2:])


def _image_error(args, name: str, inputs: tuple[str, ...]) -> str | None:
    """Why ``--image`` does not fit the pipeline class (before loading), or ``None``."""
    if "mask_image" in inputs:
        return (f"{args.model} holds a {name}: inpainting needs a mask image, which "
                "pint-sample does not take; use srds_pipeline(pipe, ..., image=, mask_image=)")
    if "image" in inputs and args.image is None:
        return f"{args.model} holds a {name}: give --image (the image to start from)"
    if "image" not in inputs and args.image is not None:
        return f"--image: a {name} takes no input image (img2img and ControlNet folders do)"
    if args.image is not None and not Path(args.image).expanduser().is_file():
        return f"--image {args.image}: no such file"
    return None


def _load_image(path: str):
    """The image file as an RGB PIL image."""
    from PIL import Image

    with Image.open(Path(path).expanduser()) as im:
        return im.convert("RGB")


def _sampler_options(args, steps: int, pipelined: bool) -> dict[str, Any]:
    """``srds_pipeline``'s options for ``--sampler`` from the flags."""
    opts: dict[str, Any] = {}
    if args.sampler != "serial":
        opts = dict(max_iters=args.max_iters, tol=args.tol)
        if args.executor is not None:
            opts["executor"] = args.executor
        if args.sampler == "srds":
            opts.update(num_blocks=args.blocks, pipelined=pipelined, return_iterates=True)
        else:  # window samplers: ParaDiGMS's per-step rule, as for unconditional models
            opts["tol"] = window_tol(args)
            if args.sampler == "auto":
                opts["max_batch"] = args.max_batch
            elif args.window is not None:  # default: min(32, the steps that run)
                opts["window"] = min(args.window, steps)
    return opts


def _compare_serial(args, pipe, steps: int, res, common: dict[str, Any],
                    report: dict[str, Any]) -> None:
    """``--compare-serial``: the serial sampler from the same initial latents, in ``report``."""
    from adapters.text_to_image import srds_pipeline

    x_T = res.initial_latents
    t1 = time.perf_counter()
    if "image" in common:  # img2img draws from the generator: the same seed, the same draws
        start = dict(generator=torch.Generator().manual_seed(args.seed))
    else:
        start = dict(latents=x_T)
    ref = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale, sampler="serial",
                        num_images_per_prompt=args.num_samples, progress=args.progress,
                        **start, **common)
    serial_s = time.perf_counter() - t1
    report.update(serial_comparison(serial_s, report["wall_s"]),
                  max_abs_diff_vs_serial=float((res.latents - ref.latents).abs().max()))
    if "image" in common:  # a sample drawn alone draws other noise: no floor to measure
        return
    alone = srds_pipeline(pipe, args.prompt, steps, args.guidance_scale, sampler="serial",
                          latents=x_T[:1], progress=args.progress, **common)
    report.update(serial_floor=float((ref.latents[:1] - alone.latents).abs().max()),
                  floor_note="in latent space; serial_floor: the serial sampler's own "
                             "change when the first sample is drawn alone")
