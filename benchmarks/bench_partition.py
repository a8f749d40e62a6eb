"""Block count, block partition and coarse step for SRDS, measured in sequential model calls.

    python benchmarks/bench_partition.py [--quick]

On the analytic 16-D Gaussian-mixture denoiser (linear 1000-step schedule, float64, 16
samples, 3 seeds), N = 1000, tol = 1e-3: iterations, sequential model calls (depth), total
model rows and error vs serial for
  * block counts B in {16, 32, 48, 64, 96} (sweep and pipelined);
  * partitions: uniform, blocks growing towards the data (length ~ (i + 1)^p, p = 0.5, 1:
    short blocks near pure noise, where the first coarse steps err most) and shrinking
    (p = -0.3);
  * coarse steps: DDIM (one call) and DPM-Solver++(2S) (``coarse="dpm2"``, two calls).
Writes ``benchmarks/results/partition.json`` and ``partition.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule, serial_sample, srds_sample

RESULTS = Path(__file__).resolve().parent / "results"


def power_partition(N: int, B: int, p: float) -> list[int]:
    """Block edges with block i's length proportional to (i + 1)^p (p = 0: uniform)."""
    w = (np.arange(B) + 1.0) ** p
    e = np.round(np.concatenate([[0.0], np.cumsum(w)]) / w.sum() * N).astype(int)
    for i in range(1, B + 1):
        e[i] = max(e[i], e[i - 1] + 1)
    e[-1] = N
    return e.tolist()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="N = 100, one seed (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    N = 100 if args.quick else 1000
    seeds = [0] if args.quick else [0, 1, 2]
    blocks = [10, 20] if args.quick else [16, 32, 48, 64, 96]
    tol = 1e-3
    sched = VPSchedule.linear(1000)
    rows = []
    for seed in seeds:
        model = GaussianMixtureDenoiser.random(sched, dim=16, components=8, seed=seed)
        x = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        ref = serial_sample(model, sched, x, N)
        configs = [(B, p, c) for B in blocks for p in (0.0,) for c in ("ddim", "dpm2")]
        shapes = (0.5,) if args.quick else (0.5, 1.0, -0.3)
        for B in {blocks[1], blocks[-2]}:
            configs += [(B, p, "ddim") for p in shapes]
        for B, p, coarse in configs:
            for pipelined in (False, True):
                out = srds_sample(model, sched, x, N, partition=power_partition(N, B, p),
                                  tol=tol, pipelined=pipelined, coarse=coarse)
                rows.append(dict(seed=seed, blocks=B, p=p, coarse=coarse, pipelined=pipelined,
                                 iterations=out.iterations, depth=out.stats.depth,
                                 model_rows=out.stats.model_rows,
                                 error=float((out.sample - ref).abs().max())))
    summary = {}
    for r in rows:
        key = f"B={r['blocks']} p={r['p']} {r['coarse']} {'pipelined' if r['pipelined'] else 'sweep'}"
        summary.setdefault(key, []).append(r)
    table = {k: {"mean_iterations": float(np.mean([r["iterations"] for r in v])),
                 "mean_depth": float(np.mean([r["depth"] for r in v])),
                 "mean_rows": float(np.mean([r["model_rows"] for r in v])),
                 "max_error": float(np.max([r["error"] for r in v]))} for k, v in summary.items()}
    print(f"{'configuration':38s} {'iters':>6s} {'depth':>7s} {'rows':>9s} {'max err':>9s}")
    for k, v in sorted(table.items(), key=lambda kv: kv[1]["mean_depth"]):
        print(f"{k:38s} {v['mean_iterations']:6.2f} {v['mean_depth']:7.1f} {v['mean_rows']:9.0f} "
              f"{v['max_error']:9.1e}")
    result = {"N": N, "tol": tol, "seeds": seeds, "model": "GaussianMixtureDenoiser(dim=16, "
              "components=8), linear schedule, float64, 16 samples",
              "note": "depth = sequential model calls on one device; p = 0 is uniform",
              "machine": {"platform": platform.platform(), "torch": torch.__version__},
              "runs": rows, "summary": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "partition.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for coarse in ("ddim", "dpm2"):
            for pipelined, ls in ((False, "--"), (True, "-")):
                d = [table[f"B={B} p=0.0 {coarse} {'pipelined' if pipelined else 'sweep'}"]
                     ["mean_depth"] for B in blocks]
                ax.plot(blocks, d, ls, marker="o",
                        label=f"{coarse} coarse, {'pipelined' if pipelined else 'sweep'}")
        ax.axhline(N, color="gray", lw=0.8, label=f"serial ({N})")
        ax.set(xlabel="blocks B (uniform)", ylabel="sequential model calls",
               title=f"SRDS on a Gaussian mixture, N = {N}, tol = {tol:g}", yscale="log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "partition.png", dpi=110)
    except ImportError:
        pass
    return result


if __name__ == "__main__":
    main()
