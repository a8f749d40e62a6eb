"""Propagators: solvers that advance a batch of block states over per-block intervals."""

from .adaptive import DormandPrince, StepLimitError
from .base import FixedStepPropagator, Propagator, StepPropagator, expand_as_state
from .coarsened import Coarsened
from .explicit import RK4, Euler, Heun
from .external import SciPy, TorchDiffEq
from .implicit import SDIRK2, BackwardEuler, ImplicitMidpoint, NewtonConvergenceError

__all__ = [
    "Propagator", "StepPropagator", "FixedStepPropagator", "expand_as_state",
    "Euler", "Heun", "RK4", "TorchDiffEq", "SciPy", "DormandPrince", "StepLimitError",
    "BackwardEuler", "ImplicitMidpoint", "SDIRK2", "NewtonConvergenceError", "Coarsened",
]
