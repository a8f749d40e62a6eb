"""Implicit propagators: order of accuracy, stiff stability, exact linear steps, Newton errors."""

import math

import pytest
import torch

import pint
from pint.propagators.implicit import row_jacobians

F64 = torch.float64
IMPLICIT = [pint.BackwardEuler, pint.ImplicitMidpoint, pint.SDIRK2]


def logistic():
    # y' = y (1 - y): exact y = 1 / (1 + e^{-t}) from y0 = 1/2
    return pint.ODEProblem(lambda t, y: y * (1 - y), torch.tensor([0.5], dtype=F64), (0.0, 2.0))


@pytest.mark.parametrize("cls, order", [(pint.BackwardEuler, 1), (pint.ImplicitMidpoint, 2),
                                        (pint.SDIRK2, 2)])
def test_order_of_accuracy(cls, order):
    prob = logistic()
    exact = 1 / (1 + math.exp(-2.0))
    errs = [abs(pint.serial(prob, cls(n), num_blocks=1).y.item() - exact) for n in (10, 20, 40, 80)]
    rates = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:], strict=True)]
    assert all(abs(r - order) < 0.15 for r in rates[1:]), (errs, rates)


def test_time_dependent_rhs_order():
    # y' = cos(t) y: exact exp(sin t); checks the stage times
    prob = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=F64), (0.0, 1.5))
    exact = math.exp(math.sin(1.5))
    for cls, order in [(pint.BackwardEuler, 1), (pint.ImplicitMidpoint, 2), (pint.SDIRK2, 2)]:
        e1 = abs(pint.serial(prob, cls(40), num_blocks=1).y.item() - exact)
        e2 = abs(pint.serial(prob, cls(80), num_blocks=1).y.item() - exact)
        assert abs(math.log2(e1 / e2) - order) < 0.15


@pytest.mark.parametrize("cls", IMPLICIT)
def test_stiff_linear_problem_stays_bounded_and_decays(cls):
    # h * lambda = -1000 on the stiff mode, -0.1 on the slow one
    A = torch.tensor([[-1000.0, 0.0], [0.0, -0.1]], dtype=F64)
    prob = pint.ODEProblem(lambda t, y: A @ y, torch.ones(2, dtype=F64), (0.0, 20.0))
    res = pint.serial(prob, cls(1), num_blocks=20)  # h = 1
    b = res.boundaries
    assert torch.isfinite(b).all()
    stiff = b[:, 0].abs()
    assert bool((stiff[1:] <= stiff[:-1]).all()) and stiff[-1] < stiff[0]
    if cls is not pint.ImplicitMidpoint:  # L-stable: the stiff mode is damped at once
        assert stiff[1] < 1e-2
    # the slow mode is accurate to the method's order
    assert abs(b[-1, 1].item() - math.exp(-2.0)) < 0.05
    # an explicit method with the same step explodes
    boom = pint.serial(prob, pint.RK4(1), num_blocks=20).y
    assert not torch.isfinite(boom).all() or boom.abs().max() > 1e10


def test_linear_step_is_exact_solve():
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=F64) - 3 * torch.eye(4, dtype=F64)
    y0 = torch.randn(4, dtype=F64)
    h = 0.7
    prob = pint.ODEProblem(lambda t, y: A @ y, y0, (0.0, h))
    be = pint.serial(prob, pint.BackwardEuler(1), num_blocks=1).y
    I4 = torch.eye(4, dtype=F64)
    assert torch.allclose(be, torch.linalg.solve(I4 - h * A, y0), rtol=0, atol=1e-13)
    mid = pint.serial(prob, pint.ImplicitMidpoint(1), num_blocks=1).y
    expect = torch.linalg.solve(I4 - h / 2 * A, (I4 + h / 2 * A) @ y0)
    assert torch.allclose(mid, expect, rtol=0, atol=1e-13)
    # one Newton step is exact: two residual evaluations (the second confirms) per stage
    res = pint.serial(prob, pint.BackwardEuler(1), num_blocks=1)
    assert res.stats.f_calls <= 3


def test_row_jacobians_batched_and_matrix_state():
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)

    def f(t, y):  # batched: y [n, 2, 2]
        return torch.tanh(y) @ W + t.view(-1, 1, 1) * y

    t = torch.tensor([0.5, 2.0], dtype=F64)
    y = torch.randn(2, 2, 2, dtype=F64)
    J = row_jacobians(f, t, y)
    assert J.shape == (2, 4, 4)
    for i in range(2):
        Ji = torch.autograd.functional.jacobian(lambda z, i=i: f(t[i:i + 1], z.view(1, 2, 2)).reshape(-1),
                                                y[i].reshape(-1))
        assert torch.allclose(J[i], Ji, atol=1e-12)
    # the propagators also work on a batched problem with a matrix state and inside parareal
    prob = pint.ODEProblem(lambda t, y: -y @ W.T @ W, torch.eye(2, dtype=F64), (0.0, 1.0), batched=True)
    ser = pint.serial(prob, pint.SDIRK2(20), num_blocks=4)
    par = pint.parareal(prob, pint.BackwardEuler(1), pint.SDIRK2(20), num_blocks=4, tol=1e-12)
    assert par.converged and (par.y - ser.y).abs().max() < 1e-10


def test_newton_failure_names_block_and_step():
    # y' = y^3 from y0 = 1 with h = 1: y1 - 1 - y1^3 = 0 has no real root
    prob = pint.ODEProblem(lambda t, y: y ** 3, torch.ones(1, dtype=F64), (0.0, 2.0))
    with pytest.raises(pint.NewtonConvergenceError, match=r"did not converge.*block \[0, 1\].*step 1 of 1"):
        pint.serial(prob, pint.BackwardEuler(1, max_newton=5), num_blocks=2)


@pytest.mark.parametrize("kwargs, exc", [
    ({"steps": 0}, ValueError), ({"steps": 1.5}, TypeError), ({"newton_tol": 0.0}, ValueError),
    ({"newton_tol": "x"}, TypeError), ({"max_newton": 0}, ValueError), ({"max_newton": 2.0}, TypeError),
])
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        pint.BackwardEuler(**kwargs)


def test_repr_and_exports():
    assert "newton_tol=1e-10" in repr(pint.SDIRK2(3))
    assert pint.propagators.BackwardEuler is pint.BackwardEuler
