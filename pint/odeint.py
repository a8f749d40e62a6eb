"""``pint.odeint``: torchdiffeq's ``odeint(func, y0, t, ...)`` interface, serial or Parareal.

A torchdiffeq user calls::

    ys = pint.odeint(func, y0, t, method="rk4", options=dict(step_size=0.01))
    ys = pint.odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8, parallel=True)

and gets the solution at every time in ``t``, ``[len(t), *y0.shape]`` (a tuple of such
tensors for a tuple ``y0``). Underneath, ``t`` (refined into sub-blocks where more blocks
are wanted) is the block partition of :func:`pint.serial` / :func:`pint.parareal`, so every
output time is a block boundary and Parareal returns the solution at all of them.

How it differs from ``torchdiffeq.odeint``:

* ``method="rk4"`` is torchdiffeq's RK4, the 3/8 rule (:class:`pint.RK4` is the classic
  one); ``euler``, ``midpoint``, ``heun2``, ``heun3`` are torchdiffeq's tableaus;
  ``dopri5`` is :class:`pint.DormandPrince` (per-block step size control), which restarts
  its step size control at every block boundary (every output time) instead of
  integrating across them with dense output as torchdiffeq does: both are accurate to the
  tolerances, not equal to round-off.
* ``options=dict(step_size=h)``: each interval ``[t_i, t_{i+1}]`` takes
  ``ceil(|t_{i+1} - t_i| / h)`` equal steps, so every output time is a grid point.
  torchdiffeq lays one grid of step ``h`` from ``t[0]`` and *interpolates linearly* at
  output times between grid points; where ``h`` divides the intervals the two agree to
  round-off.
* Gradients flow to ``y0``, ``func``'s parameters and every time in ``t`` (autograd
  through the serial or Parareal solve, or the parallel-in-time adjoint with
  ``adjoint=True``). The ``t`` gradient is that of the discrete solution: block times
  inside an interval of ``t`` move with its ends (fixed-step methods stretch their steps),
  so with one step per interval it equals ``torchdiffeq.odeint``'s to round-off; with
  ``step_size`` (torchdiffeq lays its grid from ``t[0]`` and interpolates) and for
  ``dopri5`` the two agree to the method's accuracy. ``pipelined=True`` refuses a ``t``
  that requires grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_bool, check_int, check_number
from .parareal import parareal, serial
from .problem import ODEProblem
from .propagators.adaptive import DormandPrince
from .propagators.base import RHS, NonFiniteStateError, Propagator, StepPropagator, expand_as_state
from .result import Result, Stats

__all__ = ["odeint", "METHODS"]

State = Tensor | tuple[Tensor, ...]


# ------------------------------------------------------------------ the fixed-step tableaus
# One step of each of torchdiffeq's fixed-grid methods, batched over rows: ``t``, ``h`` [n].


def _euler(f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    return y + expand_as_state(h, y) * f(t, y)


def _midpoint(f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    hb = expand_as_state(h, y)
    k1 = f(t, y)
    return y + hb * f(t + h / 2, y + k1 * (hb / 2))


def _heun2(f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    hb = expand_as_state(h, y)
    k1 = f(t, y)
    k2 = f(t + h, y + hb * k1)
    return y + hb * (k1 / 2 + k2 / 2)


def _heun3(f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    hb = expand_as_state(h, y)
    k1 = f(t, y)
    k2 = f(t + h / 3, y + hb * (k1 / 3))
    k3 = f(t + 2 * h / 3, y + hb * (k2 * (2 / 3)))
    return y + hb * (k1 / 4 + k3 * (3 / 4))


def _rk4_38(f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    """torchdiffeq's ``rk4``: Kutta's 3/8 rule."""
    hb = expand_as_state(h, y)
    k1 = f(t, y)
    k2 = f(t + h / 3, y + hb * k1 / 3)
    k3 = f(t + h * (2 / 3), y + hb * (k2 - k1 / 3))
    k4 = f(t + h, y + hb * (k1 - k2 + k3))
    return y + (k1 + 3 * (k2 + k3) + k4) * hb * 0.125


_FIXED: dict[str, tuple[Callable[..., Tensor], int]] = {
    "euler": (_euler, 1), "midpoint": (_midpoint, 2), "heun2": (_heun2, 2),
    "heun3": (_heun3, 3), "rk4": (_rk4_38, 4),
}
#: the method names ``odeint`` accepts (torchdiffeq's names for the methods pint has)
METHODS = (*_FIXED, "dopri5")
_ADAPTIVE_OPTIONS = {"first_step": "first_step", "max_num_steps": "max_steps",
                     "safety": "safety"}
# default coarse propagator of a fixed-step method: steps 10 times longer; where that is
# unstable (a NaN/Inf), Parareal restarts with steps 4, then 2 times longer, then 1 (the
# coarse equals the fine solve: exact after one iteration, no faster than serial)
_COARSE_RATIOS = (10, 4, 2, 1)
_PARALLEL_BLOCKS = 16  # default number of blocks with parallel=True (at least len(t) - 1)


class _Grid(StepPropagator):
    """A torchdiffeq fixed-grid method on the block partition of one ``odeint`` call: every
    block takes the number of equal steps the partition gave it (looked up by its start)."""

    def __init__(self, method: str, partition: Tensor, steps: Tensor) -> None:
        self.method = method
        self._step, self.evals_per_step = _FIXED[method]
        self.partition = partition  # float64 CPU [B + 1]
        self.steps = steps  # int64 CPU [B]

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        return self._step(f, t, y, h)

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor:
        start = t0.detach().double().cpu()
        idx = (start[:, None] - self.partition[None, :-1]).abs().argmin(dim=1)
        return self.steps[idx]

    def batches_with(self, other: Propagator) -> bool:
        return isinstance(other, _Grid) and other.method == self.method

    def __repr__(self) -> str:
        return f"odeint.{self.method}(steps={self.steps.tolist()[:8]}...)"


class _TimeGrad(Propagator):
    """``inner`` on blocks whose start and end times carry gradients with respect to
    ``odeint``'s ``t``: each block's ``t0``, ``t1`` (values from the partition) get the
    zero-valued differentiable part of its block time (found by its start)."""

    def __init__(self, inner: Propagator, partition: Tensor, delta: Tensor) -> None:
        self.inner = inner
        self.partition = partition  # float64 CPU [B + 1]
        self.delta = delta  # [B + 1], zeros carrying d(block time)/dt
        self.evals_per_step = inner.evals_per_step

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        start = t0.detach().double().cpu()
        idx = (start[:, None] - self.partition[None, :-1]).abs().argmin(dim=1).to(t0.device)
        d = self.delta.to(t0.device)
        return self.inner(f, y, t0 + d[idx].to(t0.dtype), t1 + d[idx + 1].to(t1.dtype))

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor | None:
        return self.inner.steps_per_block(t0, t1)

    def __repr__(self) -> str:
        return repr(self.inner)


# ------------------------------------------------------------------ state flattening


class _Flat:
    """A tensor or tuple-of-tensors state as one flat vector and back."""

    def __init__(self, y0: object) -> None:
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        if self.is_tuple and not parts:
            raise ValueError("y0 must be a tensor or a non-empty tuple of tensors, got ()")
        for i, p in enumerate(parts):
            name = f"y0[{i}]" if self.is_tuple else "y0"
            if not isinstance(p, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor (y0 is a tensor or a tuple of "
                                f"tensors), got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"{name} must have a floating-point dtype, got {p.dtype}")
        dtypes = {p.dtype for p in parts}
        devices = {p.device for p in parts}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(f"the tensors of a tuple y0 must share one dtype and device, got "
                            f"{[str(p.dtype) for p in parts]} on {[str(p.device) for p in parts]}")
        self.shapes = [tuple(p.shape) for p in parts]
        self.sizes = [p.numel() for p in parts]
        self.parts = parts

    def flat(self) -> Tensor:
        """``y0`` as one tensor (itself for a tensor state)."""
        if not self.is_tuple:
            return self.parts[0]
        return torch.cat([p.reshape(-1) for p in self.parts])

    def unflatten(self, y: Tensor, lead: tuple[int, ...] = ()) -> State:
        """A flat state (with ``lead`` leading dimensions) as the user's form."""
        if not self.is_tuple:
            return y
        chunks = torch.split(y, self.sizes, dim=len(lead))
        return tuple(c.reshape(*lead, *s) for c, s in zip(chunks, self.shapes, strict=True))

    def flatten_output(self, dy: object) -> Tensor:
        """``func``'s output (one state, user form) as a flat tensor, checked."""
        if not self.is_tuple:
            if isinstance(dy, tuple):
                raise TypeError("func returned a tuple for a tensor y0; return one tensor of "
                                "y0's shape")
            return dy  # shape and dtype are checked by ODEProblem
        if not isinstance(dy, (tuple, list)) or len(dy) != len(self.shapes):
            raise TypeError(f"func must return a tuple of {len(self.shapes)} tensors (one per "
                            f"tensor of y0), got {type(dy).__name__}")
        for i, (d, s) in enumerate(zip(dy, self.shapes, strict=True)):
            if not isinstance(d, Tensor) or tuple(d.shape) != s:
                raise ValueError(f"func's output {i} must be a tensor of shape {s} (that of "
                                 f"y0[{i}]), got {tuple(getattr(d, 'shape', ())) or type(d).__name__}")
        return torch.cat([d.reshape(-1) for d in dy])


