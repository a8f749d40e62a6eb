"""Classic explicit Runge-Kutta methods with a fixed number of steps per block."""

from __future__ import annotations

from torch import Tensor

from .base import RHS, FixedStepPropagator, expand_as_state


class Euler(FixedStepPropagator):
    """Forward Euler, order 1, one ``f`` evaluation per step."""

    evals_per_step = 1

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        return y + expand_as_state(h, y) * f(t, y)


class Heun(FixedStepPropagator):
    """Heun's method (explicit trapezoid), order 2, two evaluations per step."""

    evals_per_step = 2

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        hb = expand_as_state(h, y)
        k1 = f(t, y)
        k2 = f(t + h, y + hb * k1)
        return y + hb / 2 * (k1 + k2)


class RK4(FixedStepPropagator):
    """The classic fourth-order Runge-Kutta method, four evaluations per step."""

    evals_per_step = 4

    def step(self, f: RHS, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        hb = expand_as_state(h, y)
        k1 = f(t, y)
        k2 = f(t + h / 2, y + hb / 2 * k1)
        k3 = f(t + h / 2, y + hb / 2 * k2)
        k4 = f(t + h, y + hb * k3)
        return y + hb / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
