"""Which sampler is fastest *on this device*: a measured cost model and a planner.

A parallel sampler trades sequential model calls for wider ones. Whether that pays depends
on the device: a call of ``R`` rows costs about as much as one row on a GPU below its knee,
and ``R`` times as much on a saturated GPU or a CPU. :func:`plan_sampling` measures the
latency of one model call against its rows on the user's model, shape, dtype, device and
conditioning (:func:`measure_call_cost`, a few timed calls, cached for the process),
predicts each candidate's call sequence with a model-free proxy, sums the latencies of its
calls, and picks the fastest, choosing a parallel sampler only when its lead over serial
exceeds the estimate's error.

The proxy. A candidate's number of calls and the rows of each come from running it on the
exact denoiser of a Gaussian mixture (:class:`~adapters.diffusion.GaussianMixtureDenoiser`,
64 dimensions) on the same grid, solver, tolerance and noise, at almost no cost. A real
model converges somewhat differently: on the digits UNet at N = 100 (tol 1e-3) the proxy
predicts 18, 11 and 9 quasi-Newton calls for windows 16, 32 and 64 where the UNet needs
21, 15 and 13, Picard 20 and 12 for 22 and 14, SRDS pipelined 36 for 36; at N = 1000
(``benchmarks/bench_samplers.py``) mixture and UNet differ by up to 30 % either way. A
proxy estimate carries a 30 % error band. After a run,
:func:`record_run` (which ``sample(sampler="auto")`` calls) stores the calls measured for
that candidate, model and grid; later plans use them (10 % band).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .analytic import GaussianMixtureDenoiser
from .grid import SamplingGrid
from .model import Denoiser, Model, ModelOutputError
from .picard import picard_sample, quasi_newton_sample
from .samplers import Schedule, check_x, denoiser_for, serial_sample, srds_sample
from .schedule import SigmaSchedule, VPSchedule, check_num_steps
from .taa import taa_sample

#: relative error of a candidate's predicted calls: from the mixture proxy, and from a
#: recorded run of the same candidate (see the module docstring)
PROXY_ERROR = 0.30
RECORDED_ERROR = 0.10
#: the window widths and SRDS block counts (multiples of sqrt(N)) the planner considers
WINDOWS = (8, 16, 32, 64, 128)
BLOCK_FACTORS = (1.0, 2.0, 4.0)
#: the :func:`~adapters.diffusion.taa_sample` setting the planner considers: the fewest calls
#: within Picard's rows in ``benchmarks/bench_fastest.py`` (secant coupling, memory 1,
#: ParaDiGMS's change test, extrapolated start; up to 1.4x fewer calls than Picard)
TAA_OPTIONS = {"linear": "secant", "memory": 1, "test": "change", "init": "extrapolate"}
#: the parallel samplers by name: what a plan may choose, and what runs it
PARALLEL_SAMPLERS = {"srds": srds_sample, "picard": picard_sample,
                     "quasi_newton": quasi_newton_sample, "taa": taa_sample}


# ---------------------------------------------------------------------------- cost model


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class CostModel:
    """Seconds per model call as a function of its network rows.

    Piecewise linear through measured ``(rows, seconds)`` points; below the first point
    the first latency. Beyond the last point a given curve continues with the slope of
    its last two points; a measured one (``source == "probe"``) with that slope but at
    least half the cost per row of its last point (what was not measured is never assumed
    flat; a CPU's cost per row still falls a little with the batch, so fully proportional
    growth would overprice wide calls).
    ``engine_s`` is added per call by the planner (the sampler's own work, from the proxy
    runs, unless given).

    Attributes:
        rows: increasing network-row counts ``[P]``.
        seconds: the latency of one call at each ``[P]``.
        source: where the points come from (``"probe"``, ``"given"``).
        engine_s: seconds of sampler work per call; ``None``: measured by the planner.
    """

    rows: tuple[int, ...]
    seconds: tuple[float, ...]
    source: str = "given"
    engine_s: float | None = None

    def __post_init__(self) -> None:
        if len(self.rows) == 0 or len(self.rows) != len(self.seconds):
            raise ValueError("rows and seconds must be non-empty and of equal length")
        if not all(_is_int(r) and r >= 1 for r in self.rows):
            raise ValueError(f"rows must be ints >= 1 (network rows per call), got {self.rows}")
        if any(b <= a for a, b in zip(self.rows, self.rows[1:], strict=False)):
            raise ValueError(f"rows must increase, got {self.rows}")
        if not all(_is_real(s) for s in self.seconds):
            raise TypeError(f"seconds must be real numbers, got {self.seconds}")
        if any(not (math.isfinite(s) and s >= 0) for s in self.seconds):
            raise ValueError(f"seconds must be finite and >= 0, got {self.seconds}")
        if 0 in self.seconds:  # the planner compares candidates by the ratio of their times
            raise ValueError(f"seconds must be > 0 (a model call takes time; the planner "
                             f"divides by the predicted times), got {self.seconds}")
        if self.source not in ("probe", "given"):
            raise ValueError(f"source must be 'probe' or 'given', got {self.source!r}")
        if self.engine_s is not None:
            if not _is_real(self.engine_s):
                raise TypeError(f"engine_s must be a real number of seconds or None, got "
                                f"{type(self.engine_s).__name__}")
            if not (math.isfinite(self.engine_s) and self.engine_s >= 0):
                raise ValueError(f"engine_s must be finite and >= 0 (seconds of sampler work "
                                 f"per call), got {self.engine_s!r}")

    def __call__(self, rows: int) -> float:
        """The predicted seconds of one call holding ``rows`` network rows."""
        r, s = self.rows, self.seconds
        if rows <= r[0]:
            return s[0]
        for i in range(1, len(r)):
            if rows <= r[i]:
                w = (rows - r[i - 1]) / (r[i] - r[i - 1])
                return s[i - 1] + w * (s[i] - s[i - 1])
        if len(r) == 1:
            return s[-1] * rows / r[-1]
        slope = max(0.0, (s[-1] - s[-2]) / (r[-1] - r[-2]))
        if self.source == "probe":
            slope = max(slope, 0.5 * s[-1] / r[-1])
        return s[-1] + slope * (rows - r[-1])

    @classmethod
    def knee(cls, latency_s: float, knee_rows: int, seconds_per_row: float,
             engine_s: float | None = None) -> CostModel:
        """A device whose call costs ``latency_s`` up to ``knee_rows`` rows and grows by
        ``seconds_per_row`` beyond (a GPU that saturates at the knee)."""
        if not _is_int(knee_rows) or knee_rows < 1:
            raise ValueError(f"knee_rows must be an int >= 1, got {knee_rows!r}")
        if not (_is_real(seconds_per_row) and math.isfinite(seconds_per_row)
                and seconds_per_row >= 0):
            raise ValueError(f"seconds_per_row must be a finite number >= 0, got "
                             f"{seconds_per_row!r}")
        if not (_is_real(latency_s) and math.isfinite(latency_s) and latency_s > 0):
            raise ValueError(f"latency_s must be a finite number > 0 (seconds per call), got "
                             f"{latency_s!r}")
        if knee_rows <= 1:
            return cls((1, 2), (latency_s, latency_s + seconds_per_row), "given", engine_s)
        return cls((1, knee_rows, knee_rows + 1), (latency_s, latency_s,
                                                   latency_s + seconds_per_row), "given", engine_s)

    def as_dict(self) -> dict[str, Any]:
        """The curve as plain JSON values."""
        return {"rows": list(self.rows), "seconds": list(self.seconds), "source": self.source,
                "engine_s": self.engine_s}


_PROBES: dict[tuple, tuple[Any, CostModel]] = {}


def _network(model: Any) -> Any:
    """The object a latency belongs to: a wrapper may name its network as ``cost_key``."""
    model = model.model if isinstance(model, Denoiser) else model
    return getattr(model, "cost_key", model)


def _model_key(denoiser: Denoiser, x_T: Tensor) -> tuple:
    """What a call's latency depends on: the network, sample shape, dtype, device and the
    conditioning's shapes (guidance doubles the rows)."""
    def sig(kwargs: Mapping[str, Any]) -> tuple:
        return tuple(sorted((k, tuple(v.shape), str(v.dtype)) if isinstance(v, Tensor)
                            else (k, type(v).__name__) for k, v in kwargs.items()))
    return (id(_network(denoiser)), tuple(x_T.shape[1:]), str(x_T.dtype), str(x_T.device),
            sig(denoiser.model_kwargs), denoiser.guidance_scale is not None)


