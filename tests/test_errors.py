"""Bad input fails early with an error naming the argument; blow-ups name block and iteration."""

import math

import pytest
import torch

import pint

Y0 = torch.ones(2, dtype=torch.float64)


def decay(t, y):
    return -y


def good_problem():
    return pint.ODEProblem(decay, Y0, (0.0, 1.0))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(f=3), TypeError, "f must be callable"),
        (dict(y0=[1.0, 2.0]), TypeError, "y0 must be a torch.Tensor"),
        (dict(y0=torch.ones(2, dtype=torch.int64)), TypeError, "y0 must have a floating"),
        (dict(y0=torch.tensor([1.0, math.nan])), ValueError, "y0 must be finite"),
        (dict(y0=torch.tensor([1.0, math.inf])), ValueError, "y0 must be finite"),
        (dict(t_span=(0.0, 0.0)), ValueError, "t_span must be two distinct"),
        (dict(t_span=(0.0, math.inf)), ValueError, "t_span must be finite"),
        (dict(t_span=(0.0,)), ValueError, "t_span must be two numbers"),
        (dict(t_span="ab"), ValueError, "t_span must be two numbers"),
    ],
)
def test_problem_validation(kwargs, exc, match):
    args = dict(f=decay, y0=Y0, t_span=(0.0, 1.0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        pint.ODEProblem(args["f"], args["y0"], args["t_span"])


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_blocks=0), ValueError, "num_blocks must be >= 1"),
        (dict(num_blocks=2.5), TypeError, "num_blocks must be an int"),
        (dict(tol=-1.0), ValueError, "tol must be a finite number >= 0"),
        (dict(tol=math.nan), ValueError, "tol must be a finite number >= 0"),
        (dict(tol="small"), TypeError, "tol must be a number"),
        (dict(rtol=-1e-3), ValueError, "rtol must be"),
        (dict(max_iters=-1), ValueError, "max_iters must be >= 0"),
        (dict(max_iters=1.5), TypeError, "max_iters must be an int"),
        (dict(coarse=lambda f, y, a, b: y), TypeError, "coarse must be a pint.Propagator"),
        (dict(fine="rk4"), TypeError, "fine must be a pint.Propagator"),
        (dict(callback=5), TypeError, "callback must be callable"),
        (dict(executor=object()), TypeError, "executor must provide parareal"),
        (dict(num_blocks=None), ValueError, "num_blocks is required"),
        (dict(num_blocks=None, partition=[0.0, 0.5, 2.0]), ValueError, "partition must start at"),
        (dict(num_blocks=None, partition=[0.0, 0.6, 0.5, 1.0]), ValueError, "strictly monotone"),
        (dict(num_blocks=3, partition=[0.0, 0.5, 1.0]), ValueError, "disagrees with partition"),
    ],
)
def test_parareal_argument_validation(kwargs, exc, match):
    args = dict(coarse=pint.Euler(1), fine=pint.RK4(4), num_blocks=4, tol=1e-6)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        pint.parareal(good_problem(), **args)


def test_problem_argument_type():
    with pytest.raises(TypeError, match="problem must be a pint.ODEProblem"):
        pint.parareal(decay, pint.Euler(1), pint.RK4(2), num_blocks=2)


@pytest.mark.parametrize("steps,exc", [(0, ValueError), (-3, ValueError), (1.0, TypeError),
                                       (True, TypeError)])
def test_steps_validation(steps, exc):
    with pytest.raises(exc, match="steps must be"):
        pint.RK4(steps=steps)


@pytest.mark.parametrize("kw", [dict(rtol=0.0), dict(atol=-1.0), dict(rtol=math.inf)])
def test_external_tolerance_validation(kw):
    for cls in (pint.TorchDiffEq, pint.SciPy):
        with pytest.raises(ValueError, match="tol must be a finite number > 0"):
            cls(**kw)


def test_rhs_with_wrong_shape_or_dtype():
    bad_shape = pint.ODEProblem(lambda t, y: y[:1], Y0, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"f returned shape \(1,\), expected the shape of y0"):
        pint.parareal(bad_shape, pint.Euler(1), pint.RK4(2), num_blocks=2)
    # batched: the message names f, batched=True and the expected [n, *y0.shape]
    for bad in (lambda t, y: y[:, :1], lambda t, y: y[0], lambda t, y: y.reshape(-1)):
        prob = pint.ODEProblem(bad, Y0, (0.0, 1.0), batched=True)
        with pytest.raises(ValueError, match=r"f \(batched=True\) returned shape .* expected "
                           r"\[n, \*y0.shape\] = \(1, " + str(Y0.shape[0])):
            pint.serial(prob, pint.RK4(2), num_blocks=2)
    bad_dtype = pint.ODEProblem(lambda t, y: y.float(), Y0, (0.0, 1.0))
    with pytest.raises(TypeError, match="f returned dtype torch.float32"):
        pint.serial(bad_dtype, pint.RK4(2), num_blocks=2)