def _batched_rhs(func: Callable[..., Any], flat: _Flat) -> RHS:
    """``func(t, y)`` written for one state as pint's batched ``f(t [n], y [n, ...])``:
    called directly for one row (as torchdiffeq calls it), vmapped over more rows."""

    def one(t: Tensor, y: Tensor) -> Tensor:
        return flat.flatten_output(func(t, flat.unflatten(y)))

    vmapped = torch.func.vmap(one, in_dims=(0, 0))

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        if y.shape[0] == 1:
            dy = one(t[0], y[0])
            return dy.unsqueeze(0) if isinstance(dy, Tensor) else dy
        try:
            return vmapped(t, y)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            raise TypeError(
                f"func could not be vectorised over Parareal's blocks with torch.func.vmap "
                f"({err}); parallel=True evaluates func for all blocks at once. Use torch "
                "operations without data-dependent Python control flow, or parallel=False"
            ) from err

    return rhs


# ------------------------------------------------------------------ argument checks


def _check_t(t: object, y0: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"t must be a 1-D tensor with at least one time, got shape "
                         f"{tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating-point dtype, got {t.dtype}")
    host = t.detach().cpu().double()
    if not bool(torch.isfinite(host).all()):
        raise ValueError("t must be finite (it contains NaN or Inf)")
    if host.numel() > 1:
        d = torch.diff(host)
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError("t must be strictly increasing or strictly decreasing, got "
                             f"{host.tolist()[:10]}")
    return host