def _ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_call_cost(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int, *,
                      max_rows: int | None = None, budget: float = 0.15, repeats: int = 2,
                      cache: bool = True, **model_options: Any) -> CostModel:
    """Time the model at a few call widths on ``x_T``'s device, dtype and shape.

    After untimed warm-up calls (until one is no longer 10 % faster than the one before),
    calls of ``n`` steps (``n * batch`` samples, twice that with guidance) for ``n = 1``
    (the fastest of ``repeats``) and wider: ``n`` grows 4x while the cost stays flat (under
    1.25x the previous width's) and 2x once it grows, up to ``max_rows`` network rows (the
    last width is ``max_rows`` itself), one call each (synchronised on CUDA). It stops once
    the probe has spent ``budget`` times the predicted serial run (``num_steps`` one-step
    calls); beyond the widest measured the curve is extrapolated (:class:`CostModel`).
    Cached per (model, sample shape, dtype, device, conditioning) for the process; a
    wrapper that builds a new model object per run around the same network names it as its
    ``cost_key`` attribute.

    Raises:
        ModelOutputError: the model returned NaN/Inf during the probe.
    """
    if max_rows is not None and (not _is_int(max_rows) or max_rows < 1):
        raise ValueError(f"max_rows must be an int >= 1 (network rows) or None, got {max_rows!r}")
    if not (_is_real(budget) and math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0 (a fraction of the serial "
                         f"run), got {budget!r}")
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {type(cache).__name__}")
    x = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    denoiser = denoiser_for(model, schedule, model_options)
    key = _model_key(denoiser, x)
    hit = _PROBES.get(key)
    if cache and hit is not None and hit[0]() is _network(denoiser) and (
            max_rows is None or hit[1].rows[-1] >= max_rows):
        return hit[1]
    per_step = x.shape[0] * (2 if denoiser.guidance_scale is not None else 1)
    max_rows = max_rows or 256 * per_step
    ts = SamplingGrid.build(schedule, N, None, 0.0).timesteps

    def timed(n: int, times: int = repeats) -> float:
        xs = x.unsqueeze(0).expand(n, *x.shape)
        t = ts[torch.linspace(0, N - 1, n).round().long()]
        best = math.inf
        for _ in range(times):
            _sync(x.device)
            t0 = time.perf_counter()
            denoiser.raw(xs, t)
            _sync(x.device)
            best = min(best, time.perf_counter() - t0)
        try:
            denoiser.check()
        except ModelOutputError as e:
            raise ModelOutputError(f"the cost probe of sampler='auto' found the model "
                                   f"returning NaN/Inf on x_T ({n} steps per call): {e}") from e
        return best

    # warm-up (allocator, autotuning, lazy initialisation, clocks), not counted: until a
    # call is no longer 10 % faster than the one before (at most 5 calls)
    prev = timed(1, 1)
    for _ in range(4):
        cur = timed(1, 1)
        if cur > 0.9 * prev:
            break
        prev = cur
    rows, secs, spent, n = [], [], 0.0, 1
    top = max(1, max_rows // per_step)
    while True:
        t0 = time.perf_counter()
        s = timed(n, repeats if n == 1 else 1)
        spent += time.perf_counter() - t0
        rows.append(n * per_step)
        secs.append(s)
        if n >= top or spent > budget * N * secs[0]:
            break
        flat = len(secs) == 1 or secs[-1] < 1.25 * secs[-2]
        n = min(top, n * (4 if flat else 2))
    cost = CostModel(tuple(rows), tuple(secs), "probe")
    if cache:
        _PROBES[key] = (_ref(_network(denoiser)), cost)
    return cost


# ----------------------------------------------------------------------------- the proxy


class _GridMixture(GaussianMixtureDenoiser):
    """The Gaussian-mixture denoiser on any grid: the levels the network sees at each of
    the grid's timesteps come from a table (no closed form of the schedule needed)."""

    def __init__(self, grid: SamplingGrid, prediction_type: str, dim: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(8, dim, generator=g, dtype=torch.float64) * 2 - 1)
        super().__init__(means, 0.15, VPSchedule.linear(1000))
        self.prediction_type = prediction_type
        c = grid.c_in.to(torch.float64) if grid.c_in is not None else 1.0
        self.register_buffer("t_table", grid.timesteps.to(torch.float64))
        self.register_buffer("a_table", (grid.alpha_from * c).to(torch.float64))
        self.register_buffer("s_table", (grid.sigma_from * c).to(torch.float64))

    def levels(self, t: Tensor) -> tuple[Tensor, Tensor]:
        i = (t.to(torch.float64)[:, None] - self.t_table[None]).abs().argmin(1)
        return self.a_table[i], self.s_table[i]


class _Enough(Exception):
    """Raised by a :class:`_Recorder` past its ``limit`` of calls (serial's engine needs
    only a few steps)."""


class _Recorder(torch.nn.Module):
    """Records the rows, the start and the network seconds of every call of the proxy."""

    def __init__(self, net: torch.nn.Module, limit: int | None = None) -> None:
        super().__init__()
        self.net, self.rows, self.seconds, self.limit = net, [], 0.0, limit
        self.stamps: list[float] = []
        self.net_s: list[float] = []
        self.prediction_type = net.prediction_type

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t0 = time.perf_counter()
        if self.limit is not None and len(self.rows) >= self.limit:
            raise _Enough
        self.stamps.append(t0)
        out = self.net(x, t)
        _sync(out.device)
        self.net_s.append(time.perf_counter() - t0)
        self.seconds += self.net_s[-1]
        self.rows.append(x.shape[0])
        return out


_PROXY_BATCH = 4
#: the proxy mixture's dimension: of the variants measured against the digits UNet at
#: N = 100 (16 or 64 dimensions, 8 to 64 components, spreads 0.05 to 0.3), 64 dimensions
#: with 8 components of spread 0.15 came closest to the UNet's calls
_PROXY_DIM = 64
#: serial's engine seconds per step are timed over this many proxy steps (not all N)
_SERIAL_STEPS = 34
_TRACES: dict[tuple, tuple[list[int], float]] = {}
_RECORDS: dict[tuple, tuple[Any, int]] = {}


def _schedule_key(schedule: Schedule, grid: SamplingGrid) -> tuple:
    """What a candidate's calls depend on in the schedule: its ``grid`` (by content, so
    that a schedule rebuilt for every run, as pipelines do, still finds its proxy traces
    and recorded runs) and its prediction type."""
    tables = (grid.timesteps, grid.alpha_from, grid.sigma_from, grid.alpha_to, grid.sigma_to,
              grid.c_in, grid.coef)
    digest = hashlib.sha1()
    for t in tables:
        digest.update(t.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return (type(schedule).__name__, schedule.prediction_type, grid.solver, grid.slots,
            grid.init_noise_sigma, digest.hexdigest())


def _proxy_trace(schedule: Schedule, grid: SamplingGrid, skey: tuple, x_T: Tensor,
                 sampler: str, options: dict, tol: float | None, eta: float,
                 solver: str | None) -> tuple[list[int], float]:
    """Steps per call of ``sampler`` (``"serial"`` too) on the mixture proxy on ``grid`` (the
    schedule's at ``N`` steps, keyed ``skey``), and its engine seconds per call: the run's
    wall-clock less the proxy network's own compute (timed around every call), over its
    calls. Cached for the process (a pure function of the grid, tolerance and candidate)."""
    N = grid.num_steps
    key = (skey, N, str(x_T.dtype), str(x_T.device), sampler, tuple(sorted(options.items())),
           tol, eta, solver)
    if key in _TRACES:
        return _TRACES[key]
    net = _Recorder(_GridMixture(grid, schedule.prediction_type, _PROXY_DIM, 0).to(x_T.device),
                    _SERIAL_STEPS if sampler == "serial" else None)
    b = min(_PROXY_BATCH, x_T.shape[0])
    g = torch.Generator(device=x_T.device).manual_seed(0)
    x = torch.randn(b, _PROXY_DIM, generator=g, device=x_T.device, dtype=x_T.dtype)
    kw = dict(options, eta=eta, sampler=solver,
              generator=torch.Generator(device=x_T.device).manual_seed(1))
    if tol is not None:
        kw["tol"] = tol
    threads = torch.get_num_threads()
    if x.device.type == "cpu":  # the proxy's tensors are tiny: one thread is fastest, and
        torch.set_num_threads(1)  # on a busy machine several threads stall each other
    try:
        t0 = time.perf_counter()
        if sampler == "serial":
            kw.pop("tol", None)
            try:
                serial_sample(net, schedule, x, N, **kw)
            except _Enough:
                pass
        else:
            PARALLEL_SAMPLERS[sampler](net, schedule, x, N, **kw)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    steps = [r // b for r in net.rows]
    if sampler == "serial":  # per step, between the second call and the last (no set-up)
        k = len(net.stamps)
        engine = ((net.stamps[-1] - net.stamps[1] - sum(net.net_s[1:-1])) / (k - 2) if k > 2
                  else max(0.0, wall - net.seconds) / max(1, k))
        trace = ([1] * N, max(0.0, engine))
    else:
        trace = (steps, max(0.0, wall - net.seconds) / max(1, len(steps)))
    _TRACES[key] = trace
    return trace


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Candidate:
    """One way to run the sampler, with its predicted cost.

    Attributes:
        sampler: ``"serial"``, ``"srds"``, ``"picard"``, ``"quasi_newton"`` or ``"taa"``.
        options: its arguments (``window``; ``num_blocks`` and ``pipelined``).
        calls: predicted sequential model calls.
        max_rows: network rows of the widest call (with an executor: of the widest rank's
            slice of it).
        rows: network rows summed over calls (with an executor: the widest rank's).
        predicted_s: predicted seconds (model calls at the measured latency, plus the
            sampler's own work per call).
        estimate: where the calls come from (``"exact"``, ``"proxy"``, ``"recorded run"``).
        error: relative error band of ``calls`` (and so of ``predicted_s``).
        engine_s: the sampler's own seconds per call the prediction charged: this
            candidate's, measured on its proxy run (serial's on a serial proxy run), or the
            cost model's ``engine_s`` where one was given.
    """

    sampler: str
    options: dict[str, Any]
    calls: int
    max_rows: int
    rows: int
    predicted_s: float
    estimate: str
    error: float
    engine_s: float = 0.0

    @property
    def label(self) -> str:
        """e.g. ``"quasi_newton window=32"``, ``"srds pipelined B=63"``."""
        if self.sampler == "srds":
            return (f"srds {'pipelined' if self.options.get('pipelined') else 'sweep'} "
                    f"B={self.options['num_blocks']}")
        if self.sampler == "taa":
            return f"taa ({self.options.get('linear', 'eps')}) window={self.options['window']}"
        if "window" in self.options:
            return f"{self.sampler} window={self.options['window']}"
        return self.sampler

    def as_dict(self) -> dict[str, Any]:
        """The candidate as plain JSON values (``label`` included)."""
        return {"label": self.label, "sampler": self.sampler, "options": dict(self.options),
                "calls": self.calls, "max_rows": self.max_rows, "rows": self.rows,
                "predicted_s": self.predicted_s, "estimate": self.estimate, "error": self.error,
                "engine_s": self.engine_s}


@dataclass
class SamplingPlan:
    """What :func:`plan_sampling` found: every candidate and the choice.

    Attributes:
        candidates: serial first, then the parallel candidates, fastest predicted first.
        choice: the candidate ``sample(sampler="auto")`` runs.
        reason: one sentence on why.
        cost: the device's :class:`CostModel` (its ``engine_s``: the one given, else
            serial's measured engine seconds; each candidate carries its own).
        excluded: candidates left out and why (e.g. over ``max_batch``, or not priced: a
            lower bound on their time above serial's or the best's, or the planning budget).
        planning_s: seconds this call spent planning (probe and proxy runs; for a plan
            reused by ``plan_sampling(reuse=True)`` / ``sample(sampler="auto")``, the
            lookup only). ``pint-sample --sampler auto`` prints it.
        reused: whether this plan was made by an earlier identical call and reused.
    """

    candidates: list[Candidate]
    choice: Candidate
    reason: str
    cost: CostModel
    excluded: list[str] = field(default_factory=list)
    key: tuple = ()
    planning_s: float = 0.0
    reused: bool = False

    @property
    def serial(self) -> Candidate:
        """The serial candidate (always first)."""
        return self.candidates[0]

    def table(self) -> str:
        """The plan as a text table (candidate, calls, rows per call, predicted time)."""
        head = f"{'candidate':<28} {'calls':>11} {'rows/call':>9} {'predicted':>14}  estimate"
        lines = [head, "-" * len(head)]
        for c in self.candidates:
            mark = " <" if c is self.choice else ""
            err = f"+-{c.error:.0%}" if c.error else "exact"
            lines.append(f"{c.label:<28} {c.calls:>11} {c.max_rows:>9} "
                         f"{c.predicted_s:>12.3f} s  {c.estimate} ({err}){mark}")
        lines.append(f"choice: {self.choice.label}: {self.reason}")
        lines.append(f"planning: {self.planning_s:.3f} s"
                     + (" (plan reused from an identical earlier call)" if self.reused else ""))
        lines += [f"left out: {e}" for e in self.excluded]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain JSON values (for ``report.json``)."""
        return {"candidates": [c.as_dict() for c in self.candidates],
                "choice": self.choice.as_dict(), "reason": self.reason,
                "cost": self.cost.as_dict(), "excluded": list(self.excluded),
                "planning_s": self.planning_s, "reused": self.reused}


def _world_size(executor: object | None) -> int:
    """The ranks an executor splits every parallel candidate's calls over (1 without one)."""
    if executor is None:
        return 1
    import torch.distributed as dist
    return dist.get_world_size(getattr(executor, "group", None)) if dist.is_initialized() else 1


def _from_rank_0(executor: object, obj: Any) -> Any:
    """Rank 0's ``obj`` (a picklable value), on every rank of the executor's group."""
    import torch.distributed as dist

    group = getattr(executor, "group", None)
    src = 0 if group is None else dist.get_global_rank(group, 0)
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


#: the share of the predicted serial time a plan may spend measuring the device and running
#: the proxies, when it measures the device itself (``cost=None``; half of it for the probe)
PLAN_BUDGET = 0.09
#: runs shorter than this many steps get serial without a probe: the probe's warm-up and a
#: few widths (at least 4-8 calls) and the proxy runs would cost more than 10 % of the run
MIN_PLAN_STEPS = 40
_PLANS: dict[tuple, tuple[Any, SamplingPlan]] = {}


def _steps_per_call(options: Mapping[str, Any]) -> int:
    """The most steps one call of a candidate holds."""
    return options.get("window") or (2 * options["num_blocks"] if options.get("pipelined")
                                     else options["num_blocks"])


def _calls_bound(sampler: str, options: Mapping[str, Any], N: int) -> int:
    """Fewer sequential calls no run of the candidate can take: a window of ``w`` steps
    advances at most ``w`` steps per call; SRDS runs the coarse sweep over its ``B`` blocks
    and at least one fine solve of a block, ``ceil(N / B)`` steps, one after another."""
    if sampler == "srds":
        return max(1, options["num_blocks"] + math.ceil(N / options["num_blocks"]) - 1)
    return max(1, N // options["window"])


def _calls_guess(sampler: str, options: Mapping[str, Any], N: int) -> float:
    """A typical number of calls (the order in which candidates are run on the proxy): about
    ``2 N / w + 6`` for a window of ``w`` (the mixture at N = 200), ``B + 2 N / B`` for SRDS."""
    if sampler == "srds":
        return options["num_blocks"] + 2 * N / options["num_blocks"]
    return 2 * N / options["window"] + 6


def _one_call(denoiser: Denoiser, schedule: Schedule, x: Tensor, N: int) -> float:
    """The seconds of one serial step's call (no warm-up: an overestimate, as serial's own
    first call)."""
    ts = SamplingGrid.build(schedule, N, None, 0.0).timesteps
    _sync(x.device)
    t0 = time.perf_counter()
    denoiser.raw(x.unsqueeze(0), ts[:1])
    _sync(x.device)
    try:
        denoiser.check()
    except ModelOutputError as e:
        raise ModelOutputError(f"the cost probe of sampler='auto' found the model returning "
                               f"NaN/Inf on x_T: {e}") from e
    return max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def plan_sampling(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int, *,
                  tol: float | None = None, max_batch: int | None = None, eta: float = 0.0,
                  solver: str | None = None, cost: CostModel | None = None,
                  executor: object | None = None,
                  samplers: tuple[str, ...] = ("srds", "picard", "quasi_newton", "taa"),
                  gather_s: float = 0.0, budget: float | None = None,
                  exhaustive: bool = False, reuse: bool = False,
                  **model_options: Any) -> SamplingPlan:
    """Predict the wall-clock of each sampler configuration on this device; pick the fastest.

    Pricing. Serial costs ``N * (latency(rows per step) + serial's engine seconds per
    step)``, the latter timed on a few steps of serial on the proxy; a parallel candidate
    the latency of each of its proxy run's calls plus *its own* engine seconds per call
    (that run's wall-clock less the proxy network's compute). A given ``cost.engine_s``
    replaces every measured engine time.

    What planning costs, and when it stops. With ``cost=None`` a plan may spend ``budget``
    (default :data:`PLAN_BUDGET`, 9 %) of the predicted serial time: half of it at most on
    the probe (:func:`measure_call_cost`), the rest on proxy runs. Before any proxy run each
    candidate gets a lower bound on its time from the cost model alone (at least
    ``N // window`` calls, SRDS ``N / B``, each at the cheapest latency its widths allow, and
    every step at least once at the cheapest seconds per step); candidates are run on the
    proxy in the order of a typical time (``2 N / w + 6`` calls of a window ``w``, ``B + 2 N /
    B`` for SRDS, at the full width's latency), and one is not run (listed in ``excluded``) when its
    bound, raised by its error band, is not below serial's time (it could not be chosen), or
    is not below the best predicted time so far, or the budget is spent (the candidate with
    the lowest bound that could beat serial is always priced). So a device whose
    cost grows in proportion to the rows (a CPU) gets serial after the probe alone; and a
    run of fewer than :data:`MIN_PLAN_STEPS` steps gets serial after one timed call (the
    probe's warm-up and widths would cost more than 10 % of it). ``exhaustive=True`` prices
    every candidate (benchmarks); with a given ``cost`` the budget is unlimited unless
    ``budget`` is given.

    Plans made once. Every plan is kept for the process under what it depends on (network,
    sample shape, batch, dtype, device, conditioning, grid, ``num_steps``, ``tol``, ``eta``,
    solver, ``max_batch``, ranks, ``cost``, ``samplers``); ``reuse=True`` (what
    ``sample(sampler="auto")`` passes) returns the kept plan for an identical request, its
    choice unchanged, with ``reused=True`` and ``planning_s`` the lookup's seconds. A run
    recorded by :func:`record_run` refines only plans made afterwards (``reuse=False``, or
    ``sample(..., replan=True)``), which may choose differently: a user re-running a seed
    with ``sample(sampler="auto")`` gets the same sample bit for bit.

    Args:
        model, schedule, x_T, num_steps: as in :func:`~adapters.diffusion.srds_sample`
            (``x_T [batch, *sample]`` fixes the rows per step, dtype and device).
        tol: the samplers' tolerance (``None``: each sampler's default).
        max_batch: network rows one call may hold (memory); candidates wider are left out.
        eta: DDIM noise, as in the samplers.
        solver: the samplers' ``sampler=`` (the solver; default: the schedule's).
        cost: the device's :class:`CostModel`; default: measured here
            (:func:`measure_call_cost`, cached).
        executor: a :class:`pint.DistributedExecutor` over ``R`` ranks: every parallel
            candidate splits each model call over the ranks, contiguous slices of its steps
            (SRDS blocks, window steps), so a call of ``n`` steps costs the latency of
            ``ceil(n / R) * rows_per_step`` rows (the widest rank's slice; ``max_batch``
            applies to it as well) plus ``gather_s`` (the all_gather of the outputs, per
            call, default 0). Every rank gets rank 0's plan (broadcast).
        samplers: the parallel samplers to consider.
        budget: the share of the predicted serial time planning may spend (see above).
        exhaustive: price every candidate (no bound, no budget).
        reuse: return the plan kept for an identical earlier request, if any.
        **model_options: the model options, as in the samplers.

    Returns:
        A :class:`SamplingPlan` (``planning_s``: this call's seconds). A parallel candidate
        is chosen only when its predicted time, raised by its error band, is below the
        serial time.
    """
    t_start = time.perf_counter()
    x = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    if not isinstance(schedule, (VPSchedule, SigmaSchedule)):
        raise TypeError(f"schedule must be a VPSchedule or SigmaSchedule, got "
                        f"{type(schedule).__name__}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ValueError(f"max_batch must be an int >= 1 (network rows per call), got {max_batch!r}")
    unknown = sorted(set(samplers) - {"srds", "picard", "quasi_newton", "taa"})
    if unknown:
        raise ValueError(f"samplers must be among srds, picard, quasi_newton, taa; got {unknown}")
    if not (isinstance(gather_s, (int, float)) and math.isfinite(gather_s) and gather_s >= 0):
        raise ValueError(f"gather_s must be a finite number >= 0 (seconds), got {gather_s!r}")
    if budget is not None and not (_is_real(budget) and budget >= 0 and not math.isnan(budget)):
        raise ValueError(f"budget must be a number >= 0 (a share of the serial time) or None, "
                         f"got {budget!r}")
    for name, flag in (("exhaustive", exhaustive), ("reuse", reuse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if cost is not None and not isinstance(cost, CostModel):
        raise TypeError(f"cost must be a CostModel or None, got {type(cost).__name__}")
    denoiser = denoiser_for(model, schedule, model_options)
    per_step = x.shape[0] * (2 if denoiser.guidance_scale is not None else 1)
    devices = _world_size(executor)
    grid = SamplingGrid.build(schedule, N, solver, eta)
    mkey, skey = _model_key(denoiser, x), _schedule_key(schedule, grid)
    plan_key = (mkey, x.shape[0], skey, N, tol, eta, solver, max_batch, tuple(samplers),
                devices, gather_s, cost, budget, exhaustive)
    if reuse:
        hit = _PLANS.get(plan_key)
        if hit is not None and hit[0]() is _network(denoiser):
            return replace(hit[1], planning_s=time.perf_counter() - t_start, reused=True)

    configs: list[tuple[str, dict[str, Any]]] = []
    root = math.sqrt(N)
    for pipelined in (True, False):
        for f in BLOCK_FACTORS if pipelined else BLOCK_FACTORS[:2]:
            B = min(N, max(2, round(f * root)))
            cfg = ("srds", {"num_blocks": B, "pipelined": pipelined})
            if "srds" in samplers and N >= 2 and cfg not in configs:
                configs.append(cfg)
    for s in ("quasi_newton", "picard"):
        if s in samplers:
            configs += [(s, {"window": w}) for w in WINDOWS if w <= N]
    excluded = []
    if "taa" in samplers:
        if grid.num_slots > 1:
            excluded.append("taa: one-step solvers only (this grid's solver is multistep)")
        else:
            configs += [("taa", {"window": w, **TAA_OPTIONS}) for w in WINDOWS[1:] if w <= N]
    if max_batch is not None:
        keep = [c for c in configs if math.ceil(_steps_per_call(c[1]) / devices) * per_step
                <= max_batch]
        if len(keep) < len(configs):
            excluded.append(f"{len(configs) - len(keep)} candidates wider than max_batch="
                            f"{max_batch} rows ({per_step} rows per step)")
        configs = keep
    measured = cost is None
    share = (PLAN_BUDGET if measured else math.inf) if budget is None else budget
    if exhaustive:
        share = math.inf
    key = (mkey, skey, N, tol, eta, solver)

    def finish(candidates: list[Candidate], choice: Candidate, reason: str,
               cost: CostModel) -> SamplingPlan:
        if devices > 1:  # every rank runs rank 0's choice (timing-dependent pruning differs)
            candidates, index, reason, excluded_, cost = _from_rank_0(
                executor, (candidates, candidates.index(choice), reason, excluded, cost))
            choice = candidates[index]
        else:
            excluded_ = excluded
        plan = SamplingPlan(candidates, choice, reason, cost, excluded_, key=key,
                            planning_s=time.perf_counter() - t_start)
        _PLANS[plan_key] = (_ref(_network(denoiser)), plan)
        return plan

    if measured and N < MIN_PLAN_STEPS and not exhaustive:
        lat = _one_call(denoiser, schedule, x, N)
        cost = CostModel((per_step,), (lat,), "probe")
        serial = Candidate("serial", {}, N, per_step, N * per_step, N * lat, "exact", 0.0)
        excluded.append(f"every parallel candidate: a run of {N} < {MIN_PLAN_STEPS} steps is "
                        "too short for planning to pay")
        return finish([serial], serial, f"{N} steps: too short for planning to pay "
                      f"(under {MIN_PLAN_STEPS}); serial without a probe", cost)

    widest_steps = max([1] + [_steps_per_call(o) for _, o in configs])
    if measured:
        cost = measure_call_cost(denoiser, schedule, x, N, budget=min(0.15, share / 2),
                                 max_rows=math.ceil(widest_steps / devices) * per_step)
    _, serial_engine = _proxy_trace(schedule, grid, skey, x, "serial", {}, None, eta, solver)
    if cost.engine_s is not None:
        serial_engine = cost.engine_s
    serial_s = N * (cost(per_step) + serial_engine)
    serial = Candidate("serial", {}, N, per_step, N * per_step, serial_s, "exact", 0.0,
                       serial_engine)
    deadline = t_start + share * serial_s

    # lower bounds from the cost model alone: per call, and per step, over widths <= n steps
    gather = gather_s if devices > 1 else 0.0
    call_min, step_min = [math.inf], [math.inf]
    for n in range(1, widest_steps + 1):
        c = cost(math.ceil(n / devices) * per_step) + gather
        call_min.append(min(call_min[-1], c))
        step_min.append(min(step_min[-1], c / n))

    def bound(s: str, o: dict) -> float:
        w = _steps_per_call(o)
        return max(_calls_bound(s, o, N) * call_min[w], N * step_min[w])

    parallel: list[Candidate] = []
    skipped = {"bound_serial": 0, "bound_best": 0, "budget": 0}
    def guess(s: str, o: dict) -> float:
        return _calls_guess(s, o, N) * (cost(math.ceil(_steps_per_call(o) / devices) * per_step)
                                        + gather)

    for s, o in sorted(configs, key=lambda c: guess(*c)):
        okey = tuple(sorted(o.items()))
        rec = _RECORDS.get((mkey, skey, N, tol, eta, solver, s, okey))
        rec = rec if rec is not None and rec[0]() is _network(denoiser) else None
        if not exhaustive:
            lb = bound(s, o)
            if lb * (1 + (RECORDED_ERROR if rec else PROXY_ERROR)) >= serial_s:
                skipped["bound_serial"] += 1
                continue
            if parallel and lb >= min(c.predicted_s for c in parallel):
                skipped["bound_best"] += 1
                continue
            if parallel and time.perf_counter() > deadline:  # (the most promising is priced)
                skipped["budget"] += 1
                continue
        steps, engine = _proxy_trace(schedule, grid, skey, x, s, o, tol, eta, solver)
        if cost.engine_s is not None:
            engine = cost.engine_s
        rows = [math.ceil(n / devices) * per_step for n in steps]
        calls, estimate, error = len(rows), "proxy", PROXY_ERROR
        if rec is not None:
            calls, estimate, error = rec[1], "recorded run", RECORDED_ERROR
        scale = calls / max(1, len(rows))
        t = scale * sum(cost(r) + engine + gather for r in rows)
        parallel.append(Candidate(s, o, calls, max(rows), round(scale * sum(rows)), t,
                                  estimate, error, engine))
    for what, n in skipped.items():
        if n:
            excluded.append(f"{n} candidates not priced: " + {
                "bound_serial": "a lower bound on their time (from the cost model alone), "
                                "raised by its error band, is not below serial's",
                "bound_best": "a lower bound on their time is not below the best predicted",
                "budget": f"the planning budget ({share:.0%} of serial's time) was spent"}[what])
    parallel.sort(key=lambda c: c.predicted_s)
    candidates = [serial] + parallel
    if not parallel:
        if not configs:
            reason = ("no parallel candidate fits" + (
                f" max_batch={max_batch} (a window of two steps needs {2 * per_step} rows)"
                if max_batch is not None else "") + ": serial")
        else:
            reason = ("no parallel candidate can be faster than serial by more than its error "
                      "band (lower bounds from the measured cost model): serial")
        choice = serial
    else:
        best = parallel[0]
        edge = best.predicted_s * (1 + best.error)
        if edge < serial.predicted_s:
            choice = best
            reason = (f"predicted {serial.predicted_s / best.predicted_s:.2f}x faster than "
                      f"serial, {serial.predicted_s / edge:.2f}x at the edge of its error band")
        else:
            choice = serial
            reason = (f"no parallel candidate is predicted faster than serial by more than its "
                      f"error band (best: {best.label}, {serial.predicted_s / best.predicted_s:.2f}x)")
    return finish(candidates, choice, reason,
                  cost if cost.engine_s is not None else replace(cost, engine_s=serial_engine))


def check_plan(plan: SamplingPlan, model: Model, schedule: Schedule, x_T: Tensor,
               num_steps: int, *, tol: float | None = None, eta: float = 0.0,
               solver: str | None = None, **model_options: Any) -> None:
    """Check that ``plan`` was made by :func:`plan_sampling` for a run like this one: the
    same model, sample shape, batch, dtype, device, conditioning, grid (schedule, solver,
    steps), tolerance and ``eta``. A plan made for another run predicts that run, and the
    calls :func:`record_run` stores after this one would be filed under it.

    Raises:
        TypeError: ``plan`` is not a :class:`SamplingPlan`.
        ValueError: naming ``plan`` and each thing that differs.
    """
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a SamplingPlan (from plan_sampling), got "
                        f"{type(plan).__name__}")
    if not plan.key:
        raise ValueError("plan holds no key of the run it was made for: make it with "
                         "plan_sampling(...)")
    x = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    if not isinstance(schedule, (VPSchedule, SigmaSchedule)):
        raise TypeError(f"schedule must be a VPSchedule or SigmaSchedule, got "
                        f"{type(schedule).__name__}")
    denoiser = denoiser_for(model, schedule, model_options)
    per_step = x.shape[0] * (2 if denoiser.guidance_scale is not None else 1)
    mkey, skey, n, made_tol, made_eta, _ = plan.key
    now = _model_key(denoiser, x)
    diffs = []

    def differ(name: str, made: Any, here: Any) -> None:
        if made != here:
            diffs.append(f"{name} {made!r} (this run: {here!r})")

    if mkey[0] != now[0]:
        diffs.append("the model (another network)")
    for name, i in (("sample shape", 1), ("dtype", 2), ("device", 3), ("conditioning", 4),
                    ("guidance", 5)):
        differ(name, mkey[i], now[i])
    differ("rows per step (batch x guidance)", plan.serial.max_rows, per_step)
    differ("num_steps", n, N)
    if n == N:  # (another N is another grid)
        here = _schedule_key(schedule, SamplingGrid.build(schedule, N, solver, eta))
        for name, i in (("schedule", 0), ("prediction_type", 1), ("solver", 2),
                        ("init_noise_sigma", 4)):
            differ(name, skey[i], here[i])
        if skey[:5] == here[:5] and skey[5] != here[5]:
            diffs.append("the schedule's grid (timesteps, levels or coefficients)")
    differ("tol", made_tol, tol)
    differ("eta", made_eta, eta)
    if diffs:
        raise ValueError(f"plan was made for another run: {'; '.join(diffs)}; make a plan for "
                         "this one with plan_sampling(...)")


def record_run(plan: SamplingPlan, candidate: Candidate, calls: int, model: Any) -> None:
    """Store the sequential calls a run of ``candidate`` took, for later plans of the same
    model, grid and tolerance (their estimate becomes ``"recorded run"``).

    Raises:
        TypeError: ``plan`` is not a :class:`SamplingPlan` or ``calls`` not an int.
        ValueError: ``candidate`` is not one of ``plan.candidates``, ``calls < 1``, or
            ``model`` is not the network the plan was made for.
    """
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a SamplingPlan (from plan_sampling), got "
                        f"{type(plan).__name__}")
    if not isinstance(candidate, Candidate) or candidate not in plan.candidates:
        raise ValueError(f"candidate must be one of plan.candidates, got {candidate!r}")
    if not _is_int(calls):
        raise TypeError(f"calls must be an int (the run's sequential model calls), got "
                        f"{type(calls).__name__}")
    if calls < 1:
        raise ValueError(f"calls must be >= 1 (the run's sequential model calls), got {calls}")
    if plan.key and id(_network(model)) != plan.key[0][0]:
        raise ValueError("model must be the model the plan was made for (its network)")
    if candidate.sampler == "serial" or not plan.key:
        return
    key = (*plan.key, candidate.sampler, tuple(sorted(candidate.options.items())))
    _RECORDS[key] = (_ref(_network(model)), int(calls))


def clear_caches() -> None:
    """Forget every probe, proxy trace and recorded run of this process."""
    _PROBES.clear()
    _TRACES.clear()
    _RECORDS.clear()
    _PLANS.clear()


__all__ = ["CostModel", "Candidate", "SamplingPlan", "measure_call_cost", "plan_sampling",
           "check_plan", "record_run", "clear_caches", "PROXY_ERROR", "RECORDED_ERROR",
           "PLAN_BUDGET", "MIN_PLAN_STEPS"]
