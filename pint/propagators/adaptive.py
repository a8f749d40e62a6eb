"""Adaptive Runge-Kutta with a step size control of its own for every block (row).

:class:`TorchDiffEq` and :class:`SciPy` integrate all blocks as one ODE, so one step size
and one error norm serve the whole batch and a block's result depends on the blocks it is
solved with. :class:`DormandPrince` keeps a step size, an error estimate and an accept /
reject decision per row, as torchode does per sample: every row takes exactly the steps it
would take alone, so a batched call returns, row by row, what one call per block returns
(given an ``f`` that computes each row independently) and Parareal with adaptive fine
solves reproduces :func:`pint.serial` after ``num_blocks`` iterations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int, check_number
from .base import RHS, NonFiniteStateError, Propagator, check_rhs_finite, expand_as_state

# Dormand-Prince 5(4) (Hairer, Norsett, Wanner; the method of dopri5 and RK45), FSAL
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# 5th-order weights minus 4th-order weights (the local error estimate)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


class StepLimitError(RuntimeError):
    """An adaptive solve did not reach the end of a block within ``max_steps`` steps, or its
    step size underflowed; the message names the row (block of the call) and the time."""


class DormandPrince(Propagator):
    """Dormand-Prince 5(4) with per-block step size control: exact under Parareal.

    Every row (block) of a batched call keeps its own step size, error estimate and accept
    / reject decision; rows that finished drop out of the later ``f`` calls. A row's result
    is therefore the one it gets when solved alone (bit for bit when ``f`` computes rows
    independently, as elementwise and vmapped right-hand sides do), so
    ``pint.parareal(..., max_iters=num_blocks, tol=0)`` with it equals :func:`pint.serial`
    with it to round-off, which the shared-control :class:`TorchDiffEq` and :class:`SciPy`
    do not give.

    Args:
        rtol, atol: a step is accepted when the RMS over the row's entries of
            ``err / (atol + rtol * max(|y|, |y_new|))`` is at most 1.
        max_steps: accepted plus rejected steps allowed per block; more raise
            :class:`StepLimitError`.
        first_step: the initial step size (time units); default chosen per row from
            ``f`` at the start (Hairer's algorithm, one extra ``f`` call).
        safety, min_factor, max_factor: the step size controller
            ``h_new = h * clamp(safety * r^(-1/5), min_factor, max_factor)`` (no increase
            right after a rejection).

    A trial step whose stages are not finite is rejected like one with a large error (a
    step too large for ``f``'s domain or range). ``f`` not finite at the start of a block,
    or still not finite once the step size has shrunk to round-off, raises
    :class:`pint.NonFiniteStateError` naming ``f``, the row (block) and the time.

    ``stats.depth`` counts its sequential ``f`` calls (steps are known only by running).
    """

    evals_per_step = 6

    def __init__(self, rtol: float = 1e-7, atol: float = 1e-9, max_steps: int = 100_000,
                 first_step: float | None = None, safety: float = 0.9, min_factor: float = 0.2,
                 max_factor: float = 10.0) -> None:
        self.rtol = check_number("rtol", rtol, positive=True)
        self.atol = check_number("atol", atol, positive=True)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.first_step = None if first_step is None else check_number("first_step", first_step,
                                                                       positive=True)
        self.safety = check_number("safety", safety, positive=True)
        self.min_factor = check_number("min_factor", min_factor, positive=True)
        self.max_factor = check_number("max_factor", max_factor, positive=True)
        if not self.min_factor <= 1.0 <= self.max_factor:
            raise ValueError(f"min_factor must be <= 1 <= max_factor, got {min_factor}, {max_factor}")

    def _ratio(self, err: Tensor, y: Tensor, y_new: Tensor) -> Tensor:
        """Per-row RMS of the scaled error, float64 ``[m]``."""
        m = y.shape[0]
        scale = self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs())
        r = (err.abs() / scale).reshape(m, -1)
        return r.double().pow(2).mean(dim=1).sqrt()

    def _initial_step(self, f: RHS, t: Tensor, y: Tensor, f0: Tensor, span: Tensor,
                      direction: Tensor) -> Tensor:
        """Hairer's starting step size per row (``span``: ``|t1 - t0|``), float64 ``[n]``."""
        n = y.shape[0]

        def rms(x: Tensor) -> Tensor:
            return x.abs().reshape(n, -1).double().pow(2).mean(dim=1).sqrt()

        scale = self.atol + self.rtol * y.abs()
        d0, d1 = rms(y / scale), rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        h0 = torch.minimum(h0, span)
        y1 = y + expand_as_state(h0 * direction, y) * f0
        f1 = f(t + h0 * direction, y1)
        d2 = rms((f1 - f0) / scale) / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / dmax.clamp(min=1e-300)) ** 0.2)
        return torch.minimum(torch.minimum(100 * h0, h1), span)

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        n = y.shape[0]
        t0, t1 = t0.to(torch.float64), t1.to(torch.float64)
        direction = torch.sign(t1 - t0)
        span = (t1 - t0).abs()
        Y = y.clone()
        t = t0.clone()
        K1 = f(t0, y)
        check_rhs_finite(self, K1, t0, t0, t1)
        # step sizes are kept as magnitudes; the signed step is direction * h
        if self.first_step is None:
            h = self._initial_step(f, t0, y, K1, span, direction)
            self._check_first_step(h, K1, t0, t1, span)
        else:
            h = torch.minimum(torch.full_like(span, self.first_step), span)
        K1 = K1.clone()  # written row by row below; the starting step read the original
        steps = torch.zeros(n, dtype=torch.int64, device=y.device)
        rejected = torch.zeros(n, dtype=torch.bool, device=y.device)
        not_finite = torch.zeros(n, dtype=torch.bool, device=y.device)  # last trial step's stages
        active = span > 0
        while bool(active.any()):
            idx = active.nonzero().squeeze(1)
            ya, k1, ta, Ta = Y[idx], K1[idx], t[idx], t1[idx]
            da = direction[idx]
            left = (Ta - ta).abs()
            ha = torch.minimum(h[idx], left)
            last = ha >= left
            hs = ha * da  # signed step
            hb = expand_as_state(hs, ya)
            ks = [k1]
            for i in range(1, 7):
                acc = sum((a * k for a, k in zip(_A[i], ks, strict=False) if a != 0.0),
                          torch.zeros_like(ya))
                yi = ya + hb * acc
                if i == 6:
                    y_new = yi  # the 5th-order solution (row 7 of A are its weights)
                ks.append(f(ta + _C[i] * hs, yi))
            err = hb * sum((e * k for e, k in zip(_E, ks, strict=True) if e != 0.0),
                           torch.zeros_like(ya))
            ratio = self._ratio(err, ya, y_new)
            bad_value = ~(torch.isfinite(ratio)
                          & torch.isfinite(y_new.reshape(len(idx), -1)).all(dim=1))
            ok = (ratio <= 1.0) & ~bad_value
            factor = torch.where(
                ratio > 0,
                self.safety * ratio.clamp(min=1e-300) ** -0.2,
                torch.full_like(ratio, self.max_factor),
            ).clamp(self.min_factor, self.max_factor)
            factor = torch.where(ok & rejected[idx], factor.clamp(max=1.0), factor)
            factor = torch.where(bad_value, torch.full_like(factor, self.min_factor), factor)
            steps[idx] += 1
            acc_idx = idx[ok]
            Y[acc_idx] = y_new[ok]
            K1[acc_idx] = ks[6][ok]
            t[acc_idx] = torch.where(last[ok], Ta[ok], ta[ok] + hs[ok])
            h[idx] = ha * factor
            rejected[idx] = ~ok
            not_finite[idx] = bad_value
            finished = torch.zeros_like(active)
            finished[acc_idx] = last[ok]
            active = active & ~finished
            over = active & ((steps >= self.max_steps) | ~(h > _tiny(t)))  # NaN h too
            if bool(over.any()):
                i = int(over.nonzero()[0])
                if bool(not_finite[i]) and not float(h[i]) > float(_tiny(t[i])):
                    raise NonFiniteStateError(
                        f"{self!r}: f returned NaN or Inf in the trial steps from t="
                        f"{float(t[i]):.6g} for row {i} of the batch (block [{float(t0[i]):.6g}, "
                        f"{float(t1[i]):.6g}]), even at step size {float(h[i]):.3g}: f is not "
                        f"finite just past t={float(t[i]):.6g} (or the solution blows up there)")
                raise StepLimitError(
                    f"{self!r}: row {i} of the batch (block [{float(t0[i]):.6g}, "
                    f"{float(t1[i]):.6g}]) stopped at t={float(t[i]):.6g} after "
                    f"{int(steps[i])} steps with step size {float(h[i]):.3g}; raise max_steps "
                    "or rtol/atol, or use an implicit propagator if the problem is stiff")
        return Y

    def _check_first_step(self, h: Tensor, f0: Tensor, t0: Tensor, t1: Tensor,
                          span: Tensor) -> None:
        """:class:`NonFiniteStateError` if the starting step size of a row with a block to
        cross is NaN or Inf (``f`` so large that its scaled norm overflows)."""
        bad = ~torch.isfinite(h) & (span > 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            big = float(f0[i].abs().max())
            raise NonFiniteStateError(
                f"{self!r}: the starting step size of row {i} of the batch (block "
                f"[{float(t0[i]):.6g}, {float(t1[i]):.6g}]) is {float(h[i])}: f's values at "
                f"t={float(t0[i]):.6g} (largest |f| {big:.3g}) overflow the error norm. "
                "Rescale the problem or pass first_step")

    def __repr__(self) -> str:
        return f"DormandPrince(rtol={self.rtol:g}, atol={self.atol:g})"


def _tiny(t: Tensor) -> Tensor:
    """The smallest step that still moves ``t`` (float64 spacing, times 4)."""
    return 4 * torch.finfo(torch.float64).eps * t.abs().clamp(min=1.0)


__all__ = ["DormandPrince", "StepLimitError"]
