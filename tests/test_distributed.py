"""DistributedExecutor on gloo process groups of 2 and 4 CPU ranks spawned by the tests.

Each group of processes runs several scenarios (spawning costs more than solving) and
sends its results back; the test process compares them with single-process runs. Every
launch has a deadline, so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import multiprocessing
import os
import pickle
import queue as queue_mod
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import pint
from pint import problems
from pint.stopping import MaxAbsChange

ROOT = Path(__file__).resolve().parents[1]
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "torch.distributed", "pint", "adapters.diffusion"])


# --------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(worker, rank, world, port, results, finished, args):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=60))
        out = worker(rank, world, *args)
    except BaseException as err:  # report, then leave
        out = {"crash": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
    results.put((rank, pickle.dumps(out)))  # by value: this process leaves at once
    results.close()
    results.join_thread()
    if rank == 0:  # it hosts the store: stay until every rank has reported
        finished.wait(timeout=20)
    os._exit(0)  # skip the teardown of a process group that may hold failed operations


def launch(worker, world, *args, deadline=90.0):
    """Run ``worker(rank, world, *args)`` on ``world`` gloo ranks; ``{rank: result}``
    (missing ranks died). Fails the test after ``deadline`` seconds."""
    port, results, finished = _free_port(), _CTX.Queue(), _CTX.Event()
    procs = [_CTX.Process(target=_entry, args=(worker, r, world, port, results, finished, args))
             for r in range(world)]
    for p in procs:
        p.start()
    out, end = {}, time.monotonic() + deadline
    try:
        while True:
            waiting = [r for r, p in enumerate(procs) if r not in out and p.is_alive()]
            try:
                rank, res = results.get(timeout=0.5)
                out[rank] = pickle.loads(res)
            except queue_mod.Empty:
                if not waiting:  # every rank reported or died
                    break
            if time.monotonic() > end:
                pytest.fail(f"distributed run hung: results from ranks {sorted(out)} only")
    finally:
        finished.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    for r, res in out.items():
        if isinstance(res, dict) and "crash" in res:
            pytest.fail(f"rank {r} crashed:\n{res['crash']}")
    return out


def _summary(res: pint.Result) -> dict:
    return {"boundaries": res.boundaries, "y": res.y, "iterations": res.iterations,
            "converged": res.converged, "history": res.history, "stats": res.stats.as_dict()}


def _error(fn):
    try:
        fn()
    except BaseException as err:
        return type(err).__name__, str(err)
    return None


# --------------------------------------------------------------------------- scenarios


def lorenz_case():
    case = problems.get("lorenz")
    return case.problem, case.coarse, case.fine, case.num_blocks, case.tol


def uneven_case():
    """Van der Pol on 10 blocks: shards of 3, 3, 2, 2 blocks over 4 ranks."""
    case = problems.get("van_der_pol")
    return case.problem, pint.RK4(2), pint.RK4(40), 10, 1e-9


class RowwiseRule:
    """A stopping rule pint does not know: the executor must gather every iteration."""

    def __call__(self, new, old, index):
        change = float((new - old).abs().max())
        return change, change <= 1e-9


def gmm_setup():
    from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule

    sched = VPSchedule.linear(1000)
    model = GaussianMixtureDenoiser.random(sched, dim=8, components=4, seed=1)
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return model, sched, x


def two_rank_worker(rank, world):
    from adapters.diffusion import srds_sample

    ex = pint.DistributedExecutor(timeout=30)
    out = {}
    problem, coarse, fine, B, tol = lorenz_case()
    out["sweep"] = _summary(pint.parareal(problem, coarse, fine, B, tol, executor=ex))
    out["pipelined"] = _summary(pint.parareal(problem, coarse, fine, B, tol, pipelined=True,
                                              executor=ex))
    seen = []
    res = pint.parareal(problem, coarse, fine, B, tol, max_iters=3, executor=ex,
                        callback=lambda info: seen.append((info.iteration, info.change,
                                                           info.boundaries.clone())))
    out["callback"] = {"result": _summary(res), "seen": seen}
    model, sched, x = gmm_setup()
    with torch.no_grad():
        for pip in (False, True):
            s = srds_sample(model, sched, x, 100, tol=1e-6, pipelined=pip, executor=ex)
            out[f"srds_{pip}"] = {"sample": s.sample, "iterations": s.iterations,
                                  "history": s.history, "depth": s.stats.depth}
    # arguments that differ across ranks: the same ValueError on every rank, before any work
    bad = {
        "y0 shape": lambda: pint.ODEProblem(problem.f, torch.ones(3 + rank, dtype=torch.float64),
                                            problem.t_span),
        "y0 dtype": lambda: pint.ODEProblem(problem.f, problem.y0.to(
            torch.float64 if rank == 0 else torch.float32), problem.t_span),
        "y0 values": lambda: pint.ODEProblem(problem.f, problem.y0 + rank, problem.t_span),
    }
    for name, make in bad.items():
        out[f"mismatch {name}"] = _error(lambda make=make: pint.parareal(
            make(), coarse, fine, B, tol, executor=ex))
    out["mismatch num_blocks"] = _error(lambda: pint.parareal(problem, coarse, fine, B + rank, tol,
                                                              executor=ex))
    out["mismatch max_iters"] = _error(lambda: pint.parareal(problem, coarse, fine, B, tol,
                                                             max_iters=5 + rank, executor=ex))
    # after mismatches the group still works
    out["again"] = _summary(pint.parareal(problem, coarse, fine, B, tol, max_iters=2, executor=ex))
    # the example script, as under torchrun (it checks itself against one process)
    out["example"] = _load("examples", "distributed").main(["--pipelined", "--steps", "100"])
    return out


def _load(folder, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def four_rank_worker(rank, world):
    ex = pint.DistributedExecutor(timeout=30)
    problem, coarse, fine, B, tol = uneven_case()
    out = {
        "sweep": _summary(pint.parareal(problem, coarse, fine, B, tol, executor=ex)),
        "pipelined": _summary(pint.parareal(problem, coarse, fine, B, tol, pipelined=True,
                                            executor=ex)),
        "capped": _summary(pint.parareal(problem, coarse, fine, B, tol, max_iters=2,
                                         pipelined=True, executor=ex)),
        "rule": _summary(pint.parareal(problem, coarse, fine, B, stopping=RowwiseRule(),
                                       executor=ex)),
        "idle": _summary(pint.parareal(problem, pint.RK4(8), fine, 3, tol, pipelined=True,
                                       executor=ex)),  # 3 blocks: rank 3 has none
    }

    out["not stepwise"] = _error(lambda: pint.parareal(problem, coarse, pint.TorchDiffEq(), B, tol,
                                                       pipelined=True, executor=ex))

    # a rank whose fine solve fails: it raises its own error, every other rank a
    # DistributedError naming it
    vf, calls = torch.func.vmap(problem.f), [0]

    def f(t, y):  # batched; rank 2 turns NaN in its second iteration's fine solve
        calls[0] += 1
        return vf(t, y) * (math.nan if rank == 2 and calls[0] > 200 else 1.0)

    broken = pint.ODEProblem(f, problem.y0, problem.t_span, batched=True)
    t = time.monotonic()
    out["failure"] = _error(lambda: pint.parareal(broken, coarse, fine, B, tol, executor=ex))
    out["failure_seconds"] = time.monotonic() - t
    return out


def killed_rank_worker(rank, world, pipelined):
    ex = pint.DistributedExecutor(timeout=4)
    problem, coarse, fine, B, tol = lorenz_case()
    calls = [0]

    def f(t, y):
        calls[0] += 1
        if rank == 1 and calls[0] > 1000:
            os._exit(17)  # dies mid-run, no goodbye
        return problem.f(t, y)

    dying = pint.ODEProblem(f, problem.y0, problem.t_span)
    t = time.monotonic()
    err = _error(lambda: pint.parareal(dying, coarse, fine, B, tol, pipelined=pipelined,
                                       executor=ex))
    return {"error": err, "seconds": time.monotonic() - t}


# --------------------------------------------------------------------------- tests


def _same(got: dict, ref: pint.Result, atol=1e-12):
    assert got["iterations"] == ref.iterations
    assert got["converged"] == ref.converged
    assert torch.allclose(got["boundaries"], ref.boundaries, rtol=1e-12, atol=atol)
    assert got["history"] == pytest.approx(ref.history, rel=1e-6, abs=1e-14)


def _sweep_depth(B, R, g, f, K, pipelined):
    """The critical path the executor's clocks measure, written out for even shards:
    ``T[r][j]`` is rank r's clock after its correction of iteration j."""
    q, m = divmod(B, R)
    starts = [r * q + min(r, m) for r in range(R + 1)]
    T = [{0: starts[r + 1] * g} for r in range(R)]
    for j in range(1, K + 1):
        D = T[R - 1][j - 1] if j > 1 else 0
        for r in range(R):
            a, b = starts[r], starts[r + 1]
            if j > b:
                continue
            prev = T[r][j - 1]
            inc = T[r - 1][j] if r > 0 and j <= a else 0
            end_fine = (prev if pipelined else max(prev, D)) + f
            T[r][j] = max(end_fine, D, inc) + (b - max(a, j)) * g
    return max(T[r][min(K, starts[r + 1])] for r in range(R))


