"""Multi-process scaling of distributed Parareal (``pint.DistributedExecutor``) on this
machine's CPU cores and on simulated devices, and a cost model for R devices, up to one
device per block.

    python benchmarks/bench_distributed.py                  # CPU: 2 ranks; simulated: 2, 4, 8
    python benchmarks/bench_distributed.py --ranks 2 4 8    # on a machine with 8 free cores
    python benchmarks/bench_distributed.py --quick          # small and short (smoke test)

Problem: the Lorenz system of ``pint.problems`` (coarse RK4(4), fine RK4(100), tol 1e-8,
t in [0, 2], K = 4 iterations) on B = 16 blocks, in two parts:

* ``cpu``: an ensemble of E = 8192 initial states near (1, 1, 1), held as one state
  ``[3, E]``: one ``f`` evaluation costs in proportion to E, as a large model does, so a
  batched fine solve of ``w`` blocks costs several times one block (a busy device: a CPU
  core, a GPU at full batch). One rank per core.
* ``simulated``: one trajectory whose propagators sleep ``--sleep`` seconds per block row
  after every step: saturated devices (a batch costs in proportion to its rows) that leave
  the CPU free, so 4 or 8 ranks can share 2 cores and the wall-clock shows the schedule
  itself: message and decision latency, the relay, the pipelined overlap.

Ranks are gloo processes on this machine (one thread each, started like torchrun). Rank 0
of the first launch of a part also calibrates and times the serial solve and the
one-process sweep while the other ranks wait, interleaved with the distributed runs (a
change of the machine's load hits all alike); every configuration runs ``--repeats`` times
and the best wall-clock counts (the time until the last rank holds the result). Writes
``benchmarks/results/distributed.json``.

Cost model (the schedule of ``pint/executors.py`` in seconds instead of steps). ``F(w)``: one
fine solve of ``w`` blocks batched on one device; ``G``: one coarse block solve; ``lam``: one
boundary message between neighbouring ranks; ``d``: a decision through the store. Rank ``r``
owns blocks ``a_r .. b_r - 1`` (contiguous, ``n = B / R`` each); its clock after iteration
``j``::

    T_r^0 = T_{r-1}^0 + lam + (b_r - a_r) G                                 (coarse relay)
    T_r^j = max(E_r^j, D_{j-1}, T_{r-1}^j + lam [while a_r >= j]) + (b_r - max(a_r, j)) G
    E_r^j = (T_r^{j-1} if pipelined else max(T_r^{j-1}, D_{j-1})) + F(b_r - max(a_r, j - 1))
    D_{j-1} = T_{R-1}^{j-1} + d (0 for j = 1);  the run ends at max_r T_r^{min(K, b_r)} + gather.

With ``F(w) = w F_1`` (saturated) and small ``lam``, ``d`` this gives, for K iterations::

    serial                    B F_1
    one device (sweep)        B G + sum_{k=1..K} [(B - k + 1) F_1 + (B - k) G]
    R devices, sweep          ~ B G + sum_{k=1..K} [(B / R) F_1 + (B - k) G + R lam]
    R devices, pipelined      ~ B G + K [(B / R) (F_1 + G)] + (R - 1) (B / R) G
    B devices, pipelined      ~ B G + K (F_1 + G) + B lam   -> speedup over serial ~ B / K

(pipelined: a rank's next fine solve overlaps the later ranks' correction; the coarse relay
then costs ``n G`` per iteration instead of ``B G``). The depth reported in
``result.stats.depth`` is the same recurrence in propagator steps with ``lam = d = 0`` and
``F(w) = f`` (a batch costs as much as one block: a device below saturation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import pickle
import platform
import queue as queue_mod
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

import pint
from pint import problems
from pint.parareal import Runner

RESULTS = Path(__file__).resolve().parent / "results"


class Sleepy(pint.StepPropagator):
    """``inner``'s steps, each followed by a sleep of ``per_row`` seconds per block row: a
    saturated device (a batch costs in proportion to its rows) that leaves this machine's
    CPU to the other ranks."""

    def __init__(self, inner: pint.StepPropagator, per_row: float) -> None:
        self.inner, self.per_row = inner, per_row

    def step(self, f, t, y, h):
        out = self.inner.step(f, t, y, h)
        time.sleep(self.per_row * y.shape[0])
        return out

    def steps_per_block(self, t0, t1):
        return self.inner.steps_per_block(t0, t1)

    def __repr__(self) -> str:
        return f"Sleepy({self.inner!r}, {self.per_row:g} s per row and step)"


def setup(members: int, blocks: int, sleep: float = 0.0):
    """The Lorenz ensemble (``sleep > 0``: one trajectory on simulated devices that take
    ``sleep`` seconds per row and step): problem, coarse, fine, blocks, tol."""
    case = problems.get("lorenz")
    g = torch.Generator().manual_seed(0)
    y0 = case.problem.y0[:, None] + 0.01 * torch.randn(3, members, dtype=torch.float64, generator=g)
    coarse, fine = case.coarse, case.fine
    if sleep:
        coarse, fine = Sleepy(coarse, sleep), Sleepy(fine, sleep)
    return pint.ODEProblem(case.problem.f, y0, case.problem.t_span), coarse, fine, blocks, case.tol


def best_of(fn, repeats: int, timer=time.process_time):
    """(best seconds, last value) of ``repeats`` calls of ``fn``; CPU time by default, so that
    other jobs on a shared machine do not inflate the calibration."""
    times, value = [], None
    for _ in range(repeats):
        t = timer()
        value = fn()
        times.append(timer() - t)
    return min(times), value


def calibrate(problem, coarse, fine, B: int, repeats: int, timer=time.process_time) -> dict:
    """Seconds of one fine solve of w blocks (w = 1, 2, 4, .., B) and of one coarse block."""
    run = Runner(problem)
    times = torch.linspace(*problem.t_span, B + 1, dtype=torch.float64)
    F = {}
    w = 1
    while w <= B:
        y = problem.y0.expand(w, *problem.y0.shape).clone()
        F[w] = best_of(lambda y=y, w=w: fine(run.rhs, y, times[:w], times[1:w + 1]), repeats,
                       timer)[0]
        w *= 2
    y = problem.y0[None].clone()
    G = best_of(lambda: coarse(run.rhs, y, times[:1], times[1:2]), max(repeats, 5), timer)[0]
    return {"F": F, "G": G}


def fine_cost(F: dict, w: int) -> float:
    """F(w) from the calibration: linear between the measured widths."""
    if w <= 0:
        return 0.0
    ws = sorted(F)
    if w in F:
        return F[w]
    lo = max([v for v in ws if v < w], default=ws[0])
    hi = min([v for v in ws if v > w], default=ws[-1])
    if hi == lo:
        return F[lo] * w / lo
    return F[lo] + (F[hi] - F[lo]) * (w - lo) / (hi - lo)


def predict(B: int, R: int, K: int, F: dict, G: float, lam: float, d: float, pipelined: bool) -> float:
    """Seconds the schedule takes by the cost model of the module docstring."""
    R = min(R, B)
    q, m = divmod(B, R)
    starts = [r * q + min(r, m) for r in range(R + 1)]
    T = [dict() for _ in range(R)]
    for r in range(R):
        T[r][0] = (T[r - 1][0] + lam if r else 0.0) + (starts[r + 1] - starts[r]) * G
    for j in range(1, K + 1):
        D = T[R - 1][j - 1] + d if j > 1 else 0.0
        for r in range(R):
            a, b = starts[r], starts[r + 1]
            if j > b:
                continue
            ready = T[r][j - 1] if pipelined else max(T[r][j - 1], D)
            end_fine = ready + fine_cost(F, b - max(a, j - 1))
            inc = T[r - 1][j] + lam if r and j <= a else 0.0
            T[r][j] = max(end_fine, D, inc) + (b - max(a, j)) * G
    return max(T[r][min(K, starts[r + 1])] for r in range(R))


# --------------------------------------------------------------------------- ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_latencies(rank: int, state: torch.Tensor, n: int = 20) -> dict[str, float]:
    """``{"lam": seconds of one message of ``state`` (ping-pong between ranks 0 and 1),
    "d": seconds of one decision (a store round trip)}``, on this launch's process group."""
    buf = state.clone()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    out = {"lam": (time.perf_counter() - t) / (2 * n)}
    store = dist.distributed_c10d._get_default_store()
    t = time.perf_counter()
    for i in range(n):
        store.set(f"bench/{rank}/{i}", "x")
        store.wait([f"bench/{rank}/{i}"])
        store.get(f"bench/{rank}/{i}")
    out["d"] = (time.perf_counter() - t) / n
    return out


