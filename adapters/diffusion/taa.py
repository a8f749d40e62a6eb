"""Whole-trajectory fixed-point samplers of the published peers, reproduced on pint's grid.

:func:`taa_sample` is ParaTAA (Tang et al., ICML 2024, "Accelerating Parallel Sampling of
Diffusion Models"), as its authors' code runs it, with the initialisations of ParaSolver
(Lu, Zhu, Hou, ICLR 2025) and SRDS as options; :func:`coarse_trajectory` is SRDS's coarse
sweep as a whole trajectory, the initial guess of any window sampler
(``picard_sample(..., initial=coarse_trajectory(...))``).

The serial sampler is ``x_{j+1} = Phi_j(x_j)`` (``x_0 = x_T``). A one-step solver's step is
affine in the model's prediction: ``Phi_j(x) = J_j x + d_j(x)``, with ``J_j`` the step's
gain on its input while the noise prediction ``eps`` is held fixed (``sqrt(abar_{j+1} /
abar_j)`` for DDIM: ParaTAA's ``coeff_x``) and ``d_j`` the rest (ParaTAA's ``coeff_d *
direction``). ParaTAA solves the *triangular* system

    ``x_{j+1} = prod_{l=s..j} J_l x_s + sum_{p=s..j} prod_{l=p+1..j} J_l d_p(x_p)``,
    ``s = max(a, j + 1 - order)``

(each state written through the last ``order`` steps; ``order = 1`` is the plain Jacobi
fixed point, ``order >= window`` unrolls from the window's known first state ``x_a``) on a
window of ``w`` steps (ParaTAA: all steps) with *triangular Anderson acceleration*: with the
states ``X`` and residuals ``R = G(X) - X`` of the last ``memory`` iterations (float64), each
step ``j`` solves its own ``(memory - 1)``-dimensional least-squares problem whose Gram
matrix and right-hand side sum ``<dR, dR>`` and ``<dR, R>`` over the steps ``a .. j``
only (itself and upstream, so the triangular structure stays), Tikhonov ``lambda`` on the
Gram matrix, and updates ``x <- x + R - (dX + dR) gamma`` (:func:`_anderson`).

Stopping, per step ``j`` of the window (the worst sample of the batch decides, ``rms`` over
a sample's elements, ``sigma_j^2`` the DDPM posterior variance of the step as in
ParaDiGMS's rule, the same scale as :func:`~adapters.diffusion.picard_sample`'s ``tol``):

* always, the change test of ParaDiGMS (and ParaSolver, and ``picard_sample``):
  ``rms(xhat_{j+1} - x_{j+1}) <= tol * sigma_j``, where ``xhat`` is the window rebuilt from
  its first (exact) state ``x_a`` through every step's current linearisation (the plain
  update ``G(X)`` where ``order >= window``), i.e. a first-order estimate of the state's
  distance from the serial trajectory;
* with ``test="residual"`` (default), also ParaTAA's two-part rule on the one-step residual
  ``r_j = Phi_j(x_j) - x_{j+1}`` before the update: ``rms(r_j) <= tol * sigma_j`` or
  ``rms(r_j) <= tol_abs``. Alone, this rule is not sound: from copies of ``x_T`` every
  residual is ``O(1/N)``, so at ``N = 1000`` it accepted the whole trajectory after 1-7
  calls with errors of 0.85-5 against the serial sample; a step's residual says nothing
  about the error its upstream steps carried in.

So ``tol`` means what it means for ``picard_sample``: a converged sample is one whose every
step moved by at most ``tol * sigma_j`` (rms) when rebuilt from the window's start, and the
steps the window leaves take that rebuild (with ``order < window`` as well). Measured on
unit-scale Gaussian mixtures (VP and flow, N = 50-1000, tol 1e-3-0.1, every setting of
``tests/diffusion/test_taa_round3.py``, which asserts ``<= 0.5 tol``): max error against
the serial sample up to ``0.35 tol`` (Picard: up to ``0.1 tol``). The window then slides past its first
unconverged step, which is accepted after this update (ParaTAA's and ParaDiGMS's
``1 + ind``; its input had converged and it takes the plain update), so ``N`` iterations
always reproduce the serial sampler.
``linear="secant"`` replaces ``J_j`` by the per-sample secant gain of the step's last two
evaluations (:func:`~adapters.diffusion.quasi_newton_sample`'s coupling) and
``linear="identity"`` by 1 (ParaDiGMS's cumulative sum).

Measured in ``benchmarks/bench_fastest.py`` (float64 Gaussian mixtures): ParaTAA with its
window of all steps needs 2-5x Picard's model rows; at Picard's rows the best of these
options is ``linear="secant", test="change", init="extrapolate"``.

Initialisation (``init``):

* ``"copy"`` (ParaTAA): unknown states are copies of the last known one (``x_T`` at first;
  a state entering the window copies the window's last state).
* ``"extrapolate"`` (ParaSolver): ``preconditioning`` serial steps (sequential model calls),
  then every later state is a DDIM jump with the last data prediction ``x0`` (no model
  call); a state entering the window is a DDIM jump from the window's last state with the
  data prediction of the window's last evaluated step.
* ``"coarse"`` (SRDS): the coarse sweep over ``num_blocks`` blocks (``num_blocks``
  sequential calls); inside block ``i`` every state is the DDIM jump from the block's
  start with its prediction (:func:`coarse_trajectory`). States entering the window follow
  the guess's increments from the window's last state.

``stats.depth`` counts every sequential model call, the initialisation's included. A
non-finite state raises :class:`pint.NonFiniteStateError` naming the step and iteration
(:class:`~adapters.diffusion.ModelOutputError` naming the timestep where the model returned
it); nothing non-finite is returned, with ``check_finite=False`` as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pint import NonFiniteStateError

from .grid import SamplingGrid
from .inputs import Schedule, check_callback, check_initial, prepare
from .model import Model
from .ode import block_partition
from .output import SampleOutput
from .precision import WINDOW_TOL, resolve_tol
from .progress import check_progress
from .window import (
    Ranks,
    affine_scan,
    check_window_tol,
    evaluate,
    finish_stats,
    rank_arguments,
    run_window,
)

INITS = ("copy", "extrapolate", "coarse")
LINEAR = ("eps", "identity", "secant")
TESTS = ("residual", "change")


def _levels(grid: SamplingGrid) -> tuple[Tensor, Tensor]:
    """``(alpha, sigma)`` of every state ``x_0 .. x_N`` ``[N + 1]`` (float64)."""
    return (torch.cat([grid.alpha_from, grid.alpha_to[-1:]]),
            torch.cat([grid.sigma_from, grid.sigma_to[-1:]]))


def _gain(grid: SamplingGrid, linear: str) -> Tensor:
    """``J_j`` ``[N]``: the step's gain on its input with ``eps`` held fixed (``x0 = (x - sigma
    eps) / alpha``), ``c_x + c_x0 / alpha``; where ``alpha`` vanishes (pure noise of flow
    matching) ``x0`` is held fixed instead (``c_x + c_eps / sigma``). ``"identity"``: 1."""
    if linear == "identity":
        return torch.ones(grid.num_steps, dtype=torch.float64)
    a, s = grid.alpha_from, grid.sigma_from
    eps_fixed = grid.c_x + grid.c_x0 / a.clamp(min=1e-300)
    x0_fixed = grid.c_x + grid.c_eps / s.clamp(min=1e-300)
    return torch.where(a > 1e-6, eps_fixed, x0_fixed).clamp(min=1e-12)


def _predict(denoiser, grid: SamplingGrid, y: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` of the states ``y [n, batch, *sample]`` before steps ``j [n]``: one model
    call."""
    dev = y.device
    j = j.to(grid.timesteps.device)  # the grid lives on the CPU; y may be on a GPU
    c_in = grid.c_in[j].to(dev) if bool((grid.c_in != 1).any()) else None
    return denoiser.predict(y, grid.timesteps[j].to(dev), grid.alpha_from[j].to(dev),
                            grid.sigma_from[j].to(dev), c_in)


