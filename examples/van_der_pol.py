"""Parareal on the Van der Pol oscillator: convergence per iteration and exactness.

    python examples/van_der_pol.py --out out/

prints the change per iteration, the error against the serial fine solve and against
scipy's DOP853, the cost in sequential steps, and saves ``van_der_pol.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import pint

MU = 1.0


def van_der_pol(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--fine-steps", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--out", type=Path, default=None, help="folder for the figure")
    args = ap.parse_args(argv)

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    problem = pint.ODEProblem(van_der_pol, y0, t_span=(0.0, 20.0))
    coarse, fine = pint.RK4(steps=2), pint.RK4(steps=args.fine_steps)
    iterates = []
    res = pint.parareal(problem, coarse, fine, num_blocks=args.blocks, tol=args.tol,
                        callback=lambda info: iterates.append(info.boundaries.clone()))
    ref = pint.serial(problem, fine, num_blocks=args.blocks)
    sol = solve_ivp(lambda t, y: [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]], (0, 20), [2.0, 0.0],
                    method="DOP853", rtol=1e-12, atol=1e-12)
    summary = {
        "iterations": res.iterations,
        "converged": res.converged,
        "history": res.history,
        "error_vs_serial": float((res.y - ref.y).abs().max()),
        "error_vs_scipy": float(np.abs(res.y.numpy() - sol.y[:, -1]).max()),
        "depth_parareal": res.stats.depth,
        "depth_serial": ref.stats.depth,
        "ideal_speedup": ref.stats.depth / res.stats.depth,
    }
    for k, change in enumerate(res.history, 1):
        print(f"iteration {k}: max boundary change {change:.3e}")
    print(f"error vs serial fine solve {summary['error_vs_serial']:.2e}, "
          f"vs scipy DOP853 {summary['error_vs_scipy']:.2e}")
    print(f"sequential steps: parareal {res.stats.depth}, serial {ref.stats.depth} "
          f"(speedup on {args.blocks} parallel workers: {summary['ideal_speedup']:.2f}x)")
    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        t = res.times.numpy()
        for k, U in enumerate(iterates):
            ax[0].plot(t, U[:, 0].numpy(), "o-", ms=3, alpha=0.4 + 0.6 * k / len(iterates),
                       label=f"iteration {k}")
        ax[0].plot(t, ref.boundaries[:, 0].numpy(), "k--", label="serial")
        ax[0].set(xlabel="t", ylabel="y[0] at block boundaries", title="Van der Pol")
        ax[0].legend(fontsize=7)
        ax[1].semilogy(range(1, len(res.history) + 1), res.history, "o-")
        ax[1].set(xlabel="iteration", ylabel="max boundary change", title="convergence")
        fig.tight_layout()
        fig.savefig(args.out / "van_der_pol.png", dpi=120)
        print(f"wrote {args.out / 'van_der_pol.png'}")
    return summary


if __name__ == "__main__":
    main()
