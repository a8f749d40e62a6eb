"""The classic problem registry: recommended setups converge, agree with serial and scipy."""

import math

import pytest
import torch

import pint
import pint.problems as P

# max-abs error of the serial fine solve against the scipy reference at t_end: the fine
# solver's discretisation error (measured, with a margin of ~10x), plus the reference's own
# ~1e-12 tolerance
FINE_ERROR = {
    "dahlquist": 1e-9, "lorenz": 1e-7, "van_der_pol": 3e-7, "brusselator": 3e-7,
    "lotka_volterra": 5e-8, "rossler": 3e-8, "fitzhugh_nagumo": 2e-8, "kepler": 1e-8,
    "heat": 1e-10, "burgers": 1e-10, "allen_cahn": 1e-10, "brusselator_2d": 2e-7,
}


def test_registry_lists_at_least_ten_problems():
    assert len(P.names()) >= 10
    assert set(FINE_ERROR) == set(P.names())


@pytest.mark.parametrize("name", P.names())
def test_recommended_setup_converges_and_matches_serial_and_reference(name):
    case = P.get(name)
    prob = case.problem
    assert prob.y0.dtype == torch.float64
    res = pint.parareal(prob, case.coarse, case.fine, case.num_blocks, case.tol)
    assert res.converged and res.iterations < case.num_blocks
    ser = pint.serial(prob, case.fine, case.num_blocks)
    scale = 1 + ser.y.abs().max().item()
    # the stopping test bounds the last boundary change by tol; the remaining difference to
    # the serial solve is of that size (a small factor for the propagation of the last change)
    assert (res.y - ser.y).abs().max().item() <= 10 * case.tol * scale
    ref = case.reference()
    assert ref.shape == prob.y0.shape
    assert (ser.y - ref).abs().max().item() <= FINE_ERROR[name]
    assert case.reference() is not ref and torch.equal(case.reference(), ref)  # cached copy


@pytest.mark.parametrize("name", ["dahlquist", "heat", "kepler"])
def test_exact_solution_matches_reference(name):
    case = P.get(name)
    assert case.has_exact
    err = (case.exact(case.problem.t_end) - case.reference()).abs().max().item()
    assert err <= 1e-9


def test_exact_solutions_at_start_and_dahlquist_values():
    for name in ["dahlquist", "heat", "kepler"]:
        case = P.get(name)
        assert torch.allclose(case.exact(0.0), case.problem.y0, rtol=0, atol=1e-14)
    case = P.get("dahlquist", lam=-2.0, y0=3.0)
    assert math.isclose(case.exact(1.5).item(), 3 * math.exp(-3.0), rel_tol=1e-14)
    with pytest.raises(NotImplementedError):
        P.get("lorenz").exact(1.0)


def test_heat_coarse_step_is_far_beyond_explicit_limit():
    case = P.get("heat")
    assert isinstance(case.coarse, pint.BackwardEuler)
    p = case.params
    dx = p["length"] / (p["points"] + 1)
    H = (case.problem.t_end - case.problem.t_start) / case.num_blocks / case.coarse.steps
    assert H > 20 * dx ** 2 / (2 * p["diffusivity"])  # explicit Euler limit dx^2 / (2 alpha)
    # coarse-only solves: explicit Euler with the same H amplifies round-off in the stiff modes
    # by |1 - H lambda_max| ~ 100 per step; backward Euler damps them
    exact = case.exact(case.problem.t_end)
    euler = pint.serial(case.problem, pint.Euler(case.coarse.steps), case.num_blocks).y
    be = pint.serial(case.problem, case.coarse, case.num_blocks).y
    assert not bool(torch.isfinite(euler).all()) or (euler - exact).abs().max().item() > 1.0
    assert (be - exact).abs().max().item() < 0.01


