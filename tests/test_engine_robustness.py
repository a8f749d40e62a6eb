"""No silent wrong result: large time offsets, complex states, gradients, and clear errors
for inputs the engine cannot handle."""

import math
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pint

# ----------------------------------------------------------------- large time offsets


def decay(t, y):
    return -y


@pytest.mark.parametrize("t_span,exact", [((1e8, 1e8 + 1), math.exp(-1.0)),
                                          ((1.7e9, 1.7e9 + 10), math.exp(-10.0))])
def test_float32_state_far_from_zero(t_span, exact):
    prob = pint.ODEProblem(decay, torch.tensor([1.0]), t_span)
    with pytest.warns(pint.TimeResolutionWarning):  # f sees rounded times; decay ignores t
        res = pint.serial(prob, pint.RK4(10), 4)
    assert res.converged and res.times.dtype == torch.float64
    assert math.isclose(float(res.y), exact, rel_tol=1e-3)
    shifted = pint.ODEProblem(decay, torch.tensor([1.0]), (0.0, t_span[1] - t_span[0]))
    assert torch.allclose(res.y, pint.serial(shifted, pint.RK4(10), 4).y, rtol=1e-6, atol=0)


def _offset_solve(prop, dtype, offset, pipelined=None):
    A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=dtype)
    prob = pint.ODEProblem(lambda t, y: A @ y, torch.tensor([1.0, 0.5], dtype=dtype),
                           (offset, offset + 1.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pint.TimeResolutionWarning)
        if pipelined is None:
            return pint.serial(prob, prop, 3)
        return pint.parareal(prob, pint.RK4(1), prop, 3, tol=1e-7, pipelined=pipelined)


def _propagators(dtype):
    """One of each kind; adaptive tolerances above the dtype's round-off."""
    tight = dtype == torch.float64
    rtol, atol = (1e-8, 1e-10) if tight else (1e-5, 1e-7)
    return [pint.Euler(40), pint.Heun(10), pint.RK4(5), pint.BackwardEuler(10),
            pint.ImplicitMidpoint(5), pint.SDIRK2(5),
            pint.TorchDiffEq("dopri5", rtol=rtol, atol=atol), pint.SciPy(rtol=rtol, atol=atol)]


@settings(max_examples=40, deadline=None)
@given(offset=st.one_of(st.floats(-1e12, 1e12), st.sampled_from([1e8, -3e9, 1.7e9, 2.0**40])),
       dtype=st.sampled_from([torch.float32, torch.float64]), which=st.integers(0, 7))
def test_time_offset_does_not_change_autonomous_solution(offset, dtype, which):
    """An autonomous ODE has the same solution over [T, T + 1.5] for every offset T."""
    prop = _propagators(dtype)[which]
    ref = _offset_solve(prop, dtype, 0.0).y
    got = _offset_solve(prop, dtype, offset).y
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    assert torch.allclose(got, ref, rtol=tol, atol=tol), (offset, got, ref)


@pytest.mark.parametrize("pipelined", [False, True])
def test_time_offset_parareal(pipelined):
    for dtype in (torch.float32, torch.float64):
        ref = _offset_solve(pint.RK4(8), dtype, 0.0, pipelined)
        got = _offset_solve(pint.RK4(8), dtype, 3e9, pipelined)
        assert got.iterations == ref.iterations
        assert torch.allclose(got.y, ref.y, rtol=1e-5, atol=1e-6)


def test_float64_times_follow_the_offset_for_nonautonomous_f():
    """float64 states: f sees the exact step times even at t ~ 1e9."""
    T = 1e9

    def f(t, y):
        return torch.cos(t - T) * y

    prob = pint.ODEProblem(f, torch.ones(1, dtype=torch.float64), (T, T + 2.0))
    res = pint.parareal(prob, pint.RK4(2), pint.RK4(50), 4, tol=1e-12)
    assert math.isclose(float(res.y), math.exp(math.sin(2.0)), rel_tol=1e-6)


def test_float32_rounded_times_warn():
    prob = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.ones(1), (1e8, 1e8 + 1))
    with pytest.warns(pint.TimeResolutionWarning, match=r"t_span=.*float64 y0"):
        pint.serial(prob, pint.RK4(4), 2)
    near_zero = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.ones(1), (0.0, 10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pint.serial(near_zero, pint.RK4(4), 1000)


def test_span_too_far_from_zero_for_the_blocks():
    prob = pint.ODEProblem(decay, torch.ones(1, dtype=torch.float64), (1e20, 1e20 + 1e5))
    with pytest.raises(ValueError, match=r"t_span=.*cannot be split into 10 blocks"):
        pint.serial(prob, pint.RK4(2), 10)


# ----------------------------------------------------------------- complex states

OMEGA = 1j


def rotate(t, y):
    return OMEGA * y


COMPLEX_PROPAGATORS = [
    (pint.Euler(4000), 2e-3), (pint.Heun(100), 2e-4), (pint.RK4(40), 1e-7),
    (pint.BackwardEuler(4000), 2e-3), (pint.ImplicitMidpoint(100), 1e-4),
    (pint.SDIRK2(100), 1e-4), (pint.TorchDiffEq("dopri5", rtol=1e-10, atol=1e-12), 1e-8),
    (pint.SciPy("DOP853"), 1e-8), (pint.SciPy("RK45"), 1e-8), (pint.SciPy("BDF"), 1e-6),
]


@pytest.mark.parametrize("prop,tol", COMPLEX_PROPAGATORS, ids=lambda p: repr(p)[:20])
def test_complex_rotation(prop, tol):
    """y' = i y, y(0) = 1 + 0.5i: y(t) = exp(i t) y(0)."""
    y0 = torch.tensor([1 + 0.5j, -2j], dtype=torch.complex128)
    prob = pint.ODEProblem(rotate, y0, (0.0, 2.0))
    exact = torch.exp(torch.tensor(2j, dtype=torch.complex128)) * y0
    res = pint.serial(prob, prop, 2)
    assert res.y.dtype == torch.complex128
    assert (res.y - exact).abs().max() < tol, (res.y, exact)


@pytest.mark.parametrize("pipelined", [False, True])
def test_complex_parareal(pipelined):
    y0 = torch.tensor([1 + 0j], dtype=torch.complex64)
    prob = pint.ODEProblem(rotate, y0, (0.0, 3.0))
    res = pint.parareal(prob, pint.RK4(1), pint.RK4(20), 6, tol=1e-6, pipelined=pipelined)
    assert res.converged
    assert abs(complex(res.y[0]) - np.exp(3j)) < 1e-5


def test_complex_not_holomorphic_implicit():
    """y' = i conj(y), y(0) = 1: y = cosh t + i sinh t; Newton runs on the real form."""
    prob = pint.ODEProblem(lambda t, y: 1j * y.conj(), torch.ones(1, dtype=torch.complex128),
                           (0.0, 1.0))
    res = pint.serial(prob, pint.SDIRK2(200), 2)
    assert abs(complex(res.y[0]) - complex(math.cosh(1.0), math.sinh(1.0))) < 1e-5


@pytest.mark.parametrize("method", ["Radau", "LSODA"])
def test_complex_refused_by_real_only_scipy_methods(method):
    prob = pint.ODEProblem(rotate, torch.ones(1, dtype=torch.complex128), (0.0, 1.0))
    with pytest.raises(TypeError, match=rf"y0 is complex .*{method}"):
        pint.serial(prob, pint.SciPy(method), 1)


# ----------------------------------------------------------------- gradients


def _decay_problem(p: torch.Tensor) -> pint.ODEProblem:
    return pint.ODEProblem(lambda t, y: -p * y + torch.sin(t) * p**2,
                           torch.tensor([1.0, -0.5], dtype=torch.float64), (0.0, 2.0))


SOLVES = {
    "serial": lambda prob: pint.serial(prob, pint.RK4(10), 4),
    "sweep": lambda prob: pint.parareal(prob, pint.RK4(1), pint.RK4(10), 4, tol=0.0),
    "pipelined": lambda prob: pint.parareal(prob, pint.RK4(1), pint.RK4(10), 4, tol=0.0,
                                            pipelined=True),
    "sweep-early-stop": lambda prob: pint.parareal(prob, pint.RK4(1), pint.RK4(10), 4,
                                                   tol=1e-3),
    "warm-start": lambda prob: pint.parareal(prob, pint.RK4(1), pint.RK4(10), 4, tol=0.0,
                                             initial=torch.zeros(5, 2, dtype=torch.float64)),
    "serial-implicit": lambda prob: pint.serial(prob, pint.SDIRK2(5), 2),
}


@pytest.mark.parametrize("name", list(SOLVES))
def test_gradient_wrt_parameters_of_f(name):
    solve = SOLVES[name]
    p = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    res = solve(_decay_problem(p))
    (grad,) = torch.autograd.grad(res.y.sum() + res.boundaries[2].sum(), p)
    eps = 1e-6

    def value(q: float) -> float:
        with torch.no_grad():
            r = solve(_decay_problem(torch.tensor(q, dtype=torch.float64)))
            return float(r.y.sum() + r.boundaries[2].sum())

    fd = (value(0.7 + eps) - value(0.7 - eps)) / (2 * eps)
    assert math.isclose(float(grad), fd, rel_tol=1e-6, abs_tol=1e-8), (float(grad), fd)


def test_gradient_wrt_y0_matches_between_schedules():
    grads = []
    for pipelined in (False, True):
        y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        prob = pint.ODEProblem(lambda t, y: torch.stack([y[1], -torch.sin(y[0])]), y0,
                               (0.0, 3.0))
        res = pint.parareal(prob, pint.RK4(1), pint.RK4(8), 5, tol=0.0, pipelined=pipelined)
        grads.append(torch.autograd.grad(res.y[0], y0)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- clear errors


@pytest.mark.parametrize("out", [1.0, None, np.ones(2), [1.0, 1.0]],
                         ids=["float", "None", "numpy", "list"])
@pytest.mark.parametrize("batched", [False, True])
def test_f_returning_a_non_tensor(out, batched):
    prob = pint.ODEProblem(lambda t, y: out, torch.ones(2), (0.0, 1.0), batched=batched)
    with pytest.raises(TypeError, match=r"f must return a torch.Tensor .* got "):
        pint.serial(prob, pint.RK4(2), 2)


@pytest.mark.parametrize("f,batched", [
    (lambda t, y: math.cos(t) * y, False), (lambda t, y: math.cos(t) * y, True),
    (lambda t, y: float(y[0]) * y, False), (lambda t, y: float(y[0]) * y, True),
    (lambda t, y: torch.as_tensor(np.cos(t)) * y, False),  # works when batched
], ids=["math.cos", "math.cos-batched", "float", "float-batched", "numpy"])
def test_f_using_python_numbers(f, batched):
    prob = pint.ODEProblem(f, torch.ones(2), (0.0, 1.0), batched=batched)
    with pytest.raises(TypeError, match=r"f must compute with torch operations.*torch\.cos"
                       r".*batched=True"):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2), 2)


