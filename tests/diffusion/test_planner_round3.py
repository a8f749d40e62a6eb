"""Issue 27, round 3, the planner: no silent wrong result from a nonsense cost model, probe
option or recorded run, nor from a plan made for another run."""

import math

import pytest
import torch

from adapters.diffusion import (
    CostModel,
    GaussianMixtureDenoiser,
    VPSchedule,
    measure_call_cost,
    plan_sampling,
    planner,
    sample,
    serial_sample,
)

SCHED = VPSchedule.linear(1000)
M = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)
X = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
LINEAR = CostModel((1, 2), (0.004, 0.008), engine_s=0.0)   # a CPU: serial wins


@pytest.fixture(autouse=True)
def fresh_caches():
    planner._PROBES.clear()
    planner._RECORDS.clear()
    planner._PLANS.clear()
    yield
    planner._PROBES.clear()
    planner._RECORDS.clear()
    planner._PLANS.clear()


def _zero(x, t):
    """An epsilon model of any sample shape and dtype."""
    return torch.zeros_like(x)


def _plan(model=M, schedule=SCHED, x=X, n=20, **kw):
    return plan_sampling(model, schedule, x, n, cost=LINEAR, samplers=("picard",),
                         exhaustive=True, **kw)


# ------------------------------------------------------------------------------ CostModel


@pytest.mark.parametrize("kw,err,match", [
    (dict(rows=(1, 2), seconds=(0.0, 0.0)), ValueError, "seconds must be > 0"),
    (dict(rows=(1, 64, 65), seconds=(0.0, 0.0, 1.0)), ValueError, "seconds must be > 0"),
    (dict(rows=(0,), seconds=(1.0,)), ValueError, "rows must be ints >= 1"),
    (dict(rows=(1.5, 2), seconds=(1.0, 1.0)), ValueError, "rows must be ints >= 1"),
    (dict(rows=(1,), seconds=("0.1",)), TypeError, "seconds must be real numbers"),
    (dict(rows=(1,), seconds=(0.1,), engine_s=-1), ValueError, "engine_s must be finite and >= 0"),
    (dict(rows=(1,), seconds=(0.1,), engine_s=float("nan")), ValueError, "engine_s must be finite"),
    (dict(rows=(1,), seconds=(0.1,), engine_s=math.inf), ValueError, "engine_s must be finite"),
    (dict(rows=(1,), seconds=(0.1,), engine_s="0.1"), TypeError, "engine_s must be a real number"),
    (dict(rows=(1,), seconds=(0.1,), engine_s=True), TypeError, "engine_s must be a real number"),
    (dict(rows=(1,), seconds=(0.1,), source="measured"), ValueError, "source must be"),
])
def test_cost_model_refuses_what_it_cannot_price(kw, err, match):
    with pytest.raises(err, match=match):
        CostModel(**kw)


@pytest.mark.parametrize("args,match", [
    ((0.0, 16, 0.001), "latency_s must be a finite number > 0"),
    ((0.01, 0, 0.001), "knee_rows must be an int >= 1"),
    ((0.01, 16, -0.001), "seconds_per_row must be a finite number >= 0"),
])
def test_cost_model_knee_names_its_bad_argument(args, match):
    with pytest.raises(ValueError, match=match):
        CostModel.knee(*args)


def test_valid_cost_models_still_work():
    assert CostModel((1, 2), (0.1, 0.2), engine_s=0)(4) == pytest.approx(0.4)
    assert CostModel((1,), (0.1,), engine_s=0.5).engine_s == 0.5
    assert CostModel.knee(0.01, 1, 0.0)(8) == pytest.approx(0.01)


# ----------------------------------------------------------------------- measure_call_cost


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize("kw,err,match", [
    (dict(repeats=0), ValueError, "repeats must be an int >= 1"),
    (dict(repeats=1.5), ValueError, "repeats must be an int >= 1"),
    (dict(max_rows=0), ValueError, "max_rows must be an int >= 1"),
    (dict(max_rows=-4), ValueError, "max_rows must be an int >= 1"),
    (dict(budget=-0.1), ValueError, "budget must be a finite number >= 0"),
    (dict(budget=float("nan")), ValueError, "budget must be a finite number >= 0"),
    (dict(budget="0.1"), ValueError, "budget must be a finite number >= 0"),
    (dict(cache="no"), TypeError, "cache must be a bool"),
])
def test_measure_call_cost_names_its_bad_option(monkeypatch, kw, err, match):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)

    def model(x, t):
        clock.now += 0.01
        return M(x, t)

    with pytest.raises(err, match=match):
        measure_call_cost(model, SCHED, X, 100, **kw)