def test_two_ranks_match_one_process():
    out = launch(two_rank_worker, 2)
    assert sorted(out) == [0, 1]
    problem, coarse, fine, B, tol = lorenz_case()
    ref = pint.parareal(problem, coarse, fine, B, tol)
    ref_pip = pint.parareal(problem, coarse, fine, B, tol, pipelined=True)
    assert ref.iterations == ref_pip.iterations and 2 < ref.iterations < B
    for o in out.values():
        _same(o["sweep"], ref)
        _same(o["pipelined"], ref)
        # the same numbers on every rank, bit for bit
        assert torch.equal(o["sweep"]["boundaries"], out[0]["sweep"]["boundaries"])
        assert torch.equal(o["pipelined"]["y"], out[0]["pipelined"]["y"])
        # work summed over ranks: the sweep does exactly the single-process steps
        for key in ("coarse_steps", "fine_steps", "rows"):
            assert o["sweep"]["stats"][key] == ref.stats.as_dict()[key]
        assert o["sweep"]["stats"]["world_size"] == 2 and len(o["sweep"]["stats"]["per_rank"]) == 2
        # depth: the critical path across ranks (see _sweep_depth), shorter than on one device
        K = ref.iterations
        assert o["sweep"]["stats"]["depth"] == _sweep_depth(B, 2, 4, 100, K, False)
        assert o["pipelined"]["stats"]["depth"] == _sweep_depth(B, 2, 4, 100, K, True)
        assert o["pipelined"]["stats"]["depth"] < o["sweep"]["stats"]["depth"] < ref.stats.depth

    # a callback sees every iteration with all boundaries, on every rank
    seen_ref = []
    capped = pint.parareal(problem, coarse, fine, B, tol, max_iters=3,
                           callback=lambda i: seen_ref.append((i.iteration, i.change,
                                                               i.boundaries.clone())))
    for o in out.values():
        _same(o["callback"]["result"], capped)
        assert [s[0] for s in o["callback"]["seen"]] == [0, 1, 2, 3]
        for (k, c, U), (k_ref, c2, U2) in zip(o["callback"]["seen"], seen_ref, strict=True):
            assert k == k_ref and torch.allclose(U, U2, rtol=1e-12, atol=1e-12)
            assert (math.isnan(c) and math.isnan(c2)) or c == pytest.approx(c2, rel=1e-9)
        _same(o["again"], pint.parareal(problem, coarse, fine, B, tol, max_iters=2))

    # SRDS with the model replicated per rank
    from adapters.diffusion import srds_sample

    model, sched, x = gmm_setup()
    with torch.no_grad():
        for pip in (False, True):
            ref_s = srds_sample(model, sched, x, 100, tol=1e-6, pipelined=pip)
            for o in out.values():
                got = o[f"srds_{pip}"]
                assert got["iterations"] == ref_s.iterations
                assert torch.allclose(got["sample"], ref_s.sample, rtol=0, atol=1e-12)
                assert got["history"] == pytest.approx(ref_s.history, rel=1e-6)
                # the critical path across ranks, in model calls: blocks of N / B steps
                B = ref_s.num_blocks
                assert got["depth"] == _sweep_depth(B, 2, 1, 100 // B, ref_s.iterations, pip)
                if not pip:
                    assert got["depth"] < ref_s.stats.depth

    # mismatched arguments: a ValueError on every rank that names what differs
    for name in ("y0 shape", "y0 dtype", "y0 values", "num_blocks", "max_iters"):
        for o in out.values():
            kind, msg = o[f"mismatch {name}"]
            assert kind == "ValueError" and "different arguments" in msg and name in msg, msg
            assert "rank 0" in msg and "rank 1" in msg
    assert "seed every rank" in out[0]["mismatch y0 values"][1]

    # examples/distributed.py: the same answers on both ranks as in one process
    for r, o in out.items():
        ex = o["example"]
        assert ex["rank"] == r and ex["world"] == 2
        for part in ("lorenz", "srds"):
            assert ex[part]["iterations"] == ex[part]["iterations_single"]
            assert ex[part]["max_difference"] < 1e-10


def test_four_ranks_uneven_shards_and_a_failing_rank():
    out = launch(four_rank_worker, 4)
    assert sorted(out) == [0, 1, 2, 3]
    problem, coarse, fine, B, tol = uneven_case()
    ref = pint.parareal(problem, coarse, fine, B, tol)
    capped = pint.parareal(problem, coarse, fine, B, tol, max_iters=2)
    rule = pint.parareal(problem, coarse, fine, B, stopping=RowwiseRule())
    idle = pint.parareal(problem, pint.RK4(8), fine, 3, tol)
    assert not capped.converged and capped.iterations == 2
    for o in out.values():
        _same(o["sweep"], ref)
        _same(o["pipelined"], ref)
        _same(o["capped"], capped)
        _same(o["rule"], rule)
        _same(o["idle"], idle)
        assert o["sweep"]["stats"]["depth"] == _sweep_depth(B, 4, 2, 40, ref.iterations, False)
        assert o["pipelined"]["stats"]["depth"] == _sweep_depth(B, 4, 2, 40, ref.iterations, True)
        assert [p["fine_steps"] > 0 for p in o["idle"]["stats"]["per_rank"]] == [True] * 3 + [False]
        assert o["not stepwise"][0] == "ValueError" and "step-by-step" in o["not stepwise"][1]
    kind, msg = out[2]["failure"]
    assert kind == "NonFiniteStateError" and "block" in msg
    for r in (0, 1, 3):
        kind, msg = out[r]["failure"]
        assert kind == "DistributedError" and "rank 2 failed: NonFiniteStateError" in msg, msg
        assert out[r]["failure_seconds"] < 20


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_killed_rank_ends_the_run_with_an_error(pipelined):
    out = launch(killed_rank_worker, 2, pipelined, deadline=60)
    assert 1 not in out  # it died
    kind, msg = out[0]["error"]
    assert kind == "DistributedError" and "rank" in msg, msg
    assert out[0]["seconds"] < 4 + 10  # the timeout, plus slack for a busy machine


def test_executor_arguments_and_setup_errors():
    with pytest.raises(ValueError, match="timeout"):
        pint.DistributedExecutor(timeout=0)
    with pytest.raises(TypeError, match="timeout"):
        pint.DistributedExecutor(timeout="long")
    assert pint.DistributedExecutor(timeout=datetime.timedelta(minutes=1)).timeout == 60
    problem, coarse, fine, B, tol = lorenz_case()
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            pint.parareal(problem, coarse, fine, B, tol, executor=pint.DistributedExecutor())


def test_one_rank_is_the_local_engine(tmp_path):
    # a one-process group (FileStore, no port) runs the local engine unchanged
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        problem, coarse, fine, B, tol = lorenz_case()
        for pip in (False, True):
            ref = pint.parareal(problem, coarse, fine, B, tol, pipelined=pip)
            res = pint.parareal(problem, coarse, fine, B, tol, pipelined=pip,
                                executor=pint.DistributedExecutor())
            assert torch.equal(res.boundaries, ref.boundaries) and res.stats == ref.stats
        with pytest.raises(ValueError, match="step-by-step"):
            pint.parareal(problem, coarse, pint.TorchDiffEq(), B, tol, pipelined=True,
                          executor=pint.DistributedExecutor())
    finally:
        dist.destroy_process_group()


def test_rule_kinds():
    from pint.executors import _rule_kind
    from pint.stopping import FinalStateChange

    assert _rule_kind(MaxAbsChange(1e-3)) == "rows"
    assert _rule_kind(FinalStateChange(1e-3)) == "final"
    assert _rule_kind(RowwiseRule()) is None


def test_benchmark_quick(tmp_path, monkeypatch):
    # the benchmark's rank processes import it by name
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    try:
        bench = importlib.import_module("bench_distributed")
        data = bench.main(["--quick", "--out", str(tmp_path)])
    finally:
        sys.modules.pop("bench_distributed", None)
    saved = json.loads((tmp_path / "distributed.json").read_text())
    assert "T_r^j" in saved["cost_model"]
    for label in ("cpu", "simulated"):
        part = data[label]
        assert saved[label]["runs"] == json.loads(json.dumps(part["runs"]))
        by = {(r["ranks"], r["schedule"]): r for r in part["runs"]}
        assert set(by) == {(0, "serial"), (1, "sweep"), (2, "sweep"), (2, "pipelined")}
        for r in part["runs"]:
            assert r["wall_s"] > 0 and r["error_vs_serial"] < 1e-7
            if r["ranks"]:
                assert r["iterations"] == part["iterations"] and r["predicted_s"] > 0
        assert part["calibration"]["lam_s"] > 0
        # the model in steps is the executor's own depth: F(w) = 100 steps, G = 4, no latency
        F = {1: 100, 2: 100, 4: 100}
        K = part["iterations"]
        for R, sched in ((1, "sweep"), (2, "sweep"), (2, "pipelined")):
            assert bench.predict(4, R, K, F, 4, 0, 0, sched == "pipelined") == by[(R, sched)]["depth"]
