"""Small classic ODE systems (time and states are nondimensional unless noted)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..problem import ODEProblem
from ..propagators import RK4, SDIRK2
from ._case import Case, integer, number, vector

F64 = torch.float64


def dahlquist(*, lam: float = -1.0, y0: float = 1.0, t_end: float = 5.0) -> Case:
    """Dahlquist's test equation ``y' = lam * y``, exact ``y(t) = y0 exp(lam t)``.

    Args:
        lam: the rate ``lambda`` (1/time), default -1; any finite real.
        y0: initial value, default 1.
        t_end: final time (> 0), default 5; the interval is ``[0, t_end]``.

    Setup: coarse SDIRK2(1) (L-stable, so any ``lam < 0`` is fine), fine RK4(20), 10 blocks,
    tol 1e-10.
    """
    lam, y0, t_end = number("lam", lam), number("y0", y0), number("t_end", t_end, positive=True)
    lam_t = torch.tensor(lam, dtype=F64)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return lam_t * y

    return Case(
        "dahlquist", ODEProblem(f, torch.tensor([y0], dtype=F64), (0.0, t_end)),
        SDIRK2(1), RK4(20), 10, 1e-10, {"lam": lam, "y0": y0, "t_end": t_end},
        description="y' = lam y",
        exact_fn=lambda t: torch.tensor([y0 * math.exp(lam * t)], dtype=F64),
    )


def lorenz(*, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0,
           y0: tuple[float, float, float] = (1.0, 1.0, 1.0), t_end: float = 2.0) -> Case:
    """The Lorenz system ``x' = sigma (y - x), y' = x (rho - z) - y, z' = x y - beta z``.

    Args:
        sigma: Prandtl number (> 0), default 10.
        rho: Rayleigh number ratio (> 0), default 28 (chaotic).
        beta: geometric factor (> 0), default 8/3.
        y0: initial ``(x, y, z)``, default ``(1, 1, 1)``.
        t_end: final time (> 0), default 2 (chaos limits how far Parareal pays off).

    Setup: coarse RK4(4), fine RK4(100), 20 blocks, tol 1e-8.
    """
    s = number("sigma", sigma, positive=True)
    r = number("rho", rho, positive=True)
    b = number("beta", beta, positive=True)
    y0v, t_end = vector("y0", y0, 3), number("t_end", t_end, positive=True)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([s * (y[1] - y[0]), y[0] * (r - y[2]) - y[1], y[0] * y[1] - b * y[2]])

    return Case("lorenz", ODEProblem(f, y0v, (0.0, t_end)), RK4(4), RK4(100), 20, 1e-8,
                {"sigma": s, "rho": r, "beta": b, "y0": tuple(y0v.tolist()), "t_end": t_end},
                description="Lorenz attractor")


def van_der_pol(*, mu: float = 1.0, y0: tuple[float, float] = (2.0, 0.0), t_end: float = 10.0) -> Case:
    """The Van der Pol oscillator ``x'' = mu (1 - x^2) x' - x`` as ``(x, x')``.

    Args:
        mu: damping parameter (>= 0), default 1 (non-stiff; ``mu >~ 10`` is stiff and
            needs other propagators).
        y0: initial ``(x, x')``, default ``(2, 0)``.
        t_end: final time (> 0), default 10.

    Setup: coarse RK4(4), fine RK4(100), 10 blocks, tol 1e-8.
    """
    mu = number("mu", mu, nonneg=True)
    y0v, t_end = vector("y0", y0, 2), number("t_end", t_end, positive=True)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return Case("van_der_pol", ODEProblem(f, y0v, (0.0, t_end)), RK4(4), RK4(100), 10, 1e-8,
                {"mu": mu, "y0": tuple(y0v.tolist()), "t_end": t_end},
                stiff=mu > 10, description="Van der Pol oscillator")


def brusselator(*, a: float = 1.0, b: float = 3.0, y0: tuple[float, float] = (1.5, 3.0),
                t_end: float = 10.0) -> Case:
    """The Brusselator ``x' = a + x^2 y - (b + 1) x, y' = b x - x^2 y`` (limit cycle for
    ``b > 1 + a^2``).

    Args:
        a, b: rate constants (> 0), defaults 1 and 3.
        y0: initial ``(x, y)``, default ``(1.5, 3)``.
        t_end: final time (> 0), default 10.

    Setup: coarse RK4(4), fine RK4(100), 10 blocks, tol 1e-8.
    """
    a, b = number("a", a, positive=True), number("b", b, positive=True)
    y0v, t_end = vector("y0", y0, 2), number("t_end", t_end, positive=True)

    def f(t: Tensor, y: Tensor) -> Tensor:
        x2y = y[0] ** 2 * y[1]
        return torch.stack([a + x2y - (b + 1) * y[0], b * y[0] - x2y])

    return Case("brusselator", ODEProblem(f, y0v, (0.0, t_end)), RK4(4), RK4(100), 10, 1e-8,
                {"a": a, "b": b, "y0": tuple(y0v.tolist()), "t_end": t_end},
                description="Brusselator chemical oscillator")


def lotka_volterra(*, alpha: float = 1.5, beta: float = 1.0, gamma: float = 3.0, delta: float = 1.0,
                   y0: tuple[float, float] = (10.0, 5.0), t_end: float = 10.0) -> Case:
    """Predator-prey ``x' = alpha x - beta x y, y' = delta x y - gamma y``.

    Args:
        alpha, beta, gamma, delta: rates (> 0), defaults 1.5, 1, 3, 1.
        y0: initial prey and predator populations (> 0), default ``(10, 5)``.
        t_end: final time (> 0), default 10.

    The quantity ``delta x - gamma ln x + beta y - alpha ln y`` is conserved
    (:meth:`Case.invariants`). Setup: coarse RK4(8), fine RK4(200), 10 blocks, tol 1e-8.
    """
    al, be = number("alpha", alpha, positive=True), number("beta", beta, positive=True)
    ga, de = number("gamma", gamma, positive=True), number("delta", delta, positive=True)
    y0v, t_end = vector("y0", y0, 2), number("t_end", t_end, positive=True)
    if bool((y0v <= 0).any()):
        raise ValueError(f"parameter 'y0' must be positive populations, got {tuple(y0v.tolist())}")

    def f(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([al * y[0] - be * y[0] * y[1], de * y[0] * y[1] - ga * y[1]])

    def invariants(y: Tensor) -> dict[str, Tensor]:
        x, p = y[..., 0], y[..., 1]
        return {"V": de * x - ga * torch.log(x) + be * p - al * torch.log(p)}

    return Case("lotka_volterra", ODEProblem(f, y0v, (0.0, t_end)), RK4(8), RK4(200), 10, 1e-8,
                {"alpha": al, "beta": be, "gamma": ga, "delta": de, "y0": tuple(y0v.tolist()),
                 "t_end": t_end},
                description="Lotka-Volterra predator-prey", invariants_fn=invariants)


def rossler(*, a: float = 0.2, b: float = 0.2, c: float = 5.7,
            y0: tuple[float, float, float] = (1.0, 1.0, 1.0), t_end: float = 10.0) -> Case:
    """The Roessler system ``x' = -y - z, y' = x + a y, z' = b + z (x - c)``.

    Args:
        a, b, c: parameters (> 0), defaults 0.2, 0.2, 5.7 (chaotic attractor).
        y0: initial ``(x, y, z)``, default ``(1, 1, 1)``.
        t_end: final time (> 0), default 10.

    Setup: coarse RK4(4), fine RK4(100), 10 blocks, tol 1e-8.
    """
    a, b = number("a", a, positive=True), number("b", b, positive=True)
    c = number("c", c, positive=True)
    y0v, t_end = vector("y0", y0, 3), number("t_end", t_end, positive=True)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([-y[1] - y[2], y[0] + a * y[1], b + y[2] * (y[0] - c)])

    return Case("rossler", ODEProblem(f, y0v, (0.0, t_end)), RK4(4), RK4(100), 10, 1e-8,
                {"a": a, "b": b, "c": c, "y0": tuple(y0v.tolist()), "t_end": t_end},
                description="Roessler attractor")


def fitzhugh_nagumo(*, a: float = 0.7, b: float = 0.8, tau: float = 12.5, current: float = 0.5,
                    y0: tuple[float, float] = (-1.0, 1.0), t_end: float = 40.0) -> Case:
    """The FitzHugh-Nagumo neuron ``v' = v - v^3/3 - w + current, w' = (v + a - b w) / tau``.

    Args:
        a, b: recovery parameters (>= 0), defaults 0.7 and 0.8.
        tau: recovery time scale (> 0, in units of the fast time), default 12.5.
        current: external stimulus, default 0.5 (periodic spiking).
        y0: initial ``(v, w)``, default ``(-1, 1)``.
        t_end: final time (> 0), default 40.

    Setup: coarse RK4(4), fine RK4(100), 20 blocks, tol 1e-8.
    """
    a, b = number("a", a, nonneg=True), number("b", b, nonneg=True)
    tau, cur = number("tau", tau, positive=True), number("current", current)
    y0v, t_end = vector("y0", y0, 2), number("t_end", t_end, positive=True)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return torch.stack([y[0] - y[0] ** 3 / 3 - y[1] + cur, (y[0] + a - b * y[1]) / tau])

    return Case("fitzhugh_nagumo", ODEProblem(f, y0v, (0.0, t_end)), RK4(4), RK4(100), 20, 1e-8,
                {"a": a, "b": b, "tau": tau, "current": cur, "y0": tuple(y0v.tolist()),
                 "t_end": t_end},
                description="FitzHugh-Nagumo neuron")


def kepler(*, eccentricity: float = 0.5, periods: int = 1) -> Case:
    """The two-body (Kepler) problem ``q'' = -q / |q|^3`` in the plane, state
    ``(q1, q2, p1, p2)``, units ``G M = 1`` and semi-major axis 1 (period ``2 pi``).

    Starts at pericentre ``q = (1 - e, 0)``, ``p = (0, sqrt((1 + e) / (1 - e)))``; the exact
    solution is known in closed form through Kepler's equation (:meth:`Case.exact`).
    Energy ``|p|^2/2 - 1/|q| = -1/2`` and angular momentum ``q1 p2 - q2 p1 = sqrt(1 - e^2)``
    are conserved (:meth:`Case.invariants`).

    Args:
        eccentricity: ``e`` in ``[0, 0.9]``, default 0.5.
        periods: whole orbits to integrate (>= 1), default 1.

    Setup: coarse RK4(8), fine RK4(200), 16 blocks per period, tol 1e-8.
    """
    e = number("eccentricity", eccentricity, nonneg=True)
    if e > 0.9:
        raise ValueError(f"parameter 'eccentricity' must be in [0, 0.9], got {eccentricity}")
    periods = integer("periods", periods, 1)
    y0 = torch.tensor([1 - e, 0.0, 0.0, math.sqrt((1 + e) / (1 - e))], dtype=F64)
    T = 2 * math.pi * periods

    def f(t: Tensor, y: Tensor) -> Tensor:
        r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
        return torch.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])

    def invariants(y: Tensor) -> dict[str, Tensor]:
        q1, q2, p1, p2 = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
        return {"energy": (p1 ** 2 + p2 ** 2) / 2 - 1 / torch.sqrt(q1 ** 2 + q2 ** 2),
                "angular_momentum": q1 * p2 - q2 * p1}

    def exact(t: float) -> Tensor:
        # Kepler's equation E - e sin E = t (mean anomaly, period 2 pi), solved by Newton
        E = t + 0.85 * e * (1.0 if math.sin(t) >= 0 else -1.0)  # Danby's starting value
        for _ in range(50):
            dE = (E - e * math.sin(E) - t) / (1 - e * math.cos(E))
            E -= dE
            if abs(dE) < 1e-15:
                break
        s, c, w = math.sin(E), math.cos(E), math.sqrt(1 - e * e)
        d = 1 - e * c
        return torch.tensor([c - e, w * s, -s / d, w * c / d], dtype=F64)

    return Case("kepler", ODEProblem(f, y0, (0.0, T)), RK4(8), RK4(200), 16 * periods, 1e-8,
                {"eccentricity": e, "periods": periods}, description="two-body problem",
                exact_fn=exact, invariants_fn=invariants)
