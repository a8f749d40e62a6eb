"""MGRIT: Parareal as its two-level F-relaxation case, exactness, the residual stop, costs,
bad input."""

import math

import pytest
import torch

import pint
from pint.mgrit import mgrit

F64 = torch.float64
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)


def oscillator() -> pint.ODEProblem:
    return pint.ODEProblem(lambda t, y: y @ A.T + torch.sin(t)[:, None], torch.tensor([1.0, 0.0], dtype=F64),
                           (0.0, 4.0), batched=True)


def van_der_pol(mu: float = 2.0) -> pint.ODEProblem:
    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return pint.ODEProblem(f, torch.tensor([2.0, 0.0], dtype=F64), (0.0, 3.0))


def test_two_level_f_relaxation_is_parareal_coarsened_grid():
    # levels on grids 40 and 10 intervals, backward Euler on both: Parareal with G = one
    # step per block and F = m = 4 steps per block, iterate for iterate
    prob, B, m = oscillator(), 10, 4
    be = pint.BackwardEuler(1)
    for k in (0, 1, 4):
        ref = pint.parareal(prob, be, pint.BackwardEuler(m), B, tol=0, max_iters=k)
        res = mgrit(prob, [be, be], B * m, coarsening=m, tol=0, max_iters=k, relax="F")
        assert res.iterations == ref.iterations == k
        assert (res.boundaries[::m] - ref.boundaries).abs().max().item() < 1e-12
        assert res.times[::m].equal(ref.times)


def test_two_level_f_relaxation_is_parareal_same_grid():
    # coarsening=1: the levels share the grid and differ in the propagator, exactly
    # parareal(problem, coarse, fine, B)
    prob, B = van_der_pol(), 12
    coarse, fine = pint.Euler(1), pint.RK4(8)
    seen = []
    for k in range(0, 8):
        ref = pint.parareal(prob, coarse, fine, B, tol=0, max_iters=k)
        res = mgrit(prob, [fine, coarse], B, coarsening=1, tol=0, max_iters=k,
                    callback=lambda info: seen.append(info.iteration))
        assert (res.boundaries - ref.boundaries).abs().max().item() < 1e-12
        assert res.y.equal(res.boundaries[-1])
    assert seen[-8:] == list(range(8))


@pytest.mark.parametrize("relax", ["F", "FCF"])
@pytest.mark.parametrize("props,coarsening", [(2, 4), (3, [4, 2]), (4, 2), (3, [1, 5])])
def test_exact_after_n1_iterations(relax, props, coarsening):
    # any number of levels and either relaxation: N_1 iterations give the serial fine
    # solution, and after k iterations the first k intervals of level 1 are already exact
    prob, N0 = van_der_pol(mu=1.0), 40
    levels = [pint.RK4(1)] + [pint.Heun(1)] * (props - 1)
    m0 = coarsening if isinstance(coarsening, int) else coarsening[0]
    ref = pint.serial(prob, levels[0], N0)
    full = mgrit(prob, levels, N0, coarsening=coarsening, tol=0, relax=relax)
    assert full.iterations == N0 // m0 and full.converged
    assert (full.boundaries - ref.boundaries).abs().max().item() < 1e-12
    for k in (1, 3):
        part = mgrit(prob, levels, N0, coarsening=coarsening, tol=0, max_iters=k, relax=relax)
        exact = k * m0 + 1
        assert (part.boundaries[:exact] - ref.boundaries[:exact]).abs().max().item() < 1e-12


def test_residual_stop_and_fcf_faster():
    prob = oscillator()
    be = [pint.BackwardEuler(1)] * 3
    out = {}
    for relax in ("F", "FCF"):
        res = mgrit(prob, be, 64, coarsening=4, tol=1e-9, relax=relax)
        h = res.history
        assert res.converged and len(h) == res.iterations
        assert h[-1] < 1e-9 and all(x >= 1e-9 for x in h[:-1])  # the first below tol stops
        assert all(b < a for a, b in zip(h[:-1], h[1:], strict=True))
        # the stop is the residual's: the fine equation holds to about tol at every point
        ref = pint.serial(prob, be[0], 64)
        assert (res.boundaries - ref.boundaries).abs().max().item() < 1e-7
        out[relax] = res.iterations
    assert out["FCF"] < out["F"] < 64 // 4


@pytest.mark.parametrize("relax,cf", [("F", 0), ("FCF", 1), ("FCFCF", 2)])
def test_two_level_costs(relax, cf):
    # fine steps N0 s0 (1 + K (1 + cf)); coarse N1 s1 (1 + 2K) (the restriction's batched
    # call and the coarse solve); depth: the coarse solve N1 s1 and m s0 per F-relaxation
    prob, N0, m, s0, s1, K = oscillator(), 24, 3, 2, 1, 3
    N1 = N0 // m
    res = mgrit(prob, [pint.RK4(s0), pint.Euler(s1)], N0, coarsening=m, tol=0, max_iters=K,
                relax=relax)
    st = res.stats
    assert st.fine_steps == N0 * s0 * (1 + K * (1 + cf))
    assert st.coarse_steps == N1 * s1 * (1 + 2 * K)
    assert st.depth == N1 * s1 + m * s0 + K * (s1 + N1 * s1 + (1 + cf) * m * s0)


