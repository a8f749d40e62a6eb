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

import json
import os  # noqa: F401 (the tests reach os.replace through this module)
import sys

from .cli_args import DTYPES, EPILOG, WINDOW_SAMPLERS, build_parser, error, memory_note
from .cli_figures import GRID_MIN_PX, save_convergence, save_grid, to_images
from .cli_output import IMAGES_DIR, OUTPUT_FILES, Outputs, OutputWriter
from .cli_run import run

__all__ = ["DTYPES", "EPILOG", "GRID_MIN_PX", "OUTPUT_FILES", "WINDOW_SAMPLERS", "build_parser",
           "main", "save_convergence", "save_grid", "to_images"]

# the parts of pint-sample, by what they do: cli_args (the parser and the checks before
# loading), cli_run (unconditional models, torchrun), cli_t2i (text-to-image pipelines),
# cli_output (the report's entries, --out staged and committed), cli_figures (the figures)
_memory_note = memory_note  # its name before the split


def main(argv: list[str] | None = None) -> int:
    """Run ``pint-sample``; returns the exit status (2: bad input, 130: interrupted)."""
    args = build_parser().parse_args(argv)
    args.writer = None
    try:
        res = run(args)
        return res if isinstance(res, int) else _write_outputs(args, res)
    except KeyboardInterrupt:
        w = args.writer
        done = ("the outputs were written" if w is not None and w.committed
                else f"{args.out} was left as it was")
        print(f"pint-sample: interrupted; {done}", file=sys.stderr)
        return 130


def _write_outputs(args, res: Outputs) -> int:
    """Write samples.png, convergence.png (iterative samplers), images/, a video family's
    animated video_NNN.gif and latents (given),
    and report.json into ``args.out``: all or none of them, see :class:`OutputWriter`.
    Returns the exit status. Under torchrun only rank 0 writes (the others return 0)."""
    report, out, images, latents = res.report, res.out, res.images, res.latents
    if getattr(args, "rank", 0) != 0:
        return 0
    try:
        with OutputWriter(args.out) as w:
            args.writer = w
            save_grid(res.grid, w.path("samples.png"), res.title)
            if out is not None:
                save_convergence(out.history, res.iterates, out.tol, w.path("convergence.png"),
                                 ylabel=res.ylabel, converged=out.converged,
                                 accepted=report.get("accepted_steps"),
                                 num_steps=report.get("steps"), window="blocks" not in report)
            for k, img in enumerate(images or []):
                img.save(w.path(f"{IMAGES_DIR}/{k:03d}.png"))
            for k, frames in enumerate(res.videos or []):  # Pillow's animated GIF writer
                frames[0].save(w.path(f"video_{k:03d}.gif"), save_all=True,
                               append_images=frames[1:], duration=125, loop=0)
            if latents is not None:
                from safetensors.torch import save_file

                save_file(latents, str(w.path("latents.safetensors")))
            w.path("report.json").write_text(json.dumps(report, indent=2))
            w.commit()
    except OSError as err:
        done = "" if w.committed else "; the previous outputs there were left as they were"
        return error(f"cannot write the outputs to --out {args.out}: {err}{done}")
    summary = {k: report[k] for k in ("iterations", "depth",
                                      "sequential_model_calls_vs_serial",
                                      "wall_clock_vs_serial", "wall_s",
                                      "max_abs_diff_vs_serial") if k in report}
    print(json.dumps(summary, indent=None))
    extra = [n for n, cond in (("convergence.png", out is not None),
                               (f"{IMAGES_DIR}/", bool(images)),
                               ("latents.safetensors", latents is not None),
                               ("video_NNN.gif", bool(res.videos))) if cond]
    line = f"wrote {args.out / 'samples.png'}, {', '.join([*extra, 'report.json'])}"
    if "wall_clock_vs_serial" in report:
        line += f"; wall clock (measured): {report['wall_clock_vs_serial']}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
