"""Samplers as plain functions over a model: serial DDIM/DDPM and SRDS (Parareal).

``srds_sample`` is :func:`pint.parareal` with a one-step DDIM coarse propagator and the
sampler's own steps as the fine propagator, over ``num_blocks`` blocks of the ``N``-step
grid. Run to the end it returns exactly the serial sample; stopped early (``tol``), it
returns a sample whose last iteration moved it by less than ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import pint
from pint.stopping import FinalStateChange, MaxAbsChange

from .grid import SamplingGrid
from .model import Denoiser, Model
from .ode import GridStep, block_partition
from .progress import check_progress, progress_bar
from .schedule import SigmaSchedule, VPSchedule, check_num_steps

Schedule = VPSchedule | SigmaSchedule

#: default ``tol`` per state dtype: the max-abs change of the final sample (data in [-1, 1])
#: in one iteration at which SRDS stops. Parareal converges superlinearly, so the error of
#: the returned sample is typically 10-100x below the last change. The float32 floor of the
#: serial sampler itself (:func:`serial_floor`) is model-dependent: 3e-6 for the bundled
#: digits model at N = 1000, ~1e-3 for cosine-schedule models whose first step divides by
#: sqrt(alpha_bar_T); a tol below the floor never triggers, so the default sits above both.
DEFAULT_TOL = {torch.float64: 1e-6, torch.float32: 2e-3, torch.float16: 2e-2,
               torch.bfloat16: 5e-2}


COARSE_ORDERS = {"ddim": 1, "dpm2": 2}


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
        tol: the tolerance used (``DEFAULT_TOL`` of the dtype when none was given).
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


def check_x(x_T: object, model: Model) -> Tensor:
    """``x_T`` checked: a finite floating-point tensor ``[batch, *sample]`` (the model's
    ``sample_shape`` where it has one); a ``TypeError``/``ValueError`` naming it otherwise."""
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor [batch, *sample], got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"x_T must be floating point, got {x_T.dtype}")
    expected = getattr(model, "sample_shape", None)
    if expected is not None and tuple(x_T.shape[1:]) != tuple(expected):
        raise ValueError(
            f"x_T must have shape [batch, {', '.join(map(str, expected))}] for this model, "
            f"got {tuple(x_T.shape)}"
        )
    if x_T.dim() < 2:
        raise ValueError(f"x_T must be [batch, *sample] (at least 2-D), got {tuple(x_T.shape)}")
    if x_T.numel() == 0:
        raise ValueError(f"x_T must hold at least one sample, got shape {tuple(x_T.shape)}")
    check_finite_input("x_T", x_T)
    return x_T


def _checked(denoiser: Denoiser, solve: Callable[[], pint.Result]) -> pint.Result:
    """Run ``solve`` and then the denoiser's deferred NaN/Inf check, which also runs first
    when the engine finds a non-finite state, so that a bad model output is reported by
    its timestep (:class:`ModelOutputError`) rather than as the state it spoiled."""
    try:
        res = solve()
    except pint.NonFiniteStateError:
        denoiser.check()
        raise
    denoiser.check()
    return res


def initial_state(grid: SamplingGrid, x_T: Tensor) -> Tensor:
    """The sampler's first state: ``x_T * init_noise_sigma``, with zeroed history slots
    ``[batch, S, *sample]`` for multistep solvers."""
    x = x_T if grid.init_noise_sigma == 1.0 else x_T * grid.init_noise_sigma
    if grid.num_slots == 1:
        return x
    return torch.stack([x] + [torch.zeros_like(x)] * (grid.num_slots - 1), 1)


def sample_of(grid: SamplingGrid, state: Tensor) -> Tensor:
    """The sample ``[batch, *sample]`` held by one state (slot 0 of a multistep state)."""
    return state if grid.num_slots == 1 else state[:, 0]


def check_finite_input(name: str, value: Tensor, dtype: torch.dtype | None = None) -> None:
    """``value`` must hold finite numbers (``dtype``: where it holds them once converted to
    the run's dtype, which a float32 warm start can overflow in a float16 run)."""
    if value.is_meta:
        raise ValueError(f"{name} is a meta tensor, which holds no values; give it on a real "
                         "device (cpu, cuda, ...)")
    if not bool(torch.isfinite(value).all()):
        if dtype is None:
            raise ValueError(f"{name} must be finite (it contains NaN or Inf)")
        raise ValueError(f"{name} must be finite in x_T's dtype {dtype}: converted to it and "
                         "anchored at x_T, its values overflow (Inf or NaN)")


#: the keywords that describe the model and its conditioning (see :class:`Denoiser`); every
#: sampler takes them as ``**model_options``, or wrapped once: ``model = Denoiser(net, ...)``
MODEL_OPTIONS = ("prediction_type", "model_kwargs", "guidance_scale", "uncond_kwargs",
                 "check_finite")


def denoiser_for(model: Model | Denoiser, schedule: Schedule,
                 model_options: Mapping[str, Any]) -> Denoiser:
    """The run's :class:`Denoiser`: ``model`` wrapped with ``model_options``, or a
    :class:`Denoiser` given as ``model`` bound to ``schedule``."""
    unknown = sorted(set(model_options) - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the model options are "
                        f"{', '.join(MODEL_OPTIONS)}")
    if isinstance(model, Denoiser):
        if model_options:
            raise ValueError(f"model is a Denoiser, which holds the model options: pass "
                             f"{sorted(model_options)} to Denoiser(...), not to the sampler")
        return model.bind(schedule)
    return Denoiser(model, **model_options).bind(schedule)


def prepare(model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options):
    """What every sampler starts from, its common arguments checked: ``(N, denoiser, grid,
    noise, problem)`` with ``noise`` drawn (``[N, *x_T.shape]``) for a stochastic grid and
    ``problem.y0`` the first state (:func:`initial_state`)."""
    if not isinstance(schedule, (VPSchedule, SigmaSchedule)):
        raise TypeError("schedule must be a VPSchedule or SigmaSchedule (see "
                        f"adapters.diffusers.schedule_from_scheduler), got {type(schedule).__name__}")
    x_T = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    if sampler is not None and not isinstance(sampler, str):
        raise TypeError(f"sampler must be a solver name, got {type(sampler).__name__}")
    grid = SamplingGrid.build(schedule, N, sampler, eta)
    denoiser = denoiser_for(model, schedule, model_options)
    if grid.stochastic:
        if noise is None:
            noise = torch.stack([
                torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype,
                            device=generator.device if generator is not None else x_T.device)
                for _ in range(N)
            ]).to(x_T.device)
        elif not isinstance(noise, Tensor) or tuple(noise.shape) != (N, *x_T.shape):
            raise ValueError(f"noise must have shape {(N, *x_T.shape)}, got "
                             f"{tuple(getattr(noise, 'shape', ())) or type(noise).__name__}")
        else:
            check_finite_input("noise", noise)
    elif noise is not None:
        raise ValueError(f"noise is given, but the {grid.solver} sampler here is deterministic "
                         "(eta=0); pass eta > 0, sampler='ddpm' or an ancestral solver")
    problem = pint.ODEProblem(None, initial_state(grid, x_T), (0.0, float(N)))
    return N, denoiser, grid, noise, problem


