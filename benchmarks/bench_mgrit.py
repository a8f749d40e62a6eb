"""pint.mgrit against pymgrit: the same iterates, residuals and iteration counts.

    python benchmarks/bench_mgrit.py [--quick] [--out DIR]
    pip install -e ".[bench]"    # pymgrit (and an MPI library for its mpi4py)

Four problems on pymgrit's time grid. Two with pymgrit's own classes, backward Euler on every
level (pymgrit's ``step``; pint's :class:`pint.BackwardEuler` with one step per interval):

* **Dahlquist** ``y' = -y``, ``y(0) = 1`` on ``[0, 5]`` (pymgrit's ``Dahlquist``);
* **heat**: the catalog's ``heat`` (31 interior points, ``u_t = u_xx``, ``sin(pi x)``,
  ``t_end = 0.5``) and pymgrit's ``Heat1D`` with the same grid and initial values.

Two nonlinear ones from the catalog, one classic RK4 step per interval on every level
(pint's :class:`pint.RK4` with one step; in pymgrit an ``Application`` written here with the
same right-hand side in numpy and the same RK4 formula):

* **Burgers**: the catalog's ``burgers`` (64 periodic points, ``nu = 0.1``,
  ``0.5 + sin x``, ``t_end = 1``), ``N_0 = 256``;
* **Lorenz**: the catalog's ``lorenz`` (``(1, 1, 1)``, ``t_end = 2``), ``N_0 = 512``.

The RK4 step sizes are chosen so that the coarsest of three levels (16 times the fine step)
stays inside RK4's stability region.

``N_0 = 256`` fine intervals unless said otherwise (``--quick``: 32, Burgers and Lorenz on
``[0, 32 dt]`` with the full run's fine step ``dt``), coarsening 4, two and three levels, F-
and FCF-relaxation, ``tol = 1e-10`` on the residual 2-norm (pymgrit's stop, pint's too). For
each case: iterations of both, the largest difference between their iterates (every fine
point, every iteration from 1 on; iteration 0 at the C-points, pymgrit leaving its
F-points zero until its first F-relaxation), the largest relative difference of their
residual histories (residuals above 1e-12; below, both are round-off), fine and coarse
steps (pymgrit's counted by wrapping its ``step``; it recomputes ``Phi(u_{C_i - 1})`` for
the residual and the restriction, pint keeps it from the F-relaxation), pint's
sequential depth, the error against :func:`pint.serial` on the fine grid, the errors of
pint's last iterate and of :func:`pint.serial` against the reference at ``t_end`` (the exact
solution for Dahlquist and heat; the catalog's ``case.reference()``, scipy at ``1e-12``, for
Burgers and Lorenz), and seconds (one process each, a shared machine: indicative only). For the
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
        from pymgrit.core.application import Application
        from pymgrit.core.mgrit import Mgrit
        from pymgrit.core.simple_setup_problem import simple_setup_problem
        from pymgrit.dahlquist.dahlquist import Dahlquist
        from pymgrit.heat.heat_1d import Heat1D, VectorHeat1D
    except (ImportError, RuntimeError, OSError) as err:  # mpi4py without libmpi: RuntimeError
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    version = getattr(pymgrit, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("pymgrit")
    return {"Mgrit": Mgrit, "setup": simple_setup_problem, "Dahlquist": Dahlquist,
            "Heat1D": Heat1D, "RK4App": _rk4_application(Application, VectorHeat1D),
            "version": version}, None


def _rk4_application(application: type, vector: type) -> type:
    """A pymgrit ``Application`` for ``y' = rhs(t, y)`` (numpy) with one classic RK4 step
    per interval, the formula of :class:`pint.RK4` operation for operation (``VectorHeat1D``
    is pymgrit's plain numpy vector)."""

    class RK4App(application):
        def __init__(self, rhs: Any, y0: np.ndarray, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.rhs, self.size = rhs, y0.size
            self.vector_template = vector(self.size)
            self.vector_t_start = vector(self.size)
            self.vector_t_start.set_values(y0.copy())

        def step(self, u_start: Any, t_start: float, t_stop: float) -> Any:
            f, y, h = self.rhs, u_start.get_values(), t_stop - t_start
            k1 = f(t_start, y)
            k2 = f(t_start + h / 2, y + h / 2 * k1)
            k3 = f(t_start + h / 2, y + h / 2 * k2)
            k4 = f(t_start + h, y + h * k3)
            out = vector(self.size)
            out.set_values(y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
            return out

    return RK4App


def burgers_rhs(nu: float, points: int) -> Any:
    """The catalog's Burgers right-hand side in numpy (central differences, periodic)."""
    dx = 2 * math.pi / points

    def f(t: float, u: np.ndarray) -> np.ndarray:
        up, um = np.roll(u, -1), np.roll(u, 1)
        return -(up ** 2 - um ** 2) / (4 * dx) + nu * (up - 2 * u + um) / dx ** 2

    return f


def lorenz_rhs(sigma: float, rho: float, beta: float) -> Any:
    """The catalog's Lorenz right-hand side in numpy."""
    def f(t: float, y: np.ndarray) -> np.ndarray:
        return np.array([sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1],
                         y[0] * y[1] - beta * y[2]])

    return f


#: the nonlinear problems: (catalog name, N_0 of the full run, t_end of the full run)
EXPLICIT = {"burgers": (256, 1.0), "lorenz": (512, 2.0)}


def problems(n0: int, quick: bool = False) -> dict[str, dict[str, Any]]:
    """The four problems: ``n0`` fine intervals for Dahlquist and heat; Burgers and Lorenz
    with their :data:`EXPLICIT` setup, or (``quick``) ``n0`` intervals of the same ``dt``."""
    t = np.linspace(0.0, 5.0, n0 + 1)
    dahlquist = pint.ODEProblem(lambda t, y: -y, torch.ones(1, dtype=torch.float64), (0.0, 5.0),
                                batched=True)
    heat = pint.problems.get("heat")
    th = np.linspace(0.0, heat.problem.t_end, n0 + 1)
    points = heat.problem.y0.shape[0]
    specs: dict[str, dict[str, Any]] = {
        "dahlquist": {"problem": dahlquist, "t": t, "method": pint.BackwardEuler,
                      "reference": lambda: math.exp(-5.0) * dahlquist.y0,
                      "pymgrit": lambda pm: pm["Dahlquist"](t_start=0.0, t_stop=5.0, nt=n0 + 1,
                                                            method="BE")},
        "heat": {"problem": heat.problem, "t": th, "method": pint.BackwardEuler,
                 "reference": lambda: heat.exact(heat.problem.t_end),
                 "pymgrit": lambda pm: pm["Heat1D"](x_start=0.0, x_end=1.0, nx=points + 2, a=1.0,
                                                    t_start=0.0, t_stop=heat.problem.t_end,
                                                    nt=n0 + 1)},
    }
    for name, (n_full, t_full) in EXPLICIT.items():
        n = n0 if quick else n_full
        case = pint.problems.get(name, t_end=t_full * n / n_full)
        prm = case.params
        rhs = (burgers_rhs(prm["viscosity"], prm["points"]) if name == "burgers"
               else lorenz_rhs(prm["sigma"], prm["rho"], prm["beta"]))
        tt = np.linspace(0.0, case.problem.t_end, n + 1)
        specs[name] = {"problem": case.problem, "t": tt, "method": pint.RK4,
                       "reference": case.reference,
                       "pymgrit": lambda pm, rhs=rhs, case=case, tt=tt: pm["RK4App"](
                           rhs, case.problem.y0.numpy(), t_interval=tt)}
    return specs


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
    be = spec["method"](1)  # one step per interval on every level
    iterates: list[np.ndarray] = []
    start = time.perf_counter()
    res = pint.mgrit(prob, [be] * levels, partition=partition, coarsening=M, tol=TOL, relax=relax,
                     callback=lambda info: iterates.append(
                         info.boundaries.reshape(n0 + 1, -1).clone().numpy()))
    seconds = time.perf_counter() - start
    serial = pint.serial(prob, be, partition=partition)
    reference = spec["reference"]().reshape(serial.y.shape)
    row: dict[str, Any] = {
        "levels": levels, "relax": relax, "N0": n0, "coarsening": M,
        "iterations": res.iterations, "converged": res.converged,
        "fine_steps": res.stats.fine_steps, "coarse_steps": res.stats.coarse_steps,
        "depth": res.stats.depth, "serial_depth": serial.stats.depth,
        "error_vs_serial": float((res.boundaries - serial.boundaries).abs().max()),
        "error_vs_reference": float((res.y - reference).abs().max()),
        "discretisation_error": float((serial.y - reference).abs().max()),
        "residuals": res.history, "seconds": round(seconds, 3),
    }
    if levels == 2 and relax == "F":
        par = pint.parareal(prob, be, spec["method"](M), n0 // M, tol=TOL)
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
    for name, spec in problems(n0, args.quick).items():
        for levels, relax in CASES:
            row = {"problem": name, **run_case(spec, levels, relax, pm)}
            runs.append(row)
            print(f"{name:9s} {levels} levels {relax:3s}: pint {row['iterations']} it "
                  f"({row['seconds']:.2f} s)"
                  + (f", pymgrit {row['pymgrit_iterations']} it, iterates differ by "
                     f"{row['max_iterate_diff']:.1e}" if pm else ""), flush=True)
    report = {
        "machine": machine_info(1),
        "pymgrit": pm["version"] if pm else None,
        "note": ("pint.mgrit and pymgrit on pymgrit's time grid, coarsening "
                 f"{M}, tol {TOL:g} on the residual 2-norm; Dahlquist and heat with pymgrit's "
                 "problem classes and backward Euler on every level, Burgers and Lorenz (the "
                 "catalog's) with one RK4 step per interval on every level (in pymgrit an "
                 "Application with the same right-hand side and RK4 formula in numpy)"
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
