"""What a solve returns: the solution, its block boundaries, the iteration history and
the cost accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Stats:
    """Cost accounting of one solve.

    Attributes:
        coarse_steps: coarse propagator steps summed over blocks (a batched call over
            ``n`` blocks of ``s`` steps counts ``n * s``).
        fine_steps: the same for the fine propagator.
        f_calls: batched calls of the right-hand side ``f``.
        f_evals: evaluations of ``f`` counted per block row (a call on ``n`` blocks
            counts ``n``).
        depth: propagator steps on the critical path: each batched propagator call adds
            the most steps any of its blocks takes, calls that run one after another add
            up. Wall-clock time follows ``depth`` when a batched step costs about as much
            as a single one (a GPU below saturation). For adaptive solvers a step is one
            ``f`` call.
        rows: block rows handed to propagators, summed over calls (memory/width proxy).
        fits: fits of a learned correction's model (``correction="learned"``, one per
            iteration).
        model_evals: evaluations of that model, counted per block row.
        fit_depth: the part of ``depth`` the learned correction adds: one step per fit and
            one per model evaluation in the sequential correction.
    """

    coarse_steps: int = 0
    fine_steps: int = 0
    f_calls: int = 0
    f_evals: int = 0
    depth: int = 0
    rows: int = 0
    fits: int = 0
    model_evals: int = 0
    fit_depth: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain ``dict`` of ints (for JSON reports)."""
        return dict(self.__dict__)


@dataclass
class Result:
    """The outcome of :func:`pint.parareal` or :func:`pint.serial`.

    Attributes:
        y: the state at ``t_span[1]``, shape of ``y0``.
        boundaries: the states at the block boundaries ``times``, ``[num_blocks + 1, *y0.shape]``.
        times: the block boundary times, ``[num_blocks + 1]``.
        iterations: Parareal iterations done (0 for :func:`pint.serial`).
        converged: whether the stopping test passed (or every block became exact).
        history: the largest boundary change (max-abs) of each iteration.
        stats: the cost accounting, see :class:`Stats`.
    """

    y: Tensor
    boundaries: Tensor
    times: Tensor
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)

    @property
    def num_blocks(self) -> int:
        """``B``, the number of blocks (``boundaries.shape[0] - 1``)."""
        return self.boundaries.shape[0] - 1


@dataclass
class IterationInfo:
    """Handed to ``callback`` after the coarse sweep (``iteration == 0``) and after each
    Parareal iteration.

    Attributes:
        iteration: 0 for the initial coarse sweep, then 1, 2, ...
        boundaries: the current boundary states ``[num_blocks + 1, *state]`` (do not modify).
        change: the largest boundary change in this iteration (``nan`` for iteration 0).
        exact_blocks: how many leading boundaries (after the first) are known to equal
            the serial fine solution.
        stats: the running cost accounting.
    """

    iteration: int
    boundaries: Tensor
    change: float
    exact_blocks: int
    stats: Stats
