"""Issue 30: sample(sampler="auto") is never slower than serial, on every call. On simulated
devices with a virtual clock (flat to 128 rows, cost in proportion to the rows, a knee at 16
rows, a compute-bound GPU, and the knee-16 device over 2 ranks; an exact mixture denoiser,
N = 200, batch 4), where the planner's own proxy runs are charged too (what they cost on a
2-core CPU): the predictions for serial and for the choice
match the measured (virtual) time within 15 %, the first call (probe and planning included)
costs at most 10 % of serial more than the choice, and a second identical call plans
nothing, returns the same sample bit for bit and is never slower than serial; a measured
best (every candidate run) is within 15 % of the second call."""

import math

import pytest
import torch

from adapters.diffusion import (
    Denoiser,
    GaussianMixtureDenoiser,
    VPSchedule,
    planner,
    sample,
    serial_sample,
)
from adapters.diffusion.auto import PARALLEL_SAMPLERS, RUNNERS

SCHED = VPSchedule.linear(1000)
MIX = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)
X = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
N = 200
#: the planner's seconds per proxy call, and per step it holds, charged to the virtual clock
#: (measured on a 2-core CPU: 0.55 ms a serial step, 2 ms a window of 16, 5.5 ms of 64)
PROXY_CALL_S, PROXY_STEP_S = 0.0005, 0.00008

#: name -> (latency of one call, rows it stays flat to, seconds per row beyond, ranks)
DEVICES = {
    "flat-to-128": (0.020, 128, 0.020 / 128, 1),
    "proportional": (0.0015, 1, 0.0015, 1),
    "knee-16": (0.008, 16, 0.008 / 16, 1),
    "compute-bound": (0.010, 4, (0.072 - 0.010) / 28, 1),
    "knee-16-2-ranks": (0.008, 16, 0.008 / 16, 2),
}


#: the candidates that were fastest on these devices when every one was run
FASTEST = [("taa", 16), ("taa", 32), ("taa", 64), ("quasi_newton", 16), ("quasi_newton", 32)]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Device(torch.nn.Module):
    """The mixture denoiser on a simulated device: each call advances the virtual clock.
    With ``ranks`` > 1 a sampler's call of ``n`` steps costs the latency of its widest
    rank's slice, ``ceil(n / ranks)`` steps (the probe, which runs on one rank, times
    whole calls: ``split`` off)."""

    sample_shape = (8,)

    def __init__(self, clock, latency, knee, per_row, ranks=1):
        super().__init__()
        self.clock, self.latency, self.knee, self.per_row = clock, latency, knee, per_row
        self.ranks, self.split = ranks, False

    def forward(self, x, t):
        rows = x.shape[0]
        if self.split:
            rows = math.ceil(rows / X.shape[0] / self.ranks) * X.shape[0]
        self.clock.now += self.latency + self.per_row * max(0, rows - self.knee)
        return MIX(x, t)


@pytest.fixture(autouse=True)
def fresh_caches():
    planner.clear_caches()
    yield
    planner.clear_caches()


@pytest.fixture
def clock(monkeypatch):
    """A virtual clock for the planner; every proxy call is charged about what it costs on
    a 2-core CPU, ``PROXY_CALL_S + PROXY_STEP_S * steps`` (wider windows cost more)."""
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    forward = planner._GridMixture.forward

    def charged(self, x, t):
        clock.now += PROXY_CALL_S + PROXY_STEP_S * x.shape[0] / min(4, X.shape[0])
        return forward(self, x, t)

    monkeypatch.setattr(planner._GridMixture, "forward", charged)
    return clock


def _timed(clock, fn):
    t0 = clock.now
    out = fn()
    return out, clock.now - t0


def _ranks(monkeypatch, dev):
    """Plan for ``dev.ranks`` ranks (the executor's world size), run on one process with
    the device charging each call its widest rank's slice."""
    if dev.ranks == 1:
        return {}
    monkeypatch.setattr(planner, "_world_size", lambda executor: dev.ranks)
    monkeypatch.setattr(planner, "_from_rank_0", lambda executor, obj: obj)
    return {"executor": object()}


def _auto(dev, plan_kw):
    """sample(sampler="auto") as on ``dev.ranks`` ranks: planned with the executor, run
    with each call charged its widest rank's slice."""
    if not plan_kw:
        return sample(dev, SCHED, X, N, tol=1e-3)
    plan = planner.make_plan(Denoiser(dev).bind(SCHED), SCHED, X, N, tol=1e-3, reuse=True,
                             runners=RUNNERS, **plan_kw)
    dev.split = True
    try:
        return sample(dev, SCHED, X, N, tol=1e-3, plan=plan)
    finally:
        dev.split = False


