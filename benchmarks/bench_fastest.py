"""Issue 18: the published peers reproduced in one harness, against ``picard_sample``.

    python benchmarks/bench_fastest.py [--quick] [--cases vp flow digits sd_unet]
                                       [--steps N ...] [--fresh] [--out DIR]

Sequential model calls, model rows per sample and max-abs error against the serial sample
for every method over a grid of tolerances and windows, on four cases:

* ``vp``, ``flow``: float64 Gaussian mixtures (8 samples; ``VPSchedule.linear(1000)`` with
  DDIM, ``SigmaSchedule.flow_matching(shift=3.0)`` with Euler), N = 25, 100, 1000,
  windows ``min(w, N)`` for w in 32, 64, 128, targets 1e-3 and 1e-5;
* ``digits``: the bundled model (``load_pretrained("digits")``, float32 UNet on 1x8x8,
  DDIM) and ``sd_unet``: a tiny StableDiffusion UNet (random-weight
  ``diffusers.UNet2DConditionModel`` with cross-attention on 4x8x8 latents, one random
  prompt embedding for every sample, no CFG, SD's ``DDIMScheduler`` through
  ``adapters.diffusers.from_diffusers``), float32, N = 25 and 100, targets 1e-3 and twice
  the serial float32 floor (``bench_samplers.serial_floor``: batched against one-by-one
  serial sampling). To fit about 15 CPU minutes these use **4 samples, windows 64 and
  128 only** (N = 100: 64 and 100; N = 25: 25), a shorter tolerance grid per method run
  loosest first and **stopped once the tighter target is reached** (or the calls reach
  N), and no separate ``parataa_w{N}`` (the same run as ``parataa_full_m2``).

For each case, ``N`` and error target the table keeps each method's fewest calls among
its runs that reach the target with **no more model rows per sample than Picard's** run
there (Picard: its fewest-calls run over the same windows), and the ratio ``Picard calls
/ method calls`` (``>= 1.6`` is the issue's goal). ``--cases`` runs a subset and merges it
into the existing ``fastest.json`` (each (case, N) run replaces its old entries; the rest
is kept; ``--fresh`` writes only this run). Methods:

* ``serial``; ``srds_pipelined`` (Parareal, default blocks, tolerance on the final change);
* ``picard`` (ParaDiGMS, pint's ``picard_sample``), ``qn`` (``quasi_newton_sample``);
* ``paradigms``: Picard with ParaDiGMS's own slide (the first failing step is accepted after
  its update, ``1 + ind``) instead of ``picard_sample``'s (one step less);
* ``parataa``: :func:`~adapters.diffusion.taa_sample` as the authors run it: window = all
  steps, ``order`` = all steps (their DiT setting) and 20 (their SD setting, as
  ``parataa_o20``), Anderson memory 2, 3 and 5, Tikhonov 1e-3, float64 bookkeeping, copy
  initialisation, the two-part residual test (``tol_abs = tol``); ``parataa_w`` the same
  with a sliding window;
* ``parasolver``: Picard with one preconditioning step and DDIM-jump (``x0``
  extrapolation) initialisation of every state outside the window (ParaSolver's DDIM
  setting ``num_preconditioning_steps=1``, one step per subinterval);
* ``srds_init_picard`` / ``srds_init_qn``: the window samplers started from
  :func:`~adapters.diffusion.coarse_trajectory` (``round(sqrt(N))`` blocks; its calls are
  counted: one sequential call per block);
* ``taa_ext``: ParaSolver's extrapolated initialisation, ParaTAA's eps-fixed coupling with
  Anderson memory 2, the change test and ParaDiGMS's slide
  (``taa_sample(init="extrapolate", linear="eps", memory=2, test="change")``);
* ``secant`` / ``secant_ext``: quasi-Newton's secant coupling with ParaDiGMS's slide,
  copy / extrapolated initialisation (``taa_sample(linear="secant", memory=1,
  test="change", init=...)``).

What does not reproduce here, and why (measured; ``fastest.json`` ``note``/``verdict``):

* ParaTAA's few parallel steps come with a window of all steps. Unconstrained it does cut
  calls at N = 1000 (VP: 13 calls at error 1e-3 and 15 at 1e-5 against Picard's 16 and
  27, 1.2-1.8x) but with 2.7-4.1x Picard's model rows (7157 / 7717 per sample against
  1744 / 2908; measured after issue 27 made taa's stopping test sound: before it, 9 / 16
  calls were reported converged on a test that accepted wrong samples); at N = 100 and 25 it is no faster than Picard (10-15 calls against 11-13)
  at 2x its rows. Within Picard's rows (a sliding window of <= 128) it is 3x slower than
  Picard (86-98 calls at 1e-5, N = 1000): Anderson mixing on a sliding window gains
  nothing (the ``bench_window_variants`` result again). Its stopping test now includes
  Picard's per-step change test, so ``tol`` means what it means for Picard (ParaTAA's own
  residual test with ``tol_abs = tol`` alone accepted errors of 0.85 at N = 1000).
* ParaSolver's ~2x fewer iterations than ParaDiGMS: its published runs use a 5x looser
  tolerance than their ParaDiGMS runs (DDIM: 0.05 vs 0.01, ``Expr_CMP_SD.py``); at equal
  error against the serial sample its extrapolated initialisation gives 1.0-1.2x.
* SRDS-initialised windows: the coarse sweep's ``sqrt(N)`` sequential calls cost more than
  the window iterations they save (0.34-0.83x Picard's calls).
* The 1.6x goal within Picard's rows is met once (VP, N = 100, error 1e-5: ``secant``,
  ParaDiGMS's slide with the secant coupling, 8 calls against 13) and missed elsewhere:
  best 1.57x (VP N = 100, 1e-3, ``qn``), 1.40-1.42x at N = 1000, 1e-5 (``secant_ext``),
  1.07-1.20x at N = 1000, 1e-3, where Picard with a window of 128 already needs only
  16-18 calls for N = 1000 steps: the window's own slide bounds every method at
  ``N / window`` calls, and fewer calls need a wider window, i.e. more rows.
* The digits model (float32) misses the goal everywhere: best within Picard's rows
  ``secant`` 10 calls against Picard's 14 at N = 100, 1e-3 (1.40x), ``secant`` 8 vs 10
  (1.25x) at N = 25; at the float32 floor (2.3e-6 / 2.6e-6) ``secant`` / ``qn`` 1.14-1.18x
  (11 vs 13, 14 vs 16). ParaTAA (window = all steps) is slower than Picard at any rows
  (N = 100: 15 calls / 841 rows at 1e-3, 22 / 1213 at the floor, against 14 / 576 and
  16 / 715); ParaSolver 0.84-1.08x; SRDS-initialised windows 0.64-0.87x.
* The tiny SD UNet (random weights: its latents grow to max |x_0| ~ 40-47, so its floor
  is 2.5e-5 / 5.7e-5) meets the goal at both N and both targets: ParaTAA (all steps) 6-7
  calls against Picard's 11 / 14 at 1e-3 (1.8-2.0x; 5 calls before its test was made
  sound), 7-8 against 13 / 16 at twice the floor; ``qn``, ``secant``,
  ``secant_ext`` and ``taa_ext`` 1.83-2.0x. Why the random network is so much easier
  than the trained digits model is not measured here; a random-weight UNet is no
  stand-in for a trained StableDiffusion model.

Writes ``fastest.json`` and ``fastest.png`` (calls against error, one panel per case and N).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    SigmaSchedule,
    VPSchedule,
    coarse_trajectory,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
    taa_sample,
)

BATCH = 8
WINDOWS = (32, 64, 128)
TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
#: ParaTAA's residual test is absolute as well: its tolerances sit lower
TAA_TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7)
SRDS_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
TARGETS = (1e-3, 1e-5)
GOAL = 1.6
#: the float64 mixtures (one per schedule) and the float32 networks
MIXTURES = ("vp", "flow")
NETS = ("digits", "sd_unet")
CASES = MIXTURES + NETS
#: float32 networks: fewer samples, windows and tolerances (CPU time), each method's
#: tolerances run loosest first and stop once the tightest target is reached
NET_BATCH = 4
NET_STEPS = (25, 100)
NET_WINDOWS = (64, 128)
NET_TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
NET_TAA_TOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7)
NET_SRDS_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
NET_TARGET = 1e-3
#: the tiny StableDiffusion UNet (random weights, seed 0) and its scheduler: SD's betas
SD_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
    layers_per_block=1, cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
#: prompt embedding: [1, tokens, cross_attention_dim], seed 1, the same for every sample
SD_TOKENS = 12


def schedules() -> dict:
    return {"vp": VPSchedule.linear(1000), "flow": SigmaSchedule.flow_matching(shift=3.0)}


class Conditioned(torch.nn.Module):
    """A text-conditioned UNet as ``model(x, t)``: one prompt embedding for every row
    (``num_images_per_prompt`` samples of one prompt, no classifier-free guidance)."""

    def __init__(self, model: torch.nn.Module, embedding: torch.Tensor) -> None:
        super().__init__()
        self.model, self.embedding = model, embedding
        self.sample_shape = tuple(model.sample_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.embedding.to(x.dtype).expand(x.shape[0], *self.embedding.shape[1:])
        return self.model(x, t, encoder_hidden_states=e)


def make_net(case: str, tmp: Path) -> tuple[torch.nn.Module, object, str]:
    """``(model, schedule, description)`` of a float32 network case."""
    if case == "digits":
        import bench_samplers

        model, schedule, info = bench_samplers.load_digits(tmp)
        return model, schedule, ('load_pretrained("digits") (UNet2DModel on 1x8x8, float32), '
                                 f"DDIM, sha256 {info['weights_sha256'][:12]}")
    if case == "sd_unet":
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from diffusers.utils import logging as dlog

        from adapters.diffusers import from_diffusers

        dlog.set_verbosity_error()
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD_UNET).eval()
        model, schedule = from_diffusers(unet, DDIMScheduler(**SD_SCHEDULER))
        emb = torch.randn((1, SD_TOKENS, SD_UNET["cross_attention_dim"]),
                          generator=torch.Generator().manual_seed(1))
        return Conditioned(model, emb), schedule, (
            "tiny StableDiffusion UNet: diffusers.UNet2DConditionModel (random weights, seed "
            "0, 4x8x8 latents, block_out_channels (8, 16), cross-attention dim 16), one random "
            f"prompt embedding [1, {SD_TOKENS}, 16] (seed 1) for every sample, no CFG, float32; "
            "from_diffusers(unet, DDIMScheduler(scaled_linear 0.00085-0.012, steps_offset=1))")
    raise ValueError(f"unknown network case {case!r}; choose from {NETS}")


def methods(N: int, windows: tuple[int, ...] = WINDOWS, tols: tuple = TOLS,
            taa_tols: tuple = TAA_TOLS, srds_tols: tuple = SRDS_TOLS,
            dedup: bool = False) -> list[tuple[str, dict, tuple, object]]:
    """``(name, settings, tolerances, run(model, schedule, x, tol) -> (sample, calls,
    rows))``. ``dedup``: leave out ``parataa_w{N}`` (the same run as
    ``parataa_full_m2``)."""
    out = []

    def add(name, settings, tols, fn):
        out.append((name, settings, tols, fn))

    def std(f, **kw):
        def run(m, s, x, tol):
            o = f(m, s, x, N, tol=tol, **kw)
            return o.sample, o.stats.depth, o.stats.model_rows
        return run

    def srds_init(f, w):
        B = min(N, max(1, round(math.sqrt(N))))

        def run(m, s, x, tol):
            g = coarse_trajectory(m, s, x, N, B)
            o = f(m, s, x, N, window=w, tol=tol, initial=g)
            return o.sample, o.stats.depth + B, o.stats.model_rows + B * x.shape[0]
        return run

    def srds(m, s, x, tol):
        o = srds_sample(m, s, x, N, tol=tol, pipelined=True)
        return o.sample, o.stats.depth, o.stats.model_rows

    add("srds_pipelined", {}, srds_tols, srds)
    for w in sorted({min(w, N) for w in windows}):
        add(f"picard_w{w}", {"window": w}, tols, std(picard_sample, window=w))
        add(f"qn_w{w}", {"window": w}, tols, std(quasi_newton_sample, window=w))
        add(f"paradigms_w{w}", {"window": w}, tols, std(
            taa_sample, window=w, linear="identity", memory=1, test="change"))
        add(f"parasolver_w{w}", {"window": w, "preconditioning": 1}, tols, std(
            taa_sample, window=w, linear="identity", memory=1, test="change",
            init="extrapolate", preconditioning=1))
        if not (dedup and w == N):
            add(f"parataa_w{w}", {"window": w, "memory": 2}, taa_tols, std(
                taa_sample, window=w, memory=2))
        add(f"srds_init_picard_w{w}", {"window": w}, tols, srds_init(picard_sample, w))
        add(f"srds_init_qn_w{w}", {"window": w}, tols, srds_init(quasi_newton_sample, w))
        add(f"taa_ext_w{w}", {"window": w, "memory": 2}, tols, std(
            taa_sample, window=w, linear="eps", memory=2, test="change", init="extrapolate"))
        add(f"secant_w{w}", {"window": w}, tols, std(
            taa_sample, window=w, linear="secant", memory=1, test="change"))
        add(f"secant_ext_w{w}", {"window": w}, tols, std(
            taa_sample, window=w, linear="secant", memory=1, test="change", init="extrapolate"))
    for mem in (2, 3, 5):
        add(f"parataa_full_m{mem}", {"window": N, "order": N, "memory": mem}, taa_tols,
            std(taa_sample, memory=mem))
    if N > 20:
        add("parataa_full_o20", {"window": N, "order": 20, "memory": 2}, taa_tols,
            std(taa_sample, memory=2, order=20))
    return out


def family(name: str) -> str:
    for f in ("srds_init_picard", "srds_init_qn", "parataa_full", "parataa", "parasolver",
              "paradigms", "picard", "qn", "taa_ext", "secant_ext", "secant", "srds_pipelined",
              "serial"):
        if name.startswith(f):
            return f
    return name


def summarize(table: list[dict]) -> str:
    """One sentence per (schedule, N, target): Picard's calls and the best other family
    within Picard's rows (ratio), and ParaTAA's calls and rows at any rows."""
    parts = []
    keys = dict.fromkeys((r["schedule"], r["N"], r["target"]) for r in table)
    for s, N, t in keys:
        rows = [r for r in table if (r["schedule"], r["N"], r["target"]) == (s, N, t)]
        pic = rows[0]
        fams = [r for r in rows if r.get("ratio") and r["family"] not in ("picard", "serial")]
        top = max(fams, key=lambda r: r["ratio"], default=None)
        taa = next((r for r in rows if r["family"] == "parataa_full"), None)
        txt = f"{s} N={N} error<={t:g}: Picard {pic['picard_calls']} calls"
        if top:
            txt += (f", best {top['family']} {top['best']['calls']} ({top['ratio']:.2f}x, "
                    f"{top['best']['rows_per_sample']:.0f} vs {pic['picard_rows']:.0f} rows)")
        if taa and taa["best_any_rows"]:
            f = taa["best_any_rows"]
            txt += f", ParaTAA (all steps) {f['calls']} calls at {f['rows_per_sample']:.0f} rows"
        parts.append(txt)
    return "; ".join(parts) + "."


def best(runs: list[dict], target: float, rows_cap: float | None) -> dict | None:
    ok = [r for r in runs if r["error"] <= target
          and (rows_cap is None or r["rows_per_sample"] <= rows_cap)]
    return min(ok, key=lambda r: (r["calls"], r["rows_per_sample"]), default=None)


def run_grid(case: str, model, sch, x: torch.Tensor, N: int, grid: list, ref: torch.Tensor,
             stop: float | None = None) -> list[dict]:
    """Every method of ``grid`` at each of its tolerances (loosest first); with ``stop``,
    a method's tolerances end once its error is ``<= stop`` or its calls reach ``N``."""
    batch = x.shape[0]
    runs = [{"method": "serial", "family": "serial", "tol": None, "calls": N,
             "rows_per_sample": N, "error": 0.0}]
    for name, settings, tols, fn in grid:
        for tol in tols:
            sample, calls, rows = fn(model, sch, x, tol)
            err = float((sample.double() - ref.double()).abs().max())
            if not math.isfinite(err):
                raise FloatingPointError(f"{case} N={N} {name} tol={tol}: {err}")
            runs.append({"method": name, "family": family(name), "settings": settings,
                         "tol": tol, "calls": calls, "rows_per_sample": rows / batch,
                         "error": err})
            if stop is not None and (err <= stop or calls >= N):
                break
    return runs


