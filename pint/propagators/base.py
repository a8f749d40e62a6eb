"""The propagator contract: advance a batch of block states over per-block intervals."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_int

RHS = Callable[[Tensor, Tensor], Tensor]


class NonFiniteStateError(FloatingPointError):
    """A state became NaN or Inf during a solve (the message names block and iteration),
    or ``f`` returned NaN or Inf where a propagator cannot step around it (the message
    names ``f``, the row of the batch, its block and the time)."""


class Propagator(ABC):
    """Advances ``n`` block states at once.

    Subclasses implement :meth:`__call__`. ``f`` is the batched right-hand side
    ``f(t [n], y [n, *state]) -> [n, *state]``; ``y`` has shape ``[n, *state]`` and
    ``t0``, ``t1`` (shape ``[n]``) are each block's start and end time, in float64 (also
    for float32 states, so that times far from 0 keep their step size; ``f`` accepts
    times in any real dtype). Cast time differences to ``y``'s dtype before they touch
    the state (:func:`expand_as_state`). The return value is the state at ``t1``, same
    shape, dtype and device as ``y``. All rows are solved together: one batched ``f``
    call serves every block.

    Example, explicit midpoint with a fixed number of steps::

        class Midpoint(pint.FixedStepPropagator):
            def step(self, f, t, y, h):
                hb = pint.propagators.expand_as_state(h, y)
                k1 = f(t, y)
                return y + hb * f(t + h / 2, y + hb / 2 * k1)
    """

    #: how many ``f`` evaluations one step makes (``None`` if only known by running)
    evals_per_step: int | None = None

    @abstractmethod
    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        """Return the states at ``t1`` (``[n, *state]``) given ``y`` at ``t0``."""

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor | None:
        """Steps each block takes (``[n]`` int64), or ``None`` if only known by running
        (adaptive solvers; pint then counts their ``f`` calls as steps)."""
        return None


class StepPropagator(Propagator):
    """A one-step method applied a whole number of times per block.

    Subclasses implement :meth:`step` (one step of size ``h`` from ``t``, both ``[n]``)
    and :meth:`steps_per_block`. Blocks may take different numbers of steps: block ``i``
    takes ``n_i`` equal steps of size ``(t1_i - t0_i) / n_i``, and each batched step only
    includes the blocks that still have steps left. Because every step is one batched
    call, the pipelined schedule can put steps of different blocks and iterations into one
    call (see :meth:`batches_with`).
    """

    @abstractmethod
    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        """One step from ``(t, y)`` of size ``h``; ``t``, ``h``: ``[n]``, ``y``: ``[n, *state]``."""

    @abstractmethod
    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor:
        """Steps each block takes, ``[n]`` int64 (on any device)."""

    def batches_with(self, other: Propagator) -> bool:
        """Whether ``self.step`` may also advance ``other``'s rows in one batched call."""
        return type(self) is type(other)

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        steps = self.steps_per_block(t0, t1)
        n = steps.cpu()  # the loop is planned on the host (no sync for host-made counts)
        h = (t1 - t0) / steps.to(t0.device, t0.dtype, non_blocking=True)
        n_max = int(n.max())
        if bool((n == n_max).all()):
            for j in range(n_max):
                y = self.step(f, t0 + j * h, y, h)
            return y
        y = y.clone()
        for j in range(n_max):
            rows = (n > j).nonzero().squeeze(1).to(y.device, non_blocking=True)
            y[rows] = self.step(f, t0[rows] + j * h[rows], y[rows], h[rows])
        return y


class FixedStepPropagator(StepPropagator):
    """A one-step method applied ``steps`` times with equal step size on every block.

    Subclasses implement :meth:`step`, one step of size ``h`` (``[n]``) from ``t``
    (``[n]``)."""

    def __init__(self, steps: int = 1) -> None:
        self.steps = check_int("steps", steps, 1)

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor:
        return torch.full(t0.shape, self.steps, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps})"


def expand_as_state(h: Tensor, y: Tensor) -> Tensor:
    """View a per-block ``[n]`` tensor so that it broadcasts against ``y [n, *state]``,
    in ``y``'s dtype."""
    return h.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))


def check_rhs_finite(prop: Propagator, k: Tensor, t: Tensor, t0: Tensor, t1: Tensor) -> None:
    """Raise :class:`NonFiniteStateError` naming ``f`` if a row of ``k`` (``f``'s output,
    ``[n, *state]``, at times ``t [n]``) is not finite; ``t0``, ``t1`` name the row's
    interval (block)."""
    bad = ~torch.isfinite(k.reshape(k.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise NonFiniteStateError(
            f"{prop!r}: f returned NaN or Inf at t={float(t[i]):.6g} for row {i} of the batch "
            f"(block [{float(t0[i]):.6g}, {float(t1[i]):.6g}])")
