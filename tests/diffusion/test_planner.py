"""The planner behind sample(sampler="auto"): the cost model, the probe, the proxy estimate
of each candidate's calls, and the choice on devices with very different cost curves."""

import math

import pytest
import torch

from adapters.diffusion import (
    CostModel,
    GaussianMixtureDenoiser,
    ModelOutputError,
    SigmaSchedule,
    VPSchedule,
    measure_call_cost,
    picard_sample,
    plan_sampling,
    planner,
    quasi_newton_sample,
    sample,
    serial_sample,
    srds_sample,
)
from adapters.diffusion.auto import PARALLEL_SAMPLERS
from adapters.diffusion.planner import PROXY_ERROR, RECORDED_ERROR

SCHED = VPSchedule.linear(1000)
M = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)
X = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
FLAT = CostModel.knee(0.010, 10_000, 1e-5, engine_s=0.0)   # a GPU far below its knee
LINEAR = CostModel((1, 2), (0.004, 0.008), engine_s=0.0)   # a CPU: cost in proportion to rows


@pytest.fixture(autouse=True)
def fresh_caches():
    """Every test probes and records afresh; the proxy traces (pure functions of the grid,
    tolerance and candidate) are shared."""
    planner._PROBES.clear()
    planner._RECORDS.clear()
    planner._PLANS.clear()
    yield
    planner._PROBES.clear()
    planner._RECORDS.clear()
    planner._PLANS.clear()


def test_cost_model_interpolates_and_extrapolates():
    c = CostModel((1, 4, 16), (1.0, 1.0, 4.0))
    assert c(1) == 1.0 and c(0) == 1.0 and c(4) == 1.0
    assert c(10) == pytest.approx(2.5) and c(16) == 4.0
    assert c(32) == pytest.approx(8.0)                        # slope of the last two points
    k = CostModel.knee(0.01, 64, 0.001)
    assert k(1) == k(64) == 0.01 and k(164) == pytest.approx(0.11)
    assert CostModel((2,), (0.5,))(8) == pytest.approx(2.0)  # one point: proportional beyond
    probed = CostModel((1, 4, 16), (1.0, 1.0, 1.0), source="probe")
    assert probed(64) == pytest.approx(2.5)   # unmeasured is never flat: >= half per row


@pytest.mark.parametrize("rows,seconds,match", [
    ((), (), "non-empty"), ((1, 2), (1.0,), "equal length"), ((2, 1), (1.0, 1.0), "increase"),
    ((1,), (float("nan"),), "finite"), ((1,), (-1.0,), ">= 0"),
])
def test_cost_model_bad_points(rows, seconds, match):
    with pytest.raises(ValueError, match=match):
        CostModel(rows, seconds)


