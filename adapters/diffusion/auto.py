"""One entry point that picks the sampler: ``sample(..., sampler="auto")``.

``"auto"`` runs what :func:`plan_sampling` predicts is fastest
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
without a probe (see :func:`~adapters.diffusion.planner.make_plan`).

This module holds the table of sampler entry points (:data:`RUNNERS`) and hands it to the
planner, which imports no sampler: the planner stands on the schedule, model, grid and
analytic modules only, below the samplers it prices.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import planner
from .model import Denoiser, Model
from .picard import picard_sample, quasi_newton_sample
from .planner import CostModel, SamplingPlan, check_plan_made, record_run
from .precision import network_dtype, serial_precision
from .samplers import (
    MODEL_OPTIONS,
    SampleOutput,
    SamplerStats,
    Schedule,
    check_x,
    denoiser_for,
    serial_sample,
    srds_sample,
)
from .schedule import SigmaSchedule, VPSchedule, check_num_steps
from .taa import taa_sample

SAMPLERS = ("auto", "serial", "srds", "picard", "quasi_newton", "taa")
#: the parallel samplers by name: what a plan may choose, and what runs it
PARALLEL_SAMPLERS = {"srds": srds_sample, "picard": picard_sample,
                     "quasi_newton": quasi_newton_sample, "taa": taa_sample}
#: the entry points the planner runs on its proxy (it imports no sampler itself)
RUNNERS = {"serial": serial_sample, **PARALLEL_SAMPLERS}
#: what ``"auto"`` chooses itself, so they may not be passed with it
_CHOSEN = ("window", "num_blocks", "pipelined")
#: options whose meaning differs between the samplers ``"auto"`` may choose
_PER_SAMPLER = ("callback", "initial", "return_iterates", "return_trajectory", "stopping",
                "partition", "coarse")


def _checked(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int,
             model_options: dict[str, Any]) -> tuple[Tensor, int, Denoiser]:
    """The planner's inputs checked: ``x_T``, ``N`` and the bound denoiser."""
    x = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    if not isinstance(schedule, (VPSchedule, SigmaSchedule)):
        raise TypeError(f"schedule must be a VPSchedule or SigmaSchedule, got "
                        f"{type(schedule).__name__}")
    network = network_dtype(model, x.dtype)
    return x, N, denoiser_for(model, schedule, model_options, network)


def measure_call_cost(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int, *,
                      max_rows: int | None = None, budget: float = 0.15, repeats: int = 2,
                      cache: bool = True, **model_options: Any) -> CostModel:
    """Time the model at a few call widths on ``x_T``'s device, dtype and shape.

    After a warm-up (calls of one step until one is no longer 10 % faster than the one
    before; the fastest after the first is one step's latency), calls of ``n`` steps
    (``n * batch`` samples, twice that with guidance), ``n`` growing 4x while the cost stays
    flat (under 1.25x the previous width's) and 2x once it grows, up to ``max_rows`` network
    rows (the last width is ``max_rows`` itself), one call each (synchronised on CUDA),
    while the probe, warm-up included, stays under ``budget`` times the predicted serial run
    (``num_steps`` one-step calls): each width is priced before it is timed. Beyond the
    widest measured the curve is extrapolated (:class:`~adapters.diffusion.CostModel`).
    Cached per (model, sample shape, dtype, device, conditioning) for the process; a
    wrapper that builds a new model object per run around the same network names it as its
    ``cost_key`` attribute.

    Raises:
        ModelOutputError: the model returned NaN/Inf during the probe.
    """
    planner.check_probe_options(max_rows, budget, repeats, cache)
    x, N, denoiser = _checked(model, schedule, x_T, num_steps, model_options)
    return planner.probe(denoiser, schedule, x, N, max_rows=max_rows, budget=budget,
                         repeats=repeats, cache=cache)


