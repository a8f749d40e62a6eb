"""pint.Coarsened: the coarse level on a coarser spatial grid (restrict, coarse solve,
interpolate); Parareal's correction stays in the fine variables, so it stays exact."""

import pytest
import torch

import pint
import pint.problems as P
from pint.problems.pde import grid_transfer

F64 = torch.float64


def small_heat():
    """Heat on 31 points, coarse level on 15, few blocks and fine steps (cheap)."""
    case = P.get("heat", points=31, t_end=0.1)
    return case.coarsened(factor=2), pint.RK4(20), 6


def test_after_k_iterations_the_first_k_blocks_equal_serial():
    case, fine, B = small_heat()
    ser = pint.serial(case.problem, fine, B)
    seen = {}
    res = pint.parareal(case.problem, case.coarse, fine, B, tol=0.0, max_iters=3,
                        callback=lambda info: seen.setdefault(info.iteration,
                                                              info.boundaries.clone()))
    assert res.iterations == 3 and sorted(seen) == [0, 1, 2, 3]
    for k, U in seen.items():
        err = (U[: k + 1] - ser.boundaries[: k + 1]).abs().max().item()
        assert err <= 1e-12, (k, err)
        # the later blocks are not exact yet: the coarse level really is coarse
        assert (U[k + 1 :] - ser.boundaries[k + 1 :]).abs().max().item() > 1e-9


def test_full_run_equals_serial_to_round_off():
    case, fine, B = small_heat()
    ser = pint.serial(case.problem, fine, B)
    res = pint.parareal(case.problem, case.coarse, fine, B, tol=0.0)
    assert res.iterations == B and res.converged
    assert (res.boundaries - ser.boundaries).abs().max().item() <= 1e-12
    # the coarse steps are counted as the wrapped propagator's
    assert res.stats.coarse_steps > 0


def test_heat_converges_with_its_coarse_level_on_half_the_points():
    case = P.get("heat")  # 31 points, BackwardEuler(1) / RK4(50), 20 blocks, tol 1e-9
    coarse = case.coarsened(factor=2)
    assert coarse.coarse.coarse_shape == (15,)
    res = pint.parareal(coarse.problem, coarse.coarse, coarse.fine, coarse.num_blocks,
                        coarse.tol)
    # measured: 8 iterations, as many as with the coarse level on all 31 points
    assert res.converged and res.iterations <= 10
    assert (res.y - case.reference()).abs().max().item() < 1e-9


def test_grid_transfer_dirichlet_and_periodic():
    R, Pm = grid_transfer(31, 2)
    assert R.shape == (15, 31) and Pm.shape == (31, 15)
    assert torch.allclose(R.sum(1), torch.ones(15, dtype=F64))
    assert torch.equal(R[3, 6:9], torch.tensor([0.25, 0.5, 0.25], dtype=F64))
    x = torch.arange(1, 32, dtype=F64) / 32
    line = 3 * x[None]  # linear data is reproduced by interpolation of its injection
    xc = torch.arange(1, 16, dtype=F64) / 16
    # (up to the last fine point, between the last coarse point and the zero boundary)
    assert torch.allclose(((3 * xc[None]) @ Pm.T)[:, :30], line[:, :30])
    R3, P3 = grid_transfer(35, 3)  # 36 / 3 - 1 = 11 coarse points
    assert R3.shape == (11, 35) and torch.allclose(R3.sum(1), torch.ones(11, dtype=F64))
    Rp, Pp = grid_transfer(64, 2, periodic=True)
    assert Rp.shape == (32, 64) and torch.allclose(Pp.sum(1), torch.ones(64, dtype=F64))
    assert Pp[63, 31] == 0.5 and Pp[63, 0] == 0.5  # wraps around
    with pytest.raises(ValueError, match="factor"):
        grid_transfer(32, 2)  # 33 not divisible by 2
    with pytest.raises(ValueError, match="factor"):
        grid_transfer(63, 2, periodic=True)


def test_catalog_pdes_provide_a_coarse_level_and_odes_do_not():
    for name, n in (("heat", 15), ("burgers", 32), ("allen_cahn", 31)):
        case = P.get(name)
        assert case.has_coarse_level
        problem, restrict, interpolate = case.coarse_level(2)
        assert problem.y0.shape == (n,) and problem.batched
        assert restrict(case.problem.y0[None]).shape == (1, n)
        assert interpolate(problem.y0[None]).shape == (1, *case.problem.y0.shape)
        c = case.coarsened()
        assert isinstance(c.coarse, pint.Coarsened) and c.fine is case.fine
    lor = P.get("lorenz")
    assert not lor.has_coarse_level
    with pytest.raises(NotImplementedError, match="spatial grid"):
        lor.coarsened()


