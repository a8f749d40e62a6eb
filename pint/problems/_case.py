"""The :class:`Case` record and the helpers that check problem parameters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..problem import ODEProblem
from ..propagators import Coarsened, Propagator

#: ``factor -> (coarse ODEProblem, restrict, interpolate)`` of a problem on a spatial grid
CoarseLevel = Callable[[int], tuple[ODEProblem, Callable[[Tensor], Tensor],
                                   Callable[[Tensor], Tensor]]]


@dataclass
class Case:
    """A classic test problem with a recommended Parareal setup.

    Attributes:
        name: the registry name (see :func:`pint.problems.names`).
        problem: the :class:`~pint.ODEProblem` (float64 state).
        coarse, fine: recommended coarse and fine propagators.
        num_blocks: recommended number of blocks.
        tol: recommended Parareal tolerance (max-abs boundary change).
        params: the parameters the case was built with (defaults filled in).
        stiff: whether :meth:`reference` uses scipy's Radau instead of DOP853.
        description: one line on the problem.

    With the default parameters, ``pint.parareal(case.problem, case.coarse, case.fine,
    case.num_blocks, case.tol)`` converges in fewer than ``num_blocks`` iterations;
    other parameters may need another setup.
    """

    name: str
    problem: ODEProblem
    coarse: Propagator
    fine: Propagator
    num_blocks: int
    tol: float
    params: dict[str, Any]
    stiff: bool = False
    description: str = ""
    exact_fn: Callable[[float], Tensor] | None = field(default=None, repr=False)
    invariants_fn: Callable[[Tensor], dict[str, Tensor]] | None = field(default=None, repr=False)
    coarse_level_fn: CoarseLevel | None = field(default=None, repr=False)
    _reference: Tensor | None = field(default=None, repr=False)

    @property
    def has_exact(self) -> bool:
        """Whether :meth:`exact` knows a closed-form solution."""
        return self.exact_fn is not None

    def exact(self, t: float) -> Tensor:
        """The exact solution at time ``t``; ``NotImplementedError`` if none is known."""
        if self.exact_fn is None:
            raise NotImplementedError(f"problem {self.name!r} has no exact solution; use reference()")
        return self.exact_fn(float(t))

    def invariants(self, y: Tensor) -> dict[str, Tensor]:
        """Conserved quantities of a state ``y`` (or ``[n, *state]``), where the problem has them."""
        if self.invariants_fn is None:
            raise NotImplementedError(f"problem {self.name!r} has no invariants")
        return self.invariants_fn(y)

    @property
    def has_coarse_level(self) -> bool:
        """Whether :meth:`coarsened` can put the coarse level on a coarser grid (the PDEs)."""
        return self.coarse_level_fn is not None

    def coarse_level(self, factor: int = 2) -> tuple[ODEProblem, Callable[[Tensor], Tensor],
                                                     Callable[[Tensor], Tensor]]:
        """The problem on the grid ``factor`` times coarser and the maps to and from it:
        ``(coarse_problem, restrict, interpolate)`` as :class:`pint.Coarsened` takes them
        (full weighting and linear interpolation, see
        :func:`pint.problems.pde.grid_transfer`; the coarse problem's ``y0`` is the
        restricted initial state). ``NotImplementedError`` for problems without a grid."""
        if self.coarse_level_fn is None:
            raise NotImplementedError(
                f"problem {self.name!r} has no spatial grid to coarsen; the PDEs have one "
                "(heat, burgers, allen_cahn)")
        return self.coarse_level_fn(integer("factor", factor, 2))

    def coarsened(self, factor: int = 2, coarse: Propagator | None = None) -> Case:
        """This case with its coarse level on a grid ``factor`` times coarser.

        The returned case has the same problem, fine propagator, blocks, tolerance and
        reference; its ``coarse`` is a :class:`pint.Coarsened` running ``coarse`` (default:
        this case's coarse propagator) on the coarse grid of :meth:`coarse_level`. Heat
        on 31 points with ``factor=2``: coarse level on 15 points.

        Raises:
            NotImplementedError: the problem has no spatial grid (the ODE systems).
            ValueError: ``factor`` does not fit the grid (the message says why).
        """
        problem, restrict, interpolate = self.coarse_level(factor)
        G = Coarsened(self.coarse if coarse is None else coarse, problem,
                      restrict=restrict, interpolate=interpolate)
        return dataclasses.replace(
            self, coarse=G,
            description=f"{self.description}; coarse level on {problem.y0.shape[-1]} points")

    def reference(self) -> Tensor:
        """The state at ``t_end`` from scipy's ``solve_ivp`` (DOP853, or Radau with the
        exact Jacobian for stiff problems) at ``rtol = atol = 1e-12``; computed once and
        cached on the case."""
        if self._reference is None:
            self._reference = scipy_reference(self.problem, self.stiff)
        return self._reference.clone()


def scipy_reference(problem: ODEProblem, stiff: bool, rtol: float = 1e-12, atol: float = 1e-12) -> Tensor:
    from scipy.integrate import solve_ivp

    assert problem.f is not None
    shape, dtype = problem.y0.shape, problem.y0.dtype
    if problem.batched:  # one state as a batch of one
        fb = problem.f

        def f(t: Tensor, y: Tensor) -> Tensor:
            return fb(t.reshape(1), y.unsqueeze(0))[0]
    else:
        f = problem.f

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y).to(dtype).reshape(shape))
        return out.reshape(-1).double().numpy()

    jac_t = torch.func.jacfwd(lambda t, y: f(t, y.reshape(shape)).reshape(-1), argnums=1)

    def jac(t: float, y: np.ndarray) -> np.ndarray:
        return jac_t(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y).to(dtype)).numpy()

    kwargs: dict[str, Any] = {"method": "Radau", "jac": jac} if stiff else {"method": "DOP853"}
    sol = solve_ivp(rhs, problem.t_span, problem.y0.reshape(-1).double().numpy(),
                    rtol=rtol, atol=atol, **kwargs)
    if not sol.success:
        raise RuntimeError(f"scipy reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).to(dtype).reshape(shape)


# ------------------------------------------------------------------- parameter checks


def number(name: str, value: object, *, positive: bool = False, nonneg: bool = False) -> float:
    """A finite real number (``positive``: > 0, ``nonneg``: >= 0), else a ValueError/TypeError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"parameter {name!r} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"parameter {name!r} must be finite, got {value}")
    if positive and v <= 0:
        raise ValueError(f"parameter {name!r} must be > 0, got {value}")
    if nonneg and v < 0:
        raise ValueError(f"parameter {name!r} must be >= 0, got {value}")
    return v


def integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"parameter {name!r} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"parameter {name!r} must be >= {minimum}, got {value}")
    return int(value)


def vector(name: str, value: object, size: int) -> Tensor:
    try:
        v = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"parameter {name!r} must be {size} numbers, got {value!r}") from None
    if v.numel() != size:
        raise ValueError(f"parameter {name!r} must have {size} entries, got {v.numel()}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"parameter {name!r} must be finite, got {value!r}")
    return v.clone()
