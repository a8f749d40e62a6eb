"""The ParaDiGMS (sliding-window Picard) peer: exactness, early stopping, costs, errors."""

import pytest
import torch

from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule, picard_sample, serial_sample

SCHED = VPSchedule.linear(1000)
M = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)


@pytest.mark.parametrize("window", [1, 7, 50])
def test_tol_zero_reproduces_serial(window):
    x = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = picard_sample(M, SCHED, x, 50, window=window, tol=0)
    assert out.converged and out.iterations <= 50
    assert torch.allclose(out.sample, serial_sample(M, SCHED, x, 50), atol=1e-10, rtol=0)


def test_early_stop_error_shrinks_with_tol_and_calls_grow():
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = serial_sample(M, SCHED, x, 400)
    errs, calls = [], []
    for tol in (1e-1, 1e-2, 1e-3):
        out = picard_sample(M, SCHED, x, 400, window=40, tol=tol)
        assert out.converged and out.stats.model_calls == out.iterations == out.stats.depth
        errs.append((out.sample - ref).abs().max().item())
        calls.append(out.iterations)
    assert errs[2] < errs[0] and calls[0] <= calls[1] <= calls[2] < 400
    assert errs[2] < 1e-3


def test_each_call_holds_the_window():
    batches = []

    class Counting(torch.nn.Module):
        sample_shape = (8,)

        def forward(self, x, t):
            batches.append(x.shape[0])
            return M(x, t)

    x = torch.randn(3, 8, dtype=torch.float64)
    out = picard_sample(Counting(), SCHED, x, 100, window=16, tol=1e-2)
    assert max(batches) == 16 * 3 and len(batches) == out.iterations
    assert out.stats.model_rows == sum(batches)


def test_stochastic_picard_equals_serial_with_same_noise():
    x = torch.randn(2, 8, dtype=torch.float64)
    ref = serial_sample(M, SCHED, x, 30, eta=1.0, generator=torch.Generator().manual_seed(3))
    out = picard_sample(M, SCHED, x, 30, window=8, tol=1e-8, eta=1.0,
                        generator=torch.Generator().manual_seed(3))
    assert (out.sample - ref).abs().max() < 1e-6


def test_warm_start_from_the_serial_trajectory_needs_one_call_per_window():
    from adapters.diffusion import DDIMStep, Denoiser, SamplingGrid

    x = torch.randn(2, 8, dtype=torch.float64)
    step = DDIMStep(Denoiser(M), SamplingGrid.build(SCHED, 100), fine=True)
    traj = [x]
    for j in range(100):
        traj.append(step.step(None, torch.tensor([float(j)], dtype=torch.float64),
                              traj[-1][None], torch.ones(1, dtype=torch.float64))[0])
    warm = picard_sample(M, SCHED, x, 100, window=20, tol=1e-6, initial=torch.stack(traj))
    cold = picard_sample(M, SCHED, x, 100, window=20, tol=1e-6)
    assert warm.iterations == 5 < cold.iterations
    assert torch.allclose(warm.sample, traj[-1], atol=1e-12)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(window=0), ValueError, "window must be between 1 and num_steps=20"),
    (dict(window=21), ValueError, "window must be between 1 and num_steps=20"),
    (dict(window=2.0), TypeError, "window must be an int"),
    (dict(tol=-1.0), ValueError, "tol must be a finite number >= 0"),
    (dict(initial=torch.zeros(3, 8)), ValueError, "initial must have shape"),
])
def test_bad_picard_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        picard_sample(M, SCHED, torch.randn(1, 8), 20, **kw)
