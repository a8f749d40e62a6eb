"""Samplers as plain functions over a model: serial DDIM/DDPM and SRDS (Parareal).

``srds_sample`` is :func:`pint.parareal` with a one-step DDIM coarse propagator and the
sampler's own steps as the fine propagator, over ``num_blocks`` blocks of the ``N``-step
grid. Run to the end it returns exactly the serial sample; stopped early (``tol``), it
returns a sample whose last iteration moved it by less than ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import pint
from pint.stopping import FinalStateChange, MaxAbsChange

from .grid import SamplingGrid
from .inputs import (  # noqa: F401  (check_x, denoiser_for, ... : re-exported, as before)
    MODEL_OPTIONS,
    Schedule,
    check_callback,
    check_finite_input,
    check_x,
    denoiser_for,
    initial_state,
    prepare,
    sample_of,
)
from .model import Denoiser, Model
from .ode import GridStep, block_partition
from .output import SampleOutput, SamplerStats
from .precision import SRDS_TOL, resolve_tol
from .progress import check_progress, progress_bar
from .schedule import VPSchedule

#: default ``tol`` per state dtype: the max-abs change of the final sample (data in [-1, 1])
#: in one iteration at which SRDS stops. Parareal converges superlinearly, so the error of
#: the returned sample is typically 10-100x below the last change. The float32 floor of the
#: serial sampler itself (:func:`serial_floor`) is model-dependent: 3e-6 for the bundled
#: digits model at N = 1000, ~1e-3 for cosine-schedule models whose first step divides by
#: sqrt(alpha_bar_T); a tol below the floor never triggers, so the default sits above both.
#: (:data:`.precision.SRDS_TOL`, by the network's dtype.)
DEFAULT_TOL = SRDS_TOL


COARSE_ORDERS = {"ddim": 1, "dpm2": 2}


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
    return sample_of(grid, res.y).to(x_T.dtype)


@torch.no_grad()  # sampling never needs the autograd graph
def srds_sample(
    model: Model,
    schedule: VPSchedule,
    x_T: Tensor,
    num_steps: int,
    num_blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    pipelined: bool = True,
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
            ``DEFAULT_TOL`` of the network's dtype: about float32 round-off of the serial
            sampler, or a half precision network's own noise, see :mod:`.precision`).
        max_iters: iteration limit (default ``B``: the serial sample exactly).
        pipelined: the wavefront schedule (default; the same sample as the sweep with
            ``pipelined=False``, in fewer sequential model calls: 26-32 against 63-71 for
            ``N = 50`` on the bundled digits model).
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
            an estimate of the calls the run will make (:class:`CallEstimate`: a typical
            run's at first, then re-estimated after every iteration from the change's
            convergence rate; never above :func:`srds_max_calls`), the calls made at the
            end; the postfix shows the iteration and its change.
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
    edges = _block_edges(N, num_blocks, partition, pipelined)
    precision = resolve_tol(tol, SRDS_TOL, denoiser.input_dtype, "DEFAULT_TOL")
    tol = precision.tol
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
    guess = None if initial is None else _warm_guess(initial, edges, problem.y0, N,
                                                     denoiser.input_dtype)

    def on_iteration(info: pint.IterationInfo) -> None:
        if return_iterates:
            iterates.append(sample_of(grid, info.boundaries[-1]).clone())
        if bar is not None:
            bar.total = estimate.update(bar.n, info.iteration, info.change)
            if info.iteration > 0:
                bar.set_postfix_str(f"iter={info.iteration}, change={info.change:.2e}",
                                    refresh=False)
        if callback is not None:
            callback(info)

    # an executor gathers every boundary on every rank for a callback: not for the bar alone
    watch = return_iterates or callback is not None or (progress and executor is None)
    estimate = CallEstimate(edges, max_iters, pipelined, COARSE_ORDERS[coarse],
                            guess is not None, float(max(tol, 0.0)))
    with progress_bar(progress, estimate.first, "srds", denoiser=denoiser) as bar:
        res = _checked(denoiser, lambda: pint.parareal(
            problem, G, fine, tol=float(max(tol, 0.0)), max_iters=max_iters,
            pipelined=pipelined, partition=edges, stopping=rule, executor=executor,
            initial=guess, callback=on_iteration if watch else None))
        if bar is not None:  # the run is over: the bar reads 100 %
            bar.total = bar.n
            bar.refresh()
    # on one device every model call waits for the previous one: depth = calls
    depth = res.stats.depth if executor is not None else denoiser.calls
    stats = SamplerStats(denoiser.calls, denoiser.rows, depth, res.stats)
    return SampleOutput(sample_of(grid, res.y).to(x_T.dtype), res.iterations, res.converged,
                        res.history, stats, float(tol), res.num_blocks,
                        torch.stack(iterates) if return_iterates else None,
                        boundaries=res.boundaries, precision=precision)


def _block_edges(N: int, num_blocks: object, partition: object, pipelined: bool) -> Tensor:
    """SRDS's block edges ``[B + 1]`` (grid positions, float64) from ``num_blocks`` (default
    ``round(sqrt(N))``, twice that pipelined) or an explicit ``partition``, checked."""
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
    return edges


def _warm_guess(initial: object, edges: Tensor, y0: Tensor, N: int,
                network: torch.dtype) -> Tensor:
    """SRDS's warm start: ``initial`` (a trajectory ``[N + 1, ...]`` or boundaries
    ``[B + 1, ...]``) read at the block edges, its increments anchored at the first state
    ``y0``, in the state's dtype (and finite in the ``network``'s)."""
    B = edges.numel() - 1
    if not isinstance(initial, Tensor) or tuple(initial.shape[1:]) != tuple(y0.shape) \
            or initial.shape[0] not in (N + 1, B + 1):
        raise ValueError(f"initial must have shape {(N + 1, *y0.shape)} (a trajectory) or "
                         f"{(B + 1, *y0.shape)} (block boundaries), got "
                         f"{tuple(getattr(initial, 'shape', ())) or type(initial).__name__}")
    check_finite_input("initial", initial)
    guess = initial.to(device=y0.device, dtype=y0.dtype)
    if guess.shape[0] == N + 1:
        guess = guess[edges.round().long().to(guess.device)]
    guess = y0 + (guess - guess[0])
    check_finite_input("initial", guess, network)
    return guess


#: the iterations a typical SRDS run needs (the paper: 3-5; digits N = 1000: 4): the
#: progress bar's first estimate
TYPICAL_ITERATIONS = 4


class CallEstimate:
    """The SRDS progress bar's total: the model calls the run will likely make.

    First a typical run's (:data:`TYPICAL_ITERATIONS` iterations, :func:`srds_max_calls`);
    after iteration ``k`` with change ``c_k`` the calls made plus the iterations still
    needed at the observed rate, ``ceil(log(tol / c_k) / log(c_k / c_{k-1}))``, times the
    calls an iteration has cost so far; never below the calls made, never above the bound
    of all ``max_iters`` iterations."""

    def __init__(self, edges: Tensor, max_iters: int | None, pipelined: bool,
                 coarse_calls: int, warm_start: bool, tol: float) -> None:
        B = edges.numel() - 1
        valid = isinstance(max_iters, int) and not isinstance(max_iters, bool)
        self.K = max(0, min(max_iters, B)) if valid else B
        self.bound = srds_max_calls(edges, max_iters, pipelined, coarse_calls, warm_start)
        self.first = srds_max_calls(edges, min(self.K, TYPICAL_ITERATIONS), pipelined,
                                    coarse_calls, warm_start)
        self.tol, self.changes, self.start = tol, [], 0

    def update(self, done: int, k: int, change: float) -> int:
        """The total after iteration ``k`` (0: the coarse sweep), ``done`` calls made."""
        if k == 0:
            self.start = done
            return max(done, self.first)
        self.changes.append(change)
        per = (done - self.start) / k
        if self.tol <= 0 or not math.isfinite(change):
            need = self.K - k
        elif change <= self.tol:
            need = 0
        elif len(self.changes) > 1 and 0 < change < self.changes[-2]:
            rate = change / self.changes[-2]
            need = math.ceil(math.log(self.tol / change) / math.log(rate))
        else:
            need = max(1, TYPICAL_ITERATIONS - k)
        need = min(max(need, 0), self.K - k)
        return int(min(self.bound, max(done, math.ceil(done + need * per))))


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
