"""The sliding-window samplers: ParaDiGMS's Picard iteration (the peer) and pint's
quasi-Newton refinement: exactness, early stopping, costs, warm starts, errors."""

import pytest
import torch

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
)

SCHED = VPSchedule.linear(1000)
M = GaussianMixtureDenoiser.random(SCHED, dim=8, components=4, seed=1)
WINDOW_SAMPLERS = pytest.mark.parametrize("sample", [picard_sample, quasi_newton_sample],
                                          ids=["picard", "quasi_newton"])


@WINDOW_SAMPLERS
@pytest.mark.parametrize("window", [1, 7, 50])
def test_tol_zero_reproduces_serial(sample, window):
    x = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample(M, SCHED, x, 50, window=window, tol=0)
    assert out.converged and out.iterations <= 50
    assert torch.allclose(out.sample, serial_sample(M, SCHED, x, 50), atol=1e-10, rtol=0)


@WINDOW_SAMPLERS
def test_early_stop_error_shrinks_with_tol_and_calls_grow(sample):
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = serial_sample(M, SCHED, x, 400)
    errs, calls = [], []
    for tol in (1e-1, 1e-2, 1e-3):
        out = sample(M, SCHED, x, 400, window=40, tol=tol)
        assert out.converged and out.stats.model_calls == out.iterations == out.stats.depth
        errs.append((out.sample - ref).abs().max().item())
        calls.append(out.iterations)
    assert errs[2] < errs[0] and calls[0] <= calls[1] <= calls[2] < 400
    assert errs[2] < 1e-3


@WINDOW_SAMPLERS
def test_each_call_holds_the_window(sample):
    batches = []

    class Counting(torch.nn.Module):
        sample_shape = (8,)

        def forward(self, x, t):
            batches.append(x.shape[0])
            return M(x, t)

    x = torch.randn(3, 8, dtype=torch.float64)
    out = sample(Counting(), SCHED, x, 100, window=16, tol=1e-2)
    assert max(batches) == 16 * 3 and len(batches) == out.iterations
    assert out.stats.model_rows == sum(batches)


@WINDOW_SAMPLERS
def test_stochastic_sampler_equals_serial_with_same_noise(sample):
    x = torch.randn(2, 8, dtype=torch.float64)
    ref = serial_sample(M, SCHED, x, 30, eta=1.0, generator=torch.Generator().manual_seed(3))
    out = sample(M, SCHED, x, 30, window=8, tol=1e-8, eta=1.0,
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


def test_quasi_newton_needs_fewer_calls_than_picard_at_no_larger_error():
    # the secant gain carries corrections through the window: at N = 100 (steps whose gain
    # differs clearly from 1) it saves model calls and rows without losing accuracy
    x = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = serial_sample(M, SCHED, x, 100)
    for tol in (1e-3, 1e-4):
        pic = picard_sample(M, SCHED, x, 100, window=32, tol=tol)
        qn = quasi_newton_sample(M, SCHED, x, 100, window=32, tol=tol)
        assert qn.iterations < pic.iterations and qn.stats.model_rows < pic.stats.model_rows
        assert (qn.sample - ref).abs().max() <= 1.5 * (pic.sample - ref).abs().max()


@WINDOW_SAMPLERS
def test_warm_start_from_a_neighbouring_trajectory_saves_calls(sample):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, dtype=torch.float64, generator=g)
    first = sample(M, SCHED, x, 200, window=20, tol=1e-4, return_trajectory=True)
    assert first.trajectory.shape == (201, 2, 8) and torch.equal(first.trajectory[-1], first.sample)
    # the next "frame": a slightly rotated noise
    x2 = 0.995 * x + 0.0999 * torch.randn(2, 8, dtype=torch.float64, generator=g)
    cold = sample(M, SCHED, x2, 200, window=20, tol=1e-4)
    warm = sample(M, SCHED, x2, 200, window=20, tol=1e-4, initial=first.trajectory)
    assert warm.iterations < cold.iterations
    assert (warm.sample - cold.sample).abs().max() < 1e-3


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


def test_samplers_build_no_autograd_graph():
    # a trainable network: without no_grad the trajectory would keep every call's graph
    # (gigabytes at N = 1000 on a real UNet)
    from adapters.diffusion import srds_sample

    class Trainable(torch.nn.Module):
        sample_shape = (8,)

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8).double()

        def forward(self, x, t):
            return self.lin(x)

    net, x = Trainable(), torch.randn(2, 8, dtype=torch.float64)
    for sample in (picard_sample, quasi_newton_sample, srds_sample):
        assert not sample(net, SCHED, x, 20, tol=1e-3).sample.requires_grad
    assert not serial_sample(net, SCHED, x, 20).requires_grad


@pytest.mark.parametrize("solver,N,most", [("UniPCMultistepScheduler", 20, 12),
                                           ("UniPCMultistepScheduler", 50, 20),
                                           ("DPMSolverMultistepScheduler", 50, 16)])
def test_quasi_newton_couples_a_multistep_solvers_history(solver, N, most):
    """On a multistep solver quasi-Newton rebuilds the window with each step's slot matrix
    (``slot_gains``): UniPC's corrector feeds a step's prediction back into the previous
    sample, which Picard's ``J = I`` on the sample misses (bundled digits model: 17 / 27
    Picard calls at N = 20 / 50). At most ``most`` calls, within 1e-3 of serial, and exact
    with ``tol = 0``."""
    diffusers = pytest.importorskip("diffusers")
    from adapters.diffusers import from_diffusers
    from adapters.diffusion import load_pretrained
    from adapters.diffusion.pretrained import inspect_pretrained

    net, _ = load_pretrained("digits")
    info = inspect_pretrained("digits")
    model, schedule = from_diffusers(
        net.unet, getattr(diffusers, solver).from_config(info.scheduler_config))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = serial_sample(model, schedule, x, N)
    out = quasi_newton_sample(model, schedule, x, N)
    assert out.converged and out.stats.depth <= most
    assert (out.sample - ref).abs().max() < 1e-3
    exact = quasi_newton_sample(model, schedule, x, 12, tol=0)
    assert torch.allclose(exact.sample, serial_sample(model, schedule, x, 12), atol=1e-5)
