"""MGRIT: multigrid reduction in time (FAS, V-cycles), with Parareal as its two-level case.

The fine time grid ``T_0`` (``num_blocks`` intervals) is coarsened by a factor ``m_l`` per
level: level ``l + 1`` keeps every ``m_l``-th point of level ``l`` (its **C-points**; the
others are **F-points**). ``Phi_l`` is ``propagators[l]`` over one interval of level ``l``.
The finest level solves ``u_i = Phi_0(u_{i-1})``; a coarser level ``l`` solves the FAS
system ``u_i = Phi_l(u_{i-1}) + g_i``. One iteration (a V-cycle) on level ``l``:

* relaxation: ``F`` (F-points from the C-point before them), ``FCF`` (then C-points from
  the F-point before them, then F-points again), ``FCFCF``, ...;
* restriction (injection at the C-points): ``v_i = u_{C_i}``,
  ``g^{l+1}_i = g^l_{C_i} + Phi_l(u_{C_i - 1}) - u_{C_i} + v_i - Phi_{l+1}(v_{i-1})``;
* the coarse problem: a V-cycle on level ``l + 1``, solved exactly (block after block) on
  the coarsest level;
* correction ``u_{C_i} += u^{l+1}_i - v_i`` and an F-relaxation.

Like Parareal, every relaxation advances all intervals of a level at once: one **batched**
propagator call per point of a coarse interval, as :func:`pint.parareal` solves all blocks
in one call. The start is pymgrit's nested iteration (the coarsest level solved, copied
to the C-points of the finer levels, one V-cycle on each intermediate level, an
F-relaxation of the finest). The stop is pymgrit's: the 2-norm of the space-time residual
``r_i = Phi_0(u_{C_i - 1}) - u_{C_i}`` at the C-points of the finest level below ``tol``.

Two levels with F-relaxation are Parareal: ``G = Phi_1`` and ``F`` = ``m_0`` steps of
``Phi_0``; with ``coarsening=1`` the two levels share the grid and differ only in the
propagator, so ``mgrit(problem, [fine, coarse], B, coarsening=1, relax="F")`` iterates as
``parareal(problem, coarse, fine, B)``. After ``k`` iterations the first ``k`` intervals
of level 1 are exact (any number of levels, any relaxation), so ``N_1`` iterations
reproduce :func:`pint.serial` on the fine grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import check_callback, check_int, check_number
from .grid import make_partition
from .problem import ODEProblem
from .propagators.base import Propagator
from .result import IterationInfo, Result
from .runner import Runner

__all__ = ["mgrit"]

Callback = Callable[[IterationInfo], None]
_RELAX = re.compile(r"F(CF)*")


def mgrit(
    problem: ODEProblem,
    propagators: Sequence[Propagator],
    num_blocks: int | None = None,
    coarsening: int | Sequence[int] = 2,
    tol: float = 1e-8,
    max_iters: int | None = None,
    relax: str = "F",
    callback: Callback | None = None,
    *,
    partition: Sequence[float] | Tensor | None = None,
) -> Result:
    """Solve ``problem`` with MGRIT (FAS V-cycles; pymgrit's algorithm).

    Args:
        problem: the initial value problem.
        propagators: one propagator per level, finest first: ``propagators[l]`` advances
            one interval of level ``l`` (e.g. ``[pint.BackwardEuler(1)] * 3`` for three
            levels of backward Euler). At least two.
        num_blocks: number of equal intervals of the finest level ``N_0``; may be omitted
            when ``partition`` is given. ``N_0`` must be divisible by the product of the
            coarsening factors.
        coarsening: the factor ``m`` between consecutive levels (an int for all, or one
            per pair of levels: ``len(propagators) - 1`` ints, each ``>= 1``). Level
            ``l + 1`` has ``N_l / m_l`` intervals; ``1`` keeps the grid (the coarser level
            then differs only in its propagator).
        tol: stop when the 2-norm of the finest level's residual at its C-points (over
            time and state) is below ``tol``; ``0`` runs until ``max_iters`` or exactness.
        max_iters: iteration limit; default and upper bound ``N_1``, the number of
            intervals of level 1, after which the result equals :func:`pint.serial` on
            the fine grid; ``0`` returns the initial guess (nested iteration).
        relax: ``"F"`` (F-relaxation), ``"FCF"``, or more C-F sweeps (``"FCFCF"``, ...).
        callback: called with an :class:`IterationInfo` after the initial guess
            (``change`` nan) and after every iteration (``change`` = the residual norm).
        partition: explicit fine-grid times ``[N_0 + 1]`` from ``t_span[0]`` to
            ``t_span[1]``, strictly monotone, instead of equal intervals.

    Returns:
        A :class:`Result`: ``boundaries`` and ``times`` on the fine grid (``N_0 + 1``
        points), ``history`` the residual norm after each iteration; ``stats.fine_steps``
        counts the steps of ``propagators[0]``, ``stats.coarse_steps`` those of every
        coarser level, ``stats.depth`` the steps on the critical path (a batched call adds
        its longest row, the coarsest solve one call per interval).

    Raises:
        TypeError, ValueError: bad arguments (the message names the argument), e.g. more
            levels than the time grid holds, or an unknown ``relax``.
        NonFiniteStateError: a state became NaN/Inf; names the interval and the iteration.
    """
    _check_problem(problem)
    props = _check_propagators(propagators)
    levels = len(props)
    ms = _check_coarsening(coarsening, levels)
    cf = _check_relax(relax)
    times = make_partition(problem, num_blocks, partition)
    sizes = _level_sizes(times.shape[0] - 1, ms, "num_blocks" if partition is None else "partition")
    tol = check_number("tol", tol, positive=False)
    n1 = sizes[1]
    max_iters = n1 if max_iters is None else min(check_int("max_iters", max_iters, 0), n1)
    check_callback(callback)

    solver = _Cycles(problem, props, times, ms, cf)
    run, u0 = solver.run, solver.u[0]
    solver.initial_guess()
    run.check_finite(u0[1:], 0, first_block=0, what="initial guess (nested iteration)")
    if callback is not None:
        callback(IterationInfo(0, u0, math.nan, 0, run.stats))
    history: list[float] = []
    converged = False
    k = 0
    while k < max_iters:
        k += 1
        solver.cycle(0)
        residual = solver.residual()
        run.check_finite(u0[1:], k, first_block=0, what="MGRIT cycle")
        history.append(residual)
        if callback is not None:
            callback(IterationInfo(k, u0, residual, min(k * ms[0], sizes[0]), run.stats))
        if residual < tol or k == n1:
            converged = True
            break
    return Result(u0[-1].clone(), u0.clone(), times, k, converged, history, run.stats)


class _Cycles:
    """The level hierarchy and the MGRIT operations on it (one process)."""

    def __init__(self, problem: ODEProblem, props: list[Propagator], times: Tensor,
                 ms: list[int], cf: int) -> None:
        self.run = Runner(problem)
        self.props, self.ms, self.cf = props, ms + [1], cf
        self.L = len(props) - 1
        self.T: list[Tensor] = [times]
        for m in ms:
            self.T.append(self.T[-1][::m])
        y0 = problem.y0
        self.u: list[Tensor] = []
        for T in self.T:
            u = y0.new_zeros((T.shape[0], *y0.shape))
            u[0] = y0
            self.u.append(u)
        # the FAS right-hand sides and restricted values (None on the finest level)
        self.g: list[Tensor | None] = [None] + [torch.zeros_like(u) for u in self.u[1:]]
        self.v: list[Tensor | None] = [None] * (self.L + 1)
        # Phi_l(u_{C_i - 1}) for the C-points i = 1..N_{l+1} from the last F-relaxation
        self.phi_c: list[Tensor | None] = [None] * (self.L + 1)

    def _phi(self, lvl: int, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """``Phi_lvl`` on rows ``y`` from ``T_lvl[a]`` to ``T_lvl[b]`` (one batched call)."""
        T = self.T[lvl]
        return self.run(self.props[lvl], y, T[a], T[b], "fine" if lvl == 0 else "coarse")

    def f_relax(self, lvl: int, extend: bool) -> None:
        """F-points from the C-point before them, all coarse intervals at once; with
        ``extend`` one step more, to ``Phi(u_{C_i - 1})`` at the next C-point."""
        m, u, g = self.ms[lvl], self.u[lvl], self.g[lvl]
        start = torch.arange(0, u.shape[0] - 1, m, device=u.device)
        y = u[start]
        for j in range(1, m + (1 if extend else 0)):
            idx = start + j
            y = self._phi(lvl, y, idx - 1, idx)
            if j == m:
                self.phi_c[lvl] = y
                return
            if g is not None:
                y = g[idx] + y
            u[idx] = y
        self.phi_c[lvl] = None

    def c_relax(self, lvl: int) -> None:
        """C-points ``1..`` from the F-point before them (uses the last F-relaxation)."""
        u, g, phi = self.u[lvl], self.g[lvl], self.phi_c[lvl]
        assert phi is not None
        c = torch.arange(self.ms[lvl], u.shape[0], self.ms[lvl], device=u.device)
        u[c] = phi if g is None else g[c] + phi
        self.phi_c[lvl] = None

    def restrict(self, lvl: int) -> None:
        """The FAS coarse problem on level ``lvl + 1`` (injection at the C-points)."""
        u, g, phi, m = self.u[lvl], self.g[lvl], self.phi_c[lvl], self.ms[lvl]
        assert phi is not None
        v = u[::m].clone()
        uc = v[1:]
        r = phi - uc if g is None else (g[m::m] - uc) + phi
        n = v.shape[0] - 1
        k = torch.arange(n, device=u.device)
        coarse = self._phi(lvl + 1, v[:-1], k, k + 1)
        g1 = torch.zeros_like(v)
        g1[1:] = (r + v[1:]) - coarse
        self.v[lvl + 1], self.g[lvl + 1], self.u[lvl + 1] = v, g1, v.clone()

    def solve_coarsest(self) -> None:
        """``u_i = g_i + Phi_L(u_{i-1})`` block after block."""
        L, u, g = self.L, self.u[self.L], self.g[self.L]
        assert g is not None
        y = u[0]
        for i in range(1, u.shape[0]):
            k = torch.tensor([i - 1], device=u.device)
            y = g[i] + self._phi(L, y.unsqueeze(0), k, k + 1)[0]
            u[i] = y

    def correct(self, lvl: int) -> None:
        u, m, v = self.u[lvl], self.ms[lvl], self.v[lvl + 1]
        assert v is not None
        u[m::m] = u[m::m] + (self.u[lvl + 1][1:] - v[1:])

    def cycle(self, lvl: int, first_f: bool = True) -> None:
        """One V-cycle from level ``lvl``. The finest level's first F-relaxation is the
        previous cycle's last one (or the initial guess's)."""
        if lvl == self.L:
            self.solve_coarsest()
            return
        if first_f and lvl > 0:
            self.f_relax(lvl, extend=True)
        for _ in range(self.cf):
            self.c_relax(lvl)
            self.f_relax(lvl, extend=True)
        self.restrict(lvl)
        self.cycle(lvl + 1)
        self.correct(lvl)
        # the finest level keeps Phi_0(u_{C_i - 1}): the residual and the next cycle need it
        self.f_relax(lvl, extend=lvl == 0)

    def initial_guess(self) -> None:
        """pymgrit's nested iteration, then an F-relaxation of the finest level."""
        self.solve_coarsest()
        for lvl in range(self.L - 1, -1, -1):
            self.u[lvl][:: self.ms[lvl]] = self.u[lvl + 1]
            if lvl > 0:
                self.cycle(lvl)
        self.f_relax(0, extend=True)

    def residual(self) -> float:
        """2-norm of ``Phi_0(u_{C_i - 1}) - u_{C_i}`` over the finest level's C-points."""
        phi = self.phi_c[0]
        assert phi is not None
        return float(torch.linalg.vector_norm(phi - self.u[0][self.ms[0]:: self.ms[0]]))