def test_f_with_data_dependent_branch():
    prob = pint.ODEProblem(lambda t, y: y if y.sum() > 0 else -y, torch.ones(2), (0.0, 1.0))
    with pytest.raises(TypeError, match="torch.where instead of if.*batched=True"):
        pint.serial(prob, pint.RK4(2), 2)


def test_f_own_errors_pass_through():
    def f(t, y):
        raise ValueError("my own message")

    with pytest.raises(ValueError, match="my own message"):
        pint.serial(pint.ODEProblem(f, torch.ones(2), (0.0, 1.0)), pint.RK4(2), 2)


def test_meta_y0():
    with pytest.raises(ValueError, match="y0 must hold data.*meta"):
        pint.ODEProblem(decay, torch.ones(2, device="meta"), (0.0, 1.0))


def test_sparse_y0():
    with pytest.raises(ValueError, match="y0 must be a dense tensor"):
        pint.ODEProblem(decay, torch.eye(2).to_sparse(), (0.0, 1.0))


@pytest.mark.parametrize("n", [10**15, 10**7])
def test_huge_num_blocks_fails_fast(n):
    prob = pint.ODEProblem(decay, torch.ones(2), (0.0, 1.0))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="num_blocks must be at most"):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2), num_blocks=n)
    with pytest.raises(ValueError, match="num_blocks must be at most"):
        pint.serial(prob, pint.RK4(2), num_blocks=n)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("partition,exc,match", [
    (["0", "1"], TypeError, "partition must be a 1-D sequence .* list"),
    (["a", "b"], TypeError, "partition must be a 1-D sequence"),
    ("01", TypeError, "partition must be a 1-D sequence .* str"),
    ([[0.0, 0.5], [0.7, 1.0]], ValueError, r"partition must be a 1-D .* shape \(2, 2\)"),
    (torch.tensor([[0.0, 1.0]]), ValueError, r"partition must be a 1-D .* shape \(1, 2\)"),
    (torch.tensor([0j, 1 + 0j]), TypeError, "partition must .*complex64"),
    ([0.0, None, 1.0], TypeError, "partition must be a 1-D sequence"),
    ({0.0, 1.0}, TypeError, "partition must be a 1-D sequence"),
])
def test_malformed_partition(partition, exc, match):
    prob = pint.ODEProblem(decay, torch.ones(2), (0.0, 1.0))
    with pytest.raises(exc, match=match):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2), partition=partition)
    with pytest.raises(exc, match=match):
        pint.serial(prob, pint.RK4(2), partition=partition)


