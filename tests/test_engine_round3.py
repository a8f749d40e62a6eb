"""No silent wrong result, round 3 (engine): a right-hand side that returns NaN/Inf stops
adaptive and implicit solves at once with an error naming f, the row (block) and the time;
bool flags must be bools; meta tensors (no values) as partition or from f are refused."""

import math

import pytest
import torch

import pint

Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)


def counted(f):
    """``f`` with a call counter in ``.calls``."""
    def g(t, y):
        g.calls += 1
        return f(t, y)

    g.calls = 0
    return g


def nan_where(bad):
    """``y' = -y`` with a right-hand side that is NaN where ``bad(t)`` (batched or not)."""
    def f(t, y):
        t = t.reshape(t.shape + (1,) * (y.dim() - t.dim()))
        return torch.where(bad(t), torch.full_like(y, math.nan), -y)

    return f


def nan_after(t_wall):
    return nan_where(lambda t: t > t_wall)


# ------------------------------------------------ item 1: a NaN/Inf right-hand side


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_dormand_prince_nonfinite_f_at_start_is_immediate(value):
    # before: the step size became NaN, never tripped the step-too-small check and the
    # solve ran all max_steps (232 s at the default) before a StepLimitError saying "stiff"
    f = counted(lambda t, y: y * value)
    prob = pint.ODEProblem(f, Y0, (0.0, 1.0))
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"DormandPrince.*f returned NaN or Inf at t=0 for row 0 of the "
                             r"batch \(block \[0, 0\.5\]\)"):
        pint.serial(prob, pint.DormandPrince(max_steps=300), num_blocks=2)
    assert f.calls == 1


def test_dormand_prince_nonfinite_f_mid_run_names_f_row_and_time():
    # f turns NaN at t > 0.3: shrinking the step cannot get past it
    f = counted(nan_after(0.3))
    prob = pint.ODEProblem(f, Y0, (0.0, 1.0), batched=True)
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"f returned NaN or Inf in the trial steps from t=0\.3 for row 0 "
                             r"of the batch \(block \[0, 0\.5\]\)"):
        pint.serial(prob, pint.DormandPrince(), num_blocks=2)
    assert f.calls < 1000


def test_dormand_prince_nonfinite_f_in_parareal_fine_solve_names_its_row():
    # the fine solves of iteration 1 run blocks 0..3 as rows 0..3; f is NaN inside block 2
    # only, where the coarse Euler steps (at the block starts) do not look
    f = nan_where(lambda t: (t > 0.6) & (t < 0.7))
    prob = pint.ODEProblem(f, Y0, (0.0, 1.0), batched=True)
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"f returned NaN or Inf in the trial steps from t=0\.6 for row 2 "
                             r"of the batch \(block \[0\.5, 0\.75\]\)"):
        pint.parareal(prob, pint.Euler(1), pint.DormandPrince(), num_blocks=4)


def test_dormand_prince_overflowing_f_gives_no_nan_step_size():
    # |f| / atol overflows the error norm: the starting step size would be NaN
    prob = pint.ODEProblem(lambda t, y: torch.full_like(y, 1e300), Y0, (0.0, 1.0))
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"starting step size of row 0 of the batch \(block \[0, 0\.5\]\) is "
                             r"nan: f's values at t=0 \(largest \|f\| 1e\+300\)"):
        pint.serial(prob, pint.DormandPrince(max_steps=300), num_blocks=2)


def test_dormand_prince_still_rejects_a_trial_step_outside_fs_domain():
    # a first step of 10 takes the stages below 0, where f is NaN (as for sqrt(y)): that
    # trial step is rejected and retried smaller, and the solve is right (not an error)
    nans = []

    def f(t, y):
        nans.append(bool((y < 0).any()))
        return torch.where(y < 0, torch.full_like(y, math.nan), -y)

    prob = pint.ODEProblem(f, Y0, (0.0, 10.0), batched=True)
    res = pint.serial(prob, pint.DormandPrince(first_step=10.0), num_blocks=1)
    assert nans[1]  # the second stage of the first trial step
    assert torch.allclose(res.y, Y0 * math.exp(-10.0), rtol=1e-5)


@pytest.mark.parametrize("prop", [pint.SciPy(method="RK45"), pint.SciPy(), pint.TorchDiffEq()],
                         ids=repr)
