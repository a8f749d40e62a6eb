"""Window samplers (Picard, quasi-Newton, ParaTAA) over gloo process groups of 2 and 4 CPU ranks.

Each launch runs several scenarios on tiny Gaussian-mixture models (float64, N = 50) and
sends the results back; the test process compares them with single-process runs: every
rank must return the single-process sample, iterations and history.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from test_distributed import _error, launch

N = 50


def gmm_setup(batch=3):
    from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule

    sched = VPSchedule.linear(1000)
    model = GaussianMixtureDenoiser.random(sched, dim=8, components=4, seed=1)
    x = torch.randn(batch, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return model, sched, x


class Conditioned(torch.nn.Module):
    """The mixture's output scaled per sample by ``1 + 0.1 scale`` (conditioning), and
    counting the rows it sees (a slice of every window call on each rank)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x, t, scale):
        assert scale.shape == (x.shape[0], 1)  # sliced and tiled with the rows
        self.seen.append(x.shape[0])
        return self.net(x, t) * (1 + 0.1 * scale)


def guided_options(batch=3):
    return dict(model_kwargs={"scale": torch.arange(1.0, batch + 1, dtype=torch.float64)[:, None]},
                uncond_kwargs={"scale": torch.zeros(batch, 1, dtype=torch.float64)},
                guidance_scale=2.5)


def _runs(ex=None):
    """The scenarios of the 2-rank group, on this rank (``ex``) or in one process."""
    from adapters.diffusion import picard_sample, quasi_newton_sample, taa_sample

    model, sched, x = gmm_setup()
    kw = {} if ex is None else {"executor": ex}
    out = {}
    with torch.no_grad():
        for name, run in (("picard", picard_sample), ("quasi_newton", quasi_newton_sample)):
            for w in (16, 7):
                out[f"{name} w={w}"] = run(model, sched, x, N, window=w, tol=1e-6, **kw)
        # stochastic (the per-step noise drawn from the same seed on every rank)
        g = torch.Generator().manual_seed(3)
        out["ddpm"] = quasi_newton_sample(model, sched, x, N, window=16, tol=1e-5,
                                          sampler="ddpm", generator=g, return_trajectory=True,
                                          **kw)
        # classifier-free guidance with per-sample conditioning
        cond = Conditioned(model)
        out["guided"] = quasi_newton_sample(cond, sched, x, N, window=9, tol=1e-6,
                                            **guided_options(), **kw)
        out["guided rows"] = list(cond.seen)
        seen = []
        out["callback"] = picard_sample(model, sched, x, N, window=8, tol=1e-6, max_iters=12,
                                        callback=lambda i, xa, e: seen.append((i, xa.clone(), e)),
                                        **kw)
        out["seen"] = seen
        # ParaTAA: Anderson (memory 2), the planner's secant setting (one serial call first),
        # and the coarse initialisation (5 calls of one state, then the window's)
        for key, opts in TAA_RUNS.items():
            out[key] = taa_sample(model, sched, x, N, tol=1e-6, **opts, **kw)
    return out


TAA_RUNS = {  # name: options, and the model calls before the window's
    "taa": dict(window=16),
    "taa secant": dict(window=7, linear="secant", memory=1, test="change", init="extrapolate"),
    "taa coarse": dict(window=9, init="coarse", num_blocks=5),
}
TAA_INIT_CALLS = {"taa": 0, "taa secant": 1, "taa coarse": 5}


def _as_dict(o):
    if not hasattr(o, "sample"):
        return o
    return {"sample": o.sample, "iterations": o.iterations, "converged": o.converged,
            "history": o.history, "depth": o.stats.depth, "calls": o.stats.model_calls,
            "rows": o.stats.model_rows, "engine": o.stats.engine.as_dict(),
            "per_rank": getattr(o.stats.engine, "per_rank", None),
            "trajectory": o.trajectory}


