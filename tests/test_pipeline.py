"""The pipelined (wavefront) schedule: same numbers as the sweep, shorter critical path."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pint
import pint.problems


def problem(seed, d=3, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    A = torch.tensor(M - M.T - 0.3 * np.eye(d), dtype=dtype)
    y0 = torch.tensor(rng.standard_normal(d), dtype=dtype)
    return pint.ODEProblem(lambda t, y: A @ y + 0.1 * torch.sin(y), y0, (0.0, 3.0))


@pytest.mark.filterwarnings("ignore::pint.SwappedPropagatorsWarning")  # g > f is drawn too
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 10), K=st.integers(0, 10), g=st.integers(1, 3), f=st.integers(1, 8),
       seed=st.integers(0, 1000), tol=st.sampled_from([0.0, 1e-6, 1e-3]),
       method=st.sampled_from(["RK4", "Euler", "Heun"]))
def test_pipelined_equals_sweep(B, K, g, f, seed, tol, method):
    # coarse RK4 batches with the fine RK4 (one call per tick); Euler and Heun do not
    prob = problem(seed)
    kw = dict(num_blocks=B, tol=tol, max_iters=K)
    coarse = getattr(pint, method)(g)
    a = pint.parareal(prob, coarse, pint.RK4(f), **kw)
    b = pint.parareal(prob, coarse, pint.RK4(f), pipelined=True, **kw)
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


# the recommended setups, at sizes that keep the implicit coarse solves quick
CATALOG_SIZES = {"heat": {"points": 15}, "allen_cahn": {"points": 31}, "burgers": {"points": 32}}


@pytest.mark.parametrize("name", pint.problems.names())
def test_pipelined_depth_never_above_sweep_on_catalog(name):
    case = pint.problems.get(name, **CATALOG_SIZES.get(name, {}))
    args = (case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    a = pint.parareal(*args)
    b = pint.parareal(*args, pipelined=True)
    assert a.iterations == b.iterations and a.converged and b.converged
    assert torch.allclose(a.boundaries, b.boundaries, rtol=0, atol=1e-12)
    assert np.allclose(a.history, b.history, rtol=1e-9, atol=1e-14)
    assert b.stats.depth <= a.stats.depth
    if case.coarse.batches_with(case.fine):  # one call per tick: the wavefront's gain
        assert b.stats.depth < a.stats.depth


@pytest.mark.parametrize("B,g,M,K,tol", [(20, 1, 50, 8, 0.0), (10, 1, 3, 10, 0.0),
                                         (8, 1, 1, 8, 0.0), (12, 2, 4, 12, 1e-8)])
def test_two_group_schedule_depth_is_predicted_and_within_sweep(B, g, M, K, tol):
    # different methods: the dry run predicts the depth of the run it chose, and the
    # choice never exceeds the sweep's depth at any iteration's test
    from pint.pipeline import choose_coarse_first, simulate, sweep_depths

    prob = problem(B + M)
    kw = dict(num_blocks=B, tol=tol, max_iters=K)
    a = pint.parareal(prob, pint.Euler(g), pint.RK4(M), **kw)
    b = pint.parareal(prob, pint.Euler(g), pint.RK4(M), pipelined=True, **kw)
    assert a.iterations == b.iterations
    first = choose_coarse_first(B, K, [g] * B, [M] * B, False)
    got = simulate(B, K, [g] * B, [M] * B, False, first)
    ref = sweep_depths(K, [g] * B, [M] * B, False)
    assert got[b.iterations] == b.stats.depth and ref[a.iterations] == a.stats.depth
    assert all(d <= r for d, r in zip(got[1:], ref[1:], strict=True))
    # coarse first replays the sweep's calls; the wavefront wins when chains are long
    assert simulate(B, K, [g] * B, [M] * B, False, True) == ref
    if (B, M) == (8, 1):
        assert not first and b.stats.depth < a.stats.depth
    if (B, M) == (20, 50):  # catalog heat's shape: the wavefront would be 12 deeper
        assert first and simulate(B, K, [g] * B, [M] * B, False, False)[K] == ref[K] + 12


def test_two_group_schedule_with_warm_start_and_uneven_blocks():
    prob = problem(5)
    parts = [0.0, 0.2, 0.7, 1.0, 1.9, 3.0]
    kw = dict(tol=0.0, partition=parts)
    init = pint.serial(prob, pint.RK4(2), partition=parts).boundaries
    for initial in (None, init):
        a = pint.parareal(prob, pint.Euler(2), pint.RK4(6), initial=initial, **kw)
        b = pint.parareal(prob, pint.Euler(2), pint.RK4(6), initial=initial, pipelined=True, **kw)
        assert torch.allclose(a.boundaries, b.boundaries, rtol=0, atol=1e-12)
        assert b.stats.depth <= a.stats.depth
