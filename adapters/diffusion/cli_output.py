"""``pint-sample``'s outputs: the run's report entries, and the ``--out`` folder, checked before
the run and written all or nothing at its end (:class:`OutputWriter`)."""


from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# what pint-sample writes into --out; nothing else there is ever deleted
OUTPUT_FILES = ("samples.png", "convergence.png", "report.json", "latents.safetensors")
IMAGES_DIR = "images"
IMAGE_NAME = re.compile(r"\d{3,}\.png")
TMP_PREFIX = ".pint-tmp-"
OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")  # tolerated in --out, left alone


def precision_of(out) -> dict[str, Any] | None:
    """The run's precision for ``report.json``: network and state dtypes, the tolerance and
    why it was chosen (``SampleOutput.precision``)."""
    p = getattr(out, "precision", None)
    return None if p is None else p.as_dict()


def srds_report(out, steps: int, pipelined: bool, t0: float, units: str) -> dict[str, Any]:
    return dict(
        wall_s=time.perf_counter() - t0, blocks=out.num_blocks, tol=out.tol,
        precision=precision_of(out),
        pipelined=pipelined, iterations=out.iterations, converged=out.converged,
        history=out.history, model_calls=out.stats.model_calls,
        model_rows=out.stats.model_rows, depth=out.stats.depth,
        sequential_model_calls_ratio_vs_serial=steps / out.stats.depth,
        sequential_model_calls_vs_serial=_calls_vs_serial(steps / out.stats.depth),
        tol_note=f"tol is compared with the change of the final sample in one iteration "
                 f"(max-abs, {units}); the error against the serial sample is typically far "
                 "below it (--compare-serial measures it)",
        ratio_note="sequential_model_calls_ratio_vs_serial counts model calls on the critical "
                   "path, not time; --compare-serial measures wall_clock_ratio_vs_serial_measured",
    )


def window_report(out, steps: int, t0: float) -> dict[str, Any]:
    return dict(wall_s=time.perf_counter() - t0, window=out.num_blocks, tol=out.tol,
                precision=precision_of(out),
                iterations=out.iterations, converged=out.converged, history=out.history,
                model_calls=out.stats.model_calls, model_rows=out.stats.model_rows,
                depth=out.stats.depth,
                sequential_model_calls_ratio_vs_serial=steps / max(1, out.stats.depth),
                sequential_model_calls_vs_serial=_calls_vs_serial(steps / max(1, out.stats.depth)),
                tol_note="window samplers: per-step tolerance relative to the step's noise "
                         "scale (ParaDiGMS's rule): a step is accepted when its rms change "
                         "is <= tol * sigma_j; history holds the worst such change over the "
                         "whole window in each call (steps not yet accepted included), so "
                         "its last entry can exceed tol in a converged run: the window's "
                         "first step is exact after one call and is accepted without the "
                         "test (see convergence.png's upper panel, the steps accepted)")


def versus_serial(ratio: float, faster: str = "faster", slower: str = "slower") -> str:
    """A ratio ``serial / this run`` in words: ``"1.8x faster than serial"``, ``"3.2x slower
    than serial"`` (never a bare ``0.31x``); ``faster``/``slower`` name the comparison
    (``"fewer sequential model calls"``)."""
    if not (ratio > 0 and ratio != float("inf")):
        return f"{ratio:g}x {faster} than serial"
    if ratio >= 1:
        return f"{ratio:.1f}x {faster} than serial"
    return f"{1 / ratio:.1f}x {slower} than serial"


def _calls_vs_serial(ratio: float) -> str:
    return versus_serial(ratio, "fewer sequential model calls", "more sequential model calls")


def serial_comparison(serial_s: float, wall_s: float) -> dict[str, Any]:
    ratio = serial_s / wall_s
    return {"serial_wall_s": serial_s, "wall_clock_ratio_vs_serial_measured": ratio,
            "wall_clock_vs_serial": versus_serial(ratio)}


# ---- checks before anything loads -----------------------------------------------------------


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


def check_out(out: Path) -> str | None:
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


class OutputWriter:
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

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed:
            return
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        for d in self.created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty


@dataclass
class Outputs:
    """What a run hands to the writer (``pint-sample``'s ``main``): the report, the images of
    ``samples.png`` and its title, the sampler's output (``None``: no convergence figure) and
    the iterates shown there, the figure's y label; a pipeline's images and latents (and
    a video family's frames per sample)."""

    report: dict[str, Any]
    grid: Any
    title: str
    out: Any
    iterates: Any
    ylabel: str
    images: list | None = None
    latents: dict[str, torch.Tensor] | None = None
    #: a video family's frames per sample (PIL images), written as animated GIFs
    videos: list[list] | None = None
