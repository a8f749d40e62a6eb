"""Classic test problems for parallel-in-time solving, with recommended setups and references.

    >>> case = pint.problems.get("lorenz", rho=28.0)
    >>> res = pint.parareal(case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    >>> err = (res.y - case.reference()).abs().max()

:func:`names` lists the problems; :func:`get` builds a :class:`Case` (float64 problem,
recommended ``coarse``/``fine`` propagators, ``num_blocks``, ``tol``, a cached scipy
``reference()`` at the end time, ``exact(t)`` where known). Parameters are keyword-only and
documented on each builder (``help(pint.problems.BUILDERS["heat"])``); bad values raise
``ValueError``/``TypeError`` naming the parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ._case import Case
from .ode import brusselator, dahlquist, fitzhugh_nagumo, kepler, lorenz, lotka_volterra, rossler, van_der_pol
from .pde import allen_cahn, burgers, heat
from .pde2d import brusselator_2d

BUILDERS: dict[str, Callable[..., Case]] = {
    "dahlquist": dahlquist,
    "lorenz": lorenz,
    "van_der_pol": van_der_pol,
    "brusselator": brusselator,
    "lotka_volterra": lotka_volterra,
    "rossler": rossler,
    "fitzhugh_nagumo": fitzhugh_nagumo,
    "kepler": kepler,
    "heat": heat,
    "burgers": burgers,
    "allen_cahn": allen_cahn,
    "brusselator_2d": brusselator_2d,
}


def names() -> list[str]:
    """The registered problem names."""
    return list(BUILDERS)


def get(name: str, **params: object) -> Case:
    """Build problem ``name`` with keyword ``params`` (defaults for the rest).

    Raises:
        KeyError: unknown ``name`` (the message lists the known ones).
        TypeError: a parameter the problem does not have (the message lists them).
        ValueError / TypeError: a parameter out of range or of the wrong type.
    """
    if name not in BUILDERS:
        raise KeyError(f"unknown problem {name!r}; known problems: {', '.join(names())}")
    build = BUILDERS[name]
    accepted = list(inspect.signature(build).parameters)
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise TypeError(f"problem {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
                        f"its parameters are: {', '.join(accepted)}")
    return build(**params)


__all__ = ["Case", "BUILDERS", "names", "get"]