def test_kepler_invariants_and_energy_drift():
    case = P.get("kepler", eccentricity=0.6, periods=2)
    e = 0.6
    inv0 = case.invariants(case.problem.y0)
    assert math.isclose(inv0["energy"].item(), -0.5, abs_tol=1e-14)
    assert math.isclose(inv0["angular_momentum"].item(), math.sqrt(1 - e * e), abs_tol=1e-14)
    res = pint.parareal(case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    assert res.converged and res.iterations < case.num_blocks
    inv = case.invariants(res.boundaries)
    assert (inv["energy"] + 0.5).abs().max().item() < 1e-7
    assert (inv["angular_momentum"] - math.sqrt(1 - e * e)).abs().max().item() < 1e-7
    # after whole periods the exact orbit is back at pericentre
    assert (res.y - case.problem.y0).abs().max().item() < 1e-6


def test_lotka_volterra_invariant_conserved_by_fine_solver():
    case = P.get("lotka_volterra")
    ser = pint.serial(case.problem, case.fine, case.num_blocks)
    V = case.invariants(ser.boundaries)["V"]
    assert (V - V[0]).abs().max().item() < 1e-7


def test_parameters_are_used_and_echoed():
    case = P.get("heat", diffusivity=0.5, points=15, mode=2)
    assert case.problem.y0.shape == (15,)
    assert case.params["diffusivity"] == 0.5 and case.params["mode"] == 2
    assert P.get("burgers", points=32).problem.y0.shape == (32,)
    assert P.get("lorenz", t_end=1.0).problem.t_end == 1.0


@pytest.mark.parametrize("name, params, match", [
    ("heat", {"diffusivity": -1.0}, "diffusivity"),
    ("heat", {"points": 2}, "points"),
    ("heat", {"mode": 40}, "mode"),
    ("heat", {"length": 0.0}, "length"),
    ("burgers", {"viscosity": -0.1}, "viscosity"),
    ("burgers", {"points": 2}, "points"),
    ("allen_cahn", {"epsilon": 0.0}, "epsilon"),
    ("allen_cahn", {"points": 1}, "points"),
    ("lorenz", {"sigma": float("nan")}, "sigma"),
    ("lorenz", {"y0": (1.0, 2.0)}, "y0"),
    ("van_der_pol", {"mu": -1.0}, "mu"),
    ("lotka_volterra", {"y0": (1.0, -1.0)}, "y0"),
    ("kepler", {"eccentricity": 0.95}, "eccentricity"),
    ("kepler", {"periods": 0}, "periods"),
    ("dahlquist", {"t_end": -1.0}, "t_end"),
])
def test_bad_parameters_raise_value_error_naming_them(name, params, match):
    with pytest.raises(ValueError, match=match):
        P.get(name, **params)


def test_bad_types_and_unknown_names():
    with pytest.raises(TypeError, match="points"):
        P.get("heat", points=3.5)
    with pytest.raises(TypeError, match="diffusivity"):
        P.get("heat", diffusivity="hot")
    with pytest.raises(TypeError, match="no parameter.*'nu'.*viscosity"):
        P.get("burgers", nu=0.1)
    with pytest.raises(KeyError, match="lorenz"):
        P.get("lorenz63")


@pytest.mark.parametrize("name", ["heat", "burgers", "allen_cahn"])
def test_pde_right_hand_sides_are_batched_and_match_row_by_row(name):
    # matrix products and stencils take the block dimension themselves (batched=True, no
    # vmap); the result equals that of the same f applied one row at a time
    case = P.get(name, points=15)
    prob = case.problem
    assert prob.batched
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(5, *prob.y0.shape, dtype=torch.float64, generator=g)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    rows = torch.stack([prob.f(t[i : i + 1], Y[i : i + 1])[0] for i in range(5)])
    assert torch.allclose(prob.f(t, Y), rows, rtol=0, atol=1e-12)
    one = pint.ODEProblem(lambda t, y: prob.f(t.reshape(1), y[None])[0], prob.y0, prob.t_span)
    kw = dict(num_blocks=4, tol=0.0, max_iters=2)  # the vmapped version is slow
    a = pint.parareal(prob, case.coarse, case.fine, **kw)
    b = pint.parareal(one, case.coarse, case.fine, **kw)
    assert torch.allclose(a.boundaries, b.boundaries, rtol=0, atol=1e-12)