class _Clock:
    """A virtual clock that the simulated device advances by each call's latency."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Device(torch.nn.Module):
    """The mixture denoiser on a simulated device: flat up to ``knee`` rows, then linear."""

    sample_shape = (8,)

    def __init__(self, clock, latency, knee, per_row, bad=False):
        super().__init__()
        self.clock, self.latency, self.knee, self.per_row, self.bad = clock, latency, knee, per_row, bad
        self.widths = []

    def forward(self, x, t):
        self.widths.append(x.shape[0])
        self.clock.now += self.latency + self.per_row * max(0, x.shape[0] - self.knee)
        out = M(x, t)
        return out * float("nan") if self.bad else out


def test_probe_recovers_the_device_curve(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    dev = _Device(clock, 0.02, knee=16, per_row=0.001)
    cost = measure_call_cost(dev, SCHED, X, 1000, max_rows=256)
    def true(rows):
        return 0.02 + 0.001 * max(0, rows - 16)

    # 4x while flat, the knee between the last flat width and the next, 2x beyond until
    # the cost grows with the rows (32 -> 64 rows: 1.9x)
    assert cost.rows == (2, 8, 16, 32, 64) and cost.source == "probe"
    for rows in cost.rows:                                    # measured: exact
        assert cost(rows) == pytest.approx(true(rows), rel=1e-9)
    for rows in (16, 50, 100):                                # between: within 30 %
        assert cost(rows) == pytest.approx(true(rows), rel=0.3)
    assert cost(512) == pytest.approx(true(512), rel=1e-9)    # beyond: the last slope
    calls = len(dev.widths)
    assert calls == len(cost.rows) + 1                        # 2 at one step (warm-up), 1 wider
    assert clock.now < 0.15 * 1000 * 0.02                    # under 15 % of a serial run
    assert measure_call_cost(dev, SCHED, X, 1000, max_rows=256) is cost   # cached
    assert len(dev.widths) == calls
    other = measure_call_cost(dev, SCHED, X.float(), 1000, max_rows=256)    # dtype is a key
    assert other is not cost


class _ColdDevice(_Device):
    """A GPU-like device whose first call at each new width pays a one-time cost (kernel
    selection and lazy loading at a new shape: on an H200, ~0.1-1 s against ~12 ms warm)."""

    def __init__(self, clock, cold, *args):
        super().__init__(clock, *args)
        self.cold, self.seen = cold, set()

    def forward(self, x, t):
        if x.shape[0] not in self.seen:
            self.seen.add(x.shape[0])
            self.clock.now += self.cold
        return super().forward(x, t)


def test_probe_is_not_fooled_by_first_calls_at_a_new_width(monkeypatch):
    # bench_planner on an H200 (eager fp16 UNet, flat ~12 ms): the probe timed each width
    # once, cold, priced a 16-row call at ~0.8 s and auto chose serial, 4.8x the best
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    dev = _ColdDevice(clock, 0.3, 0.012, 128, 0.012 / 128)
    cost = measure_call_cost(dev, SCHED, X, 1000, max_rows=256)
    for rows in cost.rows:
        assert cost(rows) == pytest.approx(0.012 + 0.012 / 128 * max(0, rows - 128), rel=0.01)
    plan = plan_sampling(dev, SCHED, X, 200, tol=1e-4, cost=cost)
    assert plan.choice.sampler != "serial" and plan.choice.max_rows >= 32


def test_probe_stays_within_its_budget(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(planner, "time", clock)
    dev = _Device(clock, 0.0, knee=0, per_row=0.001)        # cost in proportion to rows
    cost = measure_call_cost(dev, SCHED, X, 1000, max_rows=4096)
    serial = 1000 * 0.002                                    # 2 rows per step
    assert cost.rows[-1] < 4096 and clock.now < 0.15 * serial + 2 * cost(cost.rows[-1])
    assert cost(1024) == pytest.approx(1.024)                # the measured slope, beyond


def test_probe_reports_a_model_returning_nan():
    dev = _Device(_Clock(), 0.0, 1, 0.0, bad=True)
    with pytest.raises(ModelOutputError, match="cost probe of sampler='auto'.*NaN"):
        measure_call_cost(dev, SCHED, X, 100)
    with pytest.raises(ModelOutputError, match="cost probe"):
        sample(dev, SCHED, X, 100)


def test_plan_prices_each_candidate_by_its_calls():
    plan = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=FLAT, exhaustive=True)
    assert plan.serial.calls == 200 and plan.serial.predicted_s == pytest.approx(200 * 0.010)
    labels = [c.label for c in plan.candidates]
    assert len(set(labels)) == len(labels)
    assert {"srds pipelined B=28", "srds sweep B=14", "picard window=32",
            "quasi_newton window=128"} <= set(labels)
    for c in plan.candidates[1:]:
        assert c.predicted_s == pytest.approx(c.calls * 0.010, rel=0.02)   # flat: calls
        assert c.estimate == "proxy" and c.error == PROXY_ERROR
    assert plan.choice is plan.candidates[1] and plan.choice.sampler != "serial"
    text = plan.table()
    assert "choice: " + plan.choice.label in text and "predicted" in text
    bounded = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=FLAT)   # lower bounds prune
    assert bounded.choice.label == plan.choice.label
    assert len(bounded.candidates) < len(plan.candidates)
    assert any("not priced: a lower bound" in e for e in bounded.excluded)


@pytest.mark.parametrize("name,run,opts", [
    ("picard", picard_sample, {"window": 16}),
    ("quasi_newton", quasi_newton_sample, {"window": 32}),
    ("srds", srds_sample, {"num_blocks": 20, "pipelined": True}),
])
def test_proxy_calls_are_within_their_error_band(name, run, opts):
    """The mixture proxy predicts another model's calls within PROXY_ERROR."""
    plan = plan_sampling(M, SCHED, X, 100, tol=1e-4, cost=FLAT, exhaustive=True)
    c = next(c for c in plan.candidates if c.sampler == name and all(
        c.options.get(k) == v for k, v in opts.items()))
    out = run(M, SCHED, X, 100, tol=1e-4, **opts)
    assert abs(c.calls - out.stats.depth) <= PROXY_ERROR * out.stats.depth


