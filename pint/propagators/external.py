"""Adaptive solvers from torchdiffeq and SciPy, each solving every block in one call.

Every block ``[t0_i, t1_i]`` is mapped to ``s in [0, 1]`` with ``t = t0_i + s (t1_i - t0_i)``,
so all blocks form one ODE ``dY/ds = (t1 - t0) f(t(s), Y)`` that a single solver call
integrates. The step size control then sees all blocks together (the error norm is taken
over the whole batch), so a block's result depends on the blocks it is solved with:
**Parareal with these fine solvers is not exact** (``max_iters=num_blocks`` differs from
:func:`pint.serial` by about the solver tolerance, not round-off). Use
:class:`pint.DormandPrince` (a step size control per block) where exactness matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_number
from .base import RHS, Propagator, check_rhs_finite, expand_as_state


def _check_solver(method: object, rtol: object, atol: object) -> tuple[str, float, float]:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    return method, check_number("rtol", rtol, positive=True), check_number("atol", atol, positive=True)


class TorchDiffEq(Propagator):
    """``torchdiffeq.odeint`` over all blocks at once (method ``dopri5``, ``rk4``, ...).

    Not exact under Parareal: one step size control serves the whole batch, so a block's
    result depends on the other blocks (catalog Lorenz, 20 blocks: ``max_iters=20, tol=0``
    differs from :func:`pint.serial` by ~6e-5 at rtol 1e-7). :class:`pint.DormandPrince`
    controls each block's steps on its own and is exact.

    Extra keyword arguments go to ``odeint`` (for example ``options=dict(step_size=...)``).
    """

    def __init__(
        self, method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9, **odeint_kwargs: Any
    ) -> None:
        self.method, self.rtol, self.atol = _check_solver(method, rtol, atol)
        self.odeint_kwargs = odeint_kwargs

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        from torchdiffeq import odeint

        dt = t1 - t0
        dtb = expand_as_state(dt, y)
        first = [True]  # f at the start is checked: a NaN there leaves odeint no way out

        def g(s: Tensor, Y: Tensor) -> Tensor:
            t = t0 + s.to(t0.dtype) * dt
            k = f(t, Y)
            if first[0]:
                first[0] = False
                check_rhs_finite(self, k, t, t0, t1)
            return dtb * k

        s = torch.tensor([0.0, 1.0], dtype=t0.dtype, device=y.device)
        return odeint(
            g, y, s, method=self.method, rtol=self.rtol, atol=self.atol, **self.odeint_kwargs
        )[-1]

    def __repr__(self) -> str:
        return f"TorchDiffEq(method={self.method!r}, rtol={self.rtol}, atol={self.atol})"


class SciPy(Propagator):
    """``scipy.integrate.solve_ivp`` over all blocks at once (float64 on the CPU).

    Not exact under Parareal: one step size control serves the whole batch, so a block's
    result depends on the other blocks (catalog Lorenz, 20 blocks: ``max_iters=20, tol=0``
    differs from :func:`pint.serial` by ~5e-7 with DOP853 at rtol 1e-6).
    :class:`pint.DormandPrince` controls each block's steps on its own and is exact.

    The state is copied to a float64 (complex128 for complex states) numpy vector for
    SciPy and back to ``y``'s dtype and device afterwards; meant for CPU users and for
    trusted references. Complex states need a method that SciPy integrates in the complex
    domain (``RK23``, ``RK45``, ``DOP853``, ``BDF``); ``Radau`` and ``LSODA`` raise a
    TypeError for them.
    """

    def __init__(self, method: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12,
                 **solve_ivp_kwargs: Any) -> None:
        self.method, self.rtol, self.atol = _check_solver(method, rtol, atol)
        self.solve_ivp_kwargs = solve_ivp_kwargs

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        from scipy.integrate import solve_ivp

        shape = y.shape
        dt = t1 - t0
        dtb = expand_as_state(dt, y)
        wide = torch.complex128 if y.is_complex() else torch.float64
        first = [True]  # f at the start is checked: with a NaN there solve_ivp never returns

        def g(s: float, Y: np.ndarray) -> np.ndarray:
            Yt = torch.from_numpy(Y).to(device=y.device, dtype=y.dtype).reshape(shape)
            t = t0 + s * dt
            k = f(t, Yt)
            if first[0]:
                first[0] = False
                check_rhs_finite(self, k, t, t0, t1)
            return (dtb * k).detach().cpu().to(wide).numpy().ravel()

        y_np = y.detach().cpu().to(wide).numpy().ravel()
        try:
            sol = solve_ivp(g, (0.0, 1.0), y_np, method=self.method, rtol=self.rtol,
                            atol=self.atol, **self.solve_ivp_kwargs)
        except ValueError as err:
            if y.is_complex() and "complex" in str(err):
                raise TypeError(
                    f"y0 is complex ({y.dtype}), which {self!r} cannot integrate: SciPy's "
                    f"{self.method} supports real states only. Use SciPy(method='DOP853'), "
                    "'RK45' or 'BDF', or split y0 into real and imaginary parts"
                ) from err
            raise
        if not sol.success:
            raise RuntimeError(f"scipy solve_ivp ({self.method}) failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1]).to(device=y.device, dtype=y.dtype).reshape(shape)

    def __repr__(self) -> str:
        return f"SciPy(method={self.method!r}, rtol={self.rtol}, atol={self.atol})"
