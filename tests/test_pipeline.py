"""The pipelined (wavefront) schedule: same numbers as the sweep, shorter critical path."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pint


def problem(seed, d=3, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    A = torch.tensor(M - M.T - 0.3 * np.eye(d), dtype=dtype)
    y0 = torch.tensor(rng.standard_normal(d), dtype=dtype)
    return pint.ODEProblem(lambda t, y: A @ y + 0.1 * torch.sin(y), y0, (0.0, 3.0))


@pytest.mark.filterwarnings("ignore::pint.SwappedPropagatorsWarning")  # g > f is drawn too
@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 10), K=st.integers(0, 10), g=st.integers(1, 3), f=st.integers(1, 8),
       seed=st.integers(0, 1000), tol=st.sampled_from([0.0, 1e-6, 1e-3]))
def test_pipelined_equals_sweep(B, K, g, f, seed, tol):
    prob = problem(seed)
    kw = dict(num_blocks=B, tol=tol, max_iters=K)
    a = pint.parareal(prob, pint.RK4(g), pint.RK4(f), **kw)
    b = pint.parareal(prob, pint.RK4(g), pint.RK4(f), pipelined=True, **kw)
    assert a.iterations == b.iterations and a.converged == b.converged
    assert torch.allclose(a.boundaries, b.boundaries, rtol=0, atol=1e-12)
    assert np.allclose(a.history, b.history, rtol=1e-9, atol=1e-14)
    assert b.stats.depth <= a.stats.depth


def test_pipelined_depth_formula():
    # merged ticks (same method): the last boundary of iteration k is known after
    # k*M + (B - k) * g steps at most; here with g = 1: depth = K*M + (B - K) exactly
    prob = problem(0)
    B, M, K = 12, 10, 3
    res = pint.parareal(prob, pint.RK4(1), pint.RK4(M), num_blocks=B, tol=0, max_iters=K,
                        pipelined=True)
    sweep = pint.parareal(prob, pint.RK4(1), pint.RK4(M), num_blocks=B, tol=0, max_iters=K)
    assert res.stats.depth == K * M + (B - K)
    assert sweep.stats.depth == B + sum(M + (B - k) for k in range(1, K + 1))


def test_pipelined_different_methods_use_two_calls_per_tick():
    prob = problem(1)
    a = pint.parareal(prob, pint.Euler(1), pint.RK4(5), num_blocks=6, tol=0, max_iters=6)
    b = pint.parareal(prob, pint.Euler(1), pint.RK4(5), num_blocks=6, tol=0, max_iters=6,
                      pipelined=True)
    assert torch.allclose(a.y, b.y, atol=1e-12)


def test_pipelined_needs_step_propagators():
    prob = problem(2)
    with pytest.raises(ValueError, match="pipelined=True needs step-by-step propagators"):
        pint.parareal(prob, pint.RK4(1), pint.TorchDiffEq(), num_blocks=4, pipelined=True)


def test_pipelined_callback_and_blowup():
    prob = problem(3)
    seen = []
    pint.parareal(prob, pint.RK4(1), pint.RK4(4), num_blocks=5, tol=0, max_iters=3,
                  pipelined=True, callback=lambda i: seen.append(i.iteration))
    assert seen == [0, 1, 2, 3]
    pole = pint.ODEProblem(lambda t, y: y * y, torch.ones(1, dtype=torch.float64), (0.0, 1.5))
    with pytest.raises(pint.NonFiniteStateError, match="block"):
        pint.parareal(pole, pint.Euler(1), pint.Euler(3000), num_blocks=3, pipelined=True)