# --------------------------------------------------------------------------- checks


def _check_problem(problem: object) -> None:
    if not isinstance(problem, ODEProblem):
        raise TypeError(f"problem must be a pint.ODEProblem, got {type(problem).__name__}")


def _check_propagators(propagators: object) -> list[Propagator]:
    hint = ("propagators must be a sequence of pint.Propagator, one per level, finest first "
            "(e.g. [pint.BackwardEuler(1), pint.BackwardEuler(1)])")
    if isinstance(propagators, Propagator) or not isinstance(propagators, Sequence) \
            or isinstance(propagators, (str, bytes)):
        raise TypeError(f"{hint}, got {type(propagators).__name__}")
    props = list(propagators)
    for i, p in enumerate(props):
        if not isinstance(p, Propagator):
            raise TypeError(f"propagators[{i}] must be a pint.Propagator, got {type(p).__name__}")
    if len(props) < 2:
        raise ValueError(f"propagators must hold at least two levels, got {len(props)}")
    return props


def _check_coarsening(coarsening: object, levels: int) -> list[int]:
    if isinstance(coarsening, Sequence) and not isinstance(coarsening, (str, bytes)):
        ms = list(coarsening)
        if len(ms) != levels - 1:
            raise ValueError(
                f"coarsening must hold one factor per pair of levels: {levels - 1} for "
                f"{levels} propagators, got {len(ms)}")
        return [check_int(f"coarsening[{i}]", m, 1) for i, m in enumerate(ms)]
    return [check_int("coarsening", coarsening, 1)] * (levels - 1)


def _check_relax(relax: object) -> int:
    """The number of C-F sweeps after the first F-relaxation (``"F"``: 0, ``"FCF"``: 1)."""
    if not isinstance(relax, str) or _RELAX.fullmatch(relax.upper()) is None:
        raise ValueError(f"relax must be 'F', 'FCF' or more C-F sweeps ('FCFCF', ...), "
                         f"got {relax!r}")
    return (len(relax) - 1) // 2


def _level_sizes(n0: int, ms: list[int], grid: str) -> list[int]:
    """Intervals per level; ValueError when a level's intervals do not divide."""
    sizes = [n0]
    for lvl, m in enumerate(ms):
        if sizes[-1] % m:
            total = math.prod(ms)
            raise ValueError(
                f"propagators: {len(ms) + 1} levels with coarsening {tuple(ms)} need a fine "
                f"grid of a multiple of {total} intervals ({grid} gives {n0}; level {lvl} has "
                f"{sizes[-1]}, not divisible by {m}). Use fewer levels, another coarsening "
                f"or {grid} = a multiple of {total}")
        sizes.append(sizes[-1] // m)
    return sizes
