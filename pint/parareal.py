"""The Parareal loop: partition, coarse sweep, batched fine solves, coarse correction.

With boundaries ``U_0 .. U_B`` at times ``T_0 < .. < T_B``, coarse propagator ``G`` and
fine propagator ``F`` (each over one block ``[T_i, T_{i+1}]``):

* coarse sweep: ``U^0_0 = y0``, ``U^0_{i+1} = G(U^0_i)``;
* iteration ``k = 1, 2, ...``: one **batched** fine solve ``F(U^{k-1}_i)`` of every block
  that is not yet exact (``i >= k - 1``), then the sequential correction
  ``U^k_{i+1} = G(U^k_i) + F(U^{k-1}_i) - G(U^{k-1}_i)``.

With ``correction="learned"`` (:mod:`pint.learned`) a model ``M`` of ``F - G``, fitted on
every pair ``(U^j_i, F(U^j_i) - G(U^j_i))`` of the fine solves so far (``j < k``), adds
``M(U^k_i) - M(U^{k-1}_i)`` to that correction.

After ``k`` iterations ``U^k_0 .. U^k_k`` equal the serial fine solution (exactness), so
``k = B`` reproduces :func:`serial`. The loop stops early when every boundary moved by at
most ``tol + rtol * |U^k_i|`` (max-abs norms) in one iteration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import check_bool, check_callback, check_int, check_number
from .grid import make_partition
from .learned import LearnedCorrection, Learner, resolve_correction
from .pipeline import pipelined_parareal
from .problem import ODEProblem
from .propagators.base import FixedStepPropagator, Propagator
from .propagators.coarsened import Coarsened
from .propagators.explicit import RK4, Euler, Heun
from .propagators.implicit import SDIRK2, BackwardEuler, ImplicitMidpoint
from .result import IterationInfo, Result
from .runner import NonFiniteStateError, Runner
from .stopping import MaxAbsChange, StoppingRule

__all__ = ["parareal", "serial", "Runner", "NonFiniteStateError", "SwappedPropagatorsWarning"]

Callback = Callable[[IterationInfo], None]


class SwappedPropagatorsWarning(UserWarning):
    """:func:`parareal` got a ``coarse`` propagator that costs more per block than ``fine``:
    the two were most likely passed the wrong way round (``parareal(problem, coarse, fine)``)."""


def parareal(
    problem: ODEProblem,
    coarse: Propagator,
    fine: Propagator,
    num_blocks: int | None = None,
    tol: float = 1e-8,
    max_iters: int | None = None,
    pipelined: bool = False,
    callback: Callback | None = None,
    *,
    rtol: float = 0.0,
    partition: Sequence[float] | Tensor | None = None,
    stopping: StoppingRule | None = None,
    executor: object | None = None,
    initial: Tensor | None = None,
    correction: str | LearnedCorrection = "classic",
) -> Result:
    """Solve ``problem`` with Parareal.

    Args:
        problem: the initial value problem.
        coarse: the cheap propagator ``G`` (one call per block, run block after block).
        fine: the accurate propagator ``F`` (one batched call per iteration).
        num_blocks: number of equal blocks ``B`` of ``t_span``; may be omitted when
            ``partition`` is given.
        tol: absolute tolerance of the stopping test (max-abs change of every boundary in
            one iteration); ``0`` runs until ``max_iters`` or exactness.
        max_iters: iteration limit; default ``num_blocks`` (the result then equals
            :func:`serial`); ``0`` returns the coarse solution.
        pipelined: run the wavefront schedule (same numbers, shorter critical path);
            refused (``ValueError``) for a :class:`~pint.Coarsened` coarse propagator.
            Both schedules compute every boundary with the same arithmetic; when a batched
            ``f`` call gives each row the same bits whatever the batch width (elementwise
            ops and small matmuls on the CPU, the built-in propagators), their histories
            agree bitwise and they stop at the same iteration. Kernels whose round-off
            depends on the batch width (neural networks, many GPU kernels) make the values
            agree only to round-off, so when a change lies within round-off of ``tol`` the
            two may stop at different iterations. What holds for both: ``iterations`` is
            the first iteration whose recorded change passed the test (``history[-1]``
            passes, no earlier entry does), or ``max_iters``. Choose ``tol`` well above
            the round-off of the state for counts that agree across schedules.
        callback: called with an :class:`IterationInfo` after the coarse sweep and after
            every iteration.
        rtol: relative tolerance added to ``tol``: a boundary passes when its change is at
            most ``tol + rtol * max|U_i|``.
        partition: explicit block boundary times ``[B + 1]`` from ``t_span[0]`` to
            ``t_span[1]``, strictly monotone, instead of equal blocks.
        stopping: a :class:`~pint.stopping.StoppingRule` replacing the ``tol``/``rtol``
            test (for example :class:`~pint.stopping.FinalStateChange`).
        executor: where the batched work runs; ``None`` runs it in this process. An
            executor is an object with a ``parareal(problem, coarse, fine, times, stopping,
            max_iters, pipelined, callback)`` method, e.g. :class:`pint.DistributedExecutor`
            (several processes under ``torchrun``).
        initial: a guess of the boundary states ``[B + 1, *y0.shape]`` (warm start, e.g.
            ``boundaries`` of a neighbouring run) replacing the coarse sweep: the coarse
            values ``G(U^0_i)`` are then one batched call instead of ``B`` sequential
            ones. ``initial[0]`` is replaced by ``y0``; exactness after ``k`` iterations
            holds as without it.
        correction: ``"classic"`` (default) the update above; ``"learned"`` or a
            :class:`~pint.LearnedCorrection` (its options) adds a model of ``F - G``
            learned from the fine solves so far (:mod:`pint.learned`), falling back to the
            classic update in iterations where the model predicted worse. Exactness after
            ``k`` iterations holds as with the classic update. Sweep schedule only
            (``ValueError`` with ``pipelined=True`` or an ``executor``); the fits and model
            evaluations are counted in ``stats`` (``fits``, ``model_evals``, ``fit_depth``,
            included in ``depth``).

    Returns:
        A :class:`Result`; ``result.stats.depth`` for the sweep schedule with ``K``
        iterations and fixed-step propagators of ``g`` and ``f`` steps per block is
        ``B g + sum_{k=1..K} (f + (B - k) g)``.

    Raises:
        TypeError, ValueError: bad arguments (the message names the argument).
        NonFiniteStateError: a state became NaN/Inf; names the block and the iteration.

    Warns:
        SwappedPropagatorsWarning: ``coarse`` costs more per block than ``fine`` (judged for
        the built-in fixed-step methods: steps times ``f`` evaluations per step), i.e. the
        two were most likely passed the wrong way round.
    """
    _check_problem(problem)
    _check_propagator("coarse", coarse)
    _check_propagator("fine", fine)
    _warn_if_swapped(coarse, fine)
    times = make_partition(problem, num_blocks, partition)
    B = times.shape[0] - 1
    tol = check_number("tol", tol, positive=False)
    rtol = check_number("rtol", rtol, positive=False)
    max_iters = B if max_iters is None else check_int("max_iters", max_iters, 0)
    max_iters = min(max_iters, B)
    pipelined = check_bool("pipelined", pipelined)
    if stopping is None:
        stopping = MaxAbsChange(tol, rtol)
    elif not callable(stopping):
        raise TypeError(f"stopping must be callable, got {type(stopping).__name__}")
    check_callback(callback)
    learned = resolve_correction(correction)
    if learned is not None and (pipelined or executor is not None):
        raise ValueError("correction='learned' runs with the sweep schedule only: it fits its "
                         "model on every block's fine solve before the sequential correction; "
                         "use pipelined=False and executor=None, or correction='classic'")
    if initial is not None:
        expected = (B + 1, *problem.y0.shape)
        if not isinstance(initial, Tensor) or tuple(initial.shape) != expected:
            raise ValueError(f"initial must be a tensor of shape {expected} (the boundary "
                             f"states), got {tuple(getattr(initial, 'shape', ())) or type(initial).__name__}")
        initial = initial.to(device=problem.y0.device, dtype=problem.y0.dtype)
        if executor is not None:
            raise ValueError("initial is not supported with an executor yet")
    if pipelined:
        for name, prop in (("coarse", coarse), ("fine", fine)):
            if isinstance(prop, Coarsened):
                raise ValueError(
                    f"pipelined=True does not support a spatially coarsened propagator: "
                    f"{name} is {prop!r}, and the wavefront batches single steps on the "
                    f"fine state. Use pipelined=False (the sweep)")
    if executor is not None:
        if not callable(getattr(executor, "parareal", None)):
            raise TypeError(
                "executor must provide parareal(problem, coarse, fine, times, stopping, "
                f"max_iters, pipelined, callback); got {type(executor).__name__}"
            )
        return executor.parareal(  # type: ignore[attr-defined]
            problem, coarse, fine, times, stopping, max_iters, pipelined, callback
        )
    if pipelined:
        return pipelined_parareal(problem, coarse, fine, times, stopping, max_iters, callback,
                                  initial)

    run = Runner(problem)
    learner = None if learned is None else Learner(learned, B, problem.y0, run.stats)
    t0, t1 = times[:-1], times[1:]
    # Buffers are only written, never read while written: the propagators get the fresh
    # value tensors, so gradients with respect to f's parameters flow through the sweep.
    U = problem.y0.new_empty((B + 1, *problem.y0.shape))
    U[0] = problem.y0
    G_old: list[Tensor] = []
    if initial is None:
        y = problem.y0
        for i in range(B):
            y = run(coarse, y.unsqueeze(0), t0[i : i + 1], t1[i : i + 1], "coarse")[0]
            G_old.append(y)
            U[i + 1] = y
    else:  # warm start: every block's coarse value in one batched call
        U[1:] = initial[1:]
        G_old = list(run(coarse, U[:B], t0, t1, "coarse").unbind(0))
    run.check_finite(U[1:], 0, first_block=0, what="coarse sweep")
    if callback is not None:
        callback(IterationInfo(0, U, math.nan, 0, run.stats))

    history: list[float] = []
    converged = False
    k = 0
    while k < max_iters:
        k += 1
        a = k - 1  # blocks a..B-1 start from a state that is not yet exact
        F = run(fine, U[a:B], t0[a:B], t1[a:B], "fine")
        run.check_finite(F, k, first_block=a, what="fine solve")
        if learner is not None:  # learns from this iteration's fine solves only
            learner.observe(k, a, U[a:B], F - torch.stack(G_old[a:B]))
        U_new = U.clone()
        y = F[0]
        U_new[k] = y
        for i in range(k, B):
            g = run(coarse, y.unsqueeze(0), t0[i : i + 1], t1[i : i + 1], "coarse")[0]
            step = None if learner is None else learner.delta(i, y, U[i])  # M(U^k_i) - M(U^{k-1}_i)
            y = g + F[i - a] - G_old[i] + (0 if step is None else step)
            G_old[i] = g
            U_new[i + 1] = y
        run.check_finite(U_new[k:], k, first_block=k - 1, what="coarse correction")
        if learner is not None:  # the model's view of this change, checked next iteration
            learner.record(k, U_new[k:B], U[k:B])
        index = torch.arange(k, B + 1, device=U.device)
        change, passed = stopping(U_new[k:].detach(), U[k:].detach(), index)
        U = U_new
        history.append(change)
        if callback is not None:
            callback(IterationInfo(k, U, change, k, run.stats))
        if passed or k == B:
            converged = True
            break
    return Result(U[-1].clone(), U, times, k, converged or k == B, history, run.stats)


def serial(
    problem: ODEProblem,
    fine: Propagator,
    num_blocks: int | None = None,
    *,
    partition: Sequence[float] | Tensor | None = None,
) -> Result:
    """The fine solution block after block: the reference :func:`parareal` reproduces.

    Returns a :class:`Result` with ``iterations == 0``, ``converged == True`` and
    ``stats.depth == B * f`` for a fixed-step ``fine`` of ``f`` steps per block.
    """
    _check_problem(problem)
    _check_propagator("fine", fine)
    times = make_partition(problem, num_blocks, partition)
    B = times.shape[0] - 1
    run = Runner(problem)
    U = problem.y0.new_empty((B + 1, *problem.y0.shape))
    U[0] = y = problem.y0
    for i in range(B):  # U is only written: gradients flow through the fresh values y
        y = run(fine, y.unsqueeze(0), times[i : i + 1], times[i + 1 : i + 2], "fine")[0]
        U[i + 1] = y
    run.check_finite(U[1:], 0, first_block=0, what="serial fine solve")
    return Result(U[-1].clone(), U, times, 0, True, [], run.stats)


# --------------------------------------------------------------------------- helpers


def _check_problem(problem: object) -> None:
    if not isinstance(problem, ODEProblem):
        raise TypeError(f"problem must be a pint.ODEProblem, got {type(problem).__name__}")


# f evaluations per step of the built-in one-step methods: exact for the explicit ones, a
# lower bound for the implicit ones (one f evaluation per stage and Newton iteration, plus
# Jacobians)
_EXPLICIT_EVALS = {Euler: 1, Heun: 2, RK4: 4}
_IMPLICIT_STAGES = {BackwardEuler: 1, ImplicitMidpoint: 1, SDIRK2: 2}


def _warn_if_swapped(coarse: Propagator, fine: Propagator) -> None:
    """Warn when ``coarse`` certainly costs more ``f`` evaluations per block than ``fine``.

    Decided only where the cost is known without running anything: two fixed-step
    propagators of the same class (compare ``steps``), or built-in methods where the coarse
    cost (exact, or a lower bound for an implicit method) exceeds the fine one's exact cost
    (``fine`` explicit). Equal costs, adaptive solvers and other classes never warn."""
    if not (isinstance(coarse, FixedStepPropagator) and isinstance(fine, FixedStepPropagator)):
        return
    if type(coarse) is type(fine):
        c_cost, f_cost = coarse.steps, fine.steps
        unit = "steps"
    else:
        per_step = _EXPLICIT_EVALS.get(type(coarse)) or _IMPLICIT_STAGES.get(type(coarse))
        f_per_step = _EXPLICIT_EVALS.get(type(fine))  # exact costs only
        if per_step is None or f_per_step is None:
            return
        c_cost, f_cost = coarse.steps * per_step, fine.steps * f_per_step
        unit = "f evaluations"
    if c_cost > f_cost:
        at_least = "at least " if type(coarse) in _IMPLICIT_STAGES else ""
        warnings.warn(
            f"coarse={coarse!r} costs more per block ({at_least}{c_cost} {unit}) than "
            f"fine={fine!r} "
            f"({f_cost}): coarse and fine look swapped. The call is parareal(problem, "
            f"coarse, fine, ...): coarse is the cheap propagator run block after block, fine "
            f"the accurate one run for all blocks at once",
            SwappedPropagatorsWarning, stacklevel=3,
        )


def _check_propagator(name: str, prop: object) -> None:
    if not isinstance(prop, Propagator):
        raise TypeError(
            f"{name} must be a pint.Propagator (e.g. pint.RK4(steps=...)), "
            f"got {type(prop).__name__}"
        )
