"""The propagator runner shared by every schedule (sweep, pipelined, distributed).

:class:`Runner` calls propagators on one problem's batched right-hand side and keeps the
cost accounting (:class:`~pint.Stats`); :class:`NonFiniteStateError` is what its finiteness
check raises. This module imports none of the schedules, so :mod:`pint.parareal`,
:mod:`pint.pipeline` and :mod:`pint.executors` all import it without importing each other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .problem import ODEProblem
from .propagators.base import NonFiniteStateError, Propagator
from .result import Stats


class Runner:
    """Runs propagators on one problem and keeps the cost accounting in ``stats``."""

    def __init__(self, problem: ODEProblem) -> None:
        self.stats = Stats()
        rhs = problem.batched_rhs() if problem.f is not None else _missing_rhs

        def counted(t: Tensor, y: Tensor) -> Tensor:
            self.stats.f_calls += 1
            self.stats.f_evals += y.shape[0]
            return rhs(t, y)

        self.rhs = counted

    def __call__(self, prop: Propagator, y: Tensor, t0: Tensor, t1: Tensor, kind: str) -> Tensor:
        calls_before = self.stats.f_calls
        out = prop(self.rhs, y, t0, t1)
        if not isinstance(out, Tensor) or out.shape != y.shape or out.dtype != y.dtype:
            raise TypeError(
                f"{kind} propagator {prop!r} returned "
                f"{getattr(out, 'shape', type(out).__name__)} / {getattr(out, 'dtype', '')}, "
                f"expected a tensor of shape {tuple(y.shape)} and dtype {y.dtype}"
            )
        steps = prop.steps_per_block(t0, t1)
        if steps is None:
            n_seq = self.stats.f_calls - calls_before
            total = n_seq * y.shape[0]
        else:
            n_seq, total = int(steps.max()), int(steps.sum())
        self.stats.depth += n_seq
        self.stats.rows += y.shape[0]
        if kind == "coarse":
            self.stats.coarse_steps += total
        else:
            self.stats.fine_steps += total
        return out

    @staticmethod
    def check_finite(states: Tensor, iteration: int, first_block: int, what: str) -> None:
        """Raise :class:`NonFiniteStateError` if any row of ``states`` is not finite;
        row ``j`` belongs to block ``first_block + j``."""
        ok = torch.isfinite(states.reshape(states.shape[0], -1)).all(dim=1)
        if not bool(ok.all()):
            j = int((~ok).nonzero()[0])
            raise NonFiniteStateError(
                f"non-finite state (NaN or Inf) in block {first_block + j} during the "
                f"{what} of iteration {iteration}"
            )


def _missing_rhs(t: Tensor, y: Tensor) -> Tensor:
    raise TypeError("this ODEProblem has f=None, so only propagators with their own "
                    "dynamics can solve it")
