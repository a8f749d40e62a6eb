"""pint.odeint: torchdiffeq's call patterns, serial and Parareal, against torchdiffeq."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pint
from pint import problems

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64


def _case(name):
    params = {"lorenz": dict(t_end=1.0)}.get(name, dict(t_end=4.0))
    case = problems.get(name, **params)
    return case.problem.f, case.problem.y0, case.problem.t_end


# (an unstable default coarse propagator falls back: test_default_coarse_falls_back_when_unstable)
FIXED = [("van_der_pol", "rk4", 0.05), ("van_der_pol", "midpoint", 0.02),
         ("lorenz", "euler", 0.004), ("lorenz", "heun3", 0.02), ("lorenz", "rk4", 0.01),
         ("lotka_volterra", "rk4", 0.01), ("brusselator", "heun2", 0.02)]


@pytest.mark.parametrize("name,method,h", FIXED)
def test_fixed_step_matches_torchdiffeq(name, method, h):
    f, y0, t_end = _case(name)
    t = torch.linspace(0.0, t_end, 11, dtype=F64)
    ref = torchdiffeq.odeint(f, y0, t, method=method, options=dict(step_size=h))
    ys = pint.odeint(f, y0, t, method=method, options=dict(step_size=h))
    assert ys.shape == (11, *y0.shape) and torch.equal(ys[0], y0)
    scale = ref.abs().max()
    assert (ys - ref).abs().max() <= 1e-12 * scale  # the same arithmetic: round-off
    yp, res = pint.odeint(f, y0, t, method=method, options=dict(step_size=h), parallel=True,
                          tol=1e-10, return_result=True)
    assert res.converged and res.num_blocks == 16
    assert (yp - ref).abs().max() <= 1e-8 * scale  # Parareal's tolerance, at every time


@pytest.mark.parametrize("name", ["van_der_pol", "lorenz", "brusselator"])
def test_dopri5_matches_torchdiffeq(name):
    f, y0, t_end = _case(name)
    t = torch.linspace(0.0, t_end, 9, dtype=F64)
    rtol, atol = 1e-6, 1e-8
    ref = torchdiffeq.odeint(f, y0, t, method="dopri5", rtol=rtol, atol=atol)
    exact = torchdiffeq.odeint(f, y0, t, method="dopri5", rtol=1e-12, atol=1e-14)
    for parallel in (False, True):
        ys = pint.odeint(f, y0, t, rtol=rtol, atol=atol, parallel=parallel)  # dopri5 default
        # both solvers are accurate to the tolerances' scale; neither is the other's bits
        err, ref_err = (ys - exact).abs().max(), (ref - exact).abs().max()
        assert err <= max(10 * ref_err, 1e-7), (parallel, err, ref_err)
        assert (ys - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("parallel", [False, True])
def test_backward_in_time(parallel):
    f, y0, _ = _case("van_der_pol")
    t = torch.linspace(3.0, 0.0, 7, dtype=F64)
    ref = torchdiffeq.odeint(f, y0, t, method="rk4", options=dict(step_size=0.05))
    ys = pint.odeint(f, y0, t, method="rk4", options=dict(step_size=0.05), parallel=parallel,
                     tol=1e-11)
    assert (ys - ref).abs().max() < 1e-9
    ref5 = torchdiffeq.odeint(f, y0, t, rtol=1e-9, atol=1e-11)
    assert (pint.odeint(f, y0, t, rtol=1e-9, atol=1e-11, parallel=parallel) - ref5).abs().max() < 1e-7


def test_nonuniform_times_and_step_size_not_dividing():
    """Each interval takes ceil(dt / h) equal steps: every output time is a grid point."""
    f, y0, _ = _case("van_der_pol")
    t = torch.tensor([0.0, 0.1, 0.35, 1.0, 2.2], dtype=F64)
    ys = pint.odeint(f, y0, t, method="rk4", options=dict(step_size=0.07))
    exact = torchdiffeq.odeint(f, y0, t, rtol=1e-12, atol=1e-14)
    err = (ys - exact).abs().max()
    half = pint.odeint(f, y0, t, method="rk4", options=dict(step_size=0.035))
    assert err < 1e-5 and (half - exact).abs().max() < err / 10  # order 4 on the aligned grid
    yp = pint.odeint(f, y0, t, method="rk4", options=dict(step_size=0.07), parallel=True,
                     num_blocks=9, max_iters=9, tol=0.0)
    assert (yp - ys).abs().max() < 1e-13


def test_tuple_state_and_module_parameters():
    lin = torch.nn.Linear(2, 2).double()

    def func(t, state):
        x, v = state
        return v, -x - 0.1 * v + torch.tanh(lin(x))

    y0 = (torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 0.5], dtype=F64))
    t = torch.linspace(0, 2, 5, dtype=F64)
    ref = torchdiffeq.odeint(func, y0, t, method="rk4", options=dict(step_size=0.1))
    for parallel in (False, True):
        ys = pint.odeint(func, y0, t, method="rk4", options=dict(step_size=0.1),
                         parallel=parallel, tol=1e-12)
        assert isinstance(ys, tuple) and len(ys) == 2
        for a, b in zip(ys, ref, strict=True):
            assert a.shape == (5, 2) and (a - b).abs().max() < 1e-11


def test_batched_matrix_state_float32():
    W = torch.tensor([[0.0, 1.0], [-1.0, -0.2]])

    def func(t, y):  # y [batch, 2], a whole batch is one state
        return y @ W.T

    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, 6)
    ref = torchdiffeq.odeint(func, y0, t, method="rk4", options=dict(step_size=0.05))
    for parallel in (False, True):
        ys = pint.odeint(func, y0, t, method="rk4", options=dict(step_size=0.05),
                         parallel=parallel, tol=1e-6)
        assert ys.dtype == torch.float32 and ys.shape == (6, 4, 2)
        assert (ys - ref).abs().max() < 1e-5


def test_single_time_returns_y0():
    y0 = torch.ones(3, dtype=F64)
    ys = pint.odeint(lambda t, y: -y, y0, torch.tensor([0.5], dtype=F64))
    assert ys.shape == (1, 3) and torch.equal(ys[0], y0)


def test_gradients_match_torchdiffeq():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 2)).double()

    def func(t, y):
        return net(y)

    t = torch.linspace(0, 1, 5, dtype=F64)
    grads = []
    for solve in (torchdiffeq.odeint, pint.odeint):
        y0 = torch.tensor([0.5, -0.3], dtype=F64, requires_grad=True)
        ys = solve(func, y0, t, method="rk4", options=dict(step_size=0.05))
        loss = (ys ** 2).sum()
        grads.append(torch.autograd.grad(loss, [y0, *net.parameters()]))
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() < 1e-12


@settings(max_examples=10, deadline=None)
@given(extra=st.integers(0, 8), n_out=st.integers(2, 5), backward=st.booleans(),
       method=st.sampled_from(["rk4", "euler", "heun3", "dopri5"]))
def test_parallel_at_max_iters_equals_serial(extra, n_out, backward, method):
    f, y0, _ = _case("van_der_pol")
    t = torch.linspace(0.0, 2.0, n_out, dtype=F64)
    if backward:
        t = t.flip(0)
    B = n_out - 1 + extra
    opts = dict(step_size=0.05) if method != "dopri5" else None
    ser = pint.odeint(f, y0, t, method=method, options=opts, num_blocks=B, rtol=1e-6, atol=1e-8)
    par, res = pint.odeint(f, y0, t, method=method, options=opts, num_blocks=B, rtol=1e-6,
                           atol=1e-8, parallel=True, tol=0.0, max_iters=B, return_result=True)
    assert res.converged  # stops early only when nothing changed any more
    assert (par - ser).abs().max() <= 1e-12


def _f(t, y):
    return -y


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="bosh3"), ValueError, "method"),
    (dict(method=3), TypeError, "method"),
    (dict(options=dict(step_size=-0.1), method="rk4"), ValueError, "step_size"),
    (dict(options=dict(perturb=True), method="rk4"), ValueError, "options"),
    (dict(options=dict(step_size=0.1)), ValueError, "options"),  # dopri5 has no step_size
    (dict(options=[1]), TypeError, "options"),
    (dict(rtol=-1.0), ValueError, "rtol"),
    (dict(atol="x"), TypeError, "atol"),
    (dict(parallel="yes"), TypeError, "parallel"),
    (dict(num_blocks=2), ValueError, "num_blocks"),
    (dict(num_blocks=0), ValueError, "num_blocks"),
    (dict(coarse="rk4", parallel=True), TypeError, "coarse"),
    (dict(tol=-1.0, parallel=True), ValueError, "tol"),
    (dict(adjoint=1), TypeError, "adjoint"),
    (dict(adjoint=True, adjoint_params=3), TypeError, "adjoint_params"),
    (dict(adjoint=True, adjoint_params=[3]), TypeError, "adjoint_params"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    y0 = torch.ones(2, dtype=F64)
    t = torch.linspace(0, 1, 5, dtype=F64)
    with pytest.raises(error, match=match):
        pint.odeint(_f, y0, t, **kwargs)


@pytest.mark.parametrize("y0,t,error,match", [
    (torch.ones(2, dtype=F64), [0.0, 1.0], TypeError, "t must be"),
    (torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0, 0.5], dtype=F64), ValueError, "t must"),
    (torch.ones(2, dtype=F64), torch.tensor([[0.0, 1.0]], dtype=F64), ValueError, "t must"),
    (torch.ones(2, dtype=F64), torch.tensor([0, 1]), TypeError, "t must"),
    (torch.ones(2, dtype=F64), torch.tensor([0.0, float("nan")], dtype=F64), ValueError, "t must"),
    (torch.ones(2, dtype=torch.int64), torch.tensor([0.0, 1.0]), TypeError, "y0"),
    ([torch.ones(2)], torch.tensor([0.0, 1.0]), TypeError, "y0"),
    ((), torch.tensor([0.0, 1.0]), ValueError, "y0"),
    ((torch.ones(2), torch.ones(2, dtype=F64)), torch.tensor([0.0, 1.0]), TypeError, "y0"),
])
def test_bad_y0_and_t(y0, t, error, match):
    with pytest.raises(error, match=match):
        pint.odeint(_f, y0, t)


def test_func_output_checked():
    t = torch.linspace(0, 1, 3, dtype=F64)
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="tuple of 2"):
        pint.odeint(lambda t, y: y[0], y0, t)
    with pytest.raises(ValueError, match="shape"):
        pint.odeint(lambda t, y: (y[0], y[0]), y0, t)
    with pytest.raises(ValueError, match="shape"):
        pint.odeint(lambda t, y: y[:1], torch.ones(2, dtype=F64), t)
    with pytest.raises(TypeError, match="func"):
        pint.odeint(3, torch.ones(2, dtype=F64), t)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(),
                                       torch.nn.Linear(6, 2)).double()

    def forward(self, t, y):
        return self.net(y) * (1 + 0.1 * t)


def _grads(func, t, method, **kw):
    y0 = torch.tensor([0.5, -0.3], dtype=F64, requires_grad=True)
    opts = dict(step_size=0.1) if method != "dopri5" else None
    ys = func_out = pint.odeint(func, y0, t, method=method, options=opts, rtol=1e-6,
                                atol=1e-8, **kw)
    assert func_out.shape == (len(t), 2)
    loss = (ys ** 2).sum() + ys[-1, 0]
    return torch.autograd.grad(loss, [y0, *func.parameters()])


@settings(max_examples=8, deadline=None)
@given(extra=st.integers(0, 6), n_out=st.integers(2, 4), backward=st.booleans(),
       method=st.sampled_from(["rk4", "dopri5"]))
def test_parallel_adjoint_equals_serial_autograd(extra, n_out, backward, method):
    """The backward pass solved with Parareal (max_iters = B) gives autograd's gradients
    through the serial solve, for y0 and every parameter of func."""
    func = _Net()
    t = torch.linspace(0.0, 1.5, n_out, dtype=F64)
    if backward:
        t = t.flip(0)
    B = n_out - 1 + extra
    ref = _grads(func, t, method, num_blocks=B)
    for kw in (dict(adjoint=True), dict(adjoint=True, parallel=True, tol=0.0, max_iters=B)):
        got = _grads(func, t, method, num_blocks=B, **kw)
        for a, b in zip(got, ref, strict=True):
            assert (a - b).abs().max() <= 1e-8 * (1 + b.abs().max()), kw


def test_adjoint_gradcheck_and_adjoint_params():
    a = torch.tensor([0.7, -0.4], dtype=F64, requires_grad=True)

    def func(t, y):
        return torch.stack([y[1], -a[0] * y[0] + a[1] * torch.sin(y[1])])

    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)

    def solve(y0, a_):
        return pint.odeint(func, y0, t, method="rk4", options=dict(step_size=0.1),
                           parallel=True, num_blocks=4, tol=0.0, adjoint=True,
                           adjoint_params=(a,))

    y0 = torch.tensor([1.0, 0.2], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (y0, a))
    ys = solve(y0, a)
    ys.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_adjoint_tuple_state():
    def func(t, state):
        x, v = state
        return v, -torch.sin(x)

    t = torch.linspace(0, 1, 4, dtype=F64)
    grads = []
    for kw in ({}, dict(adjoint=True, parallel=True, tol=0.0)):
        x0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
        v0 = torch.tensor([0.0], dtype=F64, requires_grad=True)
        xs, vs = pint.odeint(func, (x0, v0), t, method="rk4", options=dict(step_size=0.05), **kw)
        grads.append(torch.autograd.grad(xs[-1].sum() + vs.sum(), [x0, v0]))
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() < 1e-12


def test_neural_ode_example(load_script):
    s = load_script("examples", "neural_ode").main(["--steps", "1", "--t-end", "1.0"])
    assert s["max_loss_gap"] < 1e-8 and s["first_step_grad_diff"] < 1e-8
    assert s["forward_depth_parallel"] < s["forward_depth_serial"]


def _t_grads(solve, t_values, method="rk4", **kw):
    func = _Net()
    t = torch.tensor(t_values, dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.5, -0.3], dtype=F64, requires_grad=True)
    ys = solve(func, y0, t, method=method, **kw)
    loss = (ys ** 2).sum() + ys[-1, 0]
    return torch.autograd.grad(loss, [t, y0, *func.parameters()])


@pytest.mark.parametrize("backward", [False, True])
def test_t_gradients_match_torchdiffeq_one_step_per_interval(backward):
    """With one step per interval both solve the same discrete problem: d loss / d t equal
    torchdiffeq's to round-off, serial, Parareal and both adjoints."""
    tv = [0.1, 0.5, 0.9, 1.3]
    tv = tv[::-1] if backward else tv
    ref = _t_grads(torchdiffeq.odeint, tv)
    for kw in ({}, dict(parallel=True, tol=0.0, num_blocks=3), dict(adjoint=True),
               dict(adjoint=True, parallel=True, tol=0.0)):
        got = _t_grads(pint.odeint, tv, **kw)
        assert got[0].abs().min() > 0, kw  # every time gets a gradient
        for a, b in zip(got, ref, strict=True):
            assert (a - b).abs().max() <= 1e-12, kw


