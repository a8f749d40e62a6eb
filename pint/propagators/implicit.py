"""Implicit one-step methods for stiff problems, solved with a batched Newton iteration.

Every implicit stage has the form ``Z = b + a * f(t_s, Z)`` for one row per block; all rows
are solved together: the per-row Jacobians ``df/dy`` come from
``torch.func.vmap(torch.func.jacfwd(...))`` on the flattened state and the Newton systems
``(I - a J) dZ = -F(Z)`` are solved with one batched :func:`torch.linalg.solve`. For a
linear ``f`` the first Newton step is exact (the second iteration only confirms it).
Complex states are solved in real form (real and imaginary parts as separate unknowns).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int, check_number
from .base import RHS, FixedStepPropagator, NonFiniteStateError, expand_as_state


class NewtonConvergenceError(RuntimeError):
    """The Newton iteration of an implicit stage did not converge.

    Attributes ``row`` (row of the batch, i.e. which block of this call), ``t`` (time of
    the step start) and ``h`` (step size) say where it happened."""

    def __init__(self, message: str, row: int, t: float, h: float) -> None:
        super().__init__(message)
        self.row, self.t, self.h = row, t, h


def _check_newton(newton_tol: object, max_newton: object) -> tuple[float, int]:
    return check_number("newton_tol", newton_tol, positive=True), check_int("max_newton", max_newton, 1)


def row_jacobians(f: RHS, t: Tensor, y: Tensor) -> Tensor:
    """Per-row Jacobians ``d f(t_i, y_i) / d y_i`` of the batched ``f``: ``[n, d, d]`` with
    ``d = y[0].numel()``; for complex states, of the real form (:func:`as_real`),
    ``[n, 2d, 2d]``, which also covers an ``f`` that is not holomorphic."""
    n, shape = y.shape[0], y.shape[1:]
    if y.is_complex():
        def one_row(ti: Tensor, xi: Tensor) -> Tensor:
            z = torch.complex(xi[0::2], xi[1::2]).reshape(1, *shape)
            return as_real(f(ti.unsqueeze(0), z))[0]

        return torch.func.vmap(torch.func.jacfwd(one_row, argnums=1))(t, as_real(y))

    def one_row(ti: Tensor, yi: Tensor) -> Tensor:
        return f(ti.unsqueeze(0), yi.reshape(1, *shape)).reshape(-1)

    return torch.func.vmap(torch.func.jacfwd(one_row, argnums=1))(t, y.reshape(n, -1))


def as_real(z: Tensor) -> Tensor:
    """``[n, *state]`` as ``[n, d]`` real rows, complex entries as (real, imag) pairs."""
    n = z.shape[0]
    if not z.is_complex():
        return z.reshape(n, -1)
    return torch.stack([z.real, z.imag], dim=-1).reshape(n, -1)


def from_real(x: Tensor, like: Tensor) -> Tensor:
    """The inverse of :func:`as_real`, shaped and typed like ``like``."""
    if not like.is_complex():
        return x.reshape(like.shape)
    return torch.complex(x[:, 0::2], x[:, 1::2]).reshape(like.shape)


class ImplicitPropagator(FixedStepPropagator):
    """Base class of the implicit fixed-step methods: Newton options and the stage solver.

    Args:
        steps: equal steps per block (>= 1).
        newton_tol: a row's Newton iteration stops once the max-abs residual of the stage
            equation is at most ``newton_tol * (1 + max|b|)`` (``b``: the explicit part of
            the stage, i.e. the state it starts from); ``newton_tol`` below the round-off of
            the state's dtype counts as ``16 * eps`` of that dtype (``1.9e-6`` for float32),
            which is the most Newton can reach.
        max_newton: Newton iterations (Jacobian evaluations) allowed per stage; not
            converging within them raises :class:`NewtonConvergenceError`.
    """

    def __init__(self, steps: int = 1, newton_tol: float = 1e-10, max_newton: int = 20) -> None:
        super().__init__(steps)
        self.newton_tol, self.max_newton = _check_newton(newton_tol, max_newton)

    def solve_stage(self, f: RHS, ts: Tensor, b: Tensor, a: Tensor, guess: Tensor,
                    t: Tensor, h: Tensor) -> Tensor:
        """Solve ``Z = b + a * f(ts, Z)`` row by row (``a``, ``ts``: ``[n]``), starting
        from ``guess``; ``t``, ``h`` (the step) only serve the error message."""
        n = b.shape[0]
        ab = expand_as_state(a, b)
        scale = 1.0 + b.reshape(n, -1).abs().amax(dim=1)
        real = b.real.dtype if b.is_complex() else b.dtype
        tol = max(self.newton_tol, 16 * torch.finfo(real).eps)
        d = b[0].numel() * (2 if b.is_complex() else 1)
        eye = torch.eye(d, dtype=real, device=b.device)
        Z = guess
        for it in range(self.max_newton):
            F = Z - b - ab * f(ts, Z)
            res = F.reshape(n, -1).abs().amax(dim=1)
            if bool((res <= tol * scale).all()):
                return Z
            if it == 0:  # f not finite at the (finite) guess: no Newton step can help
                self._check_finite_start(res, ts, t, h)
            J = row_jacobians(f, ts, Z)  # complex states: in real form (a is real)
            M = eye - a.to(real).view(-1, 1, 1) * J
            dZ = torch.linalg.solve(M, as_real(F).unsqueeze(-1))
            Z = Z - from_real(dZ.squeeze(-1), Z)
        F = Z - b - ab * f(ts, Z)
        res = F.reshape(n, -1).abs().amax(dim=1)
        bad = ~(res <= tol * scale)
        if not bool(bad.any()):
            return Z
        i = int(bad.nonzero()[0])
        raise NewtonConvergenceError(
            f"{type(self).__name__}: Newton iteration did not converge in {self.max_newton} "
            f"iterations for row {i} of the batch (the step from t={float(t[i]):.6g} with "
            f"h={float(h[i]):.3g}); residual {float(res[i]):.3e} > newton_tol * scale = "
            f"{tol * float(scale[i]):.3e}. Use more steps, a larger max_newton "
            "or a larger newton_tol",
            i, float(t[i]), float(h[i]),
        )

    def _check_finite_start(self, res: Tensor, ts: Tensor, t: Tensor, h: Tensor) -> None:
        bad = ~torch.isfinite(res)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise NonFiniteStateError(
                f"{self!r}: f returned NaN or Inf at t={float(ts[i]):.6g} for row {i} of the "
                f"batch (a stage of the step from t={float(t[i]):.6g} with h={float(h[i]):.3g})")

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        try:
            return super().__call__(f, y, t0, t1)
        except NewtonConvergenceError as err:
            i = err.row
            a, b = float(t0[i]), float(t1[i])
            j = round((err.t - a) / err.h) + 1 if err.h != 0 else 1
            raise NewtonConvergenceError(
                f"{err} [block [{a:.6g}, {b:.6g}] (row {i} of this call), step {j} of "
                f"{self.steps}]", i, err.t, err.h,
            ) from None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, newton_tol={self.newton_tol:g}, "
                f"max_newton={self.max_newton})")


class BackwardEuler(ImplicitPropagator):
    """Backward (implicit) Euler ``y1 = y + h f(t + h, y1)``: order 1, L-stable.

    Stable for any step on stiff decaying problems (the factor ``1 / (1 - h lambda)`` of
    ``y' = lambda y`` tends to 0), so it makes a cheap coarse propagator far beyond the
    explicit stability limit. See :class:`ImplicitPropagator` for the arguments."""

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        return self.solve_stage(f, t + h, y, h, y, t, h)


class ImplicitMidpoint(ImplicitPropagator):
    """The implicit midpoint rule ``y1 = y + h f(t + h/2, (y + y1)/2)``: order 2, A-stable,
    symplectic (no energy drift on Hamiltonian problems).

    Solved as the stage ``Z = y + h/2 f(t + h/2, Z)``, then ``y1 = 2 Z - y``. Its factor
    ``(1 + z/2) / (1 - z/2)`` tends to -1 for very stiff modes (bounded, slowly damped);
    prefer :class:`SDIRK2` or :class:`BackwardEuler` where those must be damped."""

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        Z = self.solve_stage(f, t + h / 2, y, h / 2, y, t, h)
        return 2 * Z - y


GAMMA = 1 - 1 / math.sqrt(2)


class SDIRK2(ImplicitPropagator):
    """Alexander's two-stage SDIRK method, ``gamma = 1 - 1/sqrt(2)``: order 2, L-stable.

    Stages ``Z1 = y + gamma h f(t + gamma h, Z1)`` and
    ``y1 = y + (1 - gamma) h k1 + gamma h f(t + h, y1)`` with ``k1 = f(t + gamma h, Z1)``."""

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        g = GAMMA
        Z1 = self.solve_stage(f, t + g * h, y, g * h, y, t, h)
        hb = expand_as_state(h, y)
        k1 = (Z1 - y) / (g * hb)
        b = y + (1 - g) * hb * k1
        return self.solve_stage(f, t + h, b, g * h, Z1, t, h)