def _check_options(method: str, options: object) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    allowed = ("step_size",) if method in _FIXED else tuple(_ADAPTIVE_OPTIONS)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"options {unknown} are not supported for method={method!r}; pint "
                         f"accepts {list(allowed)}")
    out = dict(options)
    if "step_size" in out and out["step_size"] is not None:
        out["step_size"] = check_number("options['step_size']", _as_float(out["step_size"]),
                                        positive=True)
    return out


def _as_float(x: object) -> object:
    return float(x) if isinstance(x, Tensor) and x.numel() == 1 else x


# ------------------------------------------------------------------ the block partition


def _split(counts: Sequence[float], total: int) -> list[int]:
    """At least 1 per entry, ``total`` in all, the extra ones proportional to ``counts``."""
    m = len(counts)
    extra = max(total - m, 0)
    weight = sum(counts)
    raw = [extra * c / weight for c in counts]
    r = [1 + int(math.floor(x)) for x in raw]
    rest = sorted(range(m), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    for i in rest[: total - sum(r)]:
        r[i] += 1
    return r


def _partition(host_t: Tensor, blocks: int, step_size: float | None,
               fixed: bool) -> tuple[Tensor, Tensor | None, list[int]]:
    """Block times ``[B + 1]`` (float64 CPU) refining ``t``, steps per block (fixed-step
    methods) and the indices of the output times in the partition."""
    dt = torch.diff(host_t).tolist()
    m = len(dt)
    if fixed:
        n = [1 if step_size is None else max(1, math.ceil(abs(d) / step_size - 1e-9))
             for d in dt]
        r = [min(ri, ni) for ri, ni in zip(_split([abs(d) for d in dt], blocks), n, strict=True)]
    else:
        n = None
        r = _split([abs(d) for d in dt], blocks)
    times: list[float] = [float(host_t[0])]
    where: list[tuple[int, float]] = [(0, 0.0)]  # (interval, fraction) of every block time
    steps: list[int] = []
    index = [0]
    for i in range(m):
        a, b = float(host_t[i]), float(host_t[i + 1])
        if fixed:
            q, rem = divmod(n[i], r[i])
            sizes = [q + (1 if j < rem else 0) for j in range(r[i])]
            done = 0
            for j, s in enumerate(sizes):
                done += s
                times.append(b if j == r[i] - 1 else a + (b - a) * done / n[i])
                where.append((i, 1.0 if j == r[i] - 1 else done / n[i]))
                steps.append(s)
        else:
            for j in range(1, r[i] + 1):
                times.append(b if j == r[i] else a + (b - a) * j / r[i])
                where.append((i, 1.0 if j == r[i] else j / r[i]))
        index.append(len(times) - 1)
    step_t = torch.tensor(steps, dtype=torch.int64) if fixed else None
    return torch.tensor(times, dtype=torch.float64), step_t, index, where


def _differentiable_times(t: Tensor, times: Tensor, where: list[tuple[int, float]],
                          device: torch.device) -> Tensor:
    """The block times ``times`` (float64 ``[B + 1]``) on ``device``, as a function of ``t``
    for autograd: block time ``j`` in interval ``i`` at fraction ``w`` is
    ``t_i + w (t_{i+1} - t_i)``. The values are ``times``' bits (the differentiable part is
    added as ``x - x.detach()``, zero), so the solve is the one without gradients."""
    tt = t.to(device=device, dtype=torch.float64)
    i = torch.tensor([a for a, _ in where], device=device)
    w = torch.tensor([b for _, b in where], dtype=torch.float64, device=device)
    if tt.numel() > 1:
        nxt = tt[torch.clamp(i + 1, max=tt.numel() - 1)]
        lin = tt[i] + w * (nxt - tt[i])
    else:
        lin = tt[i]
    return times.to(device) + (lin - lin.detach())


# ------------------------------------------------------------------ odeint


def odeint(
    func: Callable[..., Any],
    y0: State,
    t: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    parallel: bool = False,
    num_blocks: int | None = None,
    coarse: Propagator | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    pipelined: bool = False,
    return_result: bool = False,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
) -> State | tuple[State, Result]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` at every time in ``t`` (torchdiffeq's
    ``odeint``), serially or with Parareal.

    Args:
        func: ``func(t, y) -> dy/dt`` for one state: ``t`` a 0-dim tensor, ``y`` of the
            form of ``y0`` (a tensor, or a tuple of tensors for a tuple ``y0``). An
            ``nn.Module`` works; its parameters get gradients. With ``parallel=True`` it is
            vectorised over blocks with :func:`torch.func.vmap`.
        y0: the initial state, a floating-point tensor of any shape or a tuple of such
            tensors (one dtype and device).
        t: 1-D tensor of output times, strictly increasing or strictly decreasing
            (backward in time); ``t[0]`` is the time of ``y0``. If it requires grad, every
            time gets the gradient of the discrete solution (also with ``adjoint=True``).
        rtol, atol: ``dopri5``'s error tolerances (per block, as
            :class:`pint.DormandPrince`); with ``parallel=True`` also the default stopping
            test of Parareal (``tol=atol``, relative part ``rtol``).
        method: ``"dopri5"`` (default, as torchdiffeq), ``"rk4"`` (torchdiffeq's 3/8
            rule), ``"euler"``, ``"midpoint"``, ``"heun2"``, ``"heun3"`` (see
            :data:`METHODS`). torchdiffeq's other methods are refused (``ValueError``).
        options: for the fixed-step methods ``dict(step_size=h)``: every interval of ``t``
            takes ``ceil(|t_{i+1} - t_i| / h)`` equal steps (without it, one step per
            interval, as torchdiffeq). For ``dopri5``: ``first_step``, ``max_num_steps``,
            ``safety``.
        parallel: ``False`` solves block after block (:func:`pint.serial`); ``True`` runs
            :func:`pint.parareal`.
        num_blocks: how many blocks to split ``[t[0], t[-1]]`` into, at least
            ``len(t) - 1``: every output time is a block boundary, and the intervals of
            ``t`` are split further (in proportion to their length; for fixed-step
            methods only at grid points, so a block holds whole steps). Default:
            ``len(t) - 1``, and at least 16 with ``parallel=True``. Serial and parallel
            calls with the same ``num_blocks`` use the same blocks, so
            ``max_iters=num_blocks`` reproduces the serial solution.
        coarse: Parareal's coarse propagator. Default: for a fixed-step method, the same
            method with steps 10 times longer (``ceil(n / 10)`` steps in a block where the
            fine solve takes ``n``); if that is unstable for the problem (a state turns
            NaN/Inf), Parareal restarts with steps 4, then 2 times longer, then with the
            fine steps (exact after one iteration: a correct answer, no speed-up), the failed
            attempts' work counted in ``stats``, and the adjoint's backward pass uses the
            coarse propagator that worked (falling back to the serial recursion if its
            transposed Jacobian overflows); for ``dopri5``, :class:`pint.DormandPrince` with
            ``rtol`` and ``atol`` 1000 times looser (at most ``1e-2``).
        tol: Parareal's stopping tolerance: stop when every boundary changed by at most
            ``tol`` (max-abs) in one iteration; ``0`` iterates to ``max_iters`` (or until
            nothing changes). Default: at most ``atol + rtol * |U_i|``.
        max_iters: Parareal's iteration limit; default the number of blocks.
        pipelined: Parareal's wavefront schedule (fixed-step methods with the default
            coarse propagator).
        return_result: also return the :class:`pint.Result` (iterations, history, cost
            accounting ``stats``).
        adjoint: differentiate with the discrete adjoint instead of autograd through the
            solve (torchdiffeq's ``odeint_adjoint``): the forward pass stores only the
            block boundaries, and the backward pass solves the adjoint recursion
            ``lambda_i = g_i + J_i^T lambda_{i+1}`` (``J_i`` the fine propagator's Jacobian
            over block ``i``, ``g_i`` the output gradient at boundary ``i``) block after
            block (``parallel=False``), or with Parareal (``parallel=True``: the coarse
            propagator's transposed Jacobian as coarse, the fine one's as fine, one batched
            fine VJP per iteration; same ``tol``, ``max_iters``). Gradients for ``func``'s
            parameters and ``t`` are accumulated block by block inside the serial
            recursion, so the serial adjoint holds one block's graph at a time; the
            Parareal adjoint holds one batched solve's graph over all blocks (its fine
            VJPs run all blocks at once), whatever the iteration count. The gradients are
            those of the discretised forward map, so at ``max_iters = num_blocks`` they
            equal autograd through the serial solve to round-off.
        adjoint_params: the tensors to return gradients for with ``adjoint=True``
            (default: ``func.parameters()`` when ``func`` is an ``nn.Module``, else none).

    Returns:
        ``ys`` of shape ``[len(t), *y0.shape]`` with ``ys[0] == y0`` (a tuple of such
        tensors for a tuple ``y0``), in ``y0``'s dtype and device; with
        ``return_result=True`` the pair ``(ys, result)``.

    Raises:
        TypeError, ValueError: bad arguments; the message names the argument.
        pint.NonFiniteStateError, pint.StepLimitError: as :func:`pint.parareal`.
    """
    if not callable(func):
        raise TypeError(f"func must be callable func(t, y) -> dy/dt, got {type(func).__name__}")
    flat = _Flat(y0)
    y_flat = flat.flat()
    host_t = _check_t(t, y_flat)
    if method is None:
        method = "dopri5"
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)} (torchdiffeq's names for "
                         f"the methods pint has), got {method!r}")
    opts = _check_options(method, options)
    rtol = check_number("rtol", _as_float(rtol), positive=True)
    atol = check_number("atol", _as_float(atol), positive=True)
    parallel = check_bool("parallel", parallel)
    return_result = check_bool("return_result", return_result)
    if coarse is not None and not isinstance(coarse, Propagator):
        raise TypeError(f"coarse must be a pint.Propagator or None, got {type(coarse).__name__}")
    if tol is None:  # Parareal stops at the solver's own tolerances
        stop_tol, stop_rtol = atol, rtol
    else:
        stop_tol, stop_rtol = check_number("tol", _as_float(tol), positive=False), 0.0
    m = host_t.numel() - 1
    if num_blocks is None:
        blocks = max(m, _PARALLEL_BLOCKS) if parallel else m
    else:
        blocks = check_int("num_blocks", num_blocks, 1)
        if blocks < m:
            raise ValueError(f"num_blocks must be at least len(t) - 1 = {m} (every output "
                             f"time is a block boundary), got {num_blocks}")
    if m == 0:  # torchdiffeq returns y0 for a single time
        ys = y_flat.unsqueeze(0)
        out = flat.unflatten(ys, (1,))
        return (out, Result(y_flat.clone(), ys, host_t, 0, True)) if return_result else out

    fixed = method in _FIXED
    times, steps, index, where = _partition(host_t, blocks, opts.get("step_size"), fixed)
    t_grad = t.requires_grad and torch.is_grad_enabled()
    if fixed:
        fine: Propagator = _Grid(method, times, steps)
        ladder: list[Propagator] = []
        seen: list[Tensor] = []
        for ratio in _COARSE_RATIOS:
            cs = torch.div(steps + ratio - 1, ratio, rounding_mode="floor")
            if not any(torch.equal(cs, c) for c in seen):
                seen.append(cs)
                ladder.append(_Grid(method, times, cs))
    else:
        kw = {_ADAPTIVE_OPTIONS[k]: v for k, v in opts.items()}
        fine = DormandPrince(rtol=rtol, atol=atol, **kw)
        ladder = [DormandPrince(rtol=min(1e-2, 1e3 * rtol), atol=min(1e-2, 1e3 * atol), **kw)]
    problem = ODEProblem(_batched_rhs(func, flat), y_flat,
                         (float(host_t[0]), float(host_t[-1])), batched=True)
    candidates = ladder if coarse is None else [coarse]
    adjoint = check_bool("adjoint", adjoint)
    T = times.to(y_flat.device)  # the block times; a function of t when t requires grad
    if t_grad:
        if pipelined and parallel:
            raise ValueError("t requires grad, which pipelined=True does not support (its "
                             "wavefront calls single steps); use pipelined=False or t.detach()")
        T = _differentiable_times(t, times, where, y_flat.device)
        if not adjoint:  # autograd through the solve: the propagators see T's gradients
            delta = T - T.detach()
            fine = _TimeGrad(fine, times, delta)
            candidates = [_TimeGrad(c, times, delta) for c in candidates]
    chosen = [candidates[0]]  # the coarse propagator Parareal used (the adjoint's too)

    def solve(prob: ODEProblem) -> Result:
        if not parallel:
            return serial(prob, fine, partition=times)
        return _parareal_with_fallback(prob, candidates, fine, chosen, tol=stop_tol,
                                       rtol=stop_rtol, max_iters=max_iters,
                                       pipelined=pipelined, partition=times)

    if adjoint:
        params = _adjoint_params(func, adjoint_params)
        box: dict[str, Any] = {}
        setup = _AdjointSetup(solve, problem, chosen, fine, times, index, parallel, stop_tol,
                              stop_rtol, max_iters, params, box)
        ys = _Adjoint.apply(setup, y_flat, T, *params)
        res = box["result"]
    else:
        res = solve(problem)
        ys = res.boundaries[torch.tensor(index, device=y_flat.device)]
    out = flat.unflatten(ys, (ys.shape[0],))
    return (out, res) if return_result else out


def _parareal_with_fallback(prob: ODEProblem, candidates: list[Propagator], fine: Propagator,
                            chosen: list[Propagator], **kw: Any) -> Result:
    """Parareal with the first coarse propagator of ``candidates`` that keeps the states
    finite: an unstable default coarse (steps too long for the problem's stiffness) makes
    a NaN/Inf, caught as :class:`NonFiniteStateError`, and the solve restarts with the next,
    finer one. The failed attempts' work is added to the result's ``stats``; the last
    candidate's error propagates. ``chosen[0]`` is set to the coarse propagator used."""
    spent = Stats()
    for k, G in enumerate(candidates):
        live: list[Stats] = []
        try:
            res = parareal(prob, G, fine, callback=lambda info, live=live: live.append(info.stats),
                           **kw)
        except NonFiniteStateError:
            if k == len(candidates) - 1:
                raise
            if live:  # the running accounting, up to the failure
                for name, value in live[-1].as_dict().items():
                    setattr(spent, name, getattr(spent, name) + value)
            continue
        chosen[0] = G
        for name, value in spent.as_dict().items():
            setattr(res.stats, name, getattr(res.stats, name) + value)
        return res
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ the adjoint


def _adjoint_params(func: object, params: object) -> tuple[Tensor, ...]:
    if params is None:
        if isinstance(func, torch.nn.Module):
            return tuple(p for p in func.parameters() if p.requires_grad)
        return ()
    if isinstance(params, Tensor):
        params = (params,)
    try:
        out = tuple(params)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"adjoint_params must be a sequence of tensors, got "
                        f"{type(params).__name__}") from None
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
    return out


class _AdjointSetup:
    """What the backward pass needs besides the saved boundaries."""

    def __init__(self, solve, problem, coarse, fine, times, index, parallel, tol, rtol,
                 max_iters, params, box) -> None:
        self.solve, self.problem, self.coarse, self.fine = solve, problem, coarse, fine
        self.times, self.index, self.parallel = times, index, parallel
        self.tol, self.rtol, self.max_iters = tol, rtol, max_iters
        self.params, self.box = params, box
        self.backward_history: list[float] = []


class _Adjoint(torch.autograd.Function):
    """Forward: the solve without a graph (boundaries only). Backward: the discrete adjoint
    recursion, serially or with Parareal (:func:`_adjoint_parareal`)."""

    @staticmethod
    def forward(ctx, setup: _AdjointSetup, y0: Tensor, times: Tensor,
                *params: Tensor) -> Tensor:
        problem = ODEProblem(setup.problem.f, y0.detach(), setup.problem.t_span, batched=True)
        res = setup.solve(problem)
        setup.box["result"] = res
        U = res.boundaries.detach()
        ctx.setup = setup
        ctx.save_for_backward(U)
        return U[torch.tensor(setup.index, device=U.device)].clone()

    @staticmethod
    def backward(ctx, g_out: Tensor):
        setup: _AdjointSetup = ctx.setup
        (U,) = ctx.saved_tensors
        g = torch.zeros_like(U)
        g[torch.tensor(setup.index, device=U.device)] = g_out
        lam, g_times, g_params = _adjoint_solve(setup, U, g, ctx.needs_input_grad[2])
        return (None, lam[0], g_times, *g_params)


def _adjoint_solve(setup: _AdjointSetup, U: Tensor, g: Tensor,
                   with_times: bool = False) -> tuple[Tensor, Tensor | None, list]:
    """``lambda_i = g_i + J_i^T lambda_{i+1}`` for ``i = B..0``, the parameter gradients
    ``sum_i (dF_i/dtheta)^T lambda_{i+1}`` and (``with_times``) the block times' gradients
    ``lambda_{i+1}^T dF_i/dt_i`` and ``lambda_{i+1}^T dF_i/dt_{i+1}`` (``F_i`` block ``i``'s
    fine solve). Serially they are accumulated block by block inside the recursion (one
    block's graph at a time); with Parareal by one batched VJP over all blocks once
    ``lambda`` is final (the size of each iteration's batched fine VJP)."""
    rhs = setup.problem.batched_rhs()
    times = setup.times.to(U.device)
    t0, t1 = times[:-1], times[1:]
    params = [p for p in setup.params if p.requires_grad]
    B = U.shape[0] - 1
    g_times = torch.zeros_like(times) if with_times else None
    acc: list[Tensor | None] = [None] * len(params)

    def vjp(prop: Propagator, rows: slice, v: Tensor, with_params: bool = False) -> Tensor:
        """``J^T v`` of ``prop`` over the blocks ``rows`` (one batched call); with
        ``with_params`` also adds the parameter and time gradients to ``acc``, ``g_times``."""
        with torch.enable_grad():
            y = U[rows].detach().requires_grad_(True)
            a, b = t0[rows], t1[rows]
            timed = with_params and with_times
            if timed:
                a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
            out = prop(rhs, y, a, b)
            wrt = [y, *params] if with_params else [y]
            if timed:
                wrt += [a, b]
            grads = torch.autograd.grad(out, wrt, v, allow_unused=True)
        if with_params:
            for k, gp in enumerate(grads[1 : 1 + len(params)]):
                if gp is not None:
                    acc[k] = gp if acc[k] is None else acc[k] + gp
            if timed:
                ga, gb = (torch.zeros_like(x) if x is None else x for x in grads[-2:])
                g_times[rows.start : rows.stop] += ga
                g_times[rows.start + 1 : rows.stop + 1] += gb
        return grads[0]

    grads_too = bool(params) or with_times
    run_serial = not setup.parallel
    if setup.parallel:
        lam = _adjoint_parareal(setup, vjp, g, B)
        if not bool(torch.isfinite(lam).all()) and bool(torch.isfinite(g).all()):
            run_serial = True  # the coarse VJP amplified to Inf/NaN: the exact recursion
        elif grads_too:  # lambda is final: the gradients in one batched call (chunking it
            # would not lower the peak: each iteration's fine VJP is over all blocks too)
            vjp(setup.fine, slice(0, B), lam[1:], with_params=True)
    if run_serial:
        lam = torch.empty_like(U)
        lam[B] = g[B]
        for i in range(B - 1, -1, -1):  # serial adjoint: one block's graph at a time
            lam[i] = g[i] + vjp(setup.fine, slice(i, i + 1), lam[i + 1 : i + 2],
                                with_params=grads_too)[0]
    by_param = dict(zip(map(id, params), acc, strict=True))
    g_params = [None if id(p) not in by_param else
                (torch.zeros_like(p) if by_param[id(p)] is None else by_param[id(p)])
                for p in setup.params]
    return lam, g_times, g_params


def _adjoint_parareal(setup: _AdjointSetup, vjp, g: Tensor, B: int) -> Tensor:
    """Parareal on the backward recursion, blocks taken from the end: after ``k``
    iterations ``lambda_B .. lambda_{B-k}`` equal the serial adjoint."""
    K = B if setup.max_iters is None else min(setup.max_iters, B)

    def coarse(i: int, v: Tensor) -> Tensor:
        return vjp(setup.coarse[0], slice(i, i + 1), v.unsqueeze(0))[0]

    lam = torch.empty_like(g)
    lam[B] = g[B]
    G_old: dict[int, Tensor] = {}
    for i in range(B - 1, -1, -1):  # coarse sweep
        G_old[i] = coarse(i, lam[i + 1])
        lam[i] = g[i] + G_old[i]
    for k in range(1, K + 1):
        last = B - k  # blocks 0..last start from a value that is not yet exact
        FV = vjp(setup.fine, slice(0, last + 1), lam[1 : last + 2])
        new = lam.clone()
        new[last] = g[last] + FV[last]
        for i in range(last - 1, -1, -1):
            gi = coarse(i, new[i + 1])
            new[i] = g[i] + gi + FV[i] - G_old[i]
            G_old[i] = gi
        diff = (new[: last + 1] - lam[: last + 1]).abs().reshape(last + 1, -1).amax(dim=1)
        bound = setup.tol + setup.rtol * new[: last + 1].abs().reshape(last + 1, -1).amax(dim=1)
        lam = new
        setup.backward_history.append(float(diff.max()))
        if bool((diff <= bound).all()):
            break
    return lam
