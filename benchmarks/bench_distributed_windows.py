"""Window samplers (Picard, quasi-Newton) and SRDS over 1, 2 and 4 ranks of
``pint.DistributedExecutor`` on simulated devices, against a cost model that predicts the
wall-clock.

    python benchmarks/bench_distributed_windows.py            # ranks 1, 2, 4
    python benchmarks/bench_distributed_windows.py --quick    # small and short (smoke test)

Simulated device: the model is the exact denoiser of a Gaussian mixture (16 dimensions,
float64; almost free), and every call then sleeps ``latency(rows)`` seconds, a
:class:`adapters.diffusion.planner.CostModel` (default ``--latency`` 5 ms plus ``--per-row``
1 ms per network row: a device that is saturated, as a GPU is at large batches, whose call
cost grows with its rows). The sleep leaves the CPU free, so 4 ranks can share this
machine's 2 cores and the wall-clock shows the schedule: how each call's rows are split
over the ranks, and what the gather costs. Ranks are gloo processes on this machine (one
thread each, started like torchrun); every configuration runs ``--repeats`` times, the best
wall-clock counts (until the last rank holds the result).

Cost model. A window sampler makes the same calls on any number of ranks ``R`` (the
single-process calls, recorded: call ``k`` evaluates ``n_k`` steps of ``b`` samples); each
rank evaluates a contiguous slice of ``ceil(n_k / R)`` steps at most, then one
``all_gather`` hands every rank the whole window::

    T_R = sum_k [ latency(ceil(n_k / R) b) + e + g_R ]

with ``e`` the sampler's own work per call (measured: the same run without sleeps) and
``g_R`` one all_gather of the window's buffer on ``R`` ranks (measured, 0 for R = 1).
Serial: ``N (latency(b) + e)``. SRDS (Parareal over ``B`` blocks of ``N / B`` steps, K
iterations) follows the relay of ``benchmarks/bench_distributed.py``'s ``predict`` with
``F(w) = (N / B) latency(w b)`` (the fine solves of ``w`` blocks, one call per step) and
``G = latency(b)`` (one coarse block), the message latency ``lam`` and decision latency
``d`` measured (``e`` added per call).
Writes ``benchmarks/results/distributed_windows.json`` and ``distributed_windows.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import pickle
import platform
import queue as queue_mod
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

SAMPLERS = ("picard", "quasi_newton", "srds")


class Simulated(torch.nn.Module):
    """``net``'s output, after sleeping ``cost(rows)`` seconds (a simulated device); records
    the rows of every call."""

    def __init__(self, net, cost) -> None:
        super().__init__()
        self.net, self.cost, self.rows = net, cost, []

    def forward(self, x, t):
        out = self.net(x, t)
        self.rows.append(x.shape[0])
        if self.cost is not None:
            time.sleep(self.cost(x.shape[0]))
        return out


def setup(cfg: dict, sleep: bool = True):
    from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule
    from adapters.diffusion.planner import CostModel

    sched = VPSchedule.linear(1000)
    net = GaussianMixtureDenoiser.random(sched, dim=16, components=4, seed=1)
    x = torch.randn(cfg["batch"], 16, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    cost = CostModel((1, 2), (cfg["latency"] + cfg["per_row"], cfg["latency"] + 2 * cfg["per_row"]))
    return Simulated(net, cost if sleep else None), sched, x, cost


def run(name: str, model, sched, x, cfg: dict, executor=None):
    from adapters.diffusion import picard_sample, quasi_newton_sample, srds_sample

    kw = {} if executor is None else {"executor": executor}
    with torch.no_grad():
        if name == "srds":
            return srds_sample(model, sched, x, cfg["steps"], num_blocks=cfg["blocks"],
                               tol=cfg["srds_tol"], pipelined=False, **kw)  # the sweep
        fn = picard_sample if name == "picard" else quasi_newton_sample
        return fn(model, sched, x, cfg["steps"], window=cfg["window"], tol=cfg["tol"], **kw)


def gather_seconds(link_world: int, nbytes: int, n: int = 30) -> float:
    """One all_gather of an ``nbytes`` buffer per rank (gloo, this machine)."""
    mine = torch.zeros(nbytes, dtype=torch.uint8)
    out = torch.empty(link_world, nbytes, dtype=torch.uint8)
    views = list(out.unbind(0))
    dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        dist.all_gather(views, mine)
    return (time.perf_counter() - t) / n


def rank_main(rank, world, port, cfg, results):
    import pint

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=1800))
    ex = pint.DistributedExecutor(timeout=1800)
    model, sched, x, _ = setup(cfg)
    # the window's buffer: ceil(window / R) steps of states, plus the 64-byte tail
    nbytes = math.ceil(cfg["window"] / world) * x.numel() * x.element_size() + 64
    out = {"gather_s": gather_seconds(world, nbytes)}
    # one message between ranks 0 and 1 and one store round trip (SRDS's relay)
    from bench_distributed import link_latencies

    out.update(link_latencies(rank, x))
    runs = {}
    for _ in range(cfg["repeats"]):
        for name in SAMPLERS:
            dist.barrier()
            t = time.perf_counter()
            res = run(name, model, sched, x, cfg, ex)
            wall = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            runs.setdefault(name, []).append((float(wall), res))
    if rank == 0:
        out["runs"] = {}
        for name, rows in runs.items():
            wall, res = min(rows, key=lambda r: r[0])
            out["runs"][name] = {"wall_s": wall, "wall_s_all": [r[0] for r in rows],
                                 "iterations": res.iterations, "depth": res.stats.depth,
                                 "sample": res.sample}
        results.put(pickle.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(world: int, cfg: dict, timeout: float = 1800) -> dict:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "pint", "adapters.diffusion"])
    from bench_distributed import _free_port

    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=rank_main, args=(r, world, port, cfg, results))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        return pickle.loads(results.get(timeout=timeout))
    except queue_mod.Empty:
        raise RuntimeError(f"the {world}-rank run did not report within {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def one_process(cfg: dict) -> dict:
    """Serial, and every sampler on one rank: wall-clock (best of repeats), the rows of
    each call, and the sampler's own seconds per call (the same run without sleeps)."""
    from adapters.diffusion import serial_sample

    model, sched, x, _ = setup(cfg)
    free, *_ = setup(cfg, sleep=False)
    out = {"runs": {}}
    with torch.no_grad():
        walls = []
        for _ in range(cfg["repeats"]):
            t = time.perf_counter()
            ref = serial_sample(model, sched, x, cfg["steps"])
            walls.append(time.perf_counter() - t)
        t = time.perf_counter()
        serial_sample(free, sched, x, cfg["steps"])
        engine = (time.perf_counter() - t) / cfg["steps"]
        out["serial"] = {"wall_s": min(walls), "wall_s_all": walls, "sample": ref,
                         "engine_s": engine}
    for name in SAMPLERS:
        rows = []
        for _ in range(cfg["repeats"]):
            model.rows = []
            t = time.perf_counter()
            res = run(name, model, sched, x, cfg)
            rows.append(time.perf_counter() - t)
        free.rows = []
        t = time.perf_counter()
        run(name, free, sched, x, cfg)
        engine = (time.perf_counter() - t) / max(1, len(free.rows))
        out["runs"][name] = {"wall_s": min(rows), "wall_s_all": rows, "iterations": res.iterations,
                             "depth": res.stats.depth, "sample": res.sample,
                             "call_rows": list(model.rows), "engine_s": engine}
    return out


