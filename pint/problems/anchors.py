"""Published setups of learned-correction Parareal, to compare against (issue 34).

Each builder returns an :class:`Anchor`: a :class:`~pint.problems.Case` with the paper's
equations, interval, number of slices, coarse and fine propagators and tolerance, and the
iteration counts its authors' code reports. The stopping rule of those codes (per-slice
max-abs change of successive iterates, absolute, on the state as integrated) is pint's
``MaxAbsChange(tol)``; where the paper integrates a normalised state, so does the case.

* :func:`burgers_randnet`: viscous Burgers, 128 points, 128 slices (RandNet-Parareal,
  Gattiglio, Grigoryeva and Tamborrino, NeurIPS 2024; the ``Burgers_sequential`` notebook
  of their code): Parareal 90 iterations, RandNet-Parareal 10, nnGParareal 14-16.
* :func:`fhn_gparareal`: the FitzHugh-Nagumo ODE, 40 slices (GParareal, Pentland et al.,
  Statistics and Computing 2023; ``FHN_Results.m``): Parareal 11, GParareal 5.
* :func:`lorenz_nngparareal`: normalised Lorenz, 50 slices (nnGParareal, Gattiglio et al.
  2024, Table 2): Parareal 15, GParareal 11, nnGParareal 9.
* :func:`diffusion_reaction_randnet`: 2-D diffusion-reaction, 19 x 19 cells, 722 states, 64
  slices (RandNet-Parareal): Parareal 53, RandNet-Parareal 12, nnGParareal 16; with a
  cheaper fine solver than theirs (so the classic count is pint's own).

Their fine solvers are 8th-order Runge-Kutta (Burgers, Lorenz: the anchors' RK8 of
Cooper-Verner) or RK4; pint uses RK4 with the same step counts (a fine solution that
differs by round-off-level amounts; Parareal's iterations depend on ``F - G``, and the
classic counts come out within one of the published ones: 91, 11, 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..problem import ODEProblem
from ..propagators import RK4, Euler, FixedStepPropagator
from ..propagators.base import expand_as_state
from ._case import Case, integer, number

__all__ = ["Anchor", "ANCHORS", "burgers_randnet", "diffusion_reaction_randnet", "fhn_gparareal",
           "lorenz_nngparareal"]


@dataclass(frozen=True)
class Anchor:
    """A published setup: the case and what its authors' code reports.

    Attributes:
        case: the problem with the published propagators, slices and tolerance.
        published: iterations reported per method (``"parareal"``, ``"gparareal"``,
            ``"nngparareal"``, ``"randnet"``).
        source: the paper and the file of its code the numbers come from.
    """

    case: Case
    published: dict[str, int | tuple[int, int]] = field(default_factory=dict)
    source: str = ""


class Midpoint(FixedStepPropagator):
    """The explicit midpoint rule (RK2 with weights ``(0, 1)``), GParareal's coarse solver."""

    def step(self, f, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        hh = expand_as_state(h, y)
        return y + hh * f(t + h / 2, y + hh / 2 * f(t, y))


def burgers_randnet(*, points: int = 128, viscosity: float = 0.01, t_end: float = 5.9) -> Anchor:
    """Viscous Burgers ``u_t = nu u_xx - u u_x`` on ``points`` equispaced points of
    ``[-1, 1]`` (both ends kept, periodic wrap), second-order central differences,
    ``u(0) = (cos(4.5 pi x) + 1) / 2``, integrated as ``v = 2 u - 1`` (the paper's
    normalisation to ``[-1, 1]``). 128 slices of ``[0, t_end]``, coarse Euler(4), fine
    RK4(200), tol 5e-7 on ``v``."""
    n = integer("points", points, 4)
    nu, t_end = number("viscosity", viscosity, positive=True), number("t_end", t_end, positive=True)
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    dx = 2.0 / (n - 1)

    def f(t: Tensor, v: Tensor) -> Tensor:  # v: [..., points]
        u = (v + 1) / 2
        up, um = u.roll(-1, -1), u.roll(1, -1)
        return 2 * (nu * (up - 2 * u + um) / dx**2 - u * (up - um) / (2 * dx))

    v0 = torch.cos(4.5 * math.pi * x)  # 2 u0 - 1
    case = Case("burgers_randnet", ODEProblem(f, v0, (0.0, t_end), batched=True), Euler(4),
                RK4(200), 128, 5e-7, {"points": n, "viscosity": nu, "t_end": t_end},
                description="viscous Burgers, RandNet-Parareal's setup")
    return Anchor(case, {"parareal": 90, "randnet": 10, "nngparareal": (14, 16)},
                  "RandNet-Parareal (NeurIPS 2024), Burgers_sequential notebook and "
                  "BurgersScal pickles of Parallel-in-Time-Differential-Equations/RandNet-Parareal")


def fhn_gparareal(*, t_end: float = 40.0) -> Anchor:
    """FitzHugh-Nagumo ``u1' = c (u1 - u1^3/3 + u2)``, ``u2' = -(u1 - a + b u2) / c``,
    ``a = b = 0.2``, ``c = 3``, ``u(0) = (-1, 1)``. 40 slices of ``[0, t_end]``, coarse
    explicit midpoint (4 steps per slice), fine RK4(4000), tol 1e-6."""
    t_end = number("t_end", t_end, positive=True)
    a = b = 0.2
    c = 3.0

    def f(t: Tensor, u: Tensor) -> Tensor:  # u: [..., 2]
        u1, u2 = u[..., 0], u[..., 1]
        return torch.stack([c * (u1 - u1**3 / 3 + u2), -(u1 - a + b * u2) / c], -1)

    y0 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    case = Case("fhn_gparareal", ODEProblem(f, y0, (0.0, t_end), batched=True), Midpoint(4),
                RK4(4000), 40, 1e-6, {"t_end": t_end},
                description="FitzHugh-Nagumo, GParareal's setup")
    return Anchor(case, {"parareal": 11, "gparareal": 5, "nngparareal": 5},
                  "GParareal (Statistics and Computing 2023), FHN_Results.m and "
                  "FHN_solutions.mat of kpentland/GParareal")


def lorenz_nngparareal() -> Anchor:
    """Lorenz (10, 28, 8/3) from ``(-15, -15, 20)`` on ``[0, 18]``, integrated on the state
    mapped to ``[-1, 1]`` by the bounds ``(-17.1, -23, 6)``, ``(18.1, 25, 45)``. 50 slices,
    coarse RK4(6), fine RK4(450), tol 5e-7 on the mapped state."""
    lo = torch.tensor([-17.1, -23.0, 6.0], dtype=torch.float64)
    hi = torch.tensor([18.1, 25.0, 45.0], dtype=torch.float64)
    half = (hi - lo) / 2

    def f(t: Tensor, v: Tensor) -> Tensor:  # v: [..., 3], u = lo + (v + 1) (hi - lo) / 2
        u = lo + (v + 1) * half
        x, y, z = u[..., 0], u[..., 1], u[..., 2]
        du = torch.stack([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z], -1)
        return du / half

    u0 = torch.tensor([-15.0, -15.0, 20.0], dtype=torch.float64)
    case = Case("lorenz_nngparareal", ODEProblem(f, (u0 - lo) / half - 1, (0.0, 18.0),
                                                 batched=True),
                RK4(6), RK4(450), 50, 5e-7, {}, description="Lorenz, nnGParareal's setup")
    return Anchor(case, {"parareal": 15, "gparareal": 11, "nngparareal": 9},
                  "nnGParareal (Gattiglio et al. 2024), Table 2 (all_models pickle) of "
                  "Parallel-in-Time-Differential-Equations/Nearest-Neighbors-GParareal")


def diffusion_reaction_randnet(*, cells: int = 19, t_end: float = 20.0, fine_steps: int = 100
                               ) -> Anchor:
    """The 2-D diffusion-reaction system of PDEBench (FitzHugh-Nagumo kinetics)
    ``u_t = Du Lap u + u - u^3 - k - v``, ``v_t = Dv Lap v + u - v``, ``Du = 1e-3``,
    ``Dv = 5e-3``, ``k = 5e-3``, on ``cells x cells`` cells of ``[-1, 1]^2`` (5-point
    Laplacian, zero-flux edges), from ``uniform(0, 1)`` values (numpy ``default_rng(45)``),
    integrated as ``(u, v) / 4`` (the paper's normalisation to ``[-1, 1]`` by the bounds
    ``+-4``); state ``[2, cells, cells]``. 64 slices of ``[0, t_end]``, coarse Euler(1),
    fine RK4(``fine_steps``) (theirs: scipy's RK45 with a step of at most ``H / 180000``,
    about 1000x the work), tol 5e-7."""
    import numpy as np

    n = integer("cells", cells, 2)
    t_end = number("t_end", t_end, positive=True)
    steps = integer("fine_steps", fine_steps, 1)
    du, dv, k, h = 1e-3, 5e-3, 5e-3, 2.0 / n

    def lap(w: Tensor) -> Tensor:  # [..., n, n], zero flux: the ghost cell repeats the edge
        p = torch.cat([w[..., :1, :], w, w[..., -1:, :]], -2)
        p = torch.cat([p[..., :, :1], p, p[..., :, -1:]], -1)
        return (p[..., 2:, 1:-1] + p[..., :-2, 1:-1] + p[..., 1:-1, 2:] + p[..., 1:-1, :-2]
                - 4 * w) / h**2

    def f(t: Tensor, y: Tensor) -> Tensor:  # y: [..., 2, n, n] = (u, v) / 4
        u, v = 4 * y[..., 0, :, :], 4 * y[..., 1, :, :]
        return torch.stack([du * lap(u) + u - u**3 - k - v, dv * lap(v) + u - v], -3) / 4

    y0 = torch.from_numpy(np.random.default_rng(45).uniform(size=2 * n * n)).reshape(2, n, n) / 4
    case = Case("diffusion_reaction_randnet", ODEProblem(f, y0, (0.0, t_end), batched=True),
                Euler(1), RK4(steps), 64, 5e-7, {"cells": n, "t_end": t_end, "fine_steps": steps},
                description="2-D diffusion-reaction (PDEBench), RandNet-Parareal's setup")
    return Anchor(case, {"parareal": 53, "randnet": 12, "nngparareal": 16},
                  "RandNet-Parareal (NeurIPS 2024), DiffReact.py and its result pickles of "
                  "Parallel-in-Time-Differential-Equations/RandNet-Parareal")


#: name -> builder of the published setups
ANCHORS = {"burgers_randnet": burgers_randnet, "fhn_gparareal": fhn_gparareal,
           "lorenz_nngparareal": lorenz_nngparareal,
           "diffusion_reaction_randnet": diffusion_reaction_randnet}
