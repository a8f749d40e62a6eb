"""The Parareal engine: exactness, convergence, agreement with serial and scipy, costs."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import pint


def linear_problem(A: torch.Tensor, y0: torch.Tensor, T: float) -> pint.ODEProblem:
    return pint.ODEProblem(lambda t, y: A @ y, y0, (0.0, T))


def random_stable_matrix(rng: np.random.Generator, d: int, dtype) -> torch.Tensor:
    M = rng.standard_normal((d, d))
    A = M - M.T - 0.5 * np.eye(d) + 0.3 * rng.standard_normal((d, d))
    return torch.tensor(A, dtype=dtype)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    B=st.integers(1, 9),
    k=st.integers(0, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exactness_after_k_iterations(d, B, k, dtype, seed):
    rng = np.random.default_rng(seed)
    A = random_stable_matrix(rng, d, dtype)
    y0 = torch.tensor(rng.standard_normal(d), dtype=dtype)
    prob = linear_problem(A, y0, 2.0)
    fine = pint.RK4(steps=7)
    ref = pint.serial(prob, fine, num_blocks=B)
    res = pint.parareal(prob, pint.Euler(steps=1), fine, num_blocks=B, tol=0.0, max_iters=k)
    k_eff = res.iterations
    # tol = 0 stops early only when an iteration changed nothing at all
    assert k_eff == min(k, B) or (k_eff < min(k, B) and res.converged and res.history[-1] == 0)
    eps = 1e-12 if dtype == torch.float64 else 1e-4
    scale = 1.0 + ref.boundaries.abs().max().item()
    exact = (res.boundaries[: k_eff + 1] - ref.boundaries[: k_eff + 1]).abs().max().item()
    assert exact <= eps * scale
    if k_eff == B or res.converged:
        assert res.converged
        assert (res.y - ref.y).abs().max().item() <= eps * scale


def test_exact_prefix_is_bitwise_equal_to_serial_float64():
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=torch.float64) - 2 * torch.eye(3, dtype=torch.float64)
    prob = linear_problem(A, torch.ones(3, dtype=torch.float64), 3.0)
    ref = pint.serial(prob, pint.RK4(steps=10), num_blocks=6)
    res = pint.parareal(prob, pint.Euler(1), pint.RK4(steps=10), num_blocks=6, tol=0, max_iters=6)
    # every block is exact once k = B; the fine solves ran batched, so allow round-off only
    assert torch.allclose(res.boundaries, ref.boundaries, rtol=0, atol=1e-13)


def test_converged_result_is_within_tolerance_of_serial_and_scipy():
    # Van der Pol, mildly nonlinear; no other test uses it
    mu = 0.5

    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    prob = pint.ODEProblem(f, y0, (0.0, 8.0))
    fine = pint.RK4(steps=40)
    ref = pint.serial(prob, fine, num_blocks=16)
    res = pint.parareal(prob, pint.RK4(steps=2), fine, num_blocks=16, tol=1e-9)
    assert res.converged and res.iterations < 16
    # the last change bounds the remaining error up to a modest factor (superlinear)
    assert (res.y - ref.y).abs().max().item() < 10 * 1e-9
    sol = solve_ivp(lambda t, y: [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]], (0, 8), [2.0, 0.0],
                    method="DOP853", rtol=1e-12, atol=1e-12)
    assert np.abs(res.y.numpy() - sol.y[:, -1]).max() < 1e-6
    # history is the max boundary change per iteration and shrinks
    assert len(res.history) == res.iterations
    assert res.history[-1] <= 1e-9 < res.history[0]


def test_rtol_makes_the_test_relative():
    A = torch.tensor([[-0.5]], dtype=torch.float64)
    prob = linear_problem(A, torch.tensor([1e6], dtype=torch.float64), 4.0)
    a = pint.parareal(prob, pint.Euler(1), pint.RK4(20), num_blocks=8, tol=1e-6)
    b = pint.parareal(prob, pint.Euler(1), pint.RK4(20), num_blocks=8, tol=0.0, rtol=1e-6)
    assert b.converged and b.iterations < a.iterations


def test_max_iters_zero_returns_the_coarse_solution():
    A = torch.tensor([[-1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    prob = linear_problem(A, torch.ones(2, dtype=torch.float64), 1.0)
    res = pint.parareal(prob, pint.Euler(1), pint.RK4(20), num_blocks=4, max_iters=0)
    coarse = pint.serial(prob, pint.Euler(1), num_blocks=4)
    assert res.iterations == 0 and not res.converged and res.history == []
    assert torch.equal(res.boundaries, coarse.boundaries)


def test_batch_of_states_equals_separate_solves():
    torch.manual_seed(1)
    A = torch.randn(2, 2, dtype=torch.float64) - torch.eye(2, dtype=torch.float64)
    ys = torch.randn(5, 2, dtype=torch.float64)
    batch = pint.ODEProblem(lambda t, y: y @ A.T, ys, (0.0, 2.0))
    rb = pint.parareal(batch, pint.Euler(1), pint.RK4(8), num_blocks=5, tol=0, max_iters=3)
    for j in range(5):
        one = pint.ODEProblem(lambda t, y: y @ A.T, ys[j], (0.0, 2.0))
        r1 = pint.parareal(one, pint.Euler(1), pint.RK4(8), num_blocks=5, tol=0, max_iters=3)
        assert torch.allclose(rb.y[j], r1.y, atol=1e-13, rtol=0)


def test_batched_rhs_and_vmapped_rhs_agree():
    A = torch.tensor([[0.0, 1.0], [-4.0, -0.2]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    p1 = pint.ODEProblem(lambda t, y: A @ y, y0, (0.0, 3.0))
    p2 = pint.ODEProblem(lambda t, y: y @ A.T, y0, (0.0, 3.0), batched=True)
    r1 = pint.parareal(p1, pint.RK4(1), pint.RK4(10), num_blocks=6, tol=1e-10)
    r2 = pint.parareal(p2, pint.RK4(1), pint.RK4(10), num_blocks=6, tol=1e-10)
    assert torch.allclose(r1.y, r2.y, atol=1e-14, rtol=0)


def test_time_dependent_rhs_and_backward_time():
    # y' = cos(t) y, y(t) = y0 exp(sin t - sin t0); integrate from 3 back to 0
    prob = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.tensor([2.0], dtype=torch.float64),
                           (3.0, 0.0))
    res = pint.parareal(prob, pint.Heun(2), pint.RK4(30), num_blocks=6, tol=1e-11)
    exact = 2.0 * math.exp(math.sin(0.0) - math.sin(3.0))
    assert abs(res.y.item() - exact) < 1e-7


@pytest.mark.parametrize("method,order", [(pint.Euler, 1), (pint.Heun, 2), (pint.RK4, 4)])
def test_convergence_orders(method, order):
    # y' = cos(t) y, y(2) = exp(sin 2)
    prob = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.tensor([1.0], dtype=torch.float64),
                           (0.0, 2.0))
    exact = math.exp(math.sin(2.0))
    errs = []
    steps = [8, 16, 32, 64]
    for s in steps:
        errs.append(abs(pint.serial(prob, method(s), num_blocks=1).y.item() - exact))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert abs(rates[-1] - order) < 0.15, rates


def _lorenz_np(t, y, s=10.0, r=28.0, b=8.0 / 3.0):
    return [s * (y[1] - y[0]), y[0] * (r - y[2]) - y[1], y[0] * y[1] - b * y[2]]


def _lorenz(t, y):
    return torch.stack([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1],
                        y[0] * y[1] - 8.0 / 3.0 * y[2]])


@pytest.mark.parametrize("prop", [pint.TorchDiffEq("dopri5", rtol=1e-10, atol=1e-12),
                                  pint.SciPy("DOP853", rtol=1e-11, atol=1e-12)])
def test_external_propagators_match_dop853(prop):
    y0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    prob = pint.ODEProblem(_lorenz, y0, (0.0, 1.0))
    sol = solve_ivp(_lorenz_np, (0, 1), [1.0, 1.0, 1.0], method="DOP853", rtol=1e-13, atol=1e-13,
                    dense_output=True)
    res = pint.serial(prob, prop, num_blocks=4)
    ref = sol.sol(res.times.numpy()).T
    assert np.abs(res.boundaries.numpy() - ref).max() < 1e-6
    # as the fine propagator of parareal (one odeint/solve_ivp call per iteration)
    par = pint.parareal(prob, pint.RK4(5), prop, num_blocks=4, tol=0)
    assert np.abs(par.y.numpy() - sol.y[:, -1]).max() < 1e-6
    assert par.stats.fine_steps > 0 and par.stats.depth > 0


def test_cost_accounting_matches_hand_count():
    A = torch.tensor([[-1.0]], dtype=torch.float64)
    prob = linear_problem(A, torch.ones(1, dtype=torch.float64), 1.0)
    B, g, f, K = 7, 2, 5, 3
    res = pint.parareal(prob, pint.Heun(g), pint.Euler(f), num_blocks=B, tol=0, max_iters=K)
    assert res.iterations == K
    assert res.stats.depth == B * g + sum(f + (B - k) * g for k in range(1, K + 1))
    assert res.stats.fine_steps == sum((B - k + 1) * f for k in range(1, K + 1))
    assert res.stats.coarse_steps == B * g + sum((B - k) * g for k in range(1, K + 1))
    # Heun: 2 f calls per step (one row each); Euler: 1 per step, batched over blocks
    assert res.stats.f_calls == 2 * res.stats.coarse_steps + K * f
    assert res.stats.f_evals == 2 * res.stats.coarse_steps + res.stats.fine_steps
    ser = pint.serial(prob, pint.Euler(f), num_blocks=B)
    assert ser.stats.depth == B * f and ser.stats.fine_steps == B * f


def test_callback_sees_every_iteration():
    A = torch.tensor([[-1.0]], dtype=torch.float64)
    prob = linear_problem(A, torch.ones(1, dtype=torch.float64), 1.0)
    seen = []
    res = pint.parareal(prob, pint.Euler(1), pint.RK4(4), num_blocks=5, tol=0, max_iters=3,
                        callback=lambda info: seen.append((info.iteration, info.exact_blocks,
                                                           info.boundaries.clone())))
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert torch.equal(seen[-1][2], res.boundaries)


def test_explicit_partition_and_exactness():
    A = torch.tensor([[-1.0]], dtype=torch.float64)
    prob = linear_problem(A, torch.ones(1, dtype=torch.float64), 1.0)
    part = [0.0, 0.1, 0.3, 0.6, 1.0]
    ref = pint.serial(prob, pint.RK4(10), partition=part)
    res = pint.parareal(prob, pint.Euler(1), pint.RK4(10), partition=part, tol=0)
    assert res.num_blocks == 4 and torch.allclose(res.y, ref.y, atol=1e-15)
    assert abs(res.y.item() - math.exp(-1.0)) < 1e-8


def test_state_keeps_dtype_and_device():
    for dtype in (torch.float32, torch.float64):
        prob = pint.ODEProblem(lambda t, y: -y, torch.ones(2, 3, dtype=dtype), (0.0, 1.0))
        res = pint.parareal(prob, pint.Euler(1), pint.RK4(4), num_blocks=3, tol=1e-5)
        assert res.y.dtype == dtype and res.boundaries.shape == (4, 2, 3)
        assert res.y.device == prob.y0.device


@settings(max_examples=15, deadline=None)
@given(B=st.integers(2, 8), k=st.integers(0, 8), pipelined=st.booleans(),
       noise=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_warm_start_keeps_exactness_and_schedules_agree(B, k, pipelined, noise, seed):
    rng = np.random.default_rng(seed)
    A = random_stable_matrix(rng, 3, torch.float64)
    prob = linear_problem(A, torch.tensor(rng.standard_normal(3)), 2.0)
    fine = pint.RK4(steps=6)
    ref = pint.serial(prob, fine, num_blocks=B)
    guess = ref.boundaries + noise * torch.tensor(rng.standard_normal((B + 1, 3)))
    res = pint.parareal(prob, pint.Euler(1), fine, num_blocks=B, tol=0.0, max_iters=k,
                        initial=guess, pipelined=pipelined)
    k_eff = res.iterations
    assert k_eff == min(k, B) or (res.converged and res.history[-1] == 0)
    assert torch.allclose(res.boundaries[: k_eff + 1], ref.boundaries[: k_eff + 1], atol=1e-12)
    if k_eff == 0:  # the guess is returned as U^0, with y0 in front
        assert torch.equal(res.boundaries[1:], guess[1:])
    other = pint.parareal(prob, pint.Euler(1), fine, num_blocks=B, tol=0.0, max_iters=k,
                          initial=guess, pipelined=not pipelined)
    assert torch.allclose(res.boundaries, other.boundaries, atol=1e-12)


def test_warm_start_from_the_serial_solution_converges_in_one_iteration():
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    prob = linear_problem(A, torch.tensor([1.0, 0.0], dtype=torch.float64), 4.0)
    fine, B = pint.RK4(steps=20), 10
    ref = pint.serial(prob, fine, num_blocks=B)
    cold = pint.parareal(prob, pint.RK4(1), fine, num_blocks=B, tol=1e-10)
    warm = pint.parareal(prob, pint.RK4(1), fine, num_blocks=B, tol=1e-10,
                         initial=ref.boundaries)
    assert warm.iterations == 1 < cold.iterations and warm.history[0] < 1e-14
    # the coarse values of the guess are one batched call: g + (f + (B - 1) g) steps
    assert warm.stats.depth == 1 + 20 + (B - 1) * 1  # g = 1 and f = 20 steps per block
    with pytest.raises(ValueError, match=r"initial must be a tensor of shape \(11, 2\)"):
        pint.parareal(prob, pint.RK4(1), fine, num_blocks=B, initial=ref.boundaries[:5])
