"""sample(sampler="auto"): the width budget, dispatch, and bad input (the planner itself:
test_planner.py)."""

import pytest
import torch

from adapters.diffusion import (
    CostModel,
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    sample,
    serial_sample,
    srds_sample,
)

SCHED = VPSchedule.linear(1000)
M = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)


def test_auto_respects_the_width_budget_and_matches_serial():
    widths = []

    class Counting(torch.nn.Module):
        sample_shape = (8,)

        def forward(self, x, t):
            widths.append(x.shape[0])
            return M(x, t)

    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flat = CostModel.knee(0.01, 10_000, 0.0, engine_s=0.0)       # a device far below its knee
    out = sample(Counting(), SCHED, x, 200, max_batch=40, tol=1e-5, cost=flat)
    assert max(widths) <= 40 and out.plan.choice.sampler != "serial" and out.iterations < 200
    assert (out.sample - serial_sample(M, SCHED, x, 200)).abs().max() < 1e-4
    widths.clear()
    tight = sample(Counting(), SCHED, x, 50, max_batch=7, cost=flat)  # < two steps: serial
    assert max(widths) == 4 and tight.stats.model_calls == 50 == len(widths)
    assert torch.equal(tight.sample, serial_sample(M, SCHED, x, 50))


def test_named_samplers_dispatch():
    x = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = sample(M, SCHED, x, 40, sampler="picard", window=8, tol=1e-4)
    b = picard_sample(M, SCHED, x, 40, window=8, tol=1e-4)
    assert torch.equal(a.sample, b.sample) and a.iterations == b.iterations
    c = sample(M, SCHED, x, 40, sampler="srds", tol=1e-6)
    assert torch.equal(c.sample, srds_sample(M, SCHED, x, 40, tol=1e-6).sample)


@pytest.mark.parametrize("kw,match", [
    (dict(sampler="ddim"), "sampler must be one of auto, serial, srds, picard, quasi_newton, taa"),
    (dict(max_batch=0), "max_batch must be an int >= 1"),
    (dict(max_batch=8.5), "max_batch must be an int >= 1"),
    (dict(sampler="picard", max_batch=64), "max_batch is only used with sampler='auto'"),
])
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        sample(M, SCHED, torch.randn(2, 8, dtype=torch.float64), 20, **kw)