def test_blow_up_names_block_and_iteration():
    # y' = y^2, y(0) = 1 has a pole at t = 1; the coarse Euler step does not see it, the
    # fine solve of the block containing the pole blows up in iteration 1
    prob = pint.ODEProblem(lambda t, y: y * y, torch.ones(1, dtype=torch.float64), (0.0, 1.5))
    with pytest.raises(pint.NonFiniteStateError, match=r"block \d+ .*iteration \d+"):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2000), num_blocks=3, tol=1e-8)
    with pytest.raises(FloatingPointError, match="block"):
        pint.serial(prob, pint.RK4(2000), num_blocks=3)


def test_nan_from_rhs_in_coarse_sweep():
    prob = pint.ODEProblem(lambda t, y: torch.where(t > 0.5, y * math.nan, -y), Y0, (0.0, 1.0))
    with pytest.raises(pint.NonFiniteStateError, match="block 3 during the coarse sweep of "
                       "iteration 0"):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2), num_blocks=4)


def test_propagator_returning_wrong_shape():
    class Broken(pint.Propagator):
        def __call__(self, f, y, t0, t1):
            return y[:, :1]

    with pytest.raises(TypeError, match="returned"):
        pint.parareal(good_problem(), Broken(), pint.RK4(2), num_blocks=2)


def test_f_none_with_generic_propagator():
    prob = pint.ODEProblem(None, Y0, (0.0, 1.0))
    with pytest.raises(TypeError, match="f=None"):
        pint.serial(prob, pint.RK4(2), num_blocks=2)


def test_custom_propagator_in_ten_lines():
    class Midpoint(pint.FixedStepPropagator):
        evals_per_step = 2

        def step(self, f, t, y, h):
            hb = pint.propagators.expand_as_state(h, y)
            return y + hb * f(t + h / 2, y + hb / 2 * f(t, y))

    res = pint.parareal(good_problem(), pint.Euler(1), Midpoint(50), num_blocks=4, tol=1e-12)
    assert torch.allclose(res.y, Y0 * math.exp(-1.0), atol=1e-5)
    assert res.stats.fine_steps > 0


@pytest.mark.parametrize("coarse, fine", [
    (pint.RK4(steps=100), pint.RK4(steps=2)),
    (pint.RK4(steps=3), pint.Euler(steps=10)),      # 12 f evaluations against 10
    (pint.SDIRK2(steps=4), pint.Heun(steps=3)),     # at least 8 against 6
])
def test_swapped_coarse_and_fine_warn(coarse, fine):
    with pytest.warns(pint.SwappedPropagatorsWarning, match="coarse and fine look swapped") as rec:
        pint.parareal(good_problem(), coarse, fine, num_blocks=2, tol=1e-6)
    assert "coarse=" in str(rec[0].message) and "fine=" in str(rec[0].message)
    assert rec[0].filename == __file__  # points at the caller's line


@pytest.mark.parametrize("coarse, fine", [
    (pint.RK4(steps=2), pint.RK4(steps=100)),       # the README's Lorenz setup
    (pint.RK4(steps=4), pint.RK4(steps=4)),         # equal costs
    (pint.Heun(steps=2), pint.RK4(steps=1)),        # 4 f evaluations each
    (pint.Heun(steps=2), pint.Euler(steps=5)),
    (pint.BackwardEuler(steps=5), pint.SDIRK2(steps=2)),   # implicit fine: cost unknown
    (pint.RK4(steps=50), pint.SciPy()),             # adaptive fine: cost unknown
])
def test_plausible_coarse_and_fine_do_not_warn(coarse, fine):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", pint.SwappedPropagatorsWarning)
        pint.parareal(good_problem(), coarse, fine, num_blocks=2, tol=1e-6)


def test_readme_lorenz_does_not_warn():
    import warnings

    from pint import problems
    from pint.parareal import _warn_if_swapped

    with warnings.catch_warnings():
        warnings.simplefilter("error", pint.SwappedPropagatorsWarning)
        case = problems.get("lorenz")
        pint.parareal(case.problem, pint.RK4(steps=2), pint.RK4(steps=100), num_blocks=20,
                      tol=1e-8, pipelined=True)
        for name in problems.names():  # every catalog setup, without running it
            case = problems.get(name)
            _warn_if_swapped(case.coarse, case.fine)
