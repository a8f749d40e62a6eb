"""pint: parallel-in-time (Parareal) ODE solving for PyTorch.

Public names::

    pint.ODEProblem, pint.parareal, pint.serial, pint.Result, pint.Stats
    pint.Propagator, pint.FixedStepPropagator
    pint.Euler, pint.Heun, pint.RK4, pint.TorchDiffEq, pint.SciPy
    pint.DormandPrince (adaptive, step size control per block: exact under Parareal)
    pint.Coarsened (a coarse propagator on a coarser spatial grid: restrict / interpolate)
    pint.DistributedExecutor (multi-process Parareal over torch.distributed)
    pint.LearnedCorrection (options of parareal(correction="learned"), see pint.learned)
"""

from .executors import DistributedError, DistributedExecutor, DistributedStats
from .grid import TimeResolutionWarning
from .learned import LearnedCorrection
from .mgrit import mgrit
from .odeint import odeint
from .parareal import NonFiniteStateError, SwappedPropagatorsWarning, parareal, serial
from .problem import ODEProblem
from .propagators import (
    RK4,
    SDIRK2,
    BackwardEuler,
    Coarsened,
    DormandPrince,
    Euler,
    FixedStepPropagator,
    Heun,
    ImplicitMidpoint,
    NewtonConvergenceError,
    Propagator,
    SciPy,
    StepLimitError,
    StepPropagator,
    TorchDiffEq,
)
from .result import IterationInfo, Result, Stats

__version__ = "0.1.0"

__all__ = [
    "ODEProblem", "parareal", "serial", "Result", "Stats", "IterationInfo",
    "NonFiniteStateError", "Propagator", "StepPropagator", "FixedStepPropagator",
    "Euler", "Heun", "RK4", "TorchDiffEq", "SciPy", "DormandPrince", "StepLimitError",
    "BackwardEuler", "ImplicitMidpoint", "SDIRK2", "NewtonConvergenceError", "Coarsened",
    "DistributedExecutor", "DistributedError", "DistributedStats", "TimeResolutionWarning",
    "SwappedPropagatorsWarning", "mgrit", "odeint", "LearnedCorrection",
]
