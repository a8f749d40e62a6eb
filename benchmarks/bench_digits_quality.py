"""Quality gate of the bundled digits model, sampled through pint (serial and SRDS).

    python benchmarks/bench_digits_quality.py [--n 500] [--steps 100]

A classifier trained on the real digits (``adapters/diffusion/pretrained/quality.py``)
scores the samples: mean max-probability, the digits that appear, and a Frechet distance
in its feature space, next to the same figures for held-out real digits. Writes
``benchmarks/results/digits_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from adapters.diffusion import load_pretrained, serial_sample, srds_sample
from adapters.diffusion.pretrained.quality import evaluate_samples, real_reference

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=500, help="samples")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    model, schedule = load_pretrained("digits")
    x = torch.randn(args.n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    result: dict = {"n": args.n, "steps": args.steps, "seed": args.seed,
                    "machine": {"platform": platform.platform(), "torch": torch.__version__}}
    with torch.inference_mode():
        t0 = time.perf_counter()
        serial = serial_sample(model, schedule, x, args.steps)
        result["serial"] = {**evaluate_samples(serial), "wall_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        out = srds_sample(model, schedule, x, args.steps, pipelined=True)
        result["srds"] = {**evaluate_samples(out.sample), "wall_s": time.perf_counter() - t0,
                          "iterations": out.iterations, "depth": out.stats.depth,
                          "max_abs_diff_vs_serial": float((out.sample - serial).abs().max())}
    result["real_heldout"] = real_reference()
    for k in ("serial", "srds", "real_heldout"):
        r = result[k]
        print(f"{k:13s} mean max-prob {r['mean_max_prob']:.3f}  digits {r['n_distinct']}  "
              f"Frechet {r['frechet']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digits_quality.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
