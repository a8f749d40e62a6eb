"""progress=True: one tqdm bar per run, moved by model calls (or steps made exact) against a
known total or an upper bound, closed however the run ends; and the CLI's memory note."""

import argparse
import io
import itertools

import pytest
import torch
from tqdm import tqdm as std_tqdm

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    VPSchedule,
    block_partition,
    picard_sample,
    quasi_newton_sample,
    sample,
    serial_sample,
    srds_sample,
)
from adapters.diffusion import progress as progress_mod
from adapters.diffusion.samplers import COARSE_ORDERS, srds_max_calls

SCHEDULE = VPSchedule.linear(1000)
MODEL = GaussianMixtureDenoiser.random(SCHEDULE, dim=8, components=4, seed=1)


def noise(batch=3, seed=0):
    return torch.randn(batch, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def bars(monkeypatch):
    """Every bar the samplers open, drawn into a string instead of stderr."""
    made = []

    class Recorder(std_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            self.initial_total, self.was_closed = self.total, False
            made.append(self)

        def close(self):
            self.was_closed = True
            super().close()

    monkeypatch.setattr(progress_mod, "tqdm", Recorder)
    return made


def test_serial_ticks_once_per_model_call_to_n(bars):
    serial_sample(MODEL, SCHEDULE, noise(), 30, progress=True)
    (bar,) = bars
    assert bar.initial_total == bar.total == 30 and bar.n == 30 and bar.was_closed


@pytest.mark.parametrize("pipelined", [False, True])
def test_srds_counts_model_calls_against_the_bound(bars, pipelined):
    N, B = 49, 7
    out = srds_sample(MODEL, SCHEDULE, noise(), N, num_blocks=B, pipelined=pipelined,
                      progress=True)
    (bar,) = bars
    assert out.converged and out.iterations < B  # stopped early
    # a typical run's calls first (4 iterations), never more than the bound
    assert bar.initial_total == srds_max_calls(block_partition(N, B), 4, pipelined)
    assert bar.n == out.stats.model_calls <= srds_max_calls(block_partition(N, B), None, pipelined)
    assert bar.total == bar.n and bar.was_closed  # done: the bar reads 100 %
    assert bar.postfix.startswith(f"iter={out.iterations}")


def test_srds_bound_is_the_serial_count_pipelined_and_exact_for_the_sweep(bars):
    N, B = 40, 5
    assert srds_max_calls(block_partition(N, B), None, True) == N  # a full wavefront run
    out = srds_sample(MODEL, SCHEDULE, noise(), N, num_blocks=B, tol=0.0, max_iters=3,
                      pipelined=False, progress=True)
    (bar,) = bars
    assert not out.converged  # ran out of iterations: every bounded call was made
    assert bar.n == out.stats.model_calls == bar.total == bar.initial_total


def test_srds_bound_holds_for_every_schedule(bars):
    N, part = 24, [0, 2, 9, 10, 17, 24]
    x = noise()
    base = srds_sample(MODEL, SCHEDULE, x, N, partition=part, tol=0.0, max_iters=5)
    for pipelined, coarse, iters, warm in itertools.product(
            [False, True], ["ddim", "dpm2"], [1, 5], [False, True]):
        bars.clear()
        out = srds_sample(MODEL, SCHEDULE, x + 0.05, N, partition=part, tol=0.0,
                          max_iters=iters, pipelined=pipelined, coarse=coarse,
                          initial=base.boundaries if warm else None, progress=True)
        (bar,) = bars
        edges = torch.tensor(part, dtype=torch.float64)
        bound = srds_max_calls(edges, iters, pipelined, COARSE_ORDERS[coarse], warm)
        assert bar.initial_total == srds_max_calls(edges, min(iters, 4), pipelined,
                                                   COARSE_ORDERS[coarse], warm)
        assert bar.n == out.stats.model_calls <= bound, (pipelined, coarse, iters, warm)


@pytest.mark.parametrize("run", [picard_sample, quasi_newton_sample])
def test_window_samplers_advance_by_exact_steps_to_n(bars, run):
    out = run(MODEL, SCHEDULE, noise(), 40, window=8, progress=True)
    (bar,) = bars
    assert out.converged and out.iterations < 40
    assert bar.total == 40 and bar.n == 40 and bar.was_closed
    assert bar.postfix == f"calls={out.stats.model_calls}"
    bars.clear()
    out = run(MODEL, SCHEDULE, noise(), 40, window=8, tol=0.0, max_iters=3, progress=True)
    (bar,) = bars
    assert not out.converged and bar.n == 3 and bar.total == 40  # one exact step per call


@pytest.mark.parametrize("run", [serial_sample, srds_sample, picard_sample,
                                 quasi_newton_sample])
def test_no_bar_without_progress(bars, run):
    run(MODEL, SCHEDULE, noise(), 20)
    run(MODEL, SCHEDULE, noise(), 20, progress=False)
    assert bars == []
    with pytest.raises(TypeError, match="progress"):
        run(MODEL, SCHEDULE, noise(), 20, progress="yes")


@pytest.mark.parametrize("run", [serial_sample, srds_sample, picard_sample,
                                 quasi_newton_sample])
def test_the_bar_is_closed_when_the_model_raises(bars, run):
    calls = []

    def failing(x, t):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("out of memory")
        return MODEL(x, t)

    with pytest.raises(RuntimeError, match="out of memory"):
        run(failing, SCHEDULE, noise(), 20, progress=True)
    (bar,) = bars
    assert bar.was_closed and bar.n < bar.total  # window samplers count steps, not calls


def test_auto_passes_progress_through(bars):
    sample(MODEL, SCHEDULE, noise(), 20, sampler="auto", progress=True)
    (bar,) = bars
    assert bar.n == 20 and bar.was_closed


def test_the_bar_goes_to_stderr(capsys):
    serial_sample(MODEL, SCHEDULE, noise(), 12, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "serial" in captured.err and "12/12" in captured.err


def _args(**kw):
    base = dict(sampler="srds", window=None, max_batch=None, blocks=None, max_iters=None,
                num_samples=9, dtype="float32")
    return argparse.Namespace(**{**base, **kw})


def test_cli_memory_note_only_for_large_runs():
    from adapters.diffusion.cli import _memory_note

    shape = (1, 28, 28)
    for sampler in ("srds", "serial", "picard", "quasi_newton", "auto"):
        assert _memory_note(_args(sampler=sampler), 1000, shape, torch.float32, True) is None
    note = _memory_note(_args(sampler="quasi_newton", num_samples=100000), 1000, shape,
                        torch.float32, True)
    # 1e5 samples x 784 x 4 bytes x (1001 + 6 * 32) states
    assert note.count("\n") == 0 and "100000 samples of 1x28x28 float32" in note
    assert f"~{1e5 * 784 * 4 * 1193 / 2**30:.1f} GiB" in note and "estimate" in note
    note = _memory_note(_args(num_samples=100000), 1000, shape, torch.float32, True)
    assert "srds" in note and "63 blocks" in note


def test_srds_bar_estimates_the_calls_the_run_makes(bars):
    """The bar's total follows the run (issue 32: it read 0/1000 with a half-hour ETA and
    jumped to 123/123): after each iteration the calls made plus the iterations the
    change's rate still needs, within the bound; at the end exactly the calls made."""
    N, B = 400, 20
    seen = []
    out = srds_sample(MODEL, SCHEDULE, noise(), N, num_blocks=B, pipelined=False, tol=1e-6,
                      progress=True, callback=lambda info: seen.append(bars[0].total))
    (bar,) = bars
    bound = srds_max_calls(block_partition(N, B), None, False)
    assert out.converged and bar.total == bar.n == out.stats.model_calls
    assert all(out.stats.model_calls * 0.5 <= t <= bound for t in seen[1:])
    assert bar.initial_total < bound / 2  # a typical run's, not the worst case
    last = seen[-2] if len(seen) > 1 else seen[-1]  # the estimate before the last iteration
    assert abs(last - out.stats.model_calls) <= 0.35 * out.stats.model_calls