def test_user_maps_on_a_general_problem():
    """The README's pattern: a coarse ODEProblem and maps written by the user."""
    n, nc = 15, 7
    R, Pm = grid_transfer(n, 2)

    def lap(m):
        A = pint.problems.pde.dirichlet_laplacian(m, 1 / (m + 1)).T.contiguous()
        return lambda t, u: u @ A

    x = torch.arange(1, n + 1, dtype=F64) / (n + 1)
    fine_problem = pint.ODEProblem(lap(n), torch.sin(torch.pi * x), (0.0, 0.05), batched=True)
    coarse_problem = pint.ODEProblem(lap(nc), fine_problem.y0 @ R.T, (0.0, 0.05), batched=True)
    G = pint.Coarsened(pint.BackwardEuler(1), coarse_problem,
                       restrict=lambda u: u @ R.T, interpolate=lambda u: u @ Pm.T)
    fine = pint.RK4(10)
    res = pint.parareal(fine_problem, G, fine, 5, tol=0.0)
    ser = pint.serial(fine_problem, fine, 5)
    assert (res.boundaries - ser.boundaries).abs().max().item() <= 1e-12


def _coarse(restrict=None, interpolate=None):
    case = P.get("heat", t_end=0.05)
    problem, r, p = case.coarse_level(2)
    G = pint.Coarsened(pint.BackwardEuler(1), problem, restrict=restrict or r,
                       interpolate=interpolate or p)
    return case, G


def test_mismatched_restrict_shape_is_a_value_error_naming_it():
    case, G = _coarse(restrict=lambda u: u[..., ::2])  # 16 points, not 15
    with pytest.raises(ValueError, match=r"restrict returned shape \(1, 16\).*expected \(1, 15\)"):
        pint.parareal(case.problem, G, pint.RK4(5), 4, tol=0.0)
    case, G = _coarse(restrict=lambda u: u[0, 1::2])  # drops the block dimension
    with pytest.raises(ValueError, match=r"restrict .*expected \(1, 15\)"):
        pint.parareal(case.problem, G, pint.RK4(5), 4, tol=0.0)


def test_mismatched_interpolate_shape_is_a_value_error_naming_it():
    _, Pm = grid_transfer(31, 2)
    bad = Pm[:30].T.contiguous()  # 30 points, not 31
    case, G = _coarse(interpolate=lambda u: u @ bad)
    with pytest.raises(ValueError, match=r"interpolate returned shape \(1, 30\).*expected \(1, 31\)"):
        pint.parareal(case.problem, G, pint.RK4(5), 4, tol=0.0)
    # a single coarse state broadcast to a fine one is not accepted silently either
    case, G = _coarse(interpolate=lambda u: u.sum() + torch.zeros(31, dtype=F64))
    with pytest.raises(ValueError, match=r"interpolate .*expected \(1, 31\)"):
        pint.parareal(case.problem, G, pint.RK4(5), 4, tol=0.0)


def test_bad_construction_arguments():
    case = P.get("heat")
    problem, r, p = case.coarse_level(2)
    with pytest.raises(TypeError, match="coarse"):
        pint.Coarsened("BackwardEuler", problem, restrict=r, interpolate=p)
    with pytest.raises(TypeError, match="problem"):
        pint.Coarsened(pint.BackwardEuler(1), lambda t, u: u, restrict=r, interpolate=p)
    with pytest.raises(TypeError, match="restrict"):
        pint.Coarsened(pint.BackwardEuler(1), problem, restrict=None, interpolate=p)
    with pytest.raises(TypeError, match="interpolate"):
        pint.Coarsened(pint.BackwardEuler(1), problem, restrict=r, interpolate=3)
    with pytest.raises(ValueError, match="factor"):
        case.coarsened(factor=3)  # 32 points + boundary not divisible by 3


def test_pipelined_is_refused_with_a_clear_error():
    case, fine, B = small_heat()
    with pytest.raises(ValueError, match="pipelined=True .*Coarsened.*pipelined=False"):
        pint.parareal(case.problem, case.coarse, fine, B, tol=0.0, pipelined=True)
