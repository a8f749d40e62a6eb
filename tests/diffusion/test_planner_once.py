"""Issue 30: sample(sampler="auto") is never slower than serial, on every call. On simulated
devices with a virtual clock (flat to a knee, cost in proportion to the rows, a knee at 16
rows; an exact mixture denoiser, N = 200, batch 4): the predictions for serial and for the
choice match the measured (virtual) time within 15 %, the first call (probe and planning
included) costs at most 10 % of serial more than the choice, and a second identical call
plans nothing, returns the same sample bit for bit and is never slower than serial."""

import pytest
import torch

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    VPSchedule,
    planner,
    sample,
    serial_sample,
)

SCHED = VPSchedule.linear(1000)
MIX = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)
X = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
N = 200

#: name -> (latency of one call, rows it stays flat to, seconds per row beyond)
DEVICES = {
    "flat-to-128": (0.020, 128, 0.020 / 128),
    "proportional": (0.0015, 1, 0.0015),
    "knee-16": (0.008, 16, 0.008 / 16),
}


class _Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Device(torch.nn.Module):
    """The mixture denoiser on a simulated device: each call advances the virtual clock."""

    sample_shape = (8,)

    def __init__(self, clock, latency, knee, per_row):
        super().__init__()
        self.clock, self.latency, self.knee, self.per_row = clock, latency, knee, per_row

    def forward(self, x, t):
        self.clock.now += self.latency + self.per_row * max(0, x.shape[0] - self.knee)
        return MIX(x, t)


@pytest.fixture(autouse=True)
def fresh_caches():
    planner.clear_caches()
    yield
    planner.clear_caches()


def _timed(clock, fn):
    t0 = clock.now
    out = fn()
    return out, clock.now - t0


@pytest.mark.parametrize("name", list(DEVICES))
def test_auto_on_every_call(monkeypatch, name):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    dev = _Device(clock, *DEVICES[name])
    serial, serial_s = _timed(clock, lambda: serial_sample(dev, SCHED, X, N))
    first, first_s = _timed(clock, lambda: sample(dev, SCHED, X, N, tol=1e-3))
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
    second, second_s = _timed(clock, lambda: sample(dev, SCHED, X, N, tol=1e-3))
    assert second.plan.reused and second.plan.choice == plan.choice
    assert second.plan.planning_s < 0.02 * serial_s
    assert torch.equal(second.sample, first.sample)
    assert second_s <= serial_s * 1.001 and second_s == pytest.approx(run_s, rel=1e-9)
    if plan.choice.sampler == "serial":
        assert torch.equal(first.sample, serial)
    else:
        assert (first.sample - serial).abs().max() < 1e-2
    print(f"{name}: serial {serial_s:.3f} s (predicted {plan.serial.predicted_s:.3f}); "
          f"{plan.choice.label}: predicted {plan.choice.predicted_s:.3f} s, measured "
          f"{run_s:.3f} s; planning {planning:.3f} s first, {second.plan.planning_s:.4f} s "
          f"second")


def test_a_short_run_gets_serial_after_one_timed_call(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    dev = _Device(clock, *DEVICES["flat-to-128"])
    n = planner.MIN_PLAN_STEPS - 1
    out, took = _timed(clock, lambda: sample(dev, SCHED, X, n))
    assert out.plan.choice.sampler == "serial" and "too short" in out.plan.reason
    assert out.plan.planning_s == pytest.approx(0.020)        # one call, no probe
    assert took == pytest.approx((n + 1) * 0.020)
    assert torch.equal(out.sample, serial_sample(MIX, SCHED, X, n))


def test_recorded_runs_change_no_kept_plan_unless_asked(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
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