def _jump(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``alpha x0 + sigma eps`` for levels ``[k]`` and one prediction ``[batch, ...]``:
    ``[k, batch, ...]`` (first-order jumps to every level)."""
    shape = (-1,) + (1,) * x0.dim()
    return (alpha.to(x0).view(shape) * x0.unsqueeze(0)
            + sigma.to(x0).view(shape) * eps.unsqueeze(0))


def _unroll(traj: Tensor, a: int, d: Tensor, J: Tensor, order: int) -> Tensor:
    """``G(X)`` ``[n, batch, D]`` for the window ``a .. a + n - 1``: state ``j + 1`` written
    through its last ``order`` steps from ``x_s``, ``s = max(a, j + 1 - order)``, with the
    directions ``d`` ``[n, batch, D]`` and gains ``J`` ``[n, 1, 1]`` (or ``[n, batch, 1]``
    where ``order >= n``; all float64)."""
    n = d.shape[0]
    if order >= n:  # from the window's known first state: an affine scan
        B = d.clone()
        B[0] = B[0] + J[0] * traj[a]
        return affine_scan(J, B)
    J = J.reshape(n)
    # banded: M[j, p] = prod_{l=p+1..j} J_l for s_j <= p <= j, anchor prod_{l=s_j..j} J_l
    lc = torch.cat([J.new_zeros(1), torch.cumsum(J.log(), 0)])  # lc[k] = sum_{l<k} log J
    j = torch.arange(n, device=d.device)
    s = (j + 1 - order).clamp(min=0)
    band = (j.view(-1, 1) >= j.view(1, -1)) & (j.view(1, -1) >= s.view(-1, 1))
    M = torch.where(band, (lc[j + 1].view(-1, 1) - lc[j + 1].view(1, -1)).exp(),
                    torch.zeros((), dtype=J.dtype, device=J.device))
    anchor = (lc[j + 1] - lc[s]).exp()
    flat = d.reshape(n, -1)
    out = M @ flat + anchor.view(-1, 1) * traj[a + s].reshape(n, -1)
    return out.reshape(d.shape)


def _anderson(mem: list[tuple[int, int, Tensor, Tensor]], a: int, e: int, R: Tensor,
              start: int, lam: float) -> Tensor:
    """Triangular Anderson correction ``(dX + dR) gamma`` ``[n, batch, D]`` for the window
    ``a .. e - 1`` from the memory ``[(a_i, e_i, X_i, R_i)]`` (oldest first, the current
    iteration last), zero for the window's first ``start`` steps. A difference column of
    a step is zero where the step was not in both iterations' windows."""
    cols = []
    for (a0, e0, X0, R0), (a1, e1, X1, R1) in zip(mem[:-1], mem[1:], strict=True):
        lo, hi = max(a, a0, a1), min(e, e0, e1)
        dX, dR = torch.zeros_like(R), torch.zeros_like(R)
        if hi > lo:
            dX[lo - a:hi - a] = X1[lo - a1:hi - a1] - X0[lo - a0:hi - a0]
            dR[lo - a:hi - a] = R1[lo - a1:hi - a1] - R0[lo - a0:hi - a0]
        cols.append((dX, dR))
    dX = torch.stack([c[0] for c in cols])  # [m, n, batch, D]
    dR = torch.stack([c[1] for c in cols])
    m = dX.shape[0]
    gram = torch.einsum("pnbd,qnbd->nbpq", dR, dR).cumsum(0)  # steps a .. j
    rhs = torch.einsum("pnbd,nbd->nbp", dR, R).cumsum(0)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    gamma, info = torch.linalg.solve_ex(gram + lam * eye, rhs.unsqueeze(-1))
    gamma = gamma.squeeze(-1)  # [n, b, m]; a singular (overflowed) system: the plain update
    gamma = torch.where((info == 0).unsqueeze(-1) & torch.isfinite(gamma), gamma, 0.0)
    out = torch.einsum("nbp,pnbd->nbd", gamma, dX + dR)
    out[:start] = 0
    return out


@torch.no_grad()
def coarse_trajectory(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    num_steps: int,
    num_blocks: int | None = None,
    *,
    sampler: str | None = None,
    **model_options: Any,
) -> Tensor:
    """SRDS's coarse sweep as a whole trajectory ``[num_steps + 1, *x_T.shape]``: the grid
    in ``num_blocks`` blocks (default ``round(sqrt(N))``), one model call at each block's
    first state (``num_blocks`` sequential calls of ``x_T``'s batch), and inside block
    ``i`` every state the first-order (DDIM) jump from the block's first state with that
    prediction; the block's last state starts the next block. Pass it as ``initial=`` to
    :func:`~adapters.diffusion.picard_sample` or :func:`taa_sample` (deterministic
    one-step solvers; for stochastic grids it is a guess without the noise).

    A NaN/Inf raises :class:`~adapters.diffusion.ModelOutputError` naming the timestep where
    the model returned it, or :class:`pint.NonFiniteStateError` naming the step where a
    state overflowed; ``check_finite=False`` skips the per-call check, not this one."""
    N, denoiser, grid, _, problem = prepare(model, schedule, x_T, num_steps, 0.0, None, sampler,
                                            None, model_options)
    if grid.num_slots != 1:
        raise ValueError(f"coarse_trajectory needs a one-step solver, not {grid.solver!r}")
    B = _blocks(num_blocks, N)
    traj = problem.y0.unsqueeze(0).repeat(N + 1, *([1] * problem.y0.dim()))
    _coarse_fill(denoiser, grid, traj, B)
    denoiser.check()
    k = _first_nonfinite(traj)
    if k < N + 1:  # the block's model output again, checked: named as check_finite=True names it
        s0 = max(s for s in block_partition(N, B).round().long().tolist() if s < k)
        denoiser.check_finite = True
        _predict(denoiser, grid, traj[s0:s0 + 1], torch.tensor([s0], device=traj.device))
        denoiser.check()
        raise NonFiniteStateError(f"non-finite state at step {k} of the coarse sweep (the jump "
                                  f"from step {s0} overflowed)")
    return traj


def _first_nonfinite(rows: Tensor) -> int:
    """The first index ``k`` of ``rows [n, ...]`` holding NaN/Inf, ``n`` if none (one read)."""
    n = rows.shape[0]
    ok = torch.isfinite(rows.reshape(n, -1)).all(-1)
    return int(torch.where(ok, n, torch.arange(n, device=rows.device)).min())


def _stopping(X: Tensor, R: Tensor, phi: Tensor | None, std: Tensor, tol: float,
              tol_abs: float) -> tuple[Tensor, Tensor]:
    """Per step of the window ``[n]``: whether it passed the stopping test (see the module
    doc; ``R`` the change from the window's first state, ``phi`` given for ParaTAA's
    residual part), and its normalised change ``rms / sigma_j`` (the worst sample's)."""
    def rms(v: Tensor) -> Tensor:
        return v.pow(2).mean(-1).sqrt().amax(-1)

    change = rms(R) / std
    ok = change <= tol
    if phi is not None:
        res = rms(phi - X)
        ok = ok & ((res <= tol * std) | (res <= tol_abs))
    return ok, change


def _blocks(num_blocks: int | None, N: int) -> int:
    if num_blocks is None:
        return min(N, max(1, round(math.sqrt(N))))
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int):
        raise TypeError(f"num_blocks must be an int, got {type(num_blocks).__name__}")
    if not 1 <= num_blocks <= N:
        raise ValueError(f"num_blocks must be between 1 and num_steps={N}, got {num_blocks}")
    return num_blocks