def predict_windows(call_rows: list[int], b: int, R: int, cost, engine: float, gather: float) -> float:
    """``T_R`` of the module docstring."""
    return sum(cost(math.ceil(r // b / R) * b) + engine + (gather if R > 1 else 0.0)
               for r in call_rows)


def predict_srds(cfg: dict, R: int, K: int, cost, lam: float, d: float, engine: float) -> float:
    from bench_distributed import predict

    N, B, b = cfg["steps"], cfg["blocks"], cfg["batch"]
    F = {w: (N // B) * (cost(w * b) + engine) for w in range(1, B + 1)}
    return predict(B, R, K, F, cost(b) + engine, lam * (R > 1), d * (R > 1), False)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 40, 2 ranks, one repeat")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--latency", type=float, default=5e-3, help="seconds per call")
    ap.add_argument("--per-row", type=float, default=1e-3, help="seconds per network row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = {"steps": args.steps, "window": args.window, "batch": args.batch,
           "blocks": round(math.sqrt(args.steps)), "tol": 1e-4, "srds_tol": 1e-4,
           "latency": args.latency, "per_row": args.per_row, "repeats": args.repeats}
    ranks = args.ranks
    if args.quick:
        cfg.update(steps=40, window=8, blocks=6, repeats=1, latency=1e-3, per_row=2e-4)
        ranks = [2]
    load_before = os.getloadavg()[0]
    one = one_process(cfg)
    _, _, x, cost = setup(cfg)
    ref = one["serial"]["sample"]
    b = cfg["batch"]
    launches = {R: run_ranks(R, cfg) for R in ranks}
    table = []
    for name in SAMPLERS:
        single = one["runs"][name]
        engine = single["engine_s"]
        for R in [1, *ranks]:
            got = single if R == 1 else launches[R]["runs"][name]
            if name == "srds":
                pred = predict_srds(cfg, R, got["iterations"], cost, launches.get(R, {}).get("lam", 0.0),
                                    launches.get(R, {}).get("d", 0.0), engine)
            else:
                g = launches[R]["gather_s"] if R > 1 else 0.0
                pred = predict_windows(single["call_rows"], b, R, cost, engine, g)
            table.append({
                "sampler": name, "ranks": R, "wall_s": got["wall_s"], "wall_s_all": got["wall_s_all"],
                "predicted_s": pred, "iterations": got["iterations"], "depth": got["depth"],
                "speedup_vs_serial": one["serial"]["wall_s"] / got["wall_s"],
                "speedup_vs_one_rank": single["wall_s"] / got["wall_s"],
                "difference_vs_one_rank": float((got["sample"] - single["sample"]).abs().max()),
                "error_vs_serial": float((got["sample"] - ref).abs().max()),
            })
    serial_pred = cfg["steps"] * (cost(b) + one["serial"]["engine_s"])
    data = {
        "config": cfg, "ranks": [1, *ranks],
        "model": "16-D Gaussian mixture (exact denoiser, float64), every call sleeps "
                 "latency + per_row * rows (a saturated simulated device)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "backend": "gloo, one thread per rank"},
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "cost_model": __doc__.split("Cost model.")[1].split("Writes")[0].strip(),
        "serial": {"wall_s": one["serial"]["wall_s"], "predicted_s": serial_pred},
        "calibration": {"engine_s_per_call": {n: one["runs"][n]["engine_s"] for n in SAMPLERS},
                        "gather_s": {str(R): launches[R]["gather_s"] for R in ranks},
                        "lam_s": {str(R): launches[R]["lam"] for R in ranks},
                        "d_s": {str(R): launches[R]["d"] for R in ranks}},
        "runs": table,
        "note": "wall_s: best of repeats, until the last rank holds the result; predicted_s: "
                "the cost model with the recorded single-process calls and the measured e, g_R",
    }
    print(f"N = {cfg['steps']}, batch {b}, window {cfg['window']}, SRDS B = {cfg['blocks']}; "
          f"latency {cfg['latency'] * 1e3:g} ms + {cfg['per_row'] * 1e3:g} ms/row; load "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"serial: {one['serial']['wall_s']:.3f} s (model {serial_pred:.3f} s)")
    print(f"{'sampler':>13} {'ranks':>5} {'calls':>5} {'wall s':>8} {'model s':>8} "
          f"{'vs serial':>9} {'vs 1 rank':>9} {'diff 1 rank':>11}")
    for r in table:
        print(f"{r['sampler']:>13} {r['ranks']:>5} {r['depth']:>5} {r['wall_s']:>8.3f} "
              f"{r['predicted_s']:>8.3f} {r['speedup_vs_serial']:>9.2f} "
              f"{r['speedup_vs_one_rank']:>9.2f} {r['difference_vs_one_rank']:>11.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed_windows.json").write_text(json.dumps(data, indent=1))
    plot(data, args.out / "distributed_windows.png")
    return data


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in zip(SAMPLERS, ("C0", "C1", "C2"), strict=True):
        rows = [r for r in data["runs"] if r["sampler"] == name]
        R = [r["ranks"] for r in rows]
        ax.plot(R, [r["wall_s"] for r in rows], "o-", color=color, label=f"{name} measured")
        ax.plot(R, [r["predicted_s"] for r in rows], "x--", color=color, label=f"{name} model")
    ax.axhline(data["serial"]["wall_s"], color="k", lw=1, ls=":", label="serial")
    ax.set_xticks(data["ranks"])
    ax.set_xlabel("ranks (simulated devices)")
    ax.set_ylabel("wall-clock (s)")
    c = data["config"]
    ax.set_title(f"N = {c['steps']}, window {c['window']}, batch {c['batch']}: "
                 f"{c['latency'] * 1e3:g} ms + {c['per_row'] * 1e3:g} ms/row per call", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
