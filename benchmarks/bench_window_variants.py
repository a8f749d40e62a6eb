"""Variants of the sliding-window sampler that were tried against Picard and not kept.

    python benchmarks/bench_window_variants.py [--quick] [--out DIR]

Issue 9 asks for a sampler ahead of ParaDiGMS's Picard iteration at equal window, equal
error and no more model evaluations. Kept: :func:`adapters.diffusion.quasi_newton_sample`
(a secant gain in the window's rebuild). Measured here and *not* kept, on the
Gaussian-mixture denoiser (float64, 16 samples, window 32, N in {100, 1000}):

* **triangular Anderson acceleration** (ParaTAA-style) of the Picard map with memory
  ``m``: for window step ``j`` the mixing weights solve the least-squares problem of the
  residual differences of steps ``a+1 .. j`` only (weighted by the step's noise scale), so
  the first step stays exact and the window keeps its triangular structure;
* **extrapolated entry**: steps entering the window start from a DDIM jump with the last
  evaluated step's prediction (no extra model call) instead of a copy of the last state.

Every variant uses the production stopping rule (ParaDiGMS's per-step test) and reports
sequential calls, model rows and the max-abs error against the serial sample. Writes
``window_variants.json``.
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
)
from adapters.diffusion.samplers import _setup  # noqa: E402


@torch.no_grad()
def window_variant(model, schedule, x_T, N: int, window: int, tol: float, memory: int = 0,
                   extrapolate: bool = False) -> tuple[torch.Tensor, int, int]:
    """Picard over a sliding window with triangular Anderson mixing (``memory`` > 0) and/or
    extrapolated entry. Returns ``(sample, sequential calls, model rows)``."""
    N, den, grid, noise, _ = _setup(model, schedule, x_T, N, 0.0, None, "ddim", None, {})
    c = {k: getattr(grid, k).to(x_T.device)
         for k in ("timesteps", "alpha_in", "alpha_out", "c_x0", "c_eps", "c_x")}
    var = ((1 - grid.alpha_out) / (1 - grid.alpha_in) * (1 - grid.alpha_in / grid.alpha_out)
           ).clamp(min=1e-8)
    batch, dim = x_T.shape[0], x_T[0].numel()
    traj = x_T.unsqueeze(0).repeat(N + 1, *([1] * x_T.dim()))
    last_x = torch.zeros(N + 1, batch, dim, dtype=torch.float64)
    last_g = torch.zeros_like(last_x)
    seen = torch.zeros(N + 1, dtype=torch.bool)
    hist: list[tuple[torch.Tensor, torch.Tensor]] = []  # (dX, dG) over all steps
    a = calls = 0
    while a < N:
        e = min(a + window, N)
        n, rows = e - a, slice(a + 1, e + 1)
        y = traj[a:e]
        j = torch.arange(a, e)
        x0, eps = den.predict(y, c["timesteps"][j], c["alpha_in"][j])
        shape = (-1,) + (1,) * (y.dim() - 1)
        phi = (c["c_x0"][j].view(shape) * x0 + c["c_eps"][j].view(shape) * eps
               + c["c_x"][j].view(shape) * y)
        calls += 1
        G = (traj[a] + torch.cumsum(phi - y, 0)).reshape(n, batch, dim).double()
        X = traj[rows].reshape(n, batch, dim).double()
        new = G
        if memory:
            known = seen[rows].view(n, 1, 1).double()
            dX, dG = torch.zeros_like(last_x), torch.zeros_like(last_g)
            dX[rows], dG[rows] = (X - last_x[rows]) * known, (G - last_g[rows]) * known
            if bool(seen[rows].any()):
                hist = (hist + [(dX, dG)])[-memory:]
            if hist:
                dR = torch.stack([g[rows] - x[rows] for x, g in hist])  # [m, n, batch, dim]
                dGs = torch.stack([g[rows] for _, g in hist])
                w = (1 / (dim * var[a:e])).view(1, n, 1, 1)
                gram = torch.einsum("pnbd,qnbd->nbpq", dR * w, dR).cumsum(0)
                rhs = torch.einsum("pnbd,nbd->nbp", dR * w, G - X).cumsum(0)
                ridge = 1e-8 * gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] + 1e-300
                gamma = torch.linalg.solve(gram + ridge * torch.eye(len(hist), dtype=gram.dtype),
                                           rhs.unsqueeze(-1)).squeeze(-1)
                new = G - torch.einsum("nbp,pnbd->nbd", gamma, dGs)
        last_x[rows], last_g[rows], seen[rows] = X, G, True
        err = (new - X).pow(2).sum(-1).amax(-1) / (dim * var[a:e])
        traj[rows] = new.to(traj.dtype).reshape(traj[rows].shape)
        bad = (err > tol * tol).nonzero()
        new_a = a + (n if bad.numel() == 0 else max(1, int(bad[0])))
        new_e = min(new_a + window, N)
        if new_e > e:
            if extrapolate:  # DDIM jump with the last evaluated prediction
                a_out = c["alpha_out"][e:new_e].view(shape)
                traj[e + 1:new_e + 1] = a_out.sqrt() * x0[-1] + (1 - a_out).sqrt() * eps[-1]
            else:
                traj[e + 1:new_e + 1] = traj[e]
        a = new_a
    return traj[N], calls, den.rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 100 only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    schedule = VPSchedule.linear(1000)
    model = GaussianMixtureDenoiser.random(schedule, dim=16, components=8, seed=0)
    x = torch.randn((16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    variants = {"anderson_m1": dict(memory=1), "anderson_m2": dict(memory=2),
                "anderson_m3": dict(memory=3), "anderson_m5": dict(memory=5),
                "extrapolated_entry": dict(extrapolate=True)}
    runs = []
    for N in ([100] if args.quick else [100, 1000]):
        ref = serial_sample(model, schedule, x, N)
        for tol in (1e-3, 1e-4):
            for name, fn in (("picard", picard_sample), ("quasi_newton", quasi_newton_sample)):
                out = fn(model, schedule, x, N, window=32, tol=tol)
                runs.append({"N": N, "tol": tol, "method": name, "calls": out.stats.depth,
                             "rows": out.stats.model_rows,
                             "error": float((out.sample - ref).abs().max())})
            for name, kw in variants.items():
                sample, calls, rows = window_variant(model, schedule, x, N, 32, tol, **kw)
                runs.append({"N": N, "tol": tol, "method": name, "calls": calls, "rows": rows,
                             "error": float((sample - ref).abs().max())})
    for r in runs:
        print(f"N={r['N']:5d} tol={r['tol']:g} {r['method']:20s} calls {r['calls']:4d} "
              f"rows {r['rows']:6d} error {r['error']:.1e}")
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__},
              "model": "GaussianMixtureDenoiser.random(VPSchedule.linear(1000), dim=16, "
                       "components=8, seed=0), float64, 16 samples, window 32",
              "runs": runs}
    assert all(math.isfinite(r["error"]) for r in runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "window_variants.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