def test_external_adaptive_nonfinite_f_at_start(prop):
    # before: SciPy's solve_ivp never returned (its step size NaN), torchdiffeq raised an
    # AssertionError "underflow in dt 0.0"
    prob = pint.ODEProblem(lambda t, y: y * math.nan, Y0, (0.0, 1.0))
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"f returned NaN or Inf at t=0 for row 0 of the batch "
                             r"\(block \[0, 0\.5\]\)"):
        pint.serial(prob, prop, num_blocks=2)


@pytest.mark.parametrize("prop", [pint.BackwardEuler(4), pint.SDIRK2(4)], ids=repr)
def test_implicit_nonfinite_f_stops_newton_at_once(prop):
    # before: max_newton Jacobians of NaN, then "Newton iteration did not converge"
    f = counted(nan_after(0.3))
    prob = pint.ODEProblem(f, Y0, (0.0, 1.0), batched=True)
    with pytest.raises(pint.NonFiniteStateError,
                       match=r"f returned NaN or Inf at t=0\.\d+ for row 0 of the batch \(a "
                             r"stage of the step from t=0\.25 with h=0\.25\)"):
        pint.serial(prob, prop, num_blocks=1)
    assert f.calls < 20


def test_nonfinite_state_error_is_one_class():
    assert pint.NonFiniteStateError is pint.runner.NonFiniteStateError
    assert pint.NonFiniteStateError is pint.propagators.base.NonFiniteStateError
    assert issubclass(pint.NonFiniteStateError, FloatingPointError)


# ------------------------------------------------ item 2: bool flags are bools


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_odeproblem_batched_must_be_a_bool(value):
    with pytest.raises(TypeError, match="batched must be True or False, got"):
        pint.ODEProblem(lambda t, y: -y, Y0, (0.0, 1.0), batched=value)
    assert pint.ODEProblem(lambda t, y: -y, Y0, (0.0, 1.0), batched=False).batched is False


@pytest.mark.parametrize("value", ["no", 1])
def test_parareal_pipelined_must_be_a_bool(value):
    prob = pint.ODEProblem(lambda t, y: -y, Y0, (0.0, 1.0))
    with pytest.raises(TypeError, match="pipelined must be True or False, got"):
        pint.parareal(prob, pint.Euler(1), pint.RK4(2), num_blocks=2, pipelined=value)


# ------------------------------------------------ item 3: meta tensors hold no values

META_EDGES = torch.tensor([0.0, 0.5, 1.0], device="meta")
NO_VALUES = "on the meta device, which has a shape and dtype but no values"


@pytest.mark.parametrize("solve", [
    lambda p: pint.serial(p, pint.RK4(2), partition=META_EDGES),
    lambda p: pint.parareal(p, pint.Euler(1), pint.RK4(2), partition=META_EDGES),
    lambda p: pint.parareal(p, pint.Euler(1), pint.RK4(2), partition=META_EDGES, pipelined=True),
    lambda p: pint.mgrit(p, [pint.RK4(2), pint.Euler(1)], partition=META_EDGES),
], ids=["serial", "parareal", "pipelined", "mgrit"])
def test_meta_partition_is_refused(solve):
    prob = pint.ODEProblem(lambda t, y: -y, Y0, (0.0, 1.0))
    with pytest.raises(ValueError, match=f"partition must hold data; got a tensor {NO_VALUES}"):
        solve(prob)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("solve", [
    lambda p: pint.serial(p, pint.RK4(2), num_blocks=2),
    lambda p: pint.serial(p, pint.DormandPrince(), num_blocks=2),
    lambda p: pint.parareal(p, pint.Euler(1), pint.RK4(2), num_blocks=2),
    lambda p: pint.mgrit(p, [pint.RK4(2), pint.Euler(1)], num_blocks=2),
], ids=["serial", "dormand-prince", "parareal", "mgrit"])
def test_f_returning_a_meta_tensor_is_refused(solve, batched):
    prob = pint.ODEProblem(lambda t, y: torch.empty_like(y, device="meta"), Y0, (0.0, 1.0),
                           batched=batched)
    with pytest.raises(ValueError, match=f"f's output must hold data; got a tensor {NO_VALUES}"):
        solve(prob)
