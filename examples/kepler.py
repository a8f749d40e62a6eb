"""Parareal on the Kepler two-body problem: convergence and conservation of energy and
angular momentum.

    python examples/kepler.py --eccentricity 0.5 --periods 2

prints the change per iteration, the drift of the invariants over the block boundaries,
and the error against Kepler's exact solution.
"""

from __future__ import annotations

import argparse

import pint
import pint.problems


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--eccentricity", type=float, default=0.5)
    ap.add_argument("--periods", type=int, default=1)
    args = ap.parse_args(argv)

    case = pint.problems.get("kepler", eccentricity=args.eccentricity, periods=args.periods)
    prob = case.problem
    res = pint.parareal(prob, case.coarse, case.fine, case.num_blocks, case.tol)
    inv0 = case.invariants(prob.y0)
    inv = case.invariants(res.boundaries)
    summary = {
        "iterations": res.iterations,
        "num_blocks": case.num_blocks,
        "converged": res.converged,
        "history": res.history,
        "energy_drift": float((inv["energy"] - inv0["energy"]).abs().max()),
        "angular_momentum_drift": float((inv["angular_momentum"] - inv0["angular_momentum"]).abs().max()),
        "error_vs_exact": float((res.y - case.exact(prob.t_end)).abs().max()),
    }
    print(f"Kepler orbit, e={args.eccentricity}, {args.periods} period(s), {case.num_blocks} blocks, "
          f"coarse {case.coarse!r}, fine {case.fine!r}")
    for k, change in enumerate(res.history, 1):
        print(f"iteration {k}: max boundary change {change:.3e}")
    print(f"energy drift {summary['energy_drift']:.2e}, "
          f"angular momentum drift {summary['angular_momentum_drift']:.2e}")
    print(f"error vs exact solution {summary['error_vs_exact']:.2e}")
    return summary


if __name__ == "__main__":
    main()