def test_cpu_like_device_gets_serial_and_flat_device_a_wide_window():
    on_cpu = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=LINEAR)
    assert on_cpu.choice.sampler == "serial" and "error band" in on_cpu.reason
    flat = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=FLAT)
    assert flat.choice.sampler in ("picard", "quasi_newton", "taa")
    assert flat.choice.options["window"] >= 64
    knee = plan_sampling(M, SCHED, X, 200, tol=1e-4,
                         cost=CostModel.knee(0.010, 32, 0.010 / 16, engine_s=0.0))
    assert 8 <= knee.choice.max_rows <= 64                     # near the knee (2 rows/step)


def test_max_batch_too_small_picks_serial_and_says_why():
    plan = plan_sampling(M, SCHED, X, 100, cost=FLAT, max_batch=3)
    assert plan.choice.sampler == "serial" and "max_batch=3" in plan.reason
    assert len(plan.candidates) == 1 and "wider than max_batch=3" in plan.excluded[0]
    plan = plan_sampling(M, SCHED, X, 100, cost=FLAT, max_batch=40)
    assert all(c.max_rows <= 40 for c in plan.candidates)


def test_sample_auto_runs_the_choice_and_records_its_calls():
    out = sample(M, SCHED, X, 200, tol=1e-4, cost=FLAT)
    choice = out.plan.choice
    ref = PARALLEL_SAMPLERS[choice.sampler](M, SCHED, X, 200, tol=1e-4, **choice.options)
    assert torch.equal(out.sample, ref.sample)
    assert (out.sample - serial_sample(M, SCHED, X, 200)).abs().max() < 1e-3
    again = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=FLAT)
    rec = next(c for c in again.candidates if c.label == choice.label)
    assert rec.estimate == "recorded run" and rec.error == RECORDED_ERROR
    assert rec.calls == out.stats.depth
    assert math.isclose(rec.predicted_s, out.stats.depth * 0.010, rel_tol=0.02)


def test_a_given_plan_runs_as_is():
    plan = plan_sampling(M, SCHED, X, 100, cost=LINEAR)
    out = sample(M, SCHED, X, 100, plan=plan)
    assert out.plan is plan and out.stats.model_calls == 100 and out.iterations == 0
    assert torch.equal(out.sample, serial_sample(M, SCHED, X, 100))


@pytest.mark.parametrize("kw,err,match", [
    (dict(window=8), ValueError, "sampler='auto' chooses window itself"),
    (dict(plan="fast"), TypeError, "plan must be a SamplingPlan"),
    (dict(sampler="picard", cost=FLAT), ValueError, "cost is only used with sampler='auto'"),
    (dict(max_batch=0), ValueError, "max_batch must be an int >= 1"),
])
def test_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        sample(M, SCHED, X, 20, **{"cost": FLAT, **kw} if "cost" not in kw and "plan" not in kw
               and kw.get("sampler") is None else kw)


def test_bad_samplers_argument():
    with pytest.raises(ValueError, match="samplers must be among"):
        plan_sampling(M, SCHED, X, 20, cost=FLAT, samplers=("ddim",))