def _coarse_fill(denoiser, grid: SamplingGrid, traj: Tensor, B: int,
                 predict: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None) -> None:
    """Overwrite ``traj[1:]`` with the coarse sweep over ``B`` blocks (``B`` calls;
    ``predict(state, step)``: ``(x0, eps)`` of the state before the step, default one
    :func:`_predict`)."""
    N = grid.num_steps
    A, S = _levels(grid)
    edges = block_partition(N, B).round().long().tolist()
    for s0, s1 in zip(edges[:-1], edges[1:], strict=True):
        if predict is None:
            x0, eps = _predict(denoiser, grid, traj[s0:s0 + 1],
                               torch.tensor([s0], device=traj.device))
        else:
            x0, eps = predict(traj[s0:s0 + 1], s0)
        traj[s0 + 1:s1 + 1] = _jump(x0[0], eps[0], A[s0 + 1:s1 + 1], S[s0 + 1:s1 + 1]).to(traj)


@torch.no_grad()
def taa_sample(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    num_steps: int,
    window: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, float], None] | None = None,
    *,
    order: int | None = None,
    memory: int = 2,
    tikhonov: float = 1e-3,
    tol_abs: float | None = None,
    linear: str = "eps",
    test: str = "residual",
    init: str = "copy",
    preconditioning: int = 1,
    num_blocks: int | None = None,
    sampler: str | None = None,
    noise: Tensor | None = None,
    initial: Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    executor: object | None = None,
    **model_options: Any,
) -> SampleOutput:
    """Sample with ParaTAA: the triangular system over a window (default: all steps, as
    ParaTAA runs it) with triangular Anderson acceleration (see the module doc).

    ``model``, ``schedule``, ``x_T``, ``num_steps``, ``eta``, ``generator``, ``sampler``,
    ``noise`` and ``**model_options`` are as in :func:`~adapters.diffusion.srds_sample`
    (one-step solvers: DDIM/DDPM, Euler, Euler ancestral).

    Args:
        window: steps evaluated per model call (default ``num_steps``: ParaTAA's window =
            all steps); each call holds ``window * batch`` rows.
        tol: per-step tolerance relative to the step's noise scale, as
            :func:`~adapters.diffusion.picard_sample`'s: a converged step's change, rebuilt
            from the window's start, is ``<= tol * sigma_j`` (rms; see the module doc).
            Default: ``WINDOW_TOL`` of the network's dtype, as Picard's.
        max_iters: limit on the window's model calls (default ``num_steps``: always enough).
        callback: ``callback(iteration, window_start_state, worst_normalised_change)``.
        order: steps each equation is unrolled over (ParaTAA: 20 for SD with 50 steps, 100
            for DiT with 100); default: the window.
        memory: Anderson history ``m`` (ParaTAA: 2-5); ``1`` is the plain fixed point.
        tikhonov: ``lambda`` added to each step's ``(m-1) x (m-1)`` Gram matrix (ParaTAA:
            1e-3, on sums over the sample's elements).
        tol_abs: absolute part of ParaTAA's residual rule: ``rms(residual) <= tol_abs``
            (default ``tol``, as ParaTAA's ``tol1 = tol2``); the change test applies as well.
        linear: ``"eps"`` (ParaTAA: the step's gain with the noise prediction fixed) or
            ``"identity"`` (ParaDiGMS's cumulative sum) or ``"secant"`` (per step and
            sample, the secant gain of the step's last two evaluations, clamped to
            ``[0, 2]``, 1 before: :func:`~adapters.diffusion.quasi_newton_sample`'s
            coupling; needs ``order >= window``).
        test: ``"residual"`` (ParaTAA's two-part rule on the one-step residual before the
            update, and the change test) or ``"change"`` (ParaDiGMS/ParaSolver/Picard: the
            change test only).
        init: ``"copy"`` (ParaTAA), ``"extrapolate"`` (ParaSolver, after
            ``preconditioning`` serial steps) or ``"coarse"`` (SRDS coarse sweep over
            ``num_blocks`` blocks); ignored where ``initial`` is given.
        initial: a trajectory guess ``[num_steps + 1, *x_T.shape]`` (its increments,
            anchored at ``x_T``), e.g. :func:`coarse_trajectory` or ``out.trajectory``.
        return_trajectory: keep the final trajectory in ``out.trajectory``.
        progress: a tqdm bar on stderr of ``num_steps`` steps, advanced by the steps each
            window call makes exact.
        executor: a :class:`pint.DistributedExecutor` (under ``torchrun``, the model on
            every rank), as in :func:`~adapters.diffusion.picard_sample`: the steps of every
            model call (the window's, and the initialisation's) are split into contiguous
            slices over the ranks and one ``all_gather`` per call hands every rank all
            outputs; the Anderson/secant update and the tests then run on every rank (their
            decisions compared at every call). Every rank returns the single-process
            result; ``stats.model_calls``/``model_rows`` count this rank's calls
            (``stats.engine``: every rank's), ``stats.depth`` the sequential calls.

    Returns:
        :class:`~adapters.diffusion.SampleOutput`: ``iterations`` the window's calls,
        ``stats.depth`` all sequential calls (initialisation included), ``history`` the
        worst normalised change (``rms / sigma_j``, the quantity ``tol`` bounds) of each
        iteration, ``num_blocks`` the window.
    """
    check_callback(callback)
    check_progress(progress)
    N, denoiser, grid, noise, problem = prepare(
        model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options)
    if grid.num_slots != 1:
        raise ValueError(f"taa_sample needs a one-step solver, not {grid.solver!r}")
    precision = resolve_tol(tol, WINDOW_TOL, denoiser.input_dtype, "WINDOW_TOL")
    tol = precision.tol
    opt = _Options.checked(N, window, tol, max_iters, order, memory, tikhonov, tol_abs, linear,
                           test, init, preconditioning, num_blocks)
    y0 = problem.y0
    if initial is not None:
        check_initial(initial, N, y0)
    ranks = None
    if executor is not None:  # every rank's arguments agree before any model call
        fields = rank_arguments("taa", denoiser, grid, x_T, N, opt.window, tol, opt.max_iters,
                                noise, initial, callback, return_trajectory)
        fields["taa options"] = opt.describe()
        # a step's row in the exchange: two float64 [batch, D] (Phi_j and x0, or x0 and eps)
        ranks = Ranks.connect(executor, torch.empty((2, y0.shape[0], y0[0].numel()),
                                                    dtype=torch.float64, device=x_T.device),
                              opt.window, fields)
    run = _TriangularAnderson(denoiser, grid, noise, y0, initial, opt, ranks)
    a, it, history = run_window(run, N, opt.window, opt.max_iters, name="taa", progress=progress,
                                callback=callback, ranks=ranks)
    denoiser.check()
    traj = run.traj
    k = _first_nonfinite(traj)
    if k <= N:  # states no window call has reached (an initial guess's, max_iters)
        raise NonFiniteStateError(f"non-finite state at step {k} after {it} iterations (window "
                                  f"at step {a})")
    out = traj.reshape(N + 1, *y0.shape).to(y0.dtype)
    stats = finish_stats(denoiser, ranks, it, run.setup_calls + it, traj[N])
    return SampleOutput(out[N].to(x_T.dtype, copy=True), it, a >= N, history, stats,
                        float(tol), opt.window, trajectory=out if return_trajectory else None,
                        precision=precision)