def test_max_iters_zero_is_the_nested_guess_and_default_caps_at_n1():
    prob = oscillator()
    be = pint.BackwardEuler(1)
    res = mgrit(prob, [be, be], 20, coarsening=5, max_iters=0)
    coarse = pint.serial(prob, be, 4)  # the coarse solution at the C-points
    assert res.iterations == 0 and res.history == [] and not res.converged
    assert (res.boundaries[::5] - coarse.boundaries).abs().max().item() < 1e-14
    assert mgrit(prob, [be, be], 20, coarsening=5, tol=0, max_iters=100).iterations == 4


def test_partition_and_float32():
    prob = oscillator()
    t = torch.tensor([0.0, 0.3, 1.0, 1.2, 2.0, 2.9, 3.1, 4.0], dtype=F64)
    be = pint.BackwardEuler(1)
    res = mgrit(prob, [be, be], partition=t, coarsening=1, tol=0)
    assert res.times.equal(t)
    assert (res.boundaries - pint.serial(prob, be, partition=t).boundaries).abs().max() < 1e-12
    p32 = pint.ODEProblem(prob.f, prob.y0.float(), prob.t_span, batched=True)
    A32 = A.float()
    p32.f = lambda t, y: y @ A32.T + torch.sin(t)[:, None]
    r32 = mgrit(p32, [be, be], 16, coarsening=4, tol=1e-5)
    assert r32.y.dtype == torch.float32 and r32.converged


def test_non_finite_names_the_iteration():
    prob = pint.ODEProblem(lambda t, y: y ** 2, torch.ones(1, dtype=F64), (0.0, 3.0))
    with pytest.raises(pint.NonFiniteStateError, match="block"):
        mgrit(prob, [pint.Euler(1), pint.Euler(1)], 60, coarsening=2, tol=0)


P = oscillator()
BE = pint.BackwardEuler(1)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(problem="x"), TypeError, "problem must be a pint.ODEProblem"),
        (dict(propagators=BE), TypeError, "propagators must be a sequence"),
        (dict(propagators=[BE, "rk4"]), TypeError, r"propagators\[1\] must be a pint.Propagator"),
        (dict(propagators=[BE]), ValueError, "propagators must hold at least two levels"),
        (dict(coarsening=0), ValueError, "coarsening must be >= 1"),
        (dict(coarsening=2.0), TypeError, "coarsening must be an int"),
        (dict(coarsening=[2, 2]), ValueError, "coarsening must hold one factor per pair"),
        (dict(coarsening=3), ValueError, r"propagators: 2 levels .*num_blocks gives 16"),
        (dict(propagators=[BE] * 6, coarsening=2), ValueError,
         r"propagators: 6 levels with coarsening \(2, 2, 2, 2, 2\) need .* multiple of 32"),
        (dict(num_blocks=None, partition=[0.0, 1.0, 2.0, 4.0]), ValueError,
         "partition gives 3"),
        (dict(relax="CF"), ValueError, "relax must be 'F', 'FCF'"),
        (dict(relax="FC"), ValueError, "relax must be"),
        (dict(relax=1), ValueError, "relax must be"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(max_iters=-1), ValueError, "max_iters must be >= 0"),
        (dict(callback=3), TypeError, "callback must be callable"),
        (dict(num_blocks=None), ValueError, "num_blocks is required"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, match):
    args = dict(problem=P, propagators=[BE, BE], num_blocks=16, coarsening=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        mgrit(**args)


def test_lowercase_relax_and_public_name():
    res = mgrit(P, [BE, BE], 8, coarsening=2, relax="fcf", tol=1e-6)
    assert res.converged and math.isfinite(res.history[-1])
    assert pint.mgrit is mgrit


def test_mgrit_benchmark_quick_matches_pymgrit(load_script, tmp_path):
    bench = load_script("benchmarks", "bench_mgrit")
    pm, why = bench.load_pymgrit()
    if pm is None:
        pytest.skip(f"pymgrit not available: {why}")
    report = bench.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "mgrit.json").is_file() and report["pymgrit"]
    assert {(r["problem"], r["levels"], r["relax"]) for r in report["runs"]} == {
        (p, n, r) for p in ("dahlquist", "heat", "burgers", "lorenz") for n in (2, 3)
        for r in ("F", "FCF")}
    for r in report["runs"]:
        assert r["iterations"] == r["pymgrit_iterations"] and r["converged"]
        assert r["max_iterate_diff"] < 1e-12 and r["error_vs_serial"] < 1e-8
        # pint keeps Phi(u_{C_i - 1}) from the F-relaxation: never more fine steps
        assert r["fine_steps"] <= r["pymgrit_fine_steps"]
        assert r["coarse_steps"] == r["pymgrit_coarse_steps"]
