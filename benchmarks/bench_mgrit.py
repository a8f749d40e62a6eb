"""pint.mgrit against pymgrit: the same iterates, residuals and iteration counts.

    python benchmarks/bench_mgrit.py [--quick] [--out DIR]
    pip install -e ".[bench]"    # pymgrit (and an MPI library for its mpi4py)

Two problems with pymgrit's own classes on pymgrit's time grid, backward Euler on every
level (pymgrit's ``step``; pint's :class:`pint.BackwardEuler` with one step per interval):

* **Dahlquist** ``y' = -y``, ``y(0) = 1`` on ``[0, 5]`` (pymgrit's ``Dahlquist``);
* **heat**: the catalog's ``heat`` (31 interior points, ``u_t = u_xx``, ``sin(pi x)``,
  ``t_end = 0.5``) and pymgrit's ``Heat1D`` with the same grid and initial values.

``N_0 = 256`` fine intervals (``--quick``: 32), coarsening 4, two and three levels, F- and
FCF-relaxation, ``tol = 1e-10`` on the residual 2-norm (pymgrit's stop, pint's too). For
each case: iterations of both, the largest difference between their iterates (every fine
point, every iteration from 1 on; iteration 0 at the C-points, pymgrit leaving its
F-points zero until its first F-relaxation), the largest relative difference of their
residual histories (residuals above 1e-12; below, both are round-off), fine and coarse
steps (pymgrit's counted by wrapping its ``step``; it recomputes ``Phi(u_{C_i - 1})`` for
the residual and the restriction, pint keeps it from the F-relaxation), pint's
sequential depth, the error against :func:`pint.serial` on the
fine grid, and seconds (one process each, a shared machine: indicative only). For the
two-level F cases also :func:`pint.parareal`'s iterations with its change rule at the same
``tol``. Writes ``mgrit.json``.

Without pymgrit (or without an MPI library for its mpi4py) the pymgrit columns are
``null`` and pint is only compared with :func:`pint.serial`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_samplers import machine_info  # noqa: E402

import pint  # noqa: E402
import pint.problems  # noqa: E402

TOL = 1e-10
M = 4
CASES = [(2, "F"), (2, "FCF"), (3, "F"), (3, "FCF")]


def load_pymgrit() -> tuple[Any, str | None]:
    """pymgrit's modules as a dict, or ``None`` and the reason. pymgrit 1.0 calls
    ``np.in1d``, gone from numpy 2: the alias is set here (in the benchmark only)."""
    if not hasattr(np, "in1d"):
        np.in1d = np.isin
    try:
        import pymgrit
        from pymgrit.core.mgrit import Mgrit
        from pymgrit.core.simple_setup_problem import simple_setup_problem
        from pymgrit.dahlquist.dahlquist import Dahlquist
        from pymgrit.heat.heat_1d import Heat1D
    except (ImportError, RuntimeError, OSError) as err:  # mpi4py without libmpi: RuntimeError
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    version = getattr(pymgrit, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("pymgrit")
    return {"Mgrit": Mgrit, "setup": simple_setup_problem, "Dahlquist": Dahlquist,
            "Heat1D": Heat1D, "version": version}, None


def problems(n0: int) -> dict[str, dict[str, Any]]:
    t = np.linspace(0.0, 5.0, n0 + 1)
    dahlquist = pint.ODEProblem(lambda t, y: -y, torch.ones(1, dtype=torch.float64), (0.0, 5.0),
                                batched=True)
    heat = pint.problems.get("heat")
    th = np.linspace(0.0, heat.problem.t_end, n0 + 1)
    points = heat.problem.y0.shape[0]
    return {
        "dahlquist": {"problem": dahlquist, "t": t, "exact": lambda tt: math.exp(-tt) * dahlquist.y0,
                      "pymgrit": lambda pm: pm["Dahlquist"](t_start=0.0, t_stop=5.0, nt=n0 + 1,
                                                            method="BE")},
        "heat": {"problem": heat.problem, "t": th, "exact": heat.exact,
                 "pymgrit": lambda pm: pm["Heat1D"](x_start=0.0, x_end=1.0, nx=points + 2, a=1.0,
                                                    t_start=0.0, t_stop=heat.problem.t_end,
                                                    nt=n0 + 1)},
    }


def _values(vec: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(vec.get_values(), dtype=float)).copy()


def run_pymgrit(pm: dict, spec: dict, levels: int, relax: str, max_iter: int) -> dict:
    app = spec["pymgrit"](pm)
    y0 = spec["problem"].y0.numpy()
    # the same initial values to the bit (pymgrit's linspace x differs from pint's by 1 ulp)
    app.vector_t_start.set_values(y0.copy() if y0.size > 1 else float(y0[0]))
    hierarchy = pm["setup"](app, levels, M)
    counts = [0] * levels
    for lvl, a in enumerate(hierarchy):
        def counted(*args, _step=a.step, _lvl=lvl, **kw):
            counts[_lvl] += 1
            return _step(*args, **kw)
        a.step = counted
    iterates: list[np.ndarray] = []

    def out(solver: Any) -> None:
        iterates.append(np.stack([_values(v) for v in solver.u[0]]))

    start = time.perf_counter()
    solver = pm["Mgrit"](problem=hierarchy, tol=TOL, max_iter=max_iter, cf_iter=relax.count("C"),
                         logging_lvl=30, output_fcn=out, output_lvl=2)
    solver.solve()
    seconds = time.perf_counter() - start
    # info["conv"] drops residuals that are exactly 0: read the solver's own record
    conv = [float(c) for c in solver.conv[1 : solver.solve_iter + 1]]
    return {"iterates": iterates, "conv": conv, "fine": counts[0],
            "coarse": sum(counts[1:]), "seconds": seconds}


def run_case(spec: dict, levels: int, relax: str, pm: dict | None) -> dict:
    prob, n0 = spec["problem"], len(spec["t"]) - 1
    partition = torch.tensor(spec["t"], dtype=torch.float64)
    be = pint.BackwardEuler(1)
    iterates: list[np.ndarray] = []
    start = time.perf_counter()
    res = pint.mgrit(prob, [be] * levels, partition=partition, coarsening=M, tol=TOL, relax=relax,
                     callback=lambda info: iterates.append(
                         info.boundaries.reshape(n0 + 1, -1).clone().numpy()))
    seconds = time.perf_counter() - start
    serial = pint.serial(prob, be, partition=partition)
    row: dict[str, Any] = {
        "levels": levels, "relax": relax, "N0": n0, "coarsening": M,
        "iterations": res.iterations, "converged": res.converged,
        "fine_steps": res.stats.fine_steps, "coarse_steps": res.stats.coarse_steps,
        "depth": res.stats.depth, "serial_depth": serial.stats.depth,
        "error_vs_serial": float((res.boundaries - serial.boundaries).abs().max()),
        "discretisation_error": float((serial.y - spec["exact"](prob.t_end)).abs().max()),
        "residuals": res.history, "seconds": round(seconds, 3),
    }
    if levels == 2 and relax == "F":
        par = pint.parareal(prob, be, pint.BackwardEuler(M), n0 // M, tol=TOL)
        row["parareal_iterations"] = par.iterations
    if pm is None:
        return row
    ref = run_pymgrit(pm, spec, levels, relax, max_iter=n0 // M)
    theirs, cpts = ref["iterates"], slice(None, None, M)
    diffs = [float(np.abs(iterates[0][cpts] - theirs[0][cpts]).max())]
    diffs += [float(np.abs(a - b).max()) for a, b in zip(iterates[1:], theirs[1:], strict=False)]
    conv = ref["conv"]
    row.update({
        "pymgrit_iterations": len(conv),
        "max_iterate_diff": max(diffs),
        "max_residual_rel_diff": max((abs(a - b) / b for a, b in zip(res.history, conv, strict=False)
                                      if b > 1e-12), default=0.0),
        "pymgrit_fine_steps": ref["fine"], "pymgrit_coarse_steps": ref["coarse"],
        "pymgrit_error_vs_serial": float(np.abs(theirs[-1] - serial.boundaries.reshape(n0 + 1, -1)
                                                .numpy()).max()),
        "pymgrit_residuals": conv, "pymgrit_seconds": round(ref["seconds"], 3),
    })
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N_0 = 32 fine intervals")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n0 = 32 if args.quick else 256
    pm, why = load_pymgrit()
    runs = []
    for name, spec in problems(n0).items():
        for levels, relax in CASES:
            row = {"problem": name, **run_case(spec, levels, relax, pm)}
            runs.append(row)
            print(f"{name:9s} {levels} levels {relax:3s}: pint {row['iterations']} it"
                  + (f", pymgrit {row['pymgrit_iterations']} it, iterates differ by "
                     f"{row['max_iterate_diff']:.1e}" if pm else ""), flush=True)
    report = {
        "machine": machine_info(1),
        "pymgrit": pm["version"] if pm else None,
        "note": ("pint.mgrit and pymgrit on pymgrit's time grid and problem classes, backward "
                 f"Euler on every level, coarsening {M}, tol {TOL:g} on the residual 2-norm"
                 if pm else f"pymgrit not available ({why}): pint.mgrit compared with "
                 "pint.serial only"),
        "tol": TOL,
        "runs": runs,
    }
    if pm:
        report["max_iterate_diff"] = max(r["max_iterate_diff"] for r in runs)
        report["same_iterations"] = all(r["iterations"] == r["pymgrit_iterations"] for r in runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mgrit.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