@settings(max_examples=6, deadline=None)
@given(extra=st.integers(0, 5), n_out=st.integers(2, 4), backward=st.booleans(),
       method=st.sampled_from(["rk4", "heun3", "dopri5"]))
def test_t_gradients_adjoint_and_parareal_equal_serial_autograd(extra, n_out, backward,
                                                                  method):
    """Sub-block times move with the interval ends (steps stretch): the adjoint (serial and
    Parareal at max_iters = B) and autograd through Parareal give serial autograd's
    gradients with respect to every time in t, y0 and func's parameters."""
    tv = torch.linspace(0.0, 1.5, n_out, dtype=F64).tolist()
    tv = tv[::-1] if backward else tv
    B = n_out - 1 + extra
    kw = dict(options=dict(step_size=0.1)) if method != "dopri5" else dict(rtol=1e-6, atol=1e-8)
    ref = _t_grads(pint.odeint, tv, method, num_blocks=B, **kw)
    for extra_kw in (dict(parallel=True, tol=0.0, max_iters=B), dict(adjoint=True),
                     dict(adjoint=True, parallel=True, tol=0.0, max_iters=B)):
        got = _t_grads(pint.odeint, tv, method, num_blocks=B, **kw, **extra_kw)
        for a, b in zip(got, ref, strict=True):
            assert (a - b).abs().max() <= 1e-8 * (1 + b.abs().max()), extra_kw


