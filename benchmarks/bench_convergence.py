"""Parareal's known behaviour on the classic problems of :mod:`pint.problems`.

    python benchmarks/bench_convergence.py [--quick]

* iterations to each case's tolerance vs the number of blocks B (fine resolution fixed:
  the fine steps per block shrink as B grows), with the ideal speedup B / k and the
  parallel efficiency 1 / k (coarse cost neglected) and the measured ratio of sequential
  steps serial / parareal;
* iterations vs the coarse propagator (recommended, Euler(1), RK4(1); for the PDEs also the
  recommended one on a grid twice as coarse, :class:`pint.Coarsened`);
* Dahlquist ``y' = -y`` against the linear error bound from the Parareal error recursion
  ``e^k_n = G e^k_{n-1} + (F - G) e^{k-1}_{n-1}`` (Gander & Vandewalle 2007):
  ``|e^k_n| <= C(n-1, k) |F - G|^k max(1, |G|)^(n-1-k) max_m |e^0_m|``;
* the failure modes: chaotic Lorenz over longer horizons, and Burgers past its shock time
  at low viscosity with a one-step implicit coarse solver (the front is smeared and
  misplaced), where k approaches B and the speedup vanishes.

Writes ``benchmarks/results/convergence.json`` and ``convergence.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

import pint
from pint import problems

RESULTS = Path(__file__).resolve().parent / "results"


def solve(case, B: int, coarse=None, fine_steps: int | None = None) -> dict:
    fine = case.fine
    if fine_steps is not None:
        fine = type(case.fine)(steps=fine_steps)
    coarse = coarse or case.coarse
    try:  # an explicit coarse step beyond its stability limit blows up: record it
        res = pint.parareal(case.problem, coarse, fine, num_blocks=B, tol=case.tol)
    except pint.NonFiniteStateError as err:
        return {"blocks": B, "iterations": None, "blow_up": str(err)}
    ref = pint.serial(case.problem, fine, num_blocks=B)
    k = res.iterations
    return {"blocks": B, "iterations": k, "converged": res.converged,
            "ideal_speedup": B / k if k else float(B), "efficiency": 1 / k if k else 1.0,
            "depth_ratio": ref.stats.depth / res.stats.depth,
            "error_vs_serial": float((res.y - ref.y).abs().max())}


def dahlquist_bound(B: int = 10, K: int = 6) -> dict:
    case = problems.get("dahlquist")
    out = {}
    for name, G in (("BackwardEuler(1)", pint.BackwardEuler(1)), ("SDIRK2(1)", pint.SDIRK2(1))):
        prob = case.problem
        ref = pint.serial(prob, case.fine, num_blocks=B)
        h = (prob.t_end - prob.t_start) / B
        one = pint.ODEProblem(prob.f, torch.ones(1, dtype=torch.float64), (0.0, h))
        g = pint.serial(one, G, num_blocks=1).y.item()
        f = pint.serial(one, case.fine, num_blocks=1).y.item()
        e0 = None
        rows = []
        for k in range(0, K + 1):
            res = pint.parareal(prob, G, case.fine, num_blocks=B, tol=0, max_iters=k)
            err = (res.boundaries - ref.boundaries).abs().flatten().tolist()
            if k == 0:
                e0 = max(err)
            bound = max(math.comb(n - 1, k) * abs(f - g) ** k * max(1.0, abs(g)) ** (n - 1 - k)
                        for n in range(k + 1, B + 1)) * e0 if k < B else 0.0
            rows.append({"k": k, "error": max(err), "bound": bound})
        out[name] = {"R_G": g, "R_F": f, "rows": rows}
    return out


def burgers_viscosity(quick: bool = False) -> list[dict]:
    """Burgers past the shock time (t_end = 4) with a cheap dissipative coarse step: as the
    viscosity drops, the front sharpens, the one-step implicit coarse solver smears and
    misplaces it, and iterations climb towards B (the hyperbolic failure mode of Parareal)."""
    if quick:
        B, fine, setups = 16, pint.RK4(40), [(0.5, 32), (0.01, 128)]
        coarses = {"BackwardEuler(1)": pint.BackwardEuler(1)}
    else:
        B, fine, setups = 32, pint.RK4(80), [(0.2, 64), (0.05, 64), (0.02, 128), (0.01, 256)]
        coarses = {"BackwardEuler(1)": pint.BackwardEuler(1), "SDIRK2(1)": pint.SDIRK2(1)}
    rows = []
    for nu, points in setups:
        case = problems.get("burgers", viscosity=nu, points=points, t_end=4.0)
        for label, G in coarses.items():
            res = pint.parareal(case.problem, G, fine, num_blocks=B, tol=1e-6)
            rows.append({"viscosity": nu, "points": points, "coarse": label, "blocks": B,
                         "iterations": res.iterations, "ideal_speedup": B / res.iterations,
                         "history": res.history})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="three problems, two block counts")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    names = ["dahlquist", "heat", "van_der_pol"] if args.quick else problems.names()
    block_counts = [5, 10] if args.quick else [5, 10, 20, 40]
    result: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__},
                    "vs_blocks": {}, "vs_coarse": {}, "failure_modes": {}}
    for name in names:
        case = problems.get(name)
        total_fine = case.fine.steps * case.num_blocks
        rows = []
        for B in block_counts:
            rows.append(solve(case, B, fine_steps=max(1, total_fine // B)))
        result["vs_blocks"][name] = rows
        vs_coarse = {}
        for label, G in (("recommended " + repr(case.coarse), None), ("Euler(1)", pint.Euler(1)),
                         ("RK4(1)", pint.RK4(1))):
            r = solve(case, case.num_blocks, coarse=G)
            vs_coarse[label] = r["iterations"] if r["iterations"] is not None else r["blow_up"]
        if case.has_coarse_level:  # the PDEs: the recommended coarse step on half the grid
            G = case.coarsened(factor=2).coarse
            r = solve(case, case.num_blocks, coarse=G)
            label = f"recommended on a 2x coarser grid ({G.coarse_shape[-1]} points)"
            vs_coarse[label] = r["iterations"] if r["iterations"] is not None else r["blow_up"]
        result["vs_coarse"][name] = vs_coarse
        ks = ", ".join(f"B={r['blocks']}: k={r['iterations']}" for r in rows)
        print(f"{name:16s} {ks}")
    result["dahlquist_bound"] = dahlquist_bound()
    for name, d in result["dahlquist_bound"].items():
        print(f"dahlquist {name}: " + ", ".join(f"k={r['k']} err {r['error']:.1e} <= {r['bound']:.1e}"
                                                 for r in d["rows"][:5]))
    if not args.quick:
        # chaos: blocks of 0.1 time units, one RK4 coarse step each; the horizon grows
        lor = []
        for t_end in (2.0, 10.0, 20.0):
            case = problems.get("lorenz", t_end=t_end)
            B = int(10 * t_end)
            res = pint.parareal(case.problem, pint.RK4(1), pint.RK4(20), num_blocks=B, tol=1e-6)
            lor.append({"t_end": t_end, "blocks": B, "iterations": res.iterations,
                        "ideal_speedup": B / res.iterations, "history": res.history})
        result["failure_modes"]["lorenz_horizon"] = lor
        for r in lor:
            print(f"lorenz t_end={r['t_end']:4.0f} B={r['blocks']:3d}: k={r['iterations']}")
    bur = burgers_viscosity(quick=args.quick)
    result["failure_modes"]["burgers_viscosity"] = bur
    for r in bur:
        print(f"burgers nu={r['viscosity']:g} points={r['points']} {r['coarse']} B={r['blocks']}: "
              f"k={r['iterations']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(16, 4))
        for name, rows in result["vs_blocks"].items():
            ok = [r for r in rows if r["iterations"] is not None]
            ax[0].plot([r["blocks"] for r in ok], [r["iterations"] for r in ok], "o-", label=name)
        ax[0].plot(block_counts, block_counts, "k:", label="k = B (no speedup)")
        ax[0].set(xscale="log", yscale="log", xlabel="blocks B", ylabel="iterations k to tol",
                  title="iterations vs blocks")
        ax[0].legend(fontsize=6, ncol=2)
        for name, d in result["dahlquist_bound"].items():
            ks = [r["k"] for r in d["rows"]]
            ax[1].semilogy(ks, [max(r["error"], 1e-17) for r in d["rows"]], "o-", label=f"{name} error")
            ax[1].semilogy(ks, [max(r["bound"], 1e-17) for r in d["rows"]], "--", label=f"{name} bound")
        ax[1].set(xlabel="iteration k", ylabel="max boundary error vs serial",
                  title="Dahlquist y' = -y, B = 10")
        ax[1].legend(fontsize=7)
        for r in result["failure_modes"]["burgers_viscosity"]:
            ax[2].semilogy(range(1, len(r["history"]) + 1), r["history"], "o-", ms=3,
                           label=f"nu={r['viscosity']:g}, {r['coarse']}: k={r['iterations']}")
        B_bur = result["failure_modes"]["burgers_viscosity"][0]["blocks"]
        ax[2].axvline(B_bur, color="k", ls=":", label=f"B = {B_bur}")
        ax[2].set(xlabel="iteration k", ylabel="max boundary change",
                  title="Burgers to t = 4: low viscosity stalls Parareal")
        ax[2].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.out / "convergence.png", dpi=110)
    except ImportError:
        pass
    return result


if __name__ == "__main__":
    main()