def plan_sampling(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int, *,
                  tol: float | None = None, max_batch: int | None = None, eta: float = 0.0,
                  solver: str | None = None, cost: CostModel | None = None,
                  executor: object | None = None,
                  samplers: tuple[str, ...] = planner.PARALLEL, gather_s: float = 0.0,
                  budget: float | None = None, exhaustive: bool = False, reuse: bool = False,
                  **model_options: Any) -> SamplingPlan:
    """Predict the wall-clock of each sampler configuration on this device; pick the fastest.

    How candidates are priced, what planning may cost, when it stops and how plans are
    reused: :func:`adapters.diffusion.planner.make_plan`, which this calls with the
    samplers' entry points (:data:`RUNNERS`).

    Args:
        model, schedule, x_T, num_steps: as in :func:`~adapters.diffusion.srds_sample`
            (``x_T [batch, *sample]`` fixes the rows per step, dtype and device).
        tol: the samplers' tolerance (``None``: each sampler's default).
        max_batch: network rows one call may hold (memory); candidates wider are left out.
        eta: DDIM noise, as in the samplers.
        solver: the samplers' ``sampler=`` (the solver; default: the schedule's).
        cost: the device's :class:`~adapters.diffusion.CostModel`; default: measured here
            (:func:`measure_call_cost`, cached).
        executor: a :class:`pint.DistributedExecutor` over ``R`` ranks: every parallel
            candidate splits each model call over the ranks, contiguous slices of its steps
            (SRDS blocks, window steps), so a call of ``n`` steps costs the latency of
            ``ceil(n / R) * rows_per_step`` rows (the widest rank's slice; ``max_batch``
            applies to it as well) plus ``gather_s`` (the all_gather of the outputs, per
            call, default 0). Every rank gets rank 0's plan (broadcast).
        samplers: the parallel samplers to consider.
        budget: the share of the predicted serial time planning may spend (default
            :data:`~adapters.diffusion.planner.PLAN_BUDGET` when the device is measured,
            unlimited with a given ``cost``).
        exhaustive: price every candidate (no bound, no budget).
        reuse: return the plan kept for an identical earlier request, if any.
        **model_options: the model options, as in the samplers.

    Returns:
        A :class:`~adapters.diffusion.SamplingPlan` (``planning_s``: this call's seconds).
        A parallel candidate is chosen only when its predicted time, raised by its error
        band, is below the serial time.
    """
    x, N, denoiser = _checked(model, schedule, x_T, num_steps, model_options)
    return planner.make_plan(denoiser, schedule, x, N, runners=RUNNERS, tol=tol,
                             max_batch=max_batch, eta=eta, solver=solver, cost=cost,
                             executor=executor, samplers=samplers, gather_s=gather_s,
                             budget=budget, exhaustive=exhaustive, reuse=reuse)


def check_plan(plan: SamplingPlan, model: Model, schedule: Schedule, x_T: Tensor,
               num_steps: int, *, tol: float | None = None, eta: float = 0.0,
               solver: str | None = None, **model_options: Any) -> None:
    """Check that ``plan`` was made by :func:`plan_sampling` for a run like this one: the
    same model, sample shape, batch, dtype, device, conditioning, grid (schedule, solver,
    steps), tolerance and ``eta``. A plan made for another run predicts that run, and the
    calls :func:`~adapters.diffusion.planner.record_run` stores after this one would be
    filed under it.

    Raises:
        TypeError: ``plan`` is not a :class:`~adapters.diffusion.SamplingPlan`.
        ValueError: naming ``plan`` and each thing that differs.
    """
    check_plan_made(plan)
    x, N, denoiser = _checked(model, schedule, x_T, num_steps, model_options)
    planner.check_plan_matches(plan, denoiser, schedule, x, N, tol, eta, solver)


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
        out = SampleOutput(x0, 0, True, [], stats, 0.0, 1,
                           precision=serial_precision(model, x_T.dtype))
    else:
        out = PARALLEL_SAMPLERS[sampler](model, schedule, x_T, num_steps, **kwargs)
    if chosen_plan is not None:
        record_run(chosen_plan, chosen_plan.choice, out.stats.depth, model)
        out.plan = chosen_plan
    return out


__all__ = ["sample", "plan_sampling", "measure_call_cost", "check_plan", "SAMPLERS",
           "PARALLEL_SAMPLERS", "RUNNERS"]


def _guided(model: Model, kwargs: dict[str, Any]) -> bool:
    """Whether a run uses classifier-free guidance (two rows per sample per call)."""
    own = getattr(model, "guidance_scale", None) if isinstance(model, Denoiser) else None
    return own is not None or kwargs.get("guidance_scale") is not None
