"""What a sampling run returns: the sample with its convergence record
(:class:`SampleOutput`) and its cost (:class:`SamplerStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

import pint

from .precision import Precision


@dataclass
class SamplerStats:
    """Cost of one sampling run.

    Attributes:
        model_calls: network invocations (each one batched over blocks and samples).
        model_rows: samples pushed through the network, summed over calls (classifier-free
            guidance counts both halves).
        depth: sequential model calls on the critical path: what wall-clock follows when a
            batched call costs about as much as a single one.
        engine: the engine's :class:`pint.Stats`.
    """

    model_calls: int = 0
    model_rows: int = 0
    depth: int = 0
    engine: pint.Stats = field(default_factory=pint.Stats)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain ``dict`` (``engine`` nested), for JSON reports."""
        return {"model_calls": self.model_calls, "model_rows": self.model_rows,
                "depth": self.depth, "engine": self.engine.as_dict()}


@dataclass
class SampleOutput:
    """What :func:`srds_sample` returns.

    Attributes:
        sample: the final sample, shape and dtype of ``x_T``.
        iterations: Parareal iterations done.
        converged: whether the stopping rule passed (or every block became exact).
        history: the change measured by the stopping rule in each iteration.
        stats: :class:`SamplerStats`.
        tol: the tolerance used (the default of the network's dtype when none was given,
            see ``precision``).
        num_blocks: blocks of the grid.
        iterates: with ``return_iterates=True``, the sample after the coarse sweep and
            after every iteration ``[iterations + 1, *x_T.shape]``; else ``None``.
        trajectory: window samplers with ``return_trajectory=True``: the state after every
            step ``[num_steps + 1, *x_T.shape]`` (a warm start for a neighbouring run);
            else ``None``.
        boundaries: SRDS: the state at every block edge ``[num_blocks + 1, *x_T.shape]``
            (also a warm start); else ``None``.
        plan: ``sample(sampler="auto")``: the
            :class:`~adapters.diffusion.planner.SamplingPlan` it followed; else ``None``.
        precision: the :class:`~adapters.diffusion.precision.Precision` the run worked at
            (network and state dtypes, the tolerance and why it was chosen).
    """

    sample: Tensor
    iterations: int
    converged: bool
    history: list[float]
    stats: SamplerStats
    tol: float
    num_blocks: int
    iterates: Tensor | None = None
    trajectory: Tensor | None = None
    boundaries: Tensor | None = None
    plan: Any = None
    precision: Precision | None = None
