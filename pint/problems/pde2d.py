"""A two-dimensional reaction-diffusion system on a periodic grid (method of lines,
five-point Laplacian), written for a leading block dimension (``u [n, 2, points, points]``)
and passed with ``batched=True``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..problem import ODEProblem
from ..propagators import RK4
from ._case import Case, integer, number

F64 = torch.float64


def periodic_laplacian_2d(u: Tensor, dx: float) -> Tensor:
    """The five-point Laplacian of ``u [..., points, points]`` on a periodic grid of spacing
    ``dx``."""
    return (torch.roll(u, 1, -1) + torch.roll(u, -1, -1) + torch.roll(u, 1, -2)
            + torch.roll(u, -1, -2) - 4 * u) / dx ** 2


def brusselator_2d(*, a: float = 1.0, b: float = 3.0, diffusion: tuple[float, float] = (0.002, 0.001),
                   points: int = 16, t_end: float = 10.0) -> Case:
    """The 2-D Brusselator ``u_t = D_u lap u + a + u^2 v - (b + 1) u``, ``v_t = D_v lap v +
    b u - u^2 v`` on the periodic unit square, from ``u = a + 0.5 exp(-|x - (0.3, 0.4)|^2 /
    0.02)``, ``v = b / a + 0.3 cos(2 pi x) cos(4 pi y)``: a reaction-diffusion system whose
    spatially uniform state oscillates (``b > 1 + a^2``) while diffusion smooths the
    patterns (the setup family of RandNet-Parareal's 2-D Brusselator).

    Args:
        a, b: rate constants (> 0), defaults 1 and 3.
        diffusion: ``(D_u, D_v)`` (>= 0), default ``(0.002, 0.001)``.
        points: grid points per side (>= 4), default 16 (state ``[2, points, points]``).
        t_end: final time (> 0), default 10.

    Setup: coarse RK4(5), fine RK4(100), 10 blocks, tol 1e-8. Explicit RK4 needs
    ``h * 8 D / dx^2`` below ~2.8: the coarse step ``0.2`` holds up to ``points = 16`` with
    the default diffusion; finer grids need smaller coarse steps or smaller ``diffusion``.
    """
    a, b = number("a", a, positive=True), number("b", b, positive=True)
    try:
        du, dv = (number("diffusion", d, nonneg=True) for d in diffusion)  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        if isinstance(err, ValueError) and "diffusion" in str(err):
            raise
        raise TypeError(f"parameter 'diffusion' must be two numbers (D_u, D_v), got {diffusion!r}") from None
    points = integer("points", points, 4)
    t_end = number("t_end", t_end, positive=True)
    dx = 1.0 / points
    x = torch.arange(points, dtype=F64) * dx
    X, Y = torch.meshgrid(x, x, indexing="ij")
    u0 = a + 0.5 * torch.exp(-((X - 0.3) ** 2 + (Y - 0.4) ** 2) / 0.02)
    v0 = b / a + 0.3 * torch.cos(2 * math.pi * X) * torch.cos(4 * math.pi * Y)
    D = torch.tensor([du, dv], dtype=F64).reshape(2, 1, 1)

    def f(t: Tensor, y: Tensor) -> Tensor:  # y: [n, 2, points, points], one row per block
        u, v = y[:, 0], y[:, 1]
        u2v = u * u * v
        react = torch.stack([a + u2v - (b + 1) * u, b * u - u2v], dim=1)
        return D * periodic_laplacian_2d(y, dx) + react

    problem = ODEProblem(f, torch.stack([u0, v0]), (0.0, t_end), batched=True)
    return Case("brusselator_2d", problem, RK4(5), RK4(100), 10, 1e-8,
                {"a": a, "b": b, "diffusion": (du, dv), "points": points, "t_end": t_end},
                description="2-D Brusselator reaction-diffusion, periodic, method of lines")