def table_rows(case: str, N: int, runs: list[dict], targets: tuple[float, ...]) -> list[dict]:
    """Per target: each family's fewest calls within Picard's rows (and at any rows)."""
    table = []
    fams = list(dict.fromkeys(r["family"] for r in runs))
    for target in targets:
        pic = best([r for r in runs if r["family"] == "picard"], target, None)
        pic64 = best([r for r in runs if r["family"] == "picard"
                      and r["settings"]["window"] <= 64], target, None)
        cap = pic["rows_per_sample"] if pic else None
        for fam in fams:
            fr = [r for r in runs if r["family"] == fam]
            b = best(fr, target, cap)
            free = best(fr, target, None)
            row = {"schedule": case, "N": N, "target": target, "family": fam,
                   "picard_calls": pic["calls"] if pic else None, "picard_rows": cap,
                   "picard_w64_calls": pic64["calls"] if pic64 else None,
                   "best": b, "best_any_rows": free}
            if b and pic:
                row["ratio"] = pic["calls"] / b["calls"]
            table.append(row)
    return table


def verdict_lines(table: list[dict]) -> list[str]:
    out = []
    for row in table:
        b, f = row["best"], row["best_any_rows"]
        out.append(
            f"{row['schedule']} N={row['N']} err<={row['target']:g} {row['family']}: "
            + (f"{b['calls']} calls, {b['rows_per_sample']:.0f} rows ({b['method']} "
               f"tol={b['tol']}), {row.get('ratio', 0):.2f}x Picard's {row['picard_calls']}"
               if b else "no run within Picard's rows")
            + (f"; any rows: {f['calls']} calls, {f['rows_per_sample']:.0f} rows ({f['method']})"
               if f else "; never reached"))
    return out


