"""Benchmark: pint's samplers across model families and schedulers (issue 15, item 5).

Run from the repository root::

    python benchmarks/bench_schedulers.py --jobs 3        # full run (all cases)
    python benchmarks/bench_schedulers.py --quick         # mixtures, N = 25: smoke test
    python benchmarks/bench_schedulers.py --models gmm-flow gmm-edm --steps 25 50 --out /tmp/b
    # in parts, then merged (later files win a case both hold):
    python benchmarks/bench_schedulers.py --jobs 3 --exclude digits/ddim/1000 \
        digits-flow/euler/1000 --out /tmp/a
    python benchmarks/bench_schedulers.py --jobs 2 --models digits digits-flow --steps 1000 \
        --out /tmp/b
    python benchmarks/bench_schedulers.py --from-json /tmp/a/schedulers.json \
        /tmp/b/schedulers.json

``--jobs K`` runs the cases in ``K`` processes: the counts (sequential calls, rows) do not
depend on it, the ``wall_s`` fields do. On a quiet 2-core CPU the full run takes about
15 minutes, almost all of it in the two float32 UNet cases at N = 1000.

For every case (model, solver, N) of :data:`CASES` it measures what
``benchmarks/bench_samplers.py`` measures for DDIM (and with its functions): the
**sequential model calls** (``depth``) and the **model rows** each sampler needs to reach
an error target against ``serial_sample`` of the same schedule, ``x_T`` and ``N``:

* ``serial``: ``serial_sample`` (``N`` calls);
* ``srds_sweep`` / ``srds_pipelined``: ``srds_sample`` (``pipelined=False/True``) over a
  tolerance grid (:data:`SRDS_TOLS`, evaluated by replay of one run per block count, see
  ``bench_samplers``; iterations capped by :data:`SRDS_CAP` for the float32 UNets) and
  block counts ``round(c sqrt(N))`` for ``c`` in :data:`SRDS_BLOCK_FACTORS` (the default
  block count only for the float32 UNets at N = 1000);
* ``picard`` / ``qn``: ``picard_sample`` / ``quasi_newton_sample`` over the windows
  ``min(w, N)`` of :data:`WINDOWS` and the tolerances :data:`WINDOW_TOLS`, scanned from
  loose to tight and stopped at the first run that meets the tight target or needs ``N``
  iterations.

Each column's entry at a target is its cheapest run (fewest sequential calls, then fewest
rows) whose max-abs error over the batch is at most the target. Targets: ``1e-3``, and a
tight one: twice the serial sampler's own float32 reproducibility floor of that case
(``bench_samplers.serial_floor``: batch vs one-at-a-time) for the float32 networks,
``1e-5`` for the float64 mixtures.

Models (:data:`MODELS`):

* ``digits``: the bundled DDPM UNet (``load_pretrained("digits")``, VP, epsilon, float32)
  with DDIM (its own ``DDIMScheduler``) and, through ``adapters.diffusers.from_diffusers``,
  ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` /
  ``EulerDiscreteScheduler(use_karras_sigmas=True)`` built ``from_config`` of its scheduler;
* ``digits-flow``: the bundled rectified-flow UNet (``load_pretrained("digits-flow")``,
  ``FlowMatchEulerDiscreteScheduler``, float32);
* ``gmm-flow``, ``gmm-edm``, ``gmm-vp``: the exact ``GaussianMixtureDenoiser`` (16-dim,
  8 components, float64) under ``SigmaSchedule.flow_matching(shift=3)`` (SD3's shift),
  ``SigmaSchedule.edm()`` (Karras sigmas, x0 output) and ``VPSchedule.linear(1000)``
  (epsilon; DPM-Solver++ / UniPC from diffusers' schedulers on the same betas).

Outputs (``--out``, default ``benchmarks/results``): ``schedulers.json``,
``schedulers.png`` (sequential calls to reach each target, per case and sampler) and the
table, printed as markdown.

JSON layout: ``{"machine", "note", "config", "runtime_s", "models": {model: info},
"results": {case: {"model", "solver", "scheduler", "N", "dtype", "batch", "serial": run,
"floor": {...}, "targets": {name: value}, "runs": [run, ...]}}, "replay_check": [...],
"table": [row, ...]}`` with ``case = "<model>/<solver>/<N>"``; a run is a
``bench_samplers`` run dict (``method`` one of ``serial``, ``srds_sweep``,
``srds_pipelined``, ``picard``, ``qn``; ``tol``, ``window``, ``num_blocks``, ``iterations``,
``converged``, ``depth``, ``model_calls``, ``rows``, ``width``, ``error``, ``wall_s``,
``speedup``, ``replayed``); a table row is ``{"case", "model", "solver", "N", "target",
"target_value", "cells": {column: {"depth", "rows", "width", "error", "setting"} or
{"depth": null, "best_error"}}, "best", "best_depth", "picard_depth",
"best_vs_picard"}`` (``best_vs_picard`` = Picard's calls / the best column's calls).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_samplers as bs  # noqa: E402  (CountingModel, run_serial, run_window, ...)

from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    SigmaSchedule,
    VPSchedule,
    srds_sample,
)

# ----------------------------------------------------------------------------- settings

#: (model, solver) -> step counts. The few-step rows are what people run with these
#: solvers; N = 1000 for the first-order samplers (DDIM, flow Euler).
CASES: list[tuple[str, str, tuple[int, ...]]] = [
    ("digits", "ddim", (1000,)),
    ("digits", "dpmpp_2m", (25, 50)),
    ("digits", "unipc", (25, 50)),
    ("digits", "euler_karras", (25, 50)),
    ("digits-flow", "euler", (25, 50, 1000)),
    ("gmm-flow", "euler", (25, 50, 1000)),
    ("gmm-flow", "dpmpp_2m", (25, 50)),
    ("gmm-flow", "unipc", (25, 50)),
    ("gmm-edm", "euler", (25, 50)),
    ("gmm-edm", "dpmpp_2m", (25, 50)),
    ("gmm-edm", "unipc", (25, 50)),
    ("gmm-vp", "dpmpp_2m", (25, 50)),
    ("gmm-vp", "unipc", (25, 50)),
]
QUICK_CASES: list[tuple[str, str, tuple[int, ...]]] = [
    ("gmm-flow", "euler", (25,)),
    ("gmm-edm", "dpmpp_2m", (25,)),
    ("gmm-vp", "unipc", (25,)),
]
MODELS = ("digits", "digits-flow", "gmm-flow", "gmm-edm", "gmm-vp")
SOLVER_LABELS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++ 2M", "unipc": "UniPC (bh2)",
                 "euler_karras": "Euler, Karras sigmas", "euler": "Euler"}

#: SRDS tolerance grid (max-abs change of the final sample between iterations)
SRDS_TOLS = {torch.float32: (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5),
             torch.float64: (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)}
#: SRDS block counts round(c sqrt(N)) scanned, per schedule (srds_sample's defaults are
#: c = 1 for the sweep, 2 pipelined); the float32 UNets get fewer
SRDS_BLOCK_FACTORS = {torch.float64: {"sweep": (0.6, 1.0, 1.5), "pipelined": (1.0, 2.0, 3.0)},
                      torch.float32: {"sweep": (1.0,), "pipelined": (1.0, 2.0)}}
#: SRDS iteration cap for the float32 UNets (None: B, the serial sample exactly); each
#: iteration at N = 1000 costs about one serial run's rows on a CPU
QUICK_BLOCK_FACTORS = {"sweep": (1.0,), "pipelined": (1.0, 2.0)}
SRDS_CAP = {torch.float32: 8, torch.float64: None}
SRDS_CAP_EXPENSIVE = 5
#: window samplers: windows min(w, N) and per-step tolerances, scanned loose to tight and
#: stopped at the first tolerance whose run meets the tight target or needs N iterations
#: (a tighter tolerance never slides the window further)
WINDOWS = {torch.float64: (32, 64), torch.float32: (32,)}
WINDOW_TOLS = {torch.float64: (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5),
               torch.float32: (1e-1, 1e-2, 1e-3, 1e-4, 3e-5, 1e-5)}
#: expensive cases (a float32 UNet at N >= 1000 on a CPU): the default block counts only,
#: SRDS capped at SRDS_CAP_EXPENSIVE iterations, window tolerances from 1e-3
EXPENSIVE_N = 1000
EXPENSIVE_WINDOW_TOLS = (1e-3, 1e-4, 1e-5)
#: samples sampled alone for the float32 floor (N >= EXPENSIVE_N: fewer)
FLOOR_SINGLES = 4
FLOOR_SINGLES_EXPENSIVE = 2
BATCH = {torch.float32: 8, torch.float64: 16}
TARGET = 1e-3
TIGHT_FLOAT64 = 1e-5
FLOOR_FACTOR = 2.0
COLUMNS = ("serial", "srds_sweep", "srds_pipelined", "picard", "qn")
COLUMN_LABELS = {"serial": "serial", "srds_sweep": "SRDS sweep",
                 "srds_pipelined": "SRDS pipelined", "picard": "Picard",
                 "qn": "quasi-Newton"}


# ----------------------------------------------------------------------------- models


def load_bundled(name: str, tmp: Path) -> tuple[Any, Any, dict[str, Any]]:
    """``load_pretrained(name)`` from a private copy of the bundled folder (a rewrite of
    the memory-mapped weights while the benchmark runs would fault; see
    ``bench_samplers.load_digits``). Returns ``(model, schedule, info)``; ``info["folder"]``
    is the copy (its scheduler config builds the other schedulers)."""
    from adapters.diffusion.pretrained import BUNDLED, load_pretrained

    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except Exception:  # pragma: no cover - diffusers is required for the UNets anyway
        pass
    last: Exception | None = None
    for attempt in range(5):
        dst = tmp / f"{name}{attempt}"
        try:
            shutil.copytree(BUNDLED[name], dst)
            model, schedule = load_pretrained(dst)
            weights = next(dst.glob("unet/*.safetensors"))
            return model, schedule, {"source": str(BUNDLED[name]), "folder": dst,
                                     "weights_sha256": bs._sha256(weights)}
        except Exception as e:  # a copy taken mid-rewrite: try again
            last = e
            time.sleep(1.0)
    raise RuntimeError(f"could not load the {name} model: {last}")


def _vp_scheduler(cls_name: str, config: dict[str, Any], **extra: Any) -> Any:
    import diffusers

    return getattr(diffusers, cls_name).from_config(config, **extra)


DIGITS_SCHEDULERS = {"dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
                     "unipc": ("UniPCMultistepScheduler", {}),
                     "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True})}
GMM_VP_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                 "beta_schedule": "linear"}


class Models:
    """Builds each model once and each (model, solver) schedule on demand."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cache: dict[str, tuple[Any, Any, torch.dtype, dict[str, Any]]] = {}

    def model(self, name: str) -> tuple[Any, Any, torch.dtype, dict[str, Any]]:
        if name not in self.cache:
            self.cache[name] = self._build(name)
        return self.cache[name]

    def _build(self, name: str):
        if name in ("digits", "digits-flow"):
            model, schedule, info = load_bundled(name, self.tmp)
            info["desc"] = f'load_pretrained("{name}")'
            return model, schedule, torch.float32, info
        kw = {"dim": 16, "components": 8, "seed": 0}
        if name == "gmm-flow":
            schedule = SigmaSchedule.flow_matching(shift=3.0)
            desc = "SigmaSchedule.flow_matching(shift=3.0)"
        elif name == "gmm-edm":
            schedule = SigmaSchedule.edm()
            desc = "SigmaSchedule.edm()"
        elif name == "gmm-vp":
            schedule = VPSchedule.linear(1000)
            desc = "VPSchedule.linear(1000)"
        else:
            raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
        model = GaussianMixtureDenoiser.random(schedule, **kw)
        info = {"desc": f"GaussianMixtureDenoiser.random({desc}, dim=16, components=8, seed=0)"}
        return model, schedule, torch.float64, info

    def case(self, name: str, solver: str) -> tuple[Any, Any, torch.dtype, str]:
        """``(model, schedule, dtype, scheduler description)`` of one (model, solver)."""
        from adapters.diffusers import from_diffusers, schedule_from_scheduler

        model, base, dtype, info = self.model(name)
        if name == "digits":
            if solver == "ddim":
                return model, base, dtype, "DDIMScheduler (bundled config)"
            cls_name, extra = DIGITS_SCHEDULERS[solver]
            cfg = json.loads((info["folder"] / "scheduler" / "scheduler_config.json").read_text())
            wrapped, schedule = from_diffusers(model.net, _vp_scheduler(cls_name, cfg, **extra))
            opts = "".join(f", {k}={v!r}" for k, v in extra.items())
            return wrapped, schedule, dtype, f"{cls_name}.from_config(digits' config{opts})"
        if name == "digits-flow":
            if solver != "euler":
                raise ValueError(f"digits-flow is run with its own Euler scheduler, not {solver}")
            return model, base, dtype, "FlowMatchEulerDiscreteScheduler (bundled config)"
        if name == "gmm-vp":
            cls_name, extra = DIGITS_SCHEDULERS[solver]
            schedule = schedule_from_scheduler(_vp_scheduler(cls_name, GMM_VP_CONFIG, **extra))
            return model, schedule, dtype, f"{cls_name}(linear betas 1e-4..0.02, 1000)"
        return model, base.with_solver(solver), dtype, f"{base.name}.with_solver({solver!r})"