@dataclass(frozen=True)
class _Options:
    """:func:`taa_sample`'s settings, checked, with their defaults resolved."""

    window: int
    tol: float
    max_iters: int
    order: int
    memory: int
    tikhonov: float
    tol_abs: float
    linear: str
    test: str
    init: str
    preconditioning: int
    num_blocks: int | None

    @classmethod
    def checked(cls, N: int, window, tol, max_iters, order, memory, tikhonov, tol_abs, linear,
                test, init, preconditioning, num_blocks) -> _Options:
        """The settings, or a ``TypeError``/``ValueError`` naming the first bad one."""
        window = N if window is None else window
        for name, v, lo in (("window", window, 1), ("memory", memory, 1),
                            ("preconditioning", preconditioning, 0)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if window > N:
            raise ValueError(f"window must be between 1 and num_steps={N}, got {window}")
        order = window if order is None else order
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        tol_abs = tol if tol_abs is None else tol_abs
        for name, v in (("tol", tol), ("tol_abs", tol_abs), ("tikhonov", tikhonov)):
            check_window_tol(name, v)
        for name, v, allowed in (("init", init, INITS), ("test", test, TESTS),
                                 ("linear", linear, LINEAR)):
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        max_iters = N if max_iters is None else max_iters
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters must be an int >= 1, got {max_iters!r}")
        if linear == "secant" and order < window:
            raise ValueError("linear='secant' unrolls from the window's first state: "
                             "order must be >= window")
        return cls(window, tol, max_iters, order, memory, tikhonov, tol_abs, linear, test, init,
                   preconditioning, num_blocks)

    def describe(self) -> str:
        """The options every rank must agree on beyond the window sampler's."""
        return (f"order={self.order} memory={self.memory} tikhonov={self.tikhonov!r} "
                f"tol_abs={self.tol_abs!r} linear={self.linear} test={self.test} "
                f"init={self.init} preconditioning={self.preconditioning} "
                f"num_blocks={self.num_blocks!r}")


class _TriangularAnderson:
    """:func:`taa_sample`'s coupling for the window loop
    (:class:`~adapters.diffusion.window.WindowCoupling`): the trajectory in float64
    ``[N + 1, batch, D]``, rebuilt by the triangular system (:func:`_unroll`) with the
    Anderson correction (:func:`_anderson`), tested by :func:`_stopping`."""

    def __init__(self, denoiser, grid: SamplingGrid, noise: Tensor | None, y0: Tensor,
                 initial: Tensor | None, opt: _Options, ranks: Ranks | None) -> None:
        N, dev, f64 = grid.num_steps, y0.device, torch.float64
        self.denoiser, self.grid, self.opt, self.ranks = denoiser, grid, opt, ranks
        self.shape, self.dt = tuple(y0.shape), y0.dtype
        self.batch, self.D = batch, D = y0.shape[0], y0[0].numel()
        self.std = grid.step_noise_var().sqrt().to(dev)
        self.J = _gain(grid, opt.linear).to(dev)
        self.A, self.S = (v.to(dev) for v in _levels(grid))
        self.coef = grid.coef[:, 0].to(dev)  # [N, 4]: c_x, c_x0, c_eps, noise
        self.zs = noise.reshape(N, batch, D).to(f64) if noise is not None else None
        self.traj = y0.reshape(1, batch, D).to(f64).repeat(N + 1, 1, 1)  # float64 bookkeeping
        self.initial = initial
        self.guide: Tensor | None = None
        self.setup_calls = 0  # sequential model calls of the initialisation
        self.mem: list[tuple[int, int, Tensor, Tensor]] = []
        if opt.linear == "secant":
            self.last_x, self.last_phi = torch.zeros_like(self.traj[:N]), torch.zeros_like(
                self.traj[:N])
            self.seen = torch.zeros(N, dtype=torch.bool, device=dev)

    def phi_of(self, y: Tensor, a: int, e: int) -> tuple[Tensor, Tensor]:
        """``Phi_j(y_j)`` for ``j = a .. e - 1`` (one model call) and the data prediction."""
        n, shape = e - a, (e - a, self.batch, self.D)
        j = torch.arange(a, e, device=y.device)
        x0, eps = _predict(self.denoiser, self.grid, y.to(self.dt).reshape(n, *self.shape), j)
        x0, eps = x0.reshape(shape).to(torch.float64), eps.reshape(shape).to(torch.float64)
        c = self.coef[a:e].view(-1, 4, 1, 1)
        out = c[:, 0] * y + c[:, 1] * x0 + c[:, 2] * eps
        if self.zs is not None:
            out = out + c[:, 3] * self.zs[a:e]
        return out, x0

    def call(self, y: Tensor, a: int, e: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`phi_of` over steps ``a .. e - 1`` here, or each rank its slice and one
        exchange; and whether the ranks' previous decisions differ (``None``: one process)."""
        j = torch.arange(a, e)  # on the host: the slice's steps, no device read
        both, diverged = evaluate(
            self.ranks, lambda _, i, yi, __: torch.stack(
                self.phi_of(yi, int(i[0]), int(i[-1]) + 1), 1), j, y, j)
        return both[:, 0], both[:, 1], diverged

    def predict_at(self, y: Tensor, s0: int) -> tuple[Tensor, Tensor]:
        """The coarse sweep's ``(x0, eps)`` of state ``s0`` (on one rank with an executor)."""
        self.setup_calls += 1
        j = torch.tensor([s0], device=y.device)

        def one(_, __, yi: Tensor, ___) -> Tensor:  # the model sees x_T's shape and dtype
            x0, eps = _predict(self.denoiser, self.grid, yi.to(self.dt).reshape(1, *self.shape),
                               j)
            return torch.stack([x0.reshape(1, self.batch, self.D),
                                eps.reshape(1, self.batch, self.D)], 1).to(torch.float64)

        both, _ = evaluate(self.ranks, one, j.cpu(), y, j.cpu())
        return both[:, 0], both[:, 1]

    def start(self) -> int:
        """The initialisation (``initial``, or ``init``); the first window's start."""
        traj, opt, N = self.traj, self.opt, self.grid.num_steps
        if self.initial is not None:
            self.guide = self.initial.to(device=traj.device, dtype=torch.float64).reshape(
                traj.shape)
            traj[1:] = traj[0] + (self.guide[1:] - self.guide[0])
        elif opt.init == "coarse":
            _coarse_fill(self.denoiser, self.grid, traj, _blocks(opt.num_blocks, N),
                         self.predict_at)
            self.guide = traj.clone()
        elif opt.init == "extrapolate":
            P = min(opt.preconditioning, N)
            x0_last = None
            for k in range(P):  # serial steps: exact states, P sequential calls
                self.setup_calls += 1
                traj[k + 1], x0_last = (v[0] for v in self.call(traj[k:k + 1], k, k + 1)[:2])
            if P < N and x0_last is not None:
                traj[P + 1:] = _extrapolate(traj[P], x0_last, self.A, self.S, P, N)
            return P
        return 0

    def gains(self, a: int, e: int, y: Tensor, phi: Tensor) -> Tensor:
        """``J_j`` of the window's steps: ``[n, 1, 1]``, or with ``linear="secant"`` per step
        and sample from the step's last two evaluations ``[n, batch, 1]`` (recorded)."""
        if self.opt.linear != "secant":
            return self.J[a:e].view(-1, 1, 1)
        dx, df = y - self.last_x[a:e], phi - self.last_phi[a:e]
        den = dx.pow(2).sum(-1, keepdim=True)
        r = (dx * df).sum(-1, keepdim=True) / den.clamp(min=1e-300)
        good = self.seen[a:e].view(-1, 1, 1) & (den > 1e-30) & torch.isfinite(r)
        self.last_x[a:e], self.last_phi[a:e], self.seen[a:e] = y, phi, True
        return torch.where(good, r.clamp(0.0, 2.0), torch.ones_like(r))

    def iterate(self, a: int, e: int) -> tuple[Tensor, Tensor | None]:
        n, traj, opt = e - a, self.traj, self.opt
        y = traj[a:e]
        phi, x0, diverged = self.call(y, a, e)
        X = traj[a + 1:e + 1].clone()
        Jw = self.gains(a, e, y, phi)
        d = phi - Jw * y
        R = _unroll(traj, a, d, Jw, opt.order) - X
        change = R if opt.order >= n else _unroll(traj, a, d, Jw, n) - X
        ok, norm = _stopping(X, change, phi if opt.test == "residual" else None, self.std[a:e],
                             opt.tol, opt.tol_abs)
        steps = torch.arange(n, device=traj.device)
        bad = torch.where(~ok, steps, n).min()
        fine = torch.isfinite(norm) & torch.isfinite(torch.cat([phi, R], -1)).flatten(1).all(1)
        nonfinite = torch.where(fine, n, steps).min()  # the first non-finite step, or n
        self.pending = (X, R, change, x0)
        return torch.stack([bad.double(), norm.max(), nonfinite.double()]), diverged

    def accept(self, a: int, e: int, it: int, bad: float, worst: float,
               nonfinite: float) -> tuple[int, float]:
        """The update: ``X + R``, Anderson-corrected after the first unconverged step."""
        n, (X, R, change, _) = e - a, self.pending
        bad = int(bad)
        if nonfinite < n:
            self.denoiser.check()  # a NaN/Inf from the model is named by its timestep
            raise NonFiniteStateError(
                f"non-finite state (or residual) at step {a + int(nonfinite)} in the taa "
                f"window starting at step {a} (iteration {it})")
        self.mem = (self.mem + [(a, e, X, R)])[-self.opt.memory:]
        new = X + R
        if len(self.mem) > 1 and bad < n - 1:  # steps after the first unconverged one
            new = new - _anderson(self.mem, a, e, R, bad + 1, self.opt.tikhonov)
            k = _first_nonfinite(new)
            if k < n:
                raise NonFiniteStateError(
                    f"non-finite state at step {a + k} after the Anderson update (window "
                    f"from step {a}, iteration {it})")
        if self.opt.order < n:  # the accepted steps take the rebuild their test measured
            new[:bad + 1] = X[:bad + 1] + change[:bad + 1]
        self.traj[a + 1:e + 1] = new
        return min(bad + 1, n), worst

    def enter(self, e: int, new_e: int) -> None:
        traj = self.traj
        if self.guide is not None:
            traj[e + 1:new_e + 1] = traj[e] + self.guide[e + 1:new_e + 1] - self.guide[e]
        elif self.opt.init == "extrapolate":
            x0 = self.pending[3]
            traj[e + 1:new_e + 1] = _extrapolate(traj[e], x0[-1], self.A, self.S, e, new_e)
        else:
            traj[e + 1:new_e + 1] = traj[e]

    def state(self, a: int) -> Tensor:
        return self.traj[a].reshape(self.shape).to(self.dt)


def _extrapolate(x: Tensor, x0: Tensor, A: Tensor, S: Tensor, e: int, end: int) -> Tensor:
    """States ``e + 1 .. end`` from ``x`` (state ``e``) by DDIM jumps with the data
    prediction ``x0`` (ParaSolver's approximate reverse process: no model call); copies
    of ``x`` where state ``e`` has no noise left."""
    if float(S[e]) <= 0:
        return x.unsqueeze(0).expand(end - e, *x.shape).clone()
    eps = (x - A[e] * x0) / S[e]
    return _jump(x0, eps, A[e + 1:end + 1], S[e + 1:end + 1])