def merge(old: dict, new: dict) -> dict:
    """``new``'s (case, N) results replace ``old``'s; every other case and N is kept."""
    done = {(s, N) for s in new["runs"] for N in new["runs"][s]}
    order = {c: i for i, c in enumerate(CASES)}
    runs: dict = {}
    for src in (old.get("runs", {}), new["runs"]):
        for s, by_n in src.items():
            for N, r in by_n.items():
                if src is new["runs"] or (s, N) not in done:
                    runs.setdefault(s, {})[N] = r
    runs = {s: dict(sorted(runs[s].items(), key=lambda kv: int(kv[0])))
            for s in sorted(runs, key=lambda c: order.get(c, len(order)))}
    table = [r for r in old.get("table", []) if (r["schedule"], str(r["N"])) not in done]
    table += new["table"]
    table.sort(key=lambda r: (order.get(r["schedule"], len(order)), r["N"], -r["target"]))
    out = {**old, **{k: v for k, v in new.items() if k not in ("runs", "table")}}
    for key in ("targets", "floors", "models", "runtime_s"):
        prev = old.get(key, {})
        if key == "runtime_s" and not isinstance(prev, dict):  # one total for the mixtures
            prev = {"+".join(MIXTURES): prev}
        merged = {s: dict(v) if isinstance(v, dict) else v for s, v in prev.items()}
        for s, v in new.get(key, {}).items():
            merged[s] = {**merged.get(s, {}), **v} if isinstance(v, dict) and isinstance(
                merged.get(s), dict) else v
        out[key] = merged
    out["runs"], out["table"] = runs, table
    out["verdict"] = verdict_lines(table)
    out["note"] = summarize(table)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N in {25, 100}, VP only")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=None,
                    help=f"which cases to run (default: all of {', '.join(CASES)})")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="N (default: 25 100 1000 for the mixtures, "
                         f"{' '.join(map(str, NET_STEPS))} for the networks)")
    ap.add_argument("--fresh", action="store_true",
                    help="write only this run (default: merge into the existing fastest.json, "
                         "replacing the (case, N) run here)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = ["vp"] if args.quick else (args.cases or list(CASES))
    t_start = time.time()
    new: dict = {"runs": {}, "table": [], "targets": {}, "floors": {}, "models": {},
                 "runtime_s": {}}
    scheds = schedules()
    import tempfile

    with tempfile.TemporaryDirectory() as tmpdir:
        for case in cases:
            if case in MIXTURES:
                sch = scheds[case]
                model = GaussianMixtureDenoiser.random(sch, dim=16, components=8, seed=0)
                x = torch.randn((BATCH, 16), generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
                steps = [25, 100] if args.quick else (args.steps or [25, 100, 1000])
                new["models"][case] = ("GaussianMixtureDenoiser.random(schedule, dim=16, "
                                       f"components=8, seed=0), float64, {BATCH} samples, "
                                       "x_T seed 0; " + {"vp": "VPSchedule.linear(1000), DDIM",
                                                         "flow": "SigmaSchedule.flow_matching("
                                                                 "shift=3.0), Euler"}[case])
            else:
                import bench_samplers

                model, sch, desc = make_net(case, Path(tmpdir))
                x = bench_samplers.make_x(model, torch.float32, NET_BATCH)
                steps = args.steps or list(NET_STEPS)
                new["models"][case] = f"{desc}; {NET_BATCH} samples, x_T seed 0"
            for N in steps:
                t0 = time.time()
                ref = serial_sample(model, sch, x, N)
                if case in MIXTURES:
                    targets, stop = TARGETS, None
                    grid = methods(N)
                else:
                    floor = bench_samplers.serial_floor(model, sch, x, N, ref)
                    if not floor["value"] > 0:
                        raise RuntimeError(f"{case} N={N}: the serial float32 floor is 0")
                    new["floors"].setdefault(case, {})[str(N)] = floor
                    targets = (NET_TARGET, 2 * floor["value"])
                    stop = min(targets)
                    grid = methods(N, NET_WINDOWS, NET_TOLS, NET_TAA_TOLS, NET_SRDS_TOLS,
                                   dedup=True)
                runs = run_grid(case, model, sch, x, N, grid, ref, stop)
                new["runs"].setdefault(case, {})[str(N)] = runs
                new["targets"].setdefault(case, {})[str(N)] = list(targets)
                new["table"] += table_rows(case, N, runs, targets)
                dt = round(time.time() - t0, 1)
                new["runtime_s"].setdefault(case, {})[str(N)] = dt
                print(f"{case} N={N}: {len(runs)} runs ({dt} s, total "
                      f"{time.time() - t_start:.0f} s)", flush=True)
    print("\n".join(verdict_lines(new["table"])))
    base = {"machine": {"platform": platform.platform(), "torch": torch.__version__},
            "model": "GaussianMixtureDenoiser.random(schedule, dim=16, components=8, seed=0), "
                     f"float64, {BATCH} samples, x_T seed 0",
            "schedules": {"vp": "VPSchedule.linear(1000), DDIM",
                          "flow": "SigmaSchedule.flow_matching(shift=3.0), Euler",
                          "digits": "the bundled model's DDIM (VP, trailing spacing)",
                          "sd_unet": "SD's DDIMScheduler (scaled_linear, leading spacing)"},
            "rule": "per (case, N, target): each family's fewest calls with error <= target "
                    "and rows per sample <= Picard's fewest-calls run (windows "
                    f"{WINDOWS} on the mixtures, {NET_WINDOWS} on the networks; min(w, N)); "
                    f"ratio = Picard calls / calls; goal {GOAL}. Targets: {TARGETS} on the "
                    f"float64 mixtures; {NET_TARGET} and 2x the serial float32 floor "
                    "(bench_samplers.serial_floor) on the networks"}
    path = args.out / "fastest.json"
    old = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    report = merge(old, {**base, **new})
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    plot(report["runs"], args.out / "fastest.png", report.get("targets", {}))
    return report


def plot(results: dict, path: Path, targets: dict | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    panels = [(s, N) for s in results for N in results[s]]
    ncol = min(5, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4 * nrow), squeeze=False)
    fams = list(dict.fromkeys(r["family"] for s in results for N in results[s]
                              for r in results[s][N]))
    colors = {f: plt.cm.tab20(i % 20) for i, f in enumerate(fams)}  # one colour per family
    for ax, (s, N) in zip(axes.flat, panels, strict=False):
        runs = results[s][N]
        for fam in dict.fromkeys(r["family"] for r in runs):
            if fam == "serial":
                continue
            pts = sorted((r["error"], r["calls"]) for r in runs if r["family"] == fam
                         and r["error"] > 0)
            front, low = [], math.inf  # fewest calls at each error level
            for e, c in pts:
                if c < low:
                    front.append((e, c))
                    low = c
            if front:
                ax.step([p[0] for p in front], [p[1] for p in front], where="post",
                        label=fam, marker=".", color=colors[fam])
        for t in (targets or {}).get(s, {}).get(N, TARGETS):
            ax.axvline(t, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("max error vs serial")
        ax.set_ylabel("sequential model calls")
        ax.set_title(f"{s}, N = {N}")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[ncol - 1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
