"""Parareal on the chaotic Lorenz system, with the recommended setup of pint.problems.

    python examples/lorenz.py --t-end 2 --blocks 20

prints the change per iteration, the error against the serial fine solve and against
scipy's DOP853 reference, and the cost in sequential steps. Chaos amplifies the coarse
error exponentially, so the iterations needed grow with the length of the interval.
"""

from __future__ import annotations

import argparse

import pint
import pint.problems


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--t-end", type=float, default=2.0)
    ap.add_argument("--rho", type=float, default=28.0)
    ap.add_argument("--blocks", type=int, default=None, help="default: the recommended number")
    args = ap.parse_args(argv)

    case = pint.problems.get("lorenz", rho=args.rho, t_end=args.t_end)
    blocks = args.blocks or case.num_blocks
    res = pint.parareal(case.problem, case.coarse, case.fine, blocks, case.tol)
    ser = pint.serial(case.problem, case.fine, blocks)
    ref = case.reference()
    summary = {
        "iterations": res.iterations,
        "num_blocks": blocks,
        "converged": res.converged,
        "history": res.history,
        "error_vs_serial": float((res.y - ser.y).abs().max()),
        "error_vs_reference": float((res.y - ref).abs().max()),
        "depth_parareal": res.stats.depth,
        "depth_serial": ser.stats.depth,
    }
    print(f"Lorenz, rho={args.rho}, t in [0, {args.t_end}], {blocks} blocks, "
          f"coarse {case.coarse!r}, fine {case.fine!r}, tol {case.tol:g}")
    for k, change in enumerate(res.history, 1):
        print(f"iteration {k}: max boundary change {change:.3e}")
    print(f"final state {[round(v, 6) for v in res.y.tolist()]}")
    print(f"error vs serial fine solve {summary['error_vs_serial']:.2e}, "
          f"vs scipy DOP853 {summary['error_vs_reference']:.2e}")
    print(f"sequential steps: parareal {res.stats.depth}, serial {ser.stats.depth}")
    return summary


if __name__ == "__main__":
    main()
