"""Stopping rules: when has Parareal converged?

A rule is called after every iteration with the boundaries that may have changed,
``new`` and ``old`` (``[m, *state]``), and their boundary indices ``index`` (``[m]``,
int64); it returns the change to record in ``history`` and whether to stop.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class StoppingRule(Protocol):
    """What :func:`pint.parareal` accepts as ``stopping``: any callable
    ``rule(new, old, index) -> (change, stop)`` with ``new``, ``old`` the boundaries that
    may have changed (``[m, *state]``, in the state's units), ``index`` their boundary
    indices (``[m]``, int64); ``change`` (a float) goes into ``Result.history``."""

    def __call__(self, new: Tensor, old: Tensor, index: Tensor) -> tuple[float, bool]: ...


def _rowmax(x: Tensor) -> Tensor:
    return x.abs().reshape(x.shape[0], -1).amax(dim=1)


class MaxAbsChange:
    """Stop when every boundary moved by at most ``tol + rtol * max|U_i|`` (max-abs norm).
    The default rule of :func:`pint.parareal`."""

    def __init__(self, tol: float, rtol: float = 0.0) -> None:
        self.tol, self.rtol = tol, rtol

    def __call__(self, new: Tensor, old: Tensor, index: Tensor) -> tuple[float, bool]:
        diff = _rowmax(new - old)
        bound = self.tol + self.rtol * _rowmax(new)
        return float(diff.max()), bool((diff <= bound).all())


class FinalStateChange:
    """Stop when the state at the end time moved by at most ``tol`` (max-abs): the rule of
    the SRDS paper, which only needs the final sample to settle."""

    def __init__(self, tol: float) -> None:
        self.tol = tol

    def __call__(self, new: Tensor, old: Tensor, index: Tensor) -> tuple[float, bool]:
        change = float(_rowmax(new[-1:] - old[-1:])[0])
        return change, change <= self.tol