def test_t_gradients_step_size_and_dopri5_against_torchdiffeq():
    """With step_size and dopri5 the t gradients agree with torchdiffeq's accurate ones
    (dopri5 at tight tolerances) to the methods' accuracy, and with torchdiffeq's step_size
    gradient at t[-1] (at t[0] and interior grid points torchdiffeq's fixed grid, laid from
    t[0] and read off by interpolation, gives a different derivative); gradcheck on t, y0."""
    tv = [0.0, 0.4, 1.0]
    exact = _t_grads(torchdiffeq.odeint, tv, "dopri5", rtol=1e-11, atol=1e-13)[0]
    grid = _t_grads(torchdiffeq.odeint, tv, options=dict(step_size=0.1))[0]
    for kw in ({}, dict(adjoint=True, parallel=True, tol=0.0)):
        got = _t_grads(pint.odeint, tv, options=dict(step_size=0.1), **kw)[0]
        assert (got - exact).abs().max() < 1e-7 and abs(got[-1] - grid[-1]) < 1e-7, kw
    for kw in ({}, dict(adjoint=True)):
        got5 = _t_grads(pint.odeint, tv, "dopri5", rtol=1e-9, atol=1e-11, **kw)[0]
        assert (got5 - exact).abs().max() < 1e-7, kw

    def solve(t, y0):
        return pint.odeint(lambda s, y: -y * (1 + s), y0, t, method="rk4",
                           options=dict(step_size=0.2), parallel=True, num_blocks=4,
                           tol=0.0, adjoint=True)

    t = torch.tensor([0.0, 0.3, 0.8], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (t, y0))