def two_rank_worker(rank, world):
    import pint
    from adapters.diffusion import picard_sample, quasi_newton_sample, taa_sample

    ex = pint.DistributedExecutor(timeout=30)
    out = {k: _as_dict(v) for k, v in _runs(ex).items()}
    model, sched, x = gmm_setup()
    with torch.no_grad():
        # arguments that differ across ranks: the same ValueError on every rank, before any
        # model call (the model counts its calls)
        counted = Conditioned(model)
        opts = guided_options()
        bad = {
            "x_T values": lambda: quasi_newton_sample(counted, sched, x + rank, N, **opts,
                                                      executor=ex),
            "window": lambda: quasi_newton_sample(counted, sched, x, N, window=8 + rank, **opts,
                                                  executor=ex),
            "tol": lambda: picard_sample(counted, sched, x, N, tol=1e-3 * (1 + rank), **opts,
                                         executor=ex),
            "model_kwargs": lambda: picard_sample(
                counted, sched, x, N, executor=ex, guidance_scale=2.5,
                uncond_kwargs=opts["uncond_kwargs"],
                model_kwargs={"scale": opts["model_kwargs"]["scale"] + rank}),
            "noise": lambda: picard_sample(
                counted, sched, x, N, sampler="ddpm", executor=ex, **opts,
                generator=torch.Generator().manual_seed(rank)),
            # (rank 1's coarse initialisation would call the model before its window)
            "taa options": lambda: taa_sample(counted, sched, x, N, window=8, **opts,
                                              init=("copy", "coarse")[rank], executor=ex),
        }
        for name, fn in bad.items():
            out[f"mismatch {name}"] = _error(fn)
        out["mismatch calls"] = len(counted.seen)
        # sampler="auto": every rank plans with rank 0's cost model and runs the same choice
        from adapters.diffusion import CostModel, sample

        flat = CostModel.knee(0.010, 10_000, 1e-5, engine_s=None)
        auto = sample(model, sched, x, N, tol=1e-6, cost=flat, executor=ex)
        out["auto"] = {**_as_dict(auto), "choice": auto.plan.choice.label,
                       "options": auto.plan.choice.options, "sampler": auto.plan.choice.sampler,
                       "max_rows": auto.plan.choice.max_rows, "excluded": auto.plan.excluded}
        # the group still works afterwards
        out["again"] = _as_dict(picard_sample(model, sched, x, N, window=16, tol=1e-6,
                                              executor=ex))
        # taa on a rank whose model raises (last: the group is spent): its own error there,
        # a DistributedError naming it on the other
        calls = [0]

        def broken(x, t):
            calls[0] += 1
            if rank == 1 and calls[0] == 3:
                raise RuntimeError("out of memory (simulated)")
            return model(x, t)

        out["taa failure"] = _error(lambda: taa_sample(broken, sched, x, N, window=10, tol=1e-6,
                                                       executor=ex))
    return out


def four_rank_worker(rank, world):
    import pint
    from adapters.diffusion import picard_sample, quasi_newton_sample

    ex = pint.DistributedExecutor(timeout=30)
    model, sched, x = gmm_setup()
    out = {}
    with torch.no_grad():
        for w in (10, 3):  # slices 3, 3, 2, 2 steps; 1, 1, 1, 0 (rank 3 idle)
            out[f"picard w={w}"] = _as_dict(picard_sample(model, sched, x, N, window=w,
                                                          tol=1e-6, executor=ex))
            out[f"quasi_newton w={w}"] = _as_dict(quasi_newton_sample(
                model, sched, x, N, window=w, tol=1e-6, executor=ex))
        cond = Conditioned(model)
        out["guided"] = _as_dict(quasi_newton_sample(cond, sched, x, N, window=10, tol=1e-6,
                                                     executor=ex, **guided_options()))
        out["guided rows"] = list(cond.seen)

        # a rank whose model raises: it raises its own error, the others a DistributedError
        # naming it
        calls = [0]

        def broken(x, t):
            calls[0] += 1
            if rank == 2 and calls[0] == 3:
                raise RuntimeError("out of memory (simulated)")
            return model(x, t)

        t = time.monotonic()
        out["failure"] = _error(lambda: quasi_newton_sample(broken, sched, x, N, window=10,
                                                            tol=1e-6, executor=ex))
        out["failure_seconds"] = time.monotonic() - t
    return out


def killed_rank_worker(rank, world):
    import pint
    from adapters.diffusion import picard_sample

    ex = pint.DistributedExecutor(timeout=4)
    model, sched, x = gmm_setup()
    calls = [0]

    def dying(x, t):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            os._exit(17)  # dies mid-run, no goodbye
        return model(x, t)

    t = time.monotonic()
    with torch.no_grad():
        err = _error(lambda: picard_sample(dying, sched, x, N, window=10, tol=1e-6, executor=ex))
    return {"error": err, "seconds": time.monotonic() - t}


# --------------------------------------------------------------------------- tests


def _same(got, ref, world, init_calls=0):
    assert got["iterations"] == ref.iterations and got["converged"] == ref.converged
    assert got["depth"] == ref.stats.depth == ref.iterations + init_calls
    assert got["engine"]["depth"] == got["depth"]
    assert torch.allclose(got["sample"], ref.sample, rtol=0, atol=1e-12)
    assert got["history"] == pytest.approx(ref.history, rel=1e-9, abs=1e-14)
    # this rank's calls and rows; summed over ranks: the single-process rows
    per = got["per_rank"]
    assert len(per) == world and got["engine"]["world_size"] == world
    assert sum(p["model_rows"] for p in per) == ref.stats.model_rows
    assert max(p["model_calls"] for p in per) == ref.stats.model_calls


