"""Warm starts: sampling a neighbouring noise from an earlier run's trajectory.

    python benchmarks/bench_warm_start.py [--quick] [--out DIR]

A video's next frame, an interpolation path, or a seed sweep samples noises close to one
already sampled. With ``x_T' = cos(theta) x_T + sin(theta) z`` this measures, on the
Gaussian-mixture denoiser (float64, 16 samples, N = 1000; ``--quick``: N = 100), the
sequential model calls and the error against the serial sample of ``x_T'`` for every
sampler started cold and warm (from the run of ``x_T``): Picard and quasi-Newton (window
32, tol 1e-4, ``initial=out.trajectory``) and SRDS sweep/pipelined (tol 1e-4,
``initial=out.boundaries``). Writes ``warm_start.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
)

THETAS = (0.01, 0.05, 0.2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 100")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    N = 100 if args.quick else 1000
    schedule = VPSchedule.linear(1000)
    model = GaussianMixtureDenoiser.random(schedule, dim=16, components=8, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((16, 16), generator=g, dtype=torch.float64)
    z = torch.randn((16, 16), generator=g, dtype=torch.float64)
    samplers = {
        "picard_w32": (lambda xt, **kw: picard_sample(model, schedule, xt, N, window=32,
                                                      tol=1e-4, **kw), "trajectory"),
        "qn_w32": (lambda xt, **kw: quasi_newton_sample(model, schedule, xt, N, window=32,
                                                        tol=1e-4, **kw), "trajectory"),
        "srds_sweep": (lambda xt, **kw: srds_sample(model, schedule, xt, N, tol=1e-4,
                                                    pipelined=False, **kw),
                       "boundaries"),
        "srds_pipelined": (lambda xt, **kw: srds_sample(model, schedule, xt, N, tol=1e-4,
                                                        pipelined=True, **kw), "boundaries"),
    }
    runs = []
    for name, (run, field) in samplers.items():
        kw = {"return_trajectory": True} if field == "trajectory" else {}
        first = run(x, **kw)
        guess = getattr(first, field)
        for theta in THETAS:
            x2 = math.cos(theta) * x + math.sin(theta) * z
            ref = serial_sample(model, schedule, x2, N)
            cold, warm = run(x2), run(x2, initial=guess)
            row = {"sampler": name, "theta": theta, "N": N,
                   "cold_calls": cold.stats.depth, "warm_calls": warm.stats.depth,
                   "cold_error": float((cold.sample - ref).abs().max()),
                   "warm_error": float((warm.sample - ref).abs().max())}
            runs.append(row)
            print(f"{name:15s} theta={theta:<5g} calls cold {row['cold_calls']:4d} warm "
                  f"{row['warm_calls']:4d}   error cold {row['cold_error']:.1e} warm "
                  f"{row['warm_error']:.1e}")
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__},
              "model": "GaussianMixtureDenoiser.random(VPSchedule.linear(1000), dim=16, "
                       "components=8, seed=0), float64, 16 samples",
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm_start.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