def rank_main(rank, world, port, members, blocks, repeats, sleep, baselines, results):
    """One rank of a launch. Rank 0 also calibrates and times the one-process baselines
    (serial, local sweep) while the others wait, interleaved with the distributed runs, so
    that a change in the machine's load hits all of them alike; rank 0 reports."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=1800))
    problem, coarse, fine, B, tol = setup(members, blocks, sleep)
    ex = pint.DistributedExecutor(timeout=1800)
    pint.parareal(problem, coarse, fine, B, tol, max_iters=1, executor=ex)  # warm-up
    out = link_latencies(rank, problem.y0)
    if rank == 0 and baselines:
        out["calibration"] = calibrate(problem, coarse, fine, B, repeats,
                                       time.perf_counter if sleep else time.process_time)
    timed: dict[str, list] = {}

    def clock(name, fn, everywhere):
        dist.barrier()
        t, c = time.perf_counter(), time.process_time()
        res = fn() if everywhere or rank == 0 else None
        wall = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
        cpu = time.process_time() - c
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        cpus = [None] * world
        dist.all_gather_object(cpus, cpu)
        timed.setdefault(name, []).append((float(wall), cpus if everywhere else cpus[:1], res))

    for _ in range(repeats):
        if baselines:
            clock("serial", lambda: pint.serial(problem, fine, B), False)
            clock("sweep 1", lambda: pint.parareal(problem, coarse, fine, B, tol), False)
        for pip in (False, True):
            clock(f"{'pipelined' if pip else 'sweep'} {world}", lambda pip=pip: pint.parareal(
                problem, coarse, fine, B, tol, pipelined=pip, executor=ex), True)
    if rank == 0:
        out["runs"] = []
        for name, rows in timed.items():
            wall, cpus, res = min(rows, key=lambda row: row[0])
            sched, ranks = name.split() if name != "serial" else ("serial", "0")
            stats = res.stats
            out["runs"].append({
                "ranks": int(ranks), "schedule": sched, "wall_s": wall, "wall_s_all": [r[0] for r in rows],
                "cpu_s_per_rank": cpus, "iterations": res.iterations, "depth": stats.depth,
                "fine_steps_per_rank": [p["fine_steps"] for p in getattr(stats, "per_rank", [])],
                "y": res.y,
            })
        results.put(pickle.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(world: int, members: int, blocks: int, repeats: int, sleep: float = 0.0,
              baselines: bool = True, timeout: float = 1800) -> dict:
    ctx = multiprocessing.get_context("forkserver")  # torch is imported once, then forked
    ctx.set_forkserver_preload(["torch", "torch.distributed", "pint"])
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=rank_main,
                         args=(r, world, port, members, blocks, repeats, sleep, baselines, results))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        out = pickle.loads(results.get(timeout=timeout))
    except queue_mod.Empty:
        raise RuntimeError(f"the {world}-rank run did not report within {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return out


# --------------------------------------------------------------------------- main


def measure(label: str, ranks: list[int], members: int, blocks: int, repeats: int,
            sleep: float) -> dict:
    """One part of the benchmark: launches of each rank count, the one-process baselines,
    the cost model with the calibration of the first launch."""
    runs, cal, lam, d = [], None, 0.0, 0.0
    load_before = os.getloadavg()[0]
    for R in ranks:
        out = run_ranks(R, members, blocks, repeats, sleep, baselines=not runs)
        cal, lam, d = cal or out["calibration"], out["lam"], out["d"]
        runs += [r for r in out["runs"] if r["ranks"] == R or not runs]
    ref = next(r["y"] for r in runs if r["schedule"] == "serial")
    for r in runs:
        r["error_vs_serial"] = float((r.pop("y") - ref).abs().max())
    t_serial = next(r["wall_s"] for r in runs if r["schedule"] == "serial")
    one = next(r["wall_s"] for r in runs if r["ranks"] == 1)
    K = next(r["iterations"] for r in runs if r["ranks"] == 1)
    for r in runs:
        if r["ranks"] >= 1:
            m = r["ranks"] > 1
            r["predicted_s"] = predict(blocks, r["ranks"], r["iterations"], cal["F"], cal["G"],
                                       lam * m, d * m, r["schedule"] == "pipelined")
        r["speedup_vs_serial"] = t_serial / r["wall_s"]
        r["speedup_vs_one_process_parareal"] = one / r["wall_s"]
    model = []
    for R in sorted(r for r in {1, 2, 4, 8, blocks} if r <= blocks):
        for sched in ("sweep", "pipelined") if R > 1 else ("sweep",):
            t = predict(blocks, R, K, cal["F"], cal["G"], lam * (R > 1), d * (R > 1),
                        sched == "pipelined")
            model.append({"devices": R, "schedule": sched, "predicted_s": t,
                          "predicted_speedup_vs_serial": blocks * cal["F"][1] / t})
    part = {
        "label": label, "members": members, "blocks": blocks, "sleep_per_row_step_s": sleep,
        "iterations": K, "repeats": repeats,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "calibration": {"F_w_s": {str(k): v for k, v in cal["F"].items()}, "G_s": cal["G"],
                        "lam_s": lam, "d_s": d},
        "runs": runs, "model": model,
    }
    print(f"{label}: B = {blocks}, K = {K}; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"calibration: F(w) = {', '.join(f'{k}: {v:.3f}' for k, v in cal['F'].items())} s, "
          f"G = {cal['G'] * 1e3:.2f} ms, message {lam * 1e3:.3f} ms, decision {d * 1e3:.3f} ms")
    print(f"{'ranks':>5} {'schedule':>10} {'wall s':>8} {'model s':>8} {'vs serial':>9} "
          f"{'vs 1 proc':>9} {'K':>3} {'depth':>6}  CPU s per rank")
    for r in runs:
        print(f"{r['ranks']:>5} {r['schedule']:>10} {r['wall_s']:>8.3f} "
              f"{r.get('predicted_s', float('nan')):>8.3f} {r['speedup_vs_serial']:>9.2f} "
              f"{r['speedup_vs_one_process_parareal']:>9.2f} {r['iterations']:>3} {r['depth']:>6}  "
              f"{[round(c, 2) for c in r['cpu_s_per_rank']]}")
    print("model:", "; ".join(f"{m['devices']} {m['schedule']} {m['predicted_s']:.3f} s "
                              f"({m['predicted_speedup_vs_serial']:.2f}x serial)" for m in model))
    return part


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problems, 2 ranks, one repeat")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2],
                    help="rank counts for the CPU part (>= 2; one per free core)")
    ap.add_argument("--simulated-ranks", type=int, nargs="+", default=[2, 4, 8],
                    help="rank counts for the simulated devices (they sleep: cores may be shared)")
    ap.add_argument("--members", type=int, default=8192, help="ensemble size E of the CPU part")
    ap.add_argument("--sleep", type=float, default=2e-3, help="simulated seconds per row and step")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if min(args.ranks + args.simulated_ranks) < 2:
        ap.error("every launch has at least 2 ranks (the one-process baselines run on rank 0)")
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.quick:
        parts = [("cpu", [2], 64, 4, 1, 0.0), ("simulated", [2], 1, 4, 1, 2e-4)]
    else:
        parts = [("cpu", args.ranks, args.members, 16, args.repeats, 0.0),
                 ("simulated", args.simulated_ranks, 1, 16, args.repeats, args.sleep)]
    problem, coarse, fine, _, tol = setup(1, 1)
    data = {
        "problem": "lorenz (pint.problems), t in [0, 2]; cpu: an ensemble of E states as one "
                   "[3, E] state; simulated: one trajectory, every propagator step sleeps "
                   "sleep_per_row_step_s per block row (a saturated device)",
        "coarse": repr(coarse), "fine": repr(fine), "tol": tol,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "backend": "gloo, one thread per rank"},
        "cost_model": __doc__.split("Cost model")[1].strip(),
        "note": "wall_s: best of repeats (wall_s_all: each), until the last rank holds the result; "
                "cpu_s_per_rank: CPU seconds each rank spent in that run (a rank waiting for a "
                "message or a core spends none); predicted_s: the cost model with F(w), G "
                "calibrated on rank 0 (cpu: CPU seconds, i.e. each rank on its own core; "
                "simulated: wall-clock) and the measured lam, d; model rows beyond the measured "
                "rank counts are predictions only",
    }
    for label, ranks, members, blocks, repeats, sleep in parts:
        data[label] = measure(label, ranks, members, blocks, repeats, sleep)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
