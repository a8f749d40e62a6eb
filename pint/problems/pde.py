"""One-dimensional PDEs discretised in space (method of lines, second-order central
differences); the ODE systems below are what the propagators integrate.

Their right-hand sides are matrix products and stencils, written for a leading block
dimension (``t [n]``, ``u [n, points]``) and passed with ``batched=True``: one matrix
product for all blocks instead of a :func:`torch.func.vmap` over them."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..problem import ODEProblem
from ..propagators import RK4, SDIRK2, BackwardEuler
from ._case import Case, CoarseLevel, integer, number

F64 = torch.float64


def dirichlet_laplacian(points: int, dx: float) -> Tensor:
    """The ``[points, points]`` second-difference matrix with zero Dirichlet boundaries."""
    L = -2 * torch.eye(points, dtype=F64) + torch.diag(torch.ones(points - 1, dtype=F64), 1)
    L = L + torch.diag(torch.ones(points - 1, dtype=F64), -1)
    return L / dx ** 2


def grid_transfer(points: int, factor: int = 2, *, periodic: bool = False) -> tuple[Tensor, Tensor]:
    """Full weighting ``R`` and linear interpolation ``P`` between a 1-D grid of ``points``
    and the grid ``factor`` times coarser: ``(R [coarse, points], P [points, coarse])``,
    float64, with ``R = P.T / factor`` (rows of ``R`` sum to 1).

    Dirichlet (``periodic=False``): ``points`` interior points of spacing ``dx``, zero
    boundary values not stored; ``points + 1`` must be divisible by ``factor`` and the
    coarse grid has ``(points + 1) // factor - 1`` interior points, coarse point ``m`` on
    fine point ``factor * m`` (both counted from 1; e.g. 31 -> 15, 63 -> 31). Periodic:
    ``points`` divisible by ``factor``, ``points // factor`` coarse points, coarse point
    ``m`` on fine point ``factor * m`` (counted from 0). For ``factor = 2`` ``R`` is the
    ``(1/4, 1/2, 1/4)`` stencil and ``P`` averages the two coarse neighbours of an odd fine
    point."""
    points = integer("points", points, 1)
    factor = integer("factor", factor, 2)
    if periodic:
        if points % factor:
            raise ValueError(f"parameter 'factor' ({factor}) must divide the number of grid "
                             f"points ({points}) of a periodic grid")
        nc = points // factor
    else:
        if (points + 1) % factor:
            raise ValueError(f"parameter 'factor' ({factor}) must divide points + 1 "
                             f"({points + 1}) on a Dirichlet grid of {points} interior points")
        nc = (points + 1) // factor - 1
    if nc < 3:
        raise ValueError(f"parameter 'factor' ({factor}) leaves {nc} coarse points from "
                         f"{points}; at least 3 are needed")
    P = torch.zeros(points, nc, dtype=F64)
    for j in range(points):
        m, s = divmod(j if periodic else j + 1, factor)  # fine point between coarse m, m + 1
        w = s / factor
        for c, weight in ((m, 1 - w), (m + 1, w)):
            if weight == 0:
                continue
            if periodic:
                P[j, c % nc] += weight
            elif 1 <= c <= nc:  # coarse points 0 and nc + 1 are the zero boundary
                P[j, c - 1] += weight
    return P.T / factor, P


def _coarse_level(problem: ODEProblem, rhs_on, points: int, *, periodic: bool) -> CoarseLevel:
    """The coarse problem and transfer maps of a batched 1-D grid problem: ``rhs_on(n)`` is
    the right-hand side on ``n`` points."""

    def level(factor: int) -> tuple[ODEProblem, object, object]:
        R, P = grid_transfer(points, factor, periodic=periodic)
        RT, PT = R.T.contiguous(), P.T.contiguous()

        def restrict(u: Tensor) -> Tensor:  # [n, points] -> [n, coarse]
            return u @ RT

        def interpolate(u: Tensor) -> Tensor:  # [n, coarse] -> [n, points]
            return u @ PT

        coarse = ODEProblem(rhs_on(R.shape[0]), restrict(problem.y0[None])[0], problem.t_span,
                            batched=True)
        return coarse, restrict, interpolate

    return level


def heat(*, diffusivity: float = 1.0, length: float = 1.0, points: int = 31, mode: int = 1,
         amplitude: float = 1.0, t_end: float = 0.5) -> Case:
    """The heat equation ``u_t = diffusivity * u_xx`` on ``0 < x < length``, ``u = 0`` at
    both ends, from ``u(x, 0) = amplitude * sin(mode * pi * x / length)``.

    Args:
        diffusivity: ``alpha`` in length^2 / time (>= 0), default 1.
        length: domain length (> 0), default 1.
        points: interior grid points (>= 3), default 31 (``dx = length / (points + 1)``).
        mode: the sine mode of the initial condition (1 <= mode <= points), default 1.
        amplitude: its amplitude, default 1.
        t_end: final time (> 0), default 0.5.

    :meth:`Case.exact` is the exact solution of the semi-discrete system: the grid sine
    mode is an eigenvector of the difference Laplacian, so ``u_j(t) = amplitude *
    exp(lambda t) sin(mode pi x_j / length)`` with ``lambda = -4 alpha / dx^2 sin^2(mode pi
    dx / (2 length))`` (the PDE's ``-alpha (mode pi / length)^2`` up to ``O(dx^2)``).

    Setup: coarse BackwardEuler(1), one step per block (``h lambda_max`` ~ -100, about 50
    times the explicit Euler stability limit), fine RK4(50), 20 blocks, tol 1e-9.
    """
    alpha = number("diffusivity", diffusivity, nonneg=True)
    length = number("length", length, positive=True)
    points = integer("points", points, 3)
    mode = integer("mode", mode, 1)
    if mode > points:
        raise ValueError(f"parameter 'mode' must be <= points ({points}), got {mode}")
    amp, t_end = number("amplitude", amplitude), number("t_end", t_end, positive=True)
    dx = length / (points + 1)
    x = torch.arange(1, points + 1, dtype=F64) * dx
    shape = amp * torch.sin(mode * math.pi * x / length)
    lam = -4 * alpha / dx ** 2 * math.sin(mode * math.pi * dx / (2 * length)) ** 2

    def rhs_on(n: int):  # the right-hand side on n interior points
        AT = (alpha * dirichlet_laplacian(n, length / (n + 1))).T.contiguous()

        def f(t: Tensor, u: Tensor) -> Tensor:  # u: [n, points], one row per block
            return u @ AT

        return f

    problem = ODEProblem(rhs_on(points), shape.clone(), (0.0, t_end), batched=True)
    return Case(
        "heat", problem, BackwardEuler(1), RK4(50), 20, 1e-9,
        {"diffusivity": alpha, "length": length, "points": points, "mode": mode,
         "amplitude": amp, "t_end": t_end},
        stiff=True, description="1-D heat equation, Dirichlet, method of lines",
        exact_fn=lambda t: math.exp(lam * t) * shape,
        coarse_level_fn=_coarse_level(problem, rhs_on, points, periodic=False),
    )


def burgers(*, viscosity: float = 0.1, points: int = 64, mean: float = 0.5, t_end: float = 1.0) -> Case:
    """Viscous Burgers ``u_t + (u^2 / 2)_x = viscosity * u_xx`` on the periodic interval
    ``[0, 2 pi)`` from ``u(x, 0) = mean + sin(x)`` (steepens into a front near ``t = 1``).

    Args:
        viscosity: ``nu`` in length^2 / time (>= 0), default 0.1.
        points: grid points (>= 3), default 64 (``dx = 2 pi / points``); central
            differences need ``nu`` >~ ``dx`` to stay free of grid oscillations.
        mean: the mean of the initial condition (advection speed), default 0.5.
        t_end: final time (> 0), default 1.

    Setup: coarse RK4(2), fine RK4(50), 10 blocks, tol 1e-8.
    """
    nu = number("viscosity", viscosity, nonneg=True)
    points = integer("points", points, 3)
    mean, t_end = number("mean", mean), number("t_end", t_end, positive=True)
    x = torch.arange(points, dtype=F64) * (2 * math.pi / points)

    def rhs_on(n: int):  # the right-hand side on n grid points
        dx = 2 * math.pi / n

        def f(t: Tensor, u: Tensor) -> Tensor:  # u: [n, points], periodic along the last dim
            up, um = torch.roll(u, -1, dims=-1), torch.roll(u, 1, dims=-1)
            return -(up ** 2 - um ** 2) / (4 * dx) + nu * (up - 2 * u + um) / dx ** 2

        return f

    problem = ODEProblem(rhs_on(points), mean + torch.sin(x), (0.0, t_end), batched=True)
    return Case("burgers", problem, RK4(2), RK4(50), 10, 1e-8,
                {"viscosity": nu, "points": points, "mean": mean, "t_end": t_end},
                description="viscous Burgers, periodic, method of lines",
                coarse_level_fn=_coarse_level(problem, rhs_on, points, periodic=True))


def allen_cahn(*, epsilon: float = 0.03, points: int = 63, t_end: float = 10.0) -> Case:
    """Allen-Cahn ``u_t = epsilon^2 u_xx + u - u^3`` on ``0 < x < 1``, ``u = 0`` at both
    ends, from ``u(x, 0) = 0.5 sin(3 pi x)``: the state separates into ``+-1`` phases
    joined by fronts of width about ``epsilon``.

    Args:
        epsilon: interface width (length, > 0), default 0.03.
        points: interior grid points (>= 3), default 63 (``dx = 1 / (points + 1)``).
        t_end: final time (> 0), default 10.

    Setup: coarse SDIRK2(1) (nonlinear Newton), fine RK4(50), 20 blocks, tol 1e-8.
    """
    eps = number("epsilon", epsilon, positive=True)
    points = integer("points", points, 3)
    t_end = number("t_end", t_end, positive=True)
    dx = 1 / (points + 1)
    x = torch.arange(1, points + 1, dtype=F64) * dx

    def rhs_on(n: int):  # the right-hand side on n interior points
        AT = (eps ** 2 * dirichlet_laplacian(n, 1 / (n + 1))).T.contiguous()

        def f(t: Tensor, u: Tensor) -> Tensor:  # u: [n, points], one row per block
            return u @ AT + u - u ** 3

        return f

    problem = ODEProblem(rhs_on(points), 0.5 * torch.sin(3 * math.pi * x), (0.0, t_end),
                         batched=True)
    return Case("allen_cahn", problem,
                SDIRK2(1), RK4(50), 20, 1e-8, {"epsilon": eps, "points": points, "t_end": t_end},
                stiff=True, description="1-D Allen-Cahn, Dirichlet, method of lines",
                coarse_level_fn=_coarse_level(problem, rhs_on, points, periodic=False))
