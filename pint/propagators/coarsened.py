"""Spatial coarsening: a coarse propagator that runs on a coarser state (grid).

:class:`Coarsened` wraps a propagator ``G_c`` of a coarse problem (its own right-hand side
on a coarser grid) between a restriction ``R`` (fine state -> coarse state) and an
interpolation ``P`` (coarse -> fine): ``G(u) = P(G_c(R(u)))``. To Parareal it is an
ordinary coarse propagator on the fine state, so the correction
``U^k_{i+1} = G(U^k_i) + F(U^{k-1}_i) - G(U^{k-1}_i)`` stays in the fine variables and
exactness is kept: after ``k`` iterations the first ``k`` boundaries equal the serial fine
solution, and ``max_iters = num_blocks`` reproduces :func:`pint.serial`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..problem import ODEProblem
from .base import RHS, Propagator

Transfer = Callable[[Tensor], Tensor]


class Coarsened(Propagator):
    """The coarse propagator ``coarse`` run on a coarser state: ``P(G_c(R(y)))``.

    Args:
        coarse: the propagator ``G_c`` on the coarse state (e.g. ``pint.BackwardEuler(1)``).
        problem: the **coarse** :class:`~pint.ODEProblem`: its ``f`` (and ``batched`` flag)
            is the right-hand side on the coarse grid, and ``problem.y0`` gives the coarse
            state's shape and dtype (its values and ``t_span`` are not used; the natural
            choice is ``restrict(y0[None])[0]`` and the fine problem's ``t_span``). The fine
            problem's ``f`` is ignored by this propagator.
        restrict: ``R``, maps a batch of fine states ``[n, *fine_shape]`` to coarse states
            ``[n, *problem.y0.shape]`` (e.g. full weighting or injection).
        interpolate: ``P``, maps ``[n, *problem.y0.shape]`` back to ``[n, *fine_shape]``
            (e.g. linear interpolation).

    Both maps act on a leading block dimension, like an ``f`` with ``batched=True``; linear
    maps are a matrix product (``lambda u: u @ R.T``). Their output shapes are checked on
    every call: a mismatch raises a ``ValueError`` naming ``restrict`` or ``interpolate``
    and the expected shape (the first coarse call of a solve, before any fine work).

    The catalog's PDEs provide the maps and the coarse problem:
    ``pint.problems.get("heat").coarsened(factor=2).coarse`` is a ``Coarsened`` on 15 of
    the 31 points (see :meth:`pint.problems.Case.coarsened`).

    ``pipelined=True`` is refused (the wavefront batches single coarse steps with fine
    ones on the fine state); use the sweep. ``Stats.f_calls`` and ``Stats.f_evals`` count
    the fine problem's ``f`` only; ``coarse_steps`` and ``depth`` count ``coarse``'s steps.

    Example, the heat equation's coarse level on every other point::

        case = pint.problems.get("heat", points=31)
        c = case.coarsened(factor=2)       # Coarsened(BackwardEuler(1), 15 points)
        res = pint.parareal(c.problem, c.coarse, c.fine, c.num_blocks, c.tol)
    """

    def __init__(self, coarse: Propagator, problem: ODEProblem, *, restrict: Transfer,
                 interpolate: Transfer) -> None:
        if not isinstance(coarse, Propagator):
            raise TypeError(f"coarse must be a pint.Propagator (e.g. pint.BackwardEuler(1)), "
                            f"got {type(coarse).__name__}")
        if isinstance(coarse, Coarsened):
            raise TypeError("coarse must be a propagator of the coarse problem, not another "
                            "Coarsened (nest the maps into one restrict/interpolate pair)")
        if not isinstance(problem, ODEProblem):
            raise TypeError(f"problem must be the coarse pint.ODEProblem (its f on the coarse "
                            f"grid), got {type(problem).__name__}")
        if problem.f is None:
            raise ValueError("problem (the coarse problem) must have a right-hand side f")
        for name, fn in (("restrict", restrict), ("interpolate", interpolate)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable on a batch of states [n, *shape], "
                                f"got {type(fn).__name__}")
        self.coarse = coarse
        self.problem = problem
        self.restrict = restrict
        self.interpolate = interpolate
        self.coarse_shape = tuple(problem.y0.shape)
        self.evals_per_step = coarse.evals_per_step
        self._rhs = problem.batched_rhs()

    def __call__(self, f: RHS, y: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        n, fine_shape = y.shape[0], tuple(y.shape[1:])
        yc = self.restrict(y)
        _check("restrict", yc, (n, *self.coarse_shape), self.problem.y0.dtype, y.device,
               f"[n, *problem.y0.shape] with n = {n} block rows and the coarse problem's "
               f"state shape {self.coarse_shape}", f"fine states of shape {tuple(y.shape)}")
        yc = self.coarse(self._rhs, yc, t0, t1)
        out = self.interpolate(yc)
        _check("interpolate", out, tuple(y.shape), y.dtype, y.device,
               f"[n, *fine_shape] with n = {n} block rows and the fine state shape "
               f"{fine_shape}", f"coarse states of shape {tuple(yc.shape)}")
        return out

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor | None:
        return self.coarse.steps_per_block(t0, t1)

    def __repr__(self) -> str:
        return f"Coarsened({self.coarse!r}, coarse shape {self.coarse_shape})"


def _check(name: str, out: object, expected: tuple[int, ...], dtype: object,
           device: object, what: str, given: str) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape {expected}, got "
                        f"{type(out).__name__}")
    if tuple(out.shape) != expected:
        raise ValueError(f"{name} returned shape {tuple(out.shape)} for {given}; expected "
                         f"{expected} ({what}). Both maps act on a leading block dimension")
    if out.dtype != dtype:
        raise TypeError(f"{name} returned dtype {out.dtype}, expected {dtype} (the "
                        f"{'coarse problem' if name == 'restrict' else 'fine state'}'s dtype)")
    if out.device != device:
        raise ValueError(f"{name} returned a tensor on {out.device}, expected {device} (the "
                         "fine state's device; build the coarse problem and the maps there)")