def test_two_ranks_match_one_process():
    out = launch(two_rank_worker, 2, deadline=150)
    assert sorted(out) == [0, 1]
    ref = _runs()
    for key in ("picard w=16", "picard w=7", "quasi_newton w=16", "quasi_newton w=7", "ddpm",
                "guided", "callback"):
        for o in out.values():
            _same(o[key], ref[key], 2)
            assert torch.equal(o[key]["sample"], out[0][key]["sample"])  # bit for bit
    assert ref["quasi_newton w=16"].iterations < ref["picard w=16"].iterations < N
    for key in TAA_RUNS:  # every rank: the single-process ParaTAA run, bit for bit alike
        assert ref[key].iterations < N and ref[key].converged
        for o in out.values():
            _same(o[key], ref[key], 2, TAA_INIT_CALLS[key])
            assert torch.equal(o[key]["sample"], out[0][key]["sample"])
    for o in out.values():
        assert torch.allclose(o["ddpm"]["trajectory"], ref["ddpm"].trajectory, rtol=0, atol=1e-12)
        # the callback sees the same iterations, states and errors on every rank
        assert [s[0] for s in o["seen"]] == [s[0] for s in ref["seen"]]
        for (_, xa, e), (_, xr, er) in zip(o["seen"], ref["seen"], strict=True):
            assert torch.allclose(xa, xr, rtol=0, atol=1e-12) and e == pytest.approx(er, rel=1e-9)
    # guidance: each rank's model saw 2 x batch rows per step of its slice (9 = 5 + 4 steps)
    assert out[0]["guided rows"][0] == 5 * 3 * 2 and out[1]["guided rows"][0] == 4 * 3 * 2
    assert sum(out[0]["guided rows"]) + sum(out[1]["guided rows"]) == sum(ref["guided rows"])
    # mismatched arguments: the same ValueError on every rank, naming what differs, and no
    # model call
    for name in ("x_T values", "window", "tol", "model_kwargs", "noise", "taa options"):
        msgs = set()
        for o in out.values():
            kind, msg = o[f"mismatch {name}"]
            assert kind == "ValueError" and "different arguments" in msg and name in msg, msg
            assert "rank 0" in msg and "rank 1" in msg
            msgs.add(msg)
        assert len(msgs) == 1
    assert "seed every rank" in out[0]["mismatch x_T values"][1]
    assert out[0]["mismatch calls"] == out[1]["mismatch calls"] == 0
    for o in out.values():
        _same(o["again"], ref["picard w=16"], 2)
    kind, msg = out[1]["taa failure"]
    assert kind == "RuntimeError" and "simulated" in msg
    kind, msg = out[0]["taa failure"]
    assert kind == "DistributedError" and "rank 1 failed: RuntimeError" in msg, msg
    # auto: the same choice on both ranks, a window sampler (none excluded, taa neither),
    # whose calls are priced at half the window's rows, and the single-process result of it
    from adapters.diffusion import picard_sample, quasi_newton_sample, taa_sample

    a0 = out[0]["auto"]
    assert out[1]["auto"]["choice"] == a0["choice"]
    # nothing left out for the executor (issue 30's budget may leave candidates unpriced)
    assert [e for e in a0["excluded"] if "not priced" not in e] == []
    assert a0["sampler"] in ("picard", "quasi_newton", "taa")
    assert a0["max_rows"] == -(-a0["options"]["window"] // 2) * 3
    model, sched, x = gmm_setup()
    run = {"picard": picard_sample, "quasi_newton": quasi_newton_sample,
           "taa": taa_sample}[a0["sampler"]]
    with torch.no_grad():
        ref_a = run(model, sched, x, N, tol=1e-6, **a0["options"])
    for o in out.values():  # (the planner's taa setting starts with one serial call)
        _same(o["auto"], ref_a, 2, 1 if a0["sampler"] == "taa" else 0)


def test_four_ranks_uneven_slices_and_a_failing_rank():
    from adapters.diffusion import picard_sample, quasi_newton_sample

    out = launch(four_rank_worker, 4, deadline=150)
    assert sorted(out) == [0, 1, 2, 3]
    model, sched, x = gmm_setup()
    with torch.no_grad():
        for w in (10, 3):
            ref_p = picard_sample(model, sched, x, N, window=w, tol=1e-6)
            ref_q = quasi_newton_sample(model, sched, x, N, window=w, tol=1e-6)
            for o in out.values():
                _same(o[f"picard w={w}"], ref_p, 4)
                _same(o[f"quasi_newton w={w}"], ref_q, 4)
            if w == 3:  # rank 3 never gets a step
                assert out[0][f"picard w={w}"]["per_rank"][3]["model_calls"] == 0
        cond = Conditioned(model)
        ref_g = quasi_newton_sample(cond, sched, x, N, window=10, tol=1e-6, **guided_options())
    for o in out.values():
        _same(o["guided"], ref_g, 4)
    assert [out[r]["guided rows"][0] for r in range(4)] == [3 * 6, 3 * 6, 2 * 6, 2 * 6]
    kind, msg = out[2]["failure"]
    assert kind == "RuntimeError" and "simulated" in msg
    for r in (0, 1, 3):
        kind, msg = out[r]["failure"]
        assert kind == "DistributedError" and "rank 2 failed: RuntimeError" in msg, msg
        assert out[r]["failure_seconds"] < 20


def test_a_killed_rank_ends_the_run_with_an_error():
    out = launch(killed_rank_worker, 2, deadline=60)
    assert 1 not in out  # it died
    kind, msg = out[0]["error"]
    assert kind == "DistributedError" and "rank" in msg, msg
    assert out[0]["seconds"] < 4 + 10  # the timeout, plus slack for a busy machine


def test_executor_must_be_an_executor():
    from adapters.diffusion import picard_sample

    model, sched, x = gmm_setup()
    with pytest.raises(TypeError, match="DistributedExecutor"):
        picard_sample(model, sched, x, N, executor=object())


CLI_RUNS = {"quasi_newton": ["--sampler", "quasi_newton", "--window", "8"]}


def _cli_args(sampler, out):
    return ["--model", "digits", "--steps", "20", "--num-samples", "2", "--dtype", "float64",
            "--seed", "3", *CLI_RUNS[sampler], "--out", str(out)]


def cli_worker(rank, world, folder):
    import io
    from contextlib import redirect_stdout

    from adapters.diffusion.cli import main

    os.environ["WORLD_SIZE"] = str(world)  # as torchrun sets it (the group exists already)
    out = {}
    for sampler in CLI_RUNS:
        with redirect_stdout(io.StringIO()) as text:
            rc = main(_cli_args(sampler, f"{folder}/{sampler}-{rank}"))
        out[sampler] = (rc, text.getvalue())
    return out


def test_pint_sample_under_torchrun_rank_0_writes_the_single_process_result(tmp_path):
    import json

    from adapters.diffusion.cli import main

    out = launch(cli_worker, 2, str(tmp_path), deadline=180)
    assert sorted(out) == [0, 1]
    for sampler in CLI_RUNS:
        assert out[0][sampler][0] == out[1][sampler][0] == 0
        assert "wrote" in out[0][sampler][1] and out[1][sampler][1] == ""
        assert not (tmp_path / f"{sampler}-1").exists()  # rank 1 writes nothing
        got = json.loads((tmp_path / f"{sampler}-0" / "report.json").read_text())
        assert main(_cli_args(sampler, tmp_path / f"{sampler}-single")) == 0
        ref = json.loads((tmp_path / f"{sampler}-single" / "report.json").read_text())
        assert got["world_size"] == 2 and ref["world_size"] == 1
        assert got["iterations"] == ref["iterations"] and got["converged"] == ref["converged"]
        assert got["history"] == pytest.approx(ref["history"], rel=1e-9, abs=1e-14)


def test_benchmark_quick(tmp_path, monkeypatch):
    import importlib
    import json
    import sys

    from test_distributed import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the rank processes import it by name
    try:
        bench = importlib.import_module("bench_distributed_windows")
        data = bench.main(["--quick", "--out", str(tmp_path)])
    finally:
        sys.modules.pop("bench_distributed_windows", None)
    saved = json.loads((tmp_path / "distributed_windows.json").read_text())
    assert (tmp_path / "distributed_windows.png").stat().st_size > 1000
    assert "T_R = sum_k" in saved["cost_model"]
    assert {(r["sampler"], r["ranks"]) for r in data["runs"]} == {
        (s, R) for s in ("picard", "quasi_newton", "srds") for R in (1, 2)}
    for r in data["runs"]:
        assert r["wall_s"] > 0 and r["predicted_s"] > 0
        assert r["difference_vs_one_rank"] < 1e-12   # every rank count: the one-rank sample
    for s in ("picard", "quasi_newton"):   # the same calls on any number of ranks
        one, two = (next(r for r in data["runs"] if r["sampler"] == s and r["ranks"] == R)
                    for R in (1, 2))
        assert one["depth"] == two["depth"] and two["predicted_s"] < one["predicted_s"]
