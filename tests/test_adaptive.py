"""pint.DormandPrince: adaptive steps with a step size control per block, so Parareal with
it reproduces serial (exactness), unlike the shared-control TorchDiffEq and SciPy."""

import math

import numpy as np
import pytest
import torch

import pint
import pint.problems as P


@pytest.mark.parametrize("name", ["lorenz", "van_der_pol"])
def test_parareal_with_adaptive_fine_equals_serial_after_num_blocks_iterations(name):
    case = P.get(name)
    B = case.num_blocks
    fine = pint.DormandPrince(rtol=1e-8, atol=1e-10)
    ser = pint.serial(case.problem, fine, B)
    res = pint.parareal(case.problem, case.coarse, fine, B, tol=0.0, max_iters=B)
    assert res.iterations == B
    assert (res.boundaries - ser.boundaries).abs().max().item() <= 1e-12
    assert res.history[-1] <= 1e-12  # the change per iteration reaches round-off
    # the shared step size control of SciPy makes a block depend on the others
    shared = pint.SciPy(method="RK45", rtol=1e-8, atol=1e-10)
    s2 = pint.serial(case.problem, shared, B)
    r2 = pint.parareal(case.problem, case.coarse, shared, B, tol=0.0, max_iters=B)
    assert (r2.boundaries - s2.boundaries).abs().max().item() > 1e-10


def test_batched_rows_equal_rows_solved_alone():
    case = P.get("lorenz")
    f = case.problem.batched_rhs()
    g = torch.Generator().manual_seed(1)
    y = case.problem.y0 + torch.randn(6, 3, dtype=torch.float64, generator=g)
    t0 = torch.tensor([0.0, 0.1, 0.5, 1.0, 1.0, 2.0], dtype=torch.float64)
    t1 = torch.tensor([0.1, 0.4, 0.6, 1.2, 1.0, 1.8], dtype=torch.float64)  # empty, backward
    prop = pint.DormandPrince(rtol=1e-6, atol=1e-9)
    out = prop(f, y, t0, t1)
    alone = torch.cat([prop(f, y[i : i + 1], t0[i : i + 1], t1[i : i + 1]) for i in range(6)])
    assert torch.equal(out, alone)
    assert torch.equal(out[4], y[4])  # t0 == t1: unchanged


def test_accuracy_matches_scipy_at_rtol_1e_10():
    from scipy.integrate import solve_ivp

    case = P.get("lorenz")
    prob, ref = case.problem, case.reference()
    ours = pint.serial(prob, pint.DormandPrince(rtol=1e-10, atol=1e-12), 1).y
    f = prob.f
    sol = solve_ivp(lambda t, y: f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy(),
                    prob.t_span, prob.y0.numpy(), method="RK45", rtol=1e-10, atol=1e-12)
    err_scipy = float(np.abs(sol.y[:, -1] - ref.numpy()).max())
    err_ours = (ours - ref).abs().max().item()
    assert err_ours <= 2 * err_scipy + 1e-12 and err_ours < 1e-7
    # a closed form: y' = -y backwards from t = 1 to t = 0
    back = pint.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (1.0, 0.0))
    y = pint.serial(back, pint.DormandPrince(rtol=1e-10, atol=1e-12), 4).y
    assert torch.allclose(y, torch.full((2,), math.e, dtype=torch.float64), rtol=1e-9, atol=0)


def test_float32_complex_and_stats():
    prob = pint.ODEProblem(lambda t, y: 1j * y, torch.ones(3, dtype=torch.complex128), (0.0, 1.0))
    res = pint.parareal(prob, pint.RK4(1), pint.DormandPrince(rtol=1e-10, atol=1e-12), 4, tol=0)
    exact = torch.full((3,), complex(math.cos(1), math.sin(1)), dtype=torch.complex128)
    assert (res.y - exact).abs().max() < 1e-8
    assert res.stats.depth > 0 and res.stats.fine_steps > 0
    p32 = pint.ODEProblem(lambda t, y: -y, torch.ones(2), (0.0, 1.0))
    y = pint.serial(p32, pint.DormandPrince(rtol=1e-5, atol=1e-7), 2).y
    assert y.dtype == torch.float32 and torch.allclose(y, torch.full((2,), math.exp(-1)), atol=1e-5)


def test_bad_arguments_and_step_limit():
    for kw, match in [(dict(rtol=0.0), "rtol"), (dict(atol=-1.0), "atol"),
                      (dict(max_steps=0), "max_steps"), (dict(first_step=0.0), "first_step"),
                      (dict(min_factor=2.0), "min_factor")]:
        with pytest.raises(ValueError, match=match):
            pint.DormandPrince(**kw)
    case = P.get("lorenz")
    with pytest.raises(pint.StepLimitError, match="row 0 .* max_steps"):
        pint.serial(case.problem, pint.DormandPrince(rtol=1e-10, max_steps=3), 2)
    with pytest.raises(ValueError, match="pipelined=True needs step-by-step"):
        pint.parareal(case.problem, case.coarse, pint.DormandPrince(), 4, pipelined=True)
