"""Parareal on the 1-D heat equation with a backward-Euler coarse step far beyond the
explicit stability limit.

    python examples/heat.py --points 31 --blocks 20

prints the ratio of the coarse step to the explicit Euler limit ``dx^2 / (2 alpha)``, the
change per iteration, and the error against the serial fine solve and the exact solution
of the semi-discrete system.
"""

from __future__ import annotations

import argparse

import pint
import pint.problems


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--diffusivity", type=float, default=1.0)
    ap.add_argument("--points", type=int, default=31)
    ap.add_argument("--blocks", type=int, default=None, help="default: the recommended number")
    args = ap.parse_args(argv)

    case = pint.problems.get("heat", diffusivity=args.diffusivity, points=args.points)
    blocks = args.blocks or case.num_blocks
    p, prob = case.params, case.problem
    dx = p["length"] / (p["points"] + 1)
    H = (prob.t_end - prob.t_start) / blocks / case.coarse.steps
    ratio = H / (dx ** 2 / (2 * p["diffusivity"]))
    res = pint.parareal(prob, case.coarse, case.fine, blocks, case.tol)
    ser = pint.serial(prob, case.fine, blocks)
    exact = case.exact(prob.t_end)
    summary = {
        "iterations": res.iterations,
        "num_blocks": blocks,
        "converged": res.converged,
        "history": res.history,
        "coarse_step_over_explicit_limit": ratio,
        "error_vs_serial": float((res.y - ser.y).abs().max()),
        "error_vs_exact": float((res.y - exact).abs().max()),
        "depth_parareal": res.stats.depth,
        "depth_serial": ser.stats.depth,
    }
    print(f"heat equation, {p['points']} interior points, alpha={p['diffusivity']}, {blocks} blocks")
    print(f"coarse {case.coarse!r}: step {H:.3g} = {ratio:.0f}x the explicit Euler limit")
    for k, change in enumerate(res.history, 1):
        print(f"iteration {k}: max boundary change {change:.3e}")
    print(f"error vs serial fine solve {summary['error_vs_serial']:.2e}, "
          f"vs exact semi-discrete solution {summary['error_vs_exact']:.2e}")
    print(f"sequential steps: parareal {res.stats.depth}, serial {ser.stats.depth}")
    return summary


if __name__ == "__main__":
    main()