# ------------------------------------------------------------------------------ record_run


@pytest.mark.parametrize("calls,err,match", [
    (-5, ValueError, "calls must be >= 1"),
    (0, ValueError, "calls must be >= 1"),
    (3.7, TypeError, "calls must be an int"),
    (True, TypeError, "calls must be an int"),
])
def test_record_run_refuses_nonsense_calls(calls, err, match):
    plan = _plan()
    cand = plan.candidates[1]
    with pytest.raises(err, match=match):
        planner.record_run(plan, cand, calls, M)
    again = _plan()
    assert all(c.estimate != "recorded run" and c.predicted_s > 0 for c in again.candidates)


def test_record_run_checks_its_other_arguments():
    plan = _plan()
    cand = plan.candidates[1]
    with pytest.raises(TypeError, match="plan must be a SamplingPlan"):
        planner.record_run("plan", cand, 5, M)
    with pytest.raises(ValueError, match="candidate must be one of plan.candidates"):
        planner.record_run(plan, "picard", 5, M)
    other = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=2)
    with pytest.raises(ValueError, match="model must be the model the plan was made for"):
        planner.record_run(plan, cand, 5, other)
    planner.record_run(plan, cand, 5, M)
    rec = next(c for c in _plan().candidates if c.label == cand.label)
    assert rec.estimate == "recorded run" and rec.calls == 5


# ------------------------------------------------------------------------- a plan's match


def test_a_plan_for_this_run_is_accepted():
    plan = _plan(n=20, tol=1e-4)
    out = sample(M, VPSchedule.linear(1000), X, 20, tol=1e-4, plan=plan)   # rebuilt schedule
    assert out.plan is plan and torch.equal(out.sample, serial_sample(M, SCHED, X, 20))


@pytest.mark.parametrize("made,run,match", [
    (dict(), dict(n=30), r"num_steps 20 \(this run: 30\)"),
    (dict(), dict(schedule=VPSchedule.cosine(1000)), "the schedule's grid"),
    (dict(), dict(x=X[:1]), r"rows per step .* 2 \(this run: 1\)"),
    (dict(model=_zero), dict(model=_zero, x=torch.zeros(2, 4, 2, dtype=torch.float64)),
     r"sample shape \(8,\) \(this run: \(4, 2\)\)"),
    (dict(model=_zero), dict(model=_zero, x=X.float()), "dtype 'torch.float64'"),
    (dict(), dict(model=GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=2)),
     "the model"),
    (dict(tol=1e-4), dict(tol=1e-3), r"tol 0.0001 \(this run: 0.001\)"),
    (dict(tol=1e-4), dict(), r"tol 0.0001 \(this run: None\)"),
])
def test_a_plan_made_for_another_run_is_refused(made, run, match):
    plan = _plan(**made)
    model, schedule, x = (run.get("model", M), run.get("schedule", SCHED), run.get("x", X))
    with pytest.raises(ValueError, match="plan was made for another run: .*" + match):
        sample(model, schedule, x, run.get("n", 20), tol=run.get("tol"), plan=plan)


def test_a_plan_for_another_eta_is_refused():
    plan = _plan(eta=0.5)
    with pytest.raises(ValueError, match=r"plan was made for another run: .*eta 0.5 \(this run: 0.0\)"):
        sample(M, SCHED, X, 20, plan=plan)


def test_cost_and_max_batch_are_not_silently_dropped_next_to_a_plan():
    plan = _plan()
    with pytest.raises(ValueError, match="cost is not used with plan="):
        sample(M, SCHED, X, 20, plan=plan, cost=LINEAR)
    with pytest.raises(ValueError, match="max_batch is not used with plan="):
        sample(M, SCHED, X, 20, plan=plan, max_batch=8)