def test_partition_tensor_and_numpy_accepted():
    prob = pint.ODEProblem(decay, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    for part in (torch.tensor([0.0, 0.3, 1.0]), np.array([0.0, 0.3, 1.0]), (0, 0.3, 1)):
        res = pint.serial(prob, pint.RK4(20), partition=part)
        assert res.num_blocks == 2
        assert torch.allclose(res.y, torch.full((2,), math.exp(-1.0), dtype=torch.float64))


def test_bad_callback_fails_before_any_work():
    calls = []

    def f(t, y):
        calls.append(1)
        return -y

    prob = pint.ODEProblem(f, torch.ones(2), (0.0, 1.0))
    for pipelined in (False, True):
        with pytest.raises(TypeError, match="callback must be callable, got int"):
            pint.parareal(prob, pint.Euler(1), pint.RK4(2), 4, callback=5, pipelined=pipelined)
    assert calls == []


# ----------------------------------------------------------------- schedules agree


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), blocks=st.integers(2, 7),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       pair=st.sampled_from([(pint.Euler(1), pint.RK4(6)), (pint.RK4(1), pint.RK4(6)),
                             (pint.Heun(2), pint.Heun(7))]))
def test_sweep_and_pipelined_stop_at_the_same_iteration(seed, blocks, dtype, pair):
    """With the built-in step propagators both schedules compute every boundary with the
    same arithmetic, so their histories agree bitwise, also at round-off, and a ``tol``
    equal to one of the recorded changes stops both at the same iteration."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(3, 3, generator=g, dtype=dtype) - 1.5 * torch.eye(3, dtype=dtype)
    y0 = torch.randn(3, generator=g, dtype=dtype)
    t0 = float(torch.rand(1, generator=g)) * 5
    prob = pint.ODEProblem(lambda t, y: torch.tanh(A @ y) + torch.cos(3 * t) * y, y0,
                           (t0, t0 + 2.3))
    coarse, fine = pair
    ref = pint.parareal(prob, coarse, fine, blocks, tol=0.0)
    for tol in [0.0, *ref.history[-3:]]:
        a = pint.parareal(prob, coarse, fine, blocks, tol=tol)
        b = pint.parareal(prob, coarse, fine, blocks, tol=tol, pipelined=True)
        assert a.iterations == b.iterations and a.history == b.history, tol
        assert torch.equal(a.y, b.y)


def test_iteration_count_either_schedule_reports():
    """An f whose round-off depends on the batch width (as neural networks' kernels do):
    the schedules agree to round-off, a tol between their recorded changes may stop them
    at different iterations, and each reports the first iteration whose recorded change
    passed the test (the count documented in ``pint.parareal``)."""

    def f(t, y):  # batched: the factor differs in the last bits with the batch width
        return -y * (1.0 + 2.0**-50 * y.shape[0]) + torch.sin(t).unsqueeze(1)

    prob = pint.ODEProblem(f, torch.tensor([1.0, -2.0], dtype=torch.float64), (0.0, 4.0),
                           batched=True)

    def both(tol):
        return [pint.parareal(prob, pint.Euler(2), pint.RK4(10), 8, tol=tol, pipelined=p)
                for p in (False, True)]

    sweep, pipe = both(0.0)
    between = [(a + b) / 2 for a, b in zip(sweep.history, pipe.history, strict=True) if a != b]
    for tol in [0.0, 1e-10, 1e-7, *between[-2:]]:
        results = both(tol)
        for res in results:
            assert all(h > tol for h in res.history[:-1])
            assert res.history[-1] <= tol or res.iterations == res.num_blocks
        assert torch.allclose(results[0].y, results[1].y, rtol=0, atol=10 * tol + 1e-12)