def test_an_executor_splits_every_candidates_calls_over_its_ranks(monkeypatch):
    # R ranks: a call of n steps costs the latency of its widest rank's slice,
    # ceil(n / R) steps (window samplers and SRDS alike), plus gather_s
    one = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=LINEAR, exhaustive=True)
    monkeypatch.setattr(planner, "_world_size", lambda executor: 4)
    monkeypatch.setattr(planner, "_from_rank_0", lambda executor, obj: obj)
    four = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=LINEAR, executor=object(),
                         gather_s=0.001, exhaustive=True)
    assert four.excluded == []   # taa as well: its window calls are split like the others
    assert {c.sampler for c in four.candidates[1:]} == {"srds", "picard", "quasi_newton", "taa"}
    by = {c.label: c for c in one.candidates}
    for c in four.candidates[1:]:
        if c.sampler != "srds":  # (a pipelined SRDS call holds up to 2 B steps)
            assert c.max_rows == math.ceil(c.options["window"] / 4) * X.shape[0]
        assert c.calls == by[c.label].calls
        assert c.predicted_s < by[c.label].predicted_s
    w32 = next(c for c in four.candidates if c.label == "quasi_newton window=32")
    steps = planner._TRACES[next(k for k in planner._TRACES
                                 if k[4] == "quasi_newton" and k[5] == (("window", 32),))][0]
    assert w32.predicted_s == pytest.approx(sum(LINEAR(math.ceil(n / 4) * 2) + 0.001
                                                for n in steps))
    assert four.serial.predicted_s == one.serial.predicted_s   # serial runs on one device
    with pytest.raises(ValueError, match="gather_s"):
        plan_sampling(M, SCHED, X, 200, cost=LINEAR, gather_s=-1.0)


def test_taa_is_a_candidate_for_one_step_solvers_only():
    plan = plan_sampling(M, SCHED, X, 200, tol=1e-4, cost=FLAT)
    taa = [c for c in plan.candidates if c.sampler == "taa"]
    assert [c.options["window"] for c in taa] and all(
        c.options["linear"] == "secant" and c.label.startswith("taa (secant)") for c in taa)
    ddpm = plan_sampling(M, SCHED, X, 100, tol=1e-4, cost=FLAT, solver="ddpm")
    assert [c for c in ddpm.candidates if c.sampler == "taa"]   # one-step, stochastic
    sig = SigmaSchedule.flow_matching(shift=3.0).with_solver("dpmpp_2m")
    flow = GaussianMixtureDenoiser.random(sig, dim=8, components=4, seed=1)
    p2 = plan_sampling(flow, sig, X, 50, tol=1e-4, cost=FLAT)
    assert not [c for c in p2.candidates if c.sampler == "taa"]
    assert any("one-step solvers only" in e for e in p2.excluded)


def test_sample_auto_with_progress_runs_any_choice(capsys):
    plan = plan_sampling(M, SCHED, X, 100, tol=1e-4, cost=FLAT, samplers=("taa",))
    assert plan.choice.sampler == "taa"
    out = sample(M, SCHED, X, 100, tol=1e-4, plan=plan, progress=True)
    assert "100/100" in capsys.readouterr().err and out.stats.depth < 100


def test_a_rebuilt_schedule_finds_its_traces_and_recorded_runs():
    """Schedules are keyed by their grid's content: a pipeline that builds its schedule
    anew for every run still reuses the proxy traces and the recorded calls; a different
    grid does not."""
    out = sample(M, SCHED, X, 120, tol=1e-4, cost=FLAT)
    again = plan_sampling(M, VPSchedule.linear(1000), X, 120, tol=1e-4, cost=FLAT)
    rec = next(c for c in again.candidates if c.label == out.plan.choice.label)
    assert rec.estimate == "recorded run" and rec.calls == out.stats.depth
    other = plan_sampling(M, VPSchedule.cosine(1000), X, 120, tol=1e-4, cost=FLAT)
    assert all(c.estimate != "recorded run" for c in other.candidates)