def test_t_gradients_refused_with_pipelined():
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="t requires grad"):
        pint.odeint(_f, torch.ones(1, dtype=F64), t, method="rk4", parallel=True,
                    pipelined=True)
    ys = pint.odeint(_f, torch.ones(1, dtype=F64), t.detach(), method="rk4", parallel=True,
                     pipelined=True)
    assert ys.shape == (3, 1)


@pytest.mark.parametrize("kw", [dict(), dict(pipelined=True), dict(adjoint=True)])
def test_default_coarse_falls_back_when_unstable(kw):
    """Lotka-Volterra on [0, 10] with step 0.05: the default coarse steps (10 h, about 0.4)
    make RK4 overflow; odeint restarts with shorter coarse steps and matches serial (values
    and, with the adjoint, the y0 gradient), the failed attempt's work counted in stats."""
    f, y0, _ = _case("lotka_volterra")
    t = torch.linspace(0.0, 10.0, 11, dtype=F64)
    opts = dict(method="rk4", options=dict(step_size=0.05), num_blocks=16)
    y0 = y0.clone().requires_grad_(True)
    ref = pint.odeint(f, y0, t, **opts)
    with pytest.raises(pint.NonFiniteStateError):  # what the old default did
        pint.parareal(pint.ODEProblem(f, y0.detach(), (0.0, 10.0)), pint.RK4(steps=2),
                      pint.RK4(steps=13), num_blocks=16)
    ys, res = pint.odeint(f, y0, t, **opts, parallel=True, tol=1e-10, return_result=True, **kw)
    assert res.converged and torch.isfinite(ys).all()
    assert (ys - ref).abs().max() <= 1e-8 * ref.abs().max()
    assert res.stats.depth > res.iterations  # includes the failed attempt's coarse sweep
    if kw.get("adjoint"):
        g_ref = torch.autograd.grad(ref[-1].sum(), y0)[0]
        g = torch.autograd.grad(ys[-1].sum(), y0)[0]
        assert (g - g_ref).abs().max() <= 1e-6 * g_ref.abs().max()