@pytest.mark.parametrize("name", list(DEVICES))
def test_auto_on_every_call(monkeypatch, clock, name):
    dev = _Device(clock, *DEVICES[name])
    plan_kw = _ranks(monkeypatch, dev)
    serial, serial_s = _timed(clock, lambda: serial_sample(dev, SCHED, X, N))
    first, first_s = _timed(clock, lambda: _auto(dev, plan_kw))
    plan = first.plan
    planning = plan.planning_s
    run_s = first_s - planning
    # the predictions, for serial and for the choice, against the measured (virtual) time
    assert plan.serial.predicted_s == pytest.approx(serial_s, rel=0.15)
    assert plan.choice.predicted_s == pytest.approx(run_s, rel=0.15)
    # the first call: planning costs at most 10 % of serial above the choice's own run
    assert first_s <= run_s + 0.10 * serial_s
    assert first_s <= 1.10 * serial_s
    # the second identical call: the same plan, no planning, the same sample bit for bit
    second, second_s = _timed(clock, lambda: _auto(dev, plan_kw))
    assert second.plan.reused and second.plan.choice == plan.choice
    assert second.plan.planning_s < 0.02 * serial_s
    assert torch.equal(second.sample, first.sample)
    assert second_s <= serial_s * 1.001 and second_s == pytest.approx(run_s, rel=1e-9)
    if plan.choice.sampler == "serial":
        assert torch.equal(first.sample, serial)
    else:
        assert (first.sample - serial).abs().max() < 1e-2
    # the best measured: the candidates fastest on these devices in an exhaustive run
    # (benchmarks/bench_planner.py: taa and quasi-Newton windows), and serial
    best = serial_s
    dev.split = dev.ranks > 1
    for s, w in FASTEST:
        opts = dict(window=w, **(planner.TAA_OPTIONS if s == "taa" else {}))
        _, took = _timed(clock, lambda s=s, o=opts: PARALLEL_SAMPLERS[s](
            dev, SCHED, X, N, tol=1e-3, **o))
        best = min(best, took)
    dev.split = False
    assert second_s <= 1.15 * best
    print(f"\n{name}: serial {serial_s:.3f} s (predicted {plan.serial.predicted_s:.3f}); "
          f"{plan.choice.label}: predicted {plan.choice.predicted_s:.3f} s, measured "
          f"{run_s:.3f} s; best {best:.3f} s; planning {planning:.3f} s first, "
          f"{second.plan.planning_s:.4f} s second")


def test_a_short_run_gets_serial_after_one_timed_call(clock):
    dev = _Device(clock, *DEVICES["flat-to-128"])
    n = planner.MIN_PLAN_STEPS - 1
    out, took = _timed(clock, lambda: sample(dev, SCHED, X, n))
    assert out.plan.choice.sampler == "serial" and "too short" in out.plan.reason
    assert out.plan.planning_s == pytest.approx(0.020)        # one call, no probe
    assert took == pytest.approx((n + 1) * 0.020)
    assert torch.equal(out.sample, serial_sample(MIX, SCHED, X, n))


def test_planning_that_cannot_pay_stops_after_one_steps_latency(clock):
    """A fast network on a run of 60 steps: 8 % of serial's time holds no proxy run."""
    dev = _Device(clock, 0.0005, 128, 0.0)
    out, took = _timed(clock, lambda: sample(dev, SCHED, X, 60, tol=1e-3))
    assert out.plan.choice.sampler == "serial" and "cannot pay" in out.plan.reason
    assert len(out.plan.candidates) == 1
    assert took <= 1.10 * 60 * 0.0005


def test_recorded_runs_change_no_kept_plan_unless_asked(clock):
    dev = _Device(clock, *DEVICES["knee-16"])
    first = sample(dev, SCHED, X, N, tol=1e-3)
    again = sample(dev, SCHED, X, N, tol=1e-3)
    assert again.plan.reused and again.plan.candidates is first.plan.candidates
    fresh = sample(dev, SCHED, X, N, tol=1e-3, replan=True)     # asked: uses the record
    assert not fresh.plan.reused and fresh.plan.planning_s > 0
    chosen = next(c for c in fresh.plan.candidates if c.label == first.plan.choice.label)
    assert chosen.estimate == "recorded run" and chosen.calls == first.stats.depth
    later = sample(dev, SCHED, X, N, tol=1e-3)                  # the newest plan is kept
    assert later.plan.reused and later.plan.choice == fresh.plan.choice
    other = sample(dev, SCHED, X, N, tol=1e-4)                  # another request: planned
    assert not other.plan.reused
    with pytest.raises(ValueError, match="replan is only used with sampler='auto'"):
        sample(dev, SCHED, X, N, sampler="serial", replan=True)
    with pytest.raises(ValueError, match="replan=True is not used with plan="):
        sample(dev, SCHED, X, N, tol=1e-3, plan=first.plan, replan=True)
    text = again.plan.table()
    assert "planning: 0.000 s (plan reused" in text and again.plan.as_dict()["reused"]