# ----------------------------------------------------------------------------- runs


def _sample_of(state: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The sample held by an SRDS boundary state (slot 0 of a multistep solver's state)."""
    return state if state.shape == ref.shape else state[:, 0]


def srds_replay(cm, schedule, x, N, ref, *, pipelined, tol, max_iters, num_blocks):
    """``bench_samplers.srds_replay`` for any state layout: one SRDS run that records cost
    and the error of the current sample after every iteration."""
    snaps: list[dict[str, Any]] = []
    in_cb = 0.0
    t0 = 0.0

    def cb(info) -> None:
        nonlocal in_cb
        c0 = time.perf_counter()
        snaps.append({"k": info.iteration, "change": info.change, "depth": cm.calls,
                      "model_calls": cm.calls, "rows": cm.rows, "width": cm.width,
                      "error": bs._err(_sample_of(info.boundaries[-1], ref), ref),
                      "wall_s": c0 - t0 - in_cb})
        in_cb += time.perf_counter() - c0

    cm.reset()
    t0 = time.perf_counter()
    out = srds_sample(cm, schedule, x, N, num_blocks=num_blocks, tol=tol, max_iters=max_iters,
                      pipelined=pipelined, callback=cb)
    last = snaps[-1]
    assert last["k"] == out.iterations and last["depth"] == out.stats.depth
    assert last["rows"] == out.stats.model_rows and bs._err(out.sample, ref) == last["error"]
    return snaps, out


def block_counts(N: int, pipelined: bool, dtype: torch.dtype, expensive: bool,
                 quick: bool = False) -> list[int]:
    if expensive:  # srds_sample's default
        return [min(N, max(1, round((2 if pipelined else 1) * math.sqrt(N))))]
    factors = (QUICK_BLOCK_FACTORS if quick and dtype == torch.float64
               else SRDS_BLOCK_FACTORS[dtype])["pipelined" if pipelined else "sweep"]
    return sorted({min(N, max(2, round(c * math.sqrt(N)))) for c in factors})


def serial_floor(cm, schedule, x, N, ref, singles: int) -> dict[str, Any]:
    """``bench_samplers.serial_floor`` with ``singles`` samples sampled alone."""
    saved = bs.FLOOR_SAMPLES
    bs.FLOOR_SAMPLES = singles
    try:
        return bs.serial_floor(cm, schedule, x, N, ref)
    finally:
        bs.FLOOR_SAMPLES = saved


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_case(key: str, model, schedule, dtype, N: int, replay_checks: list | None,
               quick: bool = False) -> dict[str, Any]:
    cm = bs.CountingModel(model)
    x = bs.make_x(model, dtype, BATCH[dtype])
    expensive = dtype == torch.float32 and N >= EXPENSIVE_N
    ref, srow = bs.run_serial(cm, schedule, x, N)
    floor = serial_floor(cm, schedule, x, N, ref,
                         FLOOR_SINGLES_EXPENSIVE if expensive else FLOOR_SINGLES)
    tight = FLOOR_FACTOR * floor["value"] if dtype == torch.float32 else TIGHT_FLOAT64
    tight_name = (f"{FLOOR_FACTOR:g}x float32 floor" if dtype == torch.float32
                  else f"{TIGHT_FLOAT64:.0e} (float64)")
    entry: dict[str, Any] = {"serial": srow, "floor": floor,
                             "targets": {f"{TARGET:.0e}": TARGET, tight_name: tight}, "runs": []}
    _log(f"{key}: serial {srow['wall_s']:.1f}s, floor {floor['value']:.1e}")
    tols = SRDS_TOLS[dtype]
    cap = SRDS_CAP_EXPENSIVE if expensive else SRDS_CAP[dtype]
    for pipelined in (False, True):
        method = "srds_pipelined" if pipelined else "srds_sweep"
        for B in block_counts(N, pipelined, dtype, expensive, quick):
            t0 = time.perf_counter()
            snaps, out = srds_replay(cm, schedule, x, N, ref, pipelined=pipelined,
                                     tol=min(tols), max_iters=cap, num_blocks=B)
            entry["runs"] += bs.srds_rows_from_replay(
                snaps, out, N, tols, method=method, variant="srds",
                schedule_name="pipelined" if pipelined else "sweep", max_iters=cap)
            _log(f"{key}: {method} B={B}: {out.iterations} its, depth {out.stats.depth}, "
                 f"err {bs._err(out.sample, ref):.1e}, {time.perf_counter() - t0:.1f}s")
            if replay_checks is not None and B == block_counts(N, pipelined, dtype, True)[0]:
                replay_checks += bs.replay_check(cm, schedule, x, N, ref, snaps, out, tols, key,
                                                 method, pipelined, cap, {"num_blocks": B})
    windows = sorted({min(w, N) for w in WINDOWS[dtype]})
    wtols = EXPENSIVE_WINDOW_TOLS if expensive else WINDOW_TOLS[dtype]
    for kind in bs.WINDOW_SAMPLERS:
        for w in windows:
            t0 = time.perf_counter()
            for tol in wtols:
                row = bs.run_window(cm, schedule, x, N, ref, w, tol, kind)
                row["method"] = kind  # one column per sampler; the window is in the row
                entry["runs"].append(row)
                if row["error"] <= tight or row["iterations"] >= N:
                    break
            _log(f"{key}: {kind} w={w}: tols down to {tol:g}, depth {row['depth']}, err "
                 f"{row['error']:.1e}, {time.perf_counter() - t0:.1f}s")
    return entry


# ----------------------------------------------------------------------------- reporting


def _setting(r: dict[str, Any]) -> str:
    if r["family"] == "srds":
        s = f"B={r['num_blocks']}, tol={r['tol']:g}, k={r['iterations']}"
        return s + ("" if r["converged"] else " (cap)")
    if r["family"] in bs.WINDOW_SAMPLERS:
        return f"w={r['window']}, tol={r['tol']:g}"
    return ""


def make_table(results: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    for key, e in results.items():
        for tname, thr in e["targets"].items():
            cells: dict[str, Any] = {"serial": {"depth": e["N"], "rows": e["serial"]["rows"],
                                                "width": e["serial"]["width"], "error": 0.0,
                                                "setting": ""}}
            for col in COLUMNS[1:]:
                b = bs._best(e["runs"], col, thr)
                if b is None:
                    errs = [r["error"] for r in e["runs"] if r["method"] == col]
                    cells[col] = {"depth": None, "best_error": min(errs) if errs else None}
                else:
                    cells[col] = {"depth": b["depth"], "rows": b["rows"], "width": b["width"],
                                  "error": b["error"], "setting": _setting(b)}
            found = [(c["depth"], c["rows"], col) for col, c in cells.items()
                     if c["depth"] is not None]
            _, _, best = min(found)
            pic = cells["picard"]["depth"]
            rows.append({"case": key, "model": e["model"], "solver": e["solver"], "N": e["N"],
                         "target": tname, "target_value": thr, "cells": cells, "best": best,
                         "best_depth": cells[best]["depth"], "picard_depth": pic,
                         "best_vs_picard": pic / cells[best]["depth"] if pic else None})
    return rows, table_markdown(rows)


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def _target_label(r: dict[str, Any]) -> str:
    if "floor" in r["target"]:
        return f"{FLOOR_FACTOR:g}x floor = {r['target_value']:.1e}"
    return f"{r['target_value']:.0e}"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (case, target); a cell is ``sequential calls / rows`` of the column's
    cheapest run that meets the target (bold: the fewest calls)."""
    head = ("| model | solver | N | max-abs error target | "
            + " | ".join(COLUMN_LABELS[c] for c in COLUMNS) + " | best (Picard calls / best) |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for r in rows:
        cells = []
        for col in COLUMNS:
            c = r["cells"][col]
            if c["depth"] is None:
                cells.append("not reached" + (f" (best {c['best_error']:.0e})"
                                              if c.get("best_error") is not None else ""))
            else:
                txt = f"{c['depth']} / {_k(c['rows'])}"
                cells.append(f"**{txt}**" if col == r["best"] else txt)
        vs = (f"{COLUMN_LABELS[r['best']]} ({r['best_vs_picard']:.2f}x)"
              if r["best_vs_picard"] else COLUMN_LABELS[r["best"]])
        lines.append(f"| {r['model']} | {SOLVER_LABELS.get(r['solver'], r['solver'])} | "
                     f"{r['N']} | {_target_label(r)} | " + " | ".join(cells) + f" | {vs} |")
    return "\n".join(lines) + "\n"


def make_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = []
    for r in rows:
        t = "loose" if r["target_value"] == TARGET else "tight"
        if t not in targets:
            targets.append(t)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(len(targets), 1, figsize=(max(8.0, 0.75 * len(cases) + 2), 4.2
                                                        * len(targets)), squeeze=False)
    parallel = COLUMNS[1:]
    width = 0.8 / len(parallel)
    for ax, t in zip(axes[:, 0], targets, strict=True):
        sel = {r["case"]: r for r in rows if ("loose" if r["target_value"] == TARGET
                                              else "tight") == t}
        ax.axhline(1.0, color="k", ls=":", lw=1, label="serial (N calls)")
        for i, col in enumerate(parallel):
            xs, ys, miss = [], [], []
            for j, c in enumerate(cases):
                r = sel.get(c)
                if r is None:
                    continue
                d = r["cells"][col]["depth"]
                off = (i - (len(parallel) - 1) / 2) * width
                if d is None:
                    miss.append(j + off)
                else:
                    xs.append(j + off)
                    ys.append(d / r["N"])
            bars = ax.bar(xs, ys, width, label=COLUMN_LABELS[col])
            if miss:
                ax.plot(miss, [1.0] * len(miss), "x", color=bars.patches[0].get_facecolor()
                        if bars.patches else "k", ms=6)
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("sequential calls / N")
        ax.set_title(f"sequential model calls to reach the {t} error target (x: not reached)",
                     fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(COLUMNS))
        ax.set_xlim(-0.6, len(cases) - 0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOTE = (
    "Per case (model, solver, N): the cheapest run of each sampler (fewest sequential model "
    "calls = depth, then fewest rows) whose max-abs error against serial_sample of the same "
    "schedule, x_T and N (a batch of `batch` samples) is at most the target. depth: model "
    "calls on the critical path on one device (serial: N; SRDS sweep: coarse sweep plus per "
    "iteration one batched fine solve and the coarse corrections; SRDS pipelined: one "
    "batched call per wavefront tick; Picard / quasi-Newton: one batched call per "
    "iteration). rows = samples pushed through the model in total. The loose target is "
    "1e-3; the tight one is 2x the case's serial float32 floor (max-abs difference between "
    "the batch sampled at once and its first samples sampled alone) for the float32 UNets "
    "and 1e-5 for the float64 mixtures. SRDS tol: max-abs change of the final sample; "
    "window tol: ParaDiGMS's per-step rule; the two are not on the same scale, which is why "
    "each is scanned. SRDS runs with converged=false stopped at max_iters (float32 UNets "
    "at N=1000: cap 6 iterations). Wall-clock on this CPU is not the point (see "
    "bench_samplers' wall_clock): fewer sequential calls pay where a batched call of the "
    "method's width costs about one serial call (a GPU below saturation)."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: three mixture cases at N = 25")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None)
    p.add_argument("--solvers", nargs="+", default=None,
                   help="only these solvers (ddim, dpmpp_2m, unipc, euler_karras, euler)")
    p.add_argument("--steps", nargs="+", type=int, default=None, help="only these N")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; see bench_samplers)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cases run in this many worker processes (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--exclude", nargs="+", default=(), metavar="CASE",
                   help="skip these cases, named model/solver/N (e.g. digits/ddim/1000)")
    p.add_argument("--from-json", nargs="+", type=Path, default=None, metavar="JSON",
                   help="no runs: merge the results of saved schedulers.json files (later "
                        "ones win a case both hold) and rebuild the table and plot into --out")
    return p.parse_args(argv)


_WORKER: dict[str, Any] = {}


def _run_case(name: str, solver: str, N: int, threads: int, quick: bool) -> dict[str, Any]:
    """One case, in this process (models cached per process)."""
    torch.set_num_threads(threads)
    if "models" not in _WORKER:
        _WORKER["tmp"] = tempfile.TemporaryDirectory()
        _WORKER["models"] = Models(Path(_WORKER["tmp"].name))
    models = _WORKER["models"]
    with torch.inference_mode():
        model, schedule, dtype, desc = models.case(name, solver)
        info = {k: v for k, v in models.model(name)[3].items() if k != "folder"}
        info["dtype"] = str(dtype).replace("torch.", "")
        info["sample_shape"] = list(model.sample_shape)
        key = f"{name}/{solver}/{N}"
        checks: list | None = [] if N == 25 and dtype == torch.float64 else None
        entry = bench_case(key, model, schedule, dtype, N, checks, quick)
    return {"key": key, "model_info": info, "replay_check": checks or [],
            "entry": {"model": name, "solver": solver, "scheduler": desc,
                      "schedule": repr(schedule), "N": N,
                      "dtype": str(dtype).replace("torch.", ""), "batch": BATCH[dtype],
                      **entry}}


def _cost(case: tuple[str, str, int]) -> float:
    """Rough cost, to start the longest cases first with --jobs."""
    name, _, N = case
    return N * (100.0 if name.startswith("digits") else 1.0)


def rebuild(paths: list[Path], out: Path, plot: bool = True) -> dict[str, Any]:
    """Merge saved ``schedulers.json`` files and rebuild table and plot into ``out``."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = reports[0]
    if len(reports) > 1:
        report["merged_from"] = [{"path": str(p), "machine": r["machine"],
                                  "config": r["config"], "runtime_s": r["runtime_s"]}
                                 for p, r in zip(paths, reports, strict=True)]
        for r in reports[1:]:
            report["models"].update(r["models"])
            report["results"].update(r["results"])
            report["replay_check"] += r["replay_check"]
        order = {f"{m}/{s}/{n}": i for i, (m, s, ns) in enumerate(CASES) for n in ns}
        report["results"] = dict(sorted(report["results"].items(),
                                        key=lambda kv: (order.get(kv[0], 1e9), kv[1]["N"])))
    rows, md = make_table(report["results"])
    report["table"] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedulers.json").write_text(
        json.dumps(bs._clean(report), indent=1, default=bs._json_default, allow_nan=False))
    if plot:
        make_plot(rows, out / "schedulers.png")
    print(md)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.from_json is not None:
        return rebuild(args.from_json, args.out, not args.no_plot)
    cases = []
    for model, solver, steps in (QUICK_CASES if args.quick else CASES):
        if args.models and model not in args.models:
            continue
        if args.solvers and solver not in args.solvers:
            continue
        for N in steps:
            if args.steps and N not in args.steps:
                continue
            if f"{model}/{solver}/{N}" in args.exclude:
                continue
            cases.append((model, solver, N))
    if not cases:
        raise SystemExit("no case left after --models/--solvers/--steps/--exclude")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "machine": bs.machine_info(args.threads), "note": NOTE,
        "config": {"quick": args.quick, "jobs": args.jobs,
                   "cases": [f"{m}/{s}/{n}" for m, s, n in cases],
                   "batch": {str(k).replace("torch.", ""): v for k, v in BATCH.items()},
                   "seed": bs.SEED,
                   "srds_tols": {str(k).replace("torch.", ""): list(v)
                                 for k, v in SRDS_TOLS.items()},
                   "srds_block_factors": {str(k).replace("torch.", ""): v for k, v in (
                       SRDS_BLOCK_FACTORS | ({torch.float64: QUICK_BLOCK_FACTORS}
                                             if args.quick else {})).items()},
                   "srds_cap": {str(k).replace("torch.", ""): v for k, v in SRDS_CAP.items()},
                   "windows": {str(k).replace("torch.", ""): v for k, v in WINDOWS.items()},
                   "window_tols": {str(k).replace("torch.", ""): v
                                   for k, v in WINDOW_TOLS.items()},
                   "window_tol_scan": "loose to tight, stopped at the first run that meets "
                                      "the tight target or needs N iterations",
                   "expensive": {"when": f"float32 and N >= {EXPENSIVE_N}",
                                 "srds_cap": SRDS_CAP_EXPENSIVE,
                                 "srds_blocks": "srds_sample default",
                                 "window_tols": list(EXPENSIVE_WINDOW_TOLS),
                                 "floor_singles": FLOOR_SINGLES_EXPENSIVE},
                   "floor_singles": FLOOR_SINGLES,
                   "targets": {"loose": TARGET, "tight_float32": f"{FLOOR_FACTOR:g} x floor",
                               "tight_float64": TIGHT_FLOAT64}},
        "models": {}, "results": {}, "replay_check": [],
    }
    if args.jobs == 1:
        done = [_run_case(*c, args.threads, args.quick) for c in cases]
    else:  # counts of model calls do not depend on it; wall_s fields do
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {c: ex.submit(_run_case, *c, args.threads, args.quick)
                    for c in sorted(cases, key=_cost, reverse=True)}
            done = [futs[c].result() for c in cases]
    for d in done:
        name = d["entry"]["model"]
        report["models"].setdefault(name, d["model_info"])
        report["results"][d["key"]] = d["entry"]
        report["replay_check"] += d["replay_check"]
    rows, md = make_table(report["results"])
    report["table"] = rows
    report["runtime_s"] = time.perf_counter() - t_start
    report["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") \
        else None
    (args.out / "schedulers.json").write_text(
        json.dumps(bs._clean(report), indent=1, default=bs._json_default, allow_nan=False))
    if not args.no_plot:
        make_plot(rows, args.out / "schedulers.png")
    print(md)
    bad = [c for c in report["replay_check"] if not c["match"]]
    print(f"replay check: {len(report['replay_check']) - len(bad)}/"
          f"{len(report['replay_check'])} match; runtime {report['runtime_s']:.0f}s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