def check_callback(callback: object) -> None:
    """``callback`` is ``None`` or callable (a ``TypeError`` otherwise)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")


@torch.no_grad()  # sampling never needs the autograd graph
def serial_sample(
    model: Model,
    schedule: VPSchedule,
    x_T: Tensor,
    num_steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    sampler: str | None = None,
    noise: Tensor | None = None,
    progress: bool = False,
    **model_options: Any,
) -> Tensor:
    """The plain serial sampler: ``num_steps`` model calls one after another.

    ``sampler``: the solver, by default the schedule's own (``"ddim"`` on a
    :class:`VPSchedule`, with ``eta``; ``"ddpm"``: ancestral, as diffusers'
    DDPMScheduler; the diffusers scheduler's solver on a :class:`SigmaSchedule`).
    Stochastic samplers draw their noise ``[N, *x_T.shape]`` step by step from
    ``generator`` (or take ``noise``). ``**model_options`` (``prediction_type``,
    ``model_kwargs``, ``guidance_scale``, ``uncond_kwargs``, ``check_finite``) describe the
    model as :class:`~adapters.diffusion.Denoiser` does; or pass ``model`` as a
    ``Denoiser``. ``progress``: a tqdm bar on stderr, one tick per model call, total
    ``num_steps``. Returns the sample, shape and dtype of ``x_T`` (``[batch, *sample]``).
    """
    check_progress(progress)
    N, denoiser, grid, noise, problem = prepare(
        model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options)
    fine = GridStep(denoiser, grid, fine=True, noise=noise)
    with progress_bar(progress, N, "serial", denoiser=denoiser):
        res = _checked(denoiser, lambda: pint.serial(problem, fine, num_blocks=1))
    return sample_of(grid, res.y)


@torch.no_grad()  # sampling never needs the autograd graph
def srds_sample(
    model: Model,
    schedule: VPSchedule,
    x_T: Tensor,
    num_steps: int,
    num_blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    pipelined: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[pint.IterationInfo], None] | None = None,
    *,
    sampler: str | None = None,
    noise: Tensor | None = None,
    stopping: str = "final",
    return_iterates: bool = False,
    partition: Tensor | list[int] | None = None,
    coarse: str = "ddim",
    executor: object | None = None,
    initial: Tensor | None = None,
    progress: bool = False,
    **model_options: Any,
) -> SampleOutput:
    """Self-Refining Diffusion Sampling: the serial sampler's result by Parareal iterations.

    Args:
        model: ``model(x [R, *sample], t [R], **model_kwargs) -> [R, *sample]`` (``t``: the
            scheduler's timestep values), or a :class:`~adapters.diffusion.Denoiser` that
            wraps it once with its conditioning (then no ``**model_options``).
        schedule: the noise schedule, its grid and solver (:class:`VPSchedule`,
            :class:`SigmaSchedule`, e.g. from ``adapters.diffusers.from_diffusers``).
        x_T: the initial noise ``[batch, *sample]``; its dtype and device are kept.
        num_steps: ``N``, the serial sampler's steps.
        num_blocks: ``B``; default ``round(sqrt(N))`` for the sweep (which minimises its
            ``B + k (M + B)`` calls) and ``round(2 sqrt(N))`` pipelined (its ``k M + B`` calls
            are smallest near ``B = sqrt(k N)``, with ``k ~ 3-4`` iterations; see
            ``benchmarks/bench_partition.py``). Blocks differ in length by at most one step.
        tol: stop once the stopping rule's change is at most ``tol`` (data units; default
            ``DEFAULT_TOL[x_T.dtype]``, about float round-off of the serial sampler).
        max_iters: iteration limit (default ``B``: the serial sample exactly).
        pipelined: wavefront schedule (same sample, fewer sequential model calls).
        eta: DDIM noise (``sampler="ddim"``); stochastic samplers draw all per-step noise up
            front from ``generator``, which makes the recursion deterministic.
        generator: for the noise of stochastic samplers.
        callback: sees a :class:`pint.IterationInfo` after every iteration
            (``info.boundaries[-1]`` is the current sample).
        sampler: the solver (default: the schedule's; ``"ddim"`` or ``"ddpm"`` on a
            :class:`VPSchedule`).
        noise: explicit per-step noise ``[N, *x_T.shape]`` for stochastic samplers.
        stopping: ``"final"`` (the paper: max-abs change of the final sample),
            ``"boundaries"`` (every block boundary) or ``"sigma"`` (ParaDiGMS-like: each
            boundary's change squared over ``dim * sigma^2`` below ``tol^2``).
        return_iterates: keep the sample after every iteration in ``out.iterates``.
        partition: explicit block edges on the grid (ints from 0 to N).
        coarse: the coarse jump across a block: ``"ddim"`` (one model call) or
            ``"dpm2"`` (DPM-Solver++(2S), two sequential calls, second order).
        executor: passed to :func:`pint.parareal`. With :class:`pint.DistributedExecutor`
            (under torchrun, the model replicated on every rank) every rank returns the same
            sample; ``stats.model_calls`` and ``model_rows`` count this rank's own calls and
            ``stats.depth`` is the critical path across ranks. A ``callback`` or
            ``return_iterates`` makes the ranks gather all boundaries every iteration.
        initial: warm start from an earlier run (a neighbouring ``x_T``, the previous frame
            of a video): its trajectory ``[N + 1, *x_T.shape]`` (``out.trajectory`` of a
            window sampler) or block boundaries ``[B + 1, *x_T.shape]`` (``out.boundaries``
            of SRDS with the same blocks). Its increments, anchored at ``x_T``, replace the
            coarse sweep (one batched coarse call instead of ``B`` sequential ones).
        progress: a tqdm bar on stderr that advances by one per model call; its total is
            the most calls the run can make (:func:`srds_max_calls`: all ``max_iters``
            iterations), set to the calls made when it stops early; the postfix shows the
            iteration and its change.
        **model_options: ``prediction_type`` (overrides the schedule's), ``model_kwargs``,
            ``guidance_scale``, ``uncond_kwargs`` (conditioning and classifier-free guidance
            in one batched call) and ``check_finite``, as :class:`Denoiser` takes them.

    Raises:
        ValueError, TypeError: bad input, naming the argument.
        ModelOutputError: the model returned NaN/Inf (names the timestep).
    """
    check_callback(callback)
    check_progress(progress)
    N, denoiser, grid, noise, problem = prepare(
        model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options)
    if partition is not None and num_blocks is not None:
        raise ValueError("give num_blocks or partition, not both (partition fixes the blocks)")
    if partition is None:
        if num_blocks is None:
            num_blocks = min(N, max(1, round((2 if pipelined else 1) * math.sqrt(N))))
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int):
            raise TypeError(f"num_blocks must be an int, got {type(num_blocks).__name__}")
        if not 1 <= num_blocks <= N:
            raise ValueError(f"num_blocks must be between 1 and num_steps={N}, got {num_blocks}")
        edges = block_partition(N, num_blocks)
    else:
        try:
            edges = torch.as_tensor(partition, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("partition must be a 1-D sequence of whole grid positions 0 .. "
                            f"num_steps, got {partition!r}") from None
        if edges.dim() != 1:
            raise ValueError(f"partition must be 1-D, got shape {tuple(edges.shape)}")
        if not bool((edges == edges.round()).all()):
            raise ValueError("partition must hold whole grid positions 0 .. num_steps")
    if tol is None:
        tol = DEFAULT_TOL.get(x_T.dtype, 1e-3)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol):
        raise TypeError(f"tol must be a finite number, got {tol!r}")
    if tol <= 0 and max_iters is None:
        raise ValueError(f"tol must be > 0 (or give max_iters), got {tol}")
    rule = _stopping_rule(stopping, float(max(tol, 0.0)), grid, edges, x_T)
    if coarse not in COARSE_ORDERS:
        raise ValueError(f"coarse must be one of {sorted(COARSE_ORDERS)}, got {coarse!r}")
    G = GridStep(denoiser, grid, fine=False, noise=noise, order=COARSE_ORDERS[coarse])
    fine = GridStep(denoiser, grid, fine=True, noise=noise)
    iterates: list[Tensor] = []
    guess = None
    if initial is not None:
        B = edges.numel() - 1
        y0 = problem.y0
        if not isinstance(initial, Tensor) or tuple(initial.shape[1:]) != tuple(y0.shape) \
                or initial.shape[0] not in (N + 1, B + 1):
            raise ValueError(f"initial must have shape {(N + 1, *y0.shape)} (a trajectory) or "
                             f"{(B + 1, *y0.shape)} (block boundaries), got "
                             f"{tuple(getattr(initial, 'shape', ())) or type(initial).__name__}")
        check_finite_input("initial", initial)
        guess = initial.to(device=x_T.device, dtype=x_T.dtype)
        if guess.shape[0] == N + 1:
            guess = guess[edges.round().long().to(guess.device)]
        guess = y0 + (guess - guess[0])
        check_finite_input("initial", guess, x_T.dtype)

    def on_iteration(info: pint.IterationInfo) -> None:
        if return_iterates:
            iterates.append(sample_of(grid, info.boundaries[-1]).clone())
        if bar is not None and info.iteration > 0:
            bar.set_postfix_str(f"iter={info.iteration}, change={info.change:.2e}",
                                refresh=False)
        if callback is not None:
            callback(info)

    # an executor gathers every boundary on every rank for a callback: not for the bar alone
    watch = return_iterates or callback is not None or (progress and executor is None)
    bound = srds_max_calls(edges, max_iters, pipelined, COARSE_ORDERS[coarse], guess is not None)
    with progress_bar(progress, bound, "srds", denoiser=denoiser) as bar:
        res = _checked(denoiser, lambda: pint.parareal(
            problem, G, fine, tol=float(max(tol, 0.0)), max_iters=max_iters,
            pipelined=pipelined, partition=edges, stopping=rule, executor=executor,
            initial=guess, callback=on_iteration if watch else None))
        if bar is not None and res.converged:  # stopped early: the work is done
            bar.total = bar.n
            bar.refresh()
    # on one device every model call waits for the previous one: depth = calls
    depth = res.stats.depth if executor is not None else denoiser.calls
    stats = SamplerStats(denoiser.calls, denoiser.rows, depth, res.stats)
    return SampleOutput(sample_of(grid, res.y), res.iterations, res.converged, res.history, stats, float(tol),
                        res.num_blocks, torch.stack(iterates) if return_iterates else None,
                        boundaries=res.boundaries)


def srds_max_calls(edges: Tensor, max_iters: int | None, pipelined: bool = False,
                   coarse_calls: int = 1, warm_start: bool = False) -> int:
    """An upper bound on the model calls of :func:`srds_sample` on the blocks ``edges``
    (grid positions ``0 .. N``) when all ``K = min(max_iters, B)`` iterations run.

    Sweep: exactly ``B g + sum_{k=1..K} (f_k + (B - k) g)`` with ``g = coarse_calls`` per
    coarse jump (``B g`` becomes ``g`` with a warm start) and ``f_k`` the longest block
    still refined in iteration ``k``. Pipelined: every tick advances all running solves, so
    the ticks are the longest dependency chain to ``U^K_B``: ``B`` edges, each a coarse
    jump (one tick) or, at most ``K`` times, a fine solve of block ``i`` (``L_i`` ticks),
    at most ``B + (the K largest L_i - 1)`` ticks (``N`` when ``K = B``), plus one for a
    warm start's batched coarse call; a tick is one call when coarse and fine steps batch
    together (``g = 1``), else at most ``1 + g``."""
    lengths = (edges[1:] - edges[:-1]).round().long().tolist()
    B = len(lengths)
    valid = isinstance(max_iters, int) and not isinstance(max_iters, bool)
    K = max(0, min(max_iters, B)) if valid else B  # pint.parareal rejects a bad max_iters
    g = coarse_calls
    if not pipelined:
        return (g if warm_start else B * g) + sum(max(lengths[k - 1:]) + (B - k) * g
                                                  for k in range(1, K + 1))
    ticks = B + sum(sorted((max(L - 1, 0) for L in lengths), reverse=True)[:K]) + int(warm_start)
    return ticks * (1 if g == 1 else 1 + g)


def serial_floor(model: Model, schedule: VPSchedule, x_T: Tensor, num_steps: int,
                 singles: int = 2, **kwargs: Any) -> float:
    """How reproducible the serial sampler is in ``x_T``'s dtype: the max-abs difference
    between sampling ``x_T`` as one batch and its first ``singles`` samples one at a time
    (batch composition changes round-off; the ODE amplifies it). Errors of a parallel
    sampler below this floor are noise. Costs ``(1 + singles) * num_steps`` model calls."""
    batch = serial_sample(model, schedule, x_T, num_steps, **kwargs)
    k = min(singles, x_T.shape[0])
    alone = torch.cat([serial_sample(model, schedule, x_T[i:i + 1], num_steps, **kwargs)
                       for i in range(k)])
    return float((batch[:k] - alone).abs().max())


class SigmaScaledChange:
    """ParaDiGMS's per-step rule on block boundaries: stop when every boundary ``i`` has
    ``||change_i||^2 / (dim * sigma_i^2) <= tol^2``, ``sigma_i = sqrt(1 - alpha_bar)`` at
    the boundary's noise level (1 at pure noise, small near the data)."""

    def __init__(self, tol: float, sigma: Tensor, dim: int) -> None:
        self.tol, self.sigma, self.dim = tol, sigma, dim

    def __call__(self, new: Tensor, old: Tensor, index: Tensor) -> tuple[float, bool]:
        d = (new - old).double().reshape(new.shape[0], -1).pow(2).sum(1)
        s = self.sigma.to(new.device)[index].clamp(min=1e-4)
        r = (d / (self.dim * s**2)).sqrt()
        change = float(r.max())
        return change, change <= self.tol


def _stopping_rule(kind: str, tol: float, grid: SamplingGrid, edges: Tensor, x_T: Tensor):
    if kind == "final":
        return FinalStateChange(tol)
    if kind == "boundaries":
        return MaxAbsChange(tol)
    if kind == "sigma":
        e = edges.round().to(torch.int64)
        level = torch.where(e > 0, grid.sigma_to[(e - 1).clamp(min=0)], grid.sigma_from[0])
        return SigmaScaledChange(tol, level, x_T[0].numel() * grid.num_slots)
    raise ValueError(f"stopping must be 'final', 'boundaries' or 'sigma', got {kind!r}")


# the names these helpers had before they were shared (benchmarks and planner.py use them)
_check_x = check_x
_setup = prepare
