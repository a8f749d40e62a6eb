"""One entry point that picks the sampler: ``sample(..., sampler="auto")``.

``"auto"`` runs what :func:`~adapters.diffusion.planner.plan_sampling` predicts is fastest
on the user's device: it measures the latency of one model call against its rows on the
actual model, shape, dtype and device (a short probe, cached for the process), predicts
every candidate's calls and rows (serial; SRDS sweep and pipelined over a few block counts;
Picard, quasi-Newton and taa's secant window over a few windows), and chooses a parallel
sampler only when it is predicted faster than serial by more than its estimate's error. A
CPU, where a call costs in proportion to its rows, gets the serial sampler or a narrow
window; a GPU a window near its knee (``benchmarks/bench_planner.py``). ``max_batch``
caps the network rows of one call (memory).

The plan is made once per (network, sample shape, batch, dtype, device, conditioning, grid,
``num_steps``, ``tol``, ``eta``, ranks, ``max_batch``, ``cost``) and reused by every later
identical call: it spends only a lookup planning (``out.plan.planning_s``; ``out.plan.reused``)
and runs the same choice, so it returns the same sample bit for bit. The calls a run takes are
recorded (:func:`~adapters.diffusion.planner.record_run`) but change no kept plan's choice;
``replan=True`` asks for a fresh plan that uses them (it may choose differently). A first
plan spends at most :data:`~adapters.diffusion.planner.PLAN_BUDGET` of the predicted serial
time; a run shorter than :data:`~adapters.diffusion.planner.MIN_PLAN_STEPS` steps gets serial
without a probe (see :func:`~adapters.diffusion.planner.plan_sampling`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .model import Denoiser, Model
from .planner import (
    PARALLEL_SAMPLERS,
    CostModel,
    SamplingPlan,
    check_plan,
    plan_sampling,
    record_run,
)
from .samplers import (
    MODEL_OPTIONS,
    SampleOutput,
    SamplerStats,
    Schedule,
    serial_sample,
)

SAMPLERS = ("auto", "serial", "srds", "picard", "quasi_newton", "taa")
#: what ``"auto"`` chooses itself, so they may not be passed with it
_CHOSEN = ("window", "num_blocks", "pipelined")
#: options whose meaning differs between the samplers ``"auto"`` may choose
_PER_SAMPLER = ("callback", "initial", "return_iterates", "return_trajectory", "stopping",
                "partition", "coarse")


def sample(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int,
           sampler: str = "auto", max_batch: int | None = None, tol: float | None = None,
           *, cost: CostModel | None = None, plan: SamplingPlan | None = None,
           replan: bool = False, **kwargs: Any) -> SampleOutput:
    """Sample with the named sampler, or the fastest one on this device (``"auto"``).

    Args:
        model, schedule, x_T, num_steps: as in :func:`~adapters.diffusion.srds_sample`.
        sampler: ``"auto"``, ``"serial"``, ``"srds"``, ``"picard"``, ``"quasi_newton"`` or
            ``"taa"`` (:func:`~adapters.diffusion.taa_sample`).
        max_batch: ``"auto"`` only: network rows one call may hold (memory).
        tol: the sampler's tolerance (``None``: its default).
        cost: ``"auto"`` only: the device's :class:`~adapters.diffusion.planner.CostModel`
            (default: measured, see :func:`~adapters.diffusion.planner.plan_sampling`).
        plan: ``"auto"`` only: a plan made beforehand for this run (same model, sample
            shape, batch, dtype, device, conditioning, schedule grid, ``num_steps``, ``tol``
            and ``eta``; else ``ValueError``), whose choice runs.
        replan: ``"auto"`` only: plan afresh (using the calls recorded by earlier runs; the
            choice may change) instead of reusing the plan an identical earlier call made.
        **kwargs: passed to the sampler (e.g. ``window``, ``num_blocks``, ``pipelined``,
            ``guidance_scale``, ``model_kwargs``, ``progress``); with ``"auto"`` not the
            ``window``, ``num_blocks`` or ``pipelined`` it chooses, nor the options whose
            meaning differs between samplers (``callback``, ``initial``, ...).

    Returns:
        A :class:`~adapters.diffusion.SampleOutput`; for ``"serial"``, ``iterations`` is 0
        and ``stats`` counts ``num_steps`` calls. With ``"auto"``, ``out.plan`` is the
        :class:`~adapters.diffusion.planner.SamplingPlan` it followed (``planning_s``: the
        seconds this call spent planning; ``reused``: made by an earlier identical call).
    """
    if not isinstance(replan, bool):
        raise TypeError(f"replan must be a bool, got {type(replan).__name__}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    chosen_plan = None
    if sampler == "auto":
        fixed = sorted(set(kwargs) & set(_CHOSEN))
        if fixed:
            raise ValueError(f"sampler='auto' chooses {', '.join(fixed)} itself; name a "
                             "sampler (e.g. sampler='quasi_newton') to fix them")
        differ = sorted(set(kwargs) & set(_PER_SAMPLER))
        if differ:
            raise ValueError(f"sampler='auto' takes no {', '.join(differ)}: they differ "
                             "between the samplers it may choose; name the sampler to use them")
        options = {k: v for k, v in kwargs.items() if k in MODEL_OPTIONS}
        if plan is None:
            plan = plan_sampling(model, schedule, x_T, num_steps, tol=tol, max_batch=max_batch,
                                 eta=kwargs.get("eta", 0.0), cost=cost,
                                 executor=kwargs.get("executor"), reuse=not replan, **options)
        else:
            if replan:
                raise ValueError("replan=True is not used with plan= (the plan is given)")
            for name, value in (("max_batch", max_batch), ("cost", cost)):
                if value is not None:
                    raise ValueError(f"{name} is not used with plan= (the plan was made with "
                                     "its own); give one or the other")
            check_plan(plan, model, schedule, x_T, num_steps, tol=tol,
                       eta=kwargs.get("eta", 0.0), **options)
        chosen_plan = plan
        sampler, kwargs = plan.choice.sampler, {**plan.choice.options, **kwargs}
    else:
        for name, value in (("max_batch", max_batch), ("cost", cost), ("plan", plan)):
            if value is not None:
                raise ValueError(f"{name} is only used with sampler='auto'")
        if replan:
            raise ValueError("replan is only used with sampler='auto'")
    if tol is not None:
        kwargs["tol"] = tol
    if sampler == "serial":
        kwargs.pop("tol", None)
        kwargs.pop("executor", None)
        x0 = serial_sample(model, schedule, x_T, num_steps, **kwargs)
        rows = x_T.shape[0] * (2 if _guided(model, kwargs) else 1)
        stats = SamplerStats(num_steps, num_steps * rows, num_steps)
        out = SampleOutput(x0, 0, True, [], stats, 0.0, 1)
    else:
        out = PARALLEL_SAMPLERS[sampler](model, schedule, x_T, num_steps, **kwargs)
    if chosen_plan is not None:
        record_run(chosen_plan, chosen_plan.choice, out.stats.depth, model)
        out.plan = chosen_plan
    return out


__all__ = ["sample", "SAMPLERS"]


def _guided(model: Model, kwargs: dict[str, Any]) -> bool:
    """Whether a run uses classifier-free guidance (two rows per sample per call)."""
    own = getattr(model, "guidance_scale", None) if isinstance(model, Denoiser) else None
    return own is not None or kwargs.get("guidance_scale") is not None
