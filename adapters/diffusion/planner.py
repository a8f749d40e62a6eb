"""Which sampler is fastest *on this device*: a measured cost model and a planner.

A parallel sampler trades sequential model calls for wider ones. Whether that pays depends
on the device: a call of ``R`` rows costs about as much as one row on a GPU below its knee,
and ``R`` times as much on a saturated GPU or a CPU. :func:`make_plan` measures the
latency of one model call against its rows on the user's model, shape, dtype, device and
conditioning (:func:`probe`, a few timed calls, cached for the process), predicts each
candidate's call sequence with a model-free proxy, sums the latencies of its calls plus the
candidate's own work per call, and picks the fastest, choosing a parallel sampler only when
its lead over serial exceeds the estimate's error.

The planner runs no sampler of its own: its caller (:mod:`.auto`, which holds the table of
sampler entry points) hands it ``runners`` (name -> sampler function, ``"serial"``
included) and a bound :class:`~adapters.diffusion.Denoiser`, so that this module stands
below the samplers in the package's imports (schedule, model, grid and the analytic
mixture only). The public forms ``plan_sampling``, ``measure_call_cost`` and ``check_plan``
live in :mod:`.auto`.

The proxy. A candidate's number of calls and the rows of each come from running it on the
exact denoiser of a Gaussian mixture (:class:`~adapters.diffusion.GaussianMixtureDenoiser`,
64 dimensions) on the same grid, solver, tolerance and noise, at almost no cost. A real
model converges somewhat differently: on the digits UNet at N = 100 (tol 1e-3) the proxy
predicts 18, 11 and 9 quasi-Newton calls for windows 16, 32 and 64 where the UNet needs
21, 15 and 13, Picard 20 and 12 for 22 and 14, SRDS pipelined 36 for 36; at N = 1000
(``benchmarks/bench_samplers.py``) mixture and UNet differ by up to 30 % either way. A
proxy estimate carries a 30 % error band. After a run, :func:`record_run` (which
``sample(sampler="auto")`` calls) stores the calls measured for that candidate, model and
grid; plans made afterwards use them (10 % band); a plan already made is never changed by
them (see :func:`make_plan`, "Plans made once").
"""

from __future__ import annotations

import hashlib
import math
import numbers
import statistics
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .analytic import GaussianMixtureDenoiser
from .grid import SamplingGrid
from .model import Denoiser, ModelOutputError
from .schedule import SigmaSchedule, VPSchedule, check_num_steps

Schedule = VPSchedule | SigmaSchedule
#: a sampler entry point: ``run(model, schedule, x_T, num_steps, **options)``
Runner = Callable[..., Any]

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
#: the parallel samplers a plan may consider (their entry points come from the caller)
PARALLEL = ("srds", "picard", "quasi_newton", "taa")
#: the share of the predicted serial time a first plan may spend measuring the device and
#: running the proxies, when it measures the device itself (``cost=None``): every step is
#: priced before it is taken (probe widths, proxy runs), so the plan stays under 10 %
PLAN_BUDGET = 0.08
#: the probe's share of that budget at most (the proxy runs get the rest)
PROBE_SHARE = 0.5
#: runs shorter than this many steps get serial without a probe: the probe's warm-up and a
#: few widths (at least 4-8 calls) and the proxy runs would cost more than 10 % of the run
MIN_PLAN_STEPS = 40


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


# ---------------------------------------------------------------------------- the probe

#: key -> (network ref, curve, the widest rows it was probed for)
_PROBES: dict[tuple, tuple[Any, CostModel, int]] = {}


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


def rows_per_step(denoiser: Denoiser, x: Tensor) -> int:
    """Network rows one step of the batch takes (twice the batch with guidance)."""
    return x.shape[0] * (2 if denoiser.guidance_scale is not None else 1)


class _Timer:
    """Timed calls of the network at ``n`` steps per call, on the run's grid."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule, x: Tensor, N: int) -> None:
        self.denoiser, self.x, self.N = denoiser, x, N
        self.ts = SamplingGrid.build(schedule, N, None, 0.0).timesteps
        self.spent = 0.0

    def __call__(self, n: int) -> float:
        """The seconds of one call of ``n`` steps (synchronised on CUDA)."""
        x, N = self.x, self.N
        xs = x.unsqueeze(0).expand(n, *x.shape)
        t = self.ts[torch.linspace(0, N - 1, n).round().long()]
        _sync(x.device)
        t0 = time.perf_counter()
        self.denoiser.raw(xs, t)
        _sync(x.device)
        took = time.perf_counter() - t0
        self.spent += took
        try:
            self.denoiser.check()
        except ModelOutputError as e:
            raise ModelOutputError(f"the cost probe of sampler='auto' found the model "
                                   f"returning NaN/Inf on x_T ({n} steps per call): {e}") from e
        return max(took, 1e-9)

    def warm(self, repeats: int = 2) -> float:
        """One step's latency, the warm-up included: calls of one step until one is no
        longer 10 % faster than the one before (at least ``max(2, repeats)``, at most 5
        calls); the fastest after the first counts (the first pays the one-time costs:
        allocator, autotuning, lazy initialisation, clocks)."""
        secs = [self(1)]
        while len(secs) < 5:
            secs.append(self(1))
            if len(secs) >= max(2, repeats) and secs[-1] > 0.9 * secs[-2]:
                break
        return min(secs[1:])


def _probe_widths(timer: _Timer, first: float, per_step: int, top: int, limit_s: float,
                  at: tuple[int, ...] = ()) -> CostModel:
    """The cost curve from one step's latency ``first`` and wider calls: ``n`` grows 4x
    while the cost stays flat (under 1.25x the previous width's) and 2x once it grows, up
    to ``top`` steps, while the next call, priced before it is made (the last latency,
    times the growth of ``n`` once the curve grows), keeps the probe under ``limit_s``.
    Where the cost first grows, the steps in ``at`` (the candidates' widths) between the
    last flat width and that one are timed first, narrowest first: interpolating across a
    knee would overprice a call just below it. Past the knee, a width whose cost grew with
    its rows (at least 0.8x in proportion) is the last: the curve beyond continues with
    that slope (a device saturated, or a CPU, gets no more calls)."""
    points, n, flat = {1: first}, 1, True

    def settled(m: int, n: int) -> float:
        """Width ``m``'s latency. A call that cost more than in proportion to its rows
        against width ``n`` (1.25x) paid one-time costs (on a GPU, kernel selection and
        lazy loading at a new shape: 10-100x a warm call; no warm device grows faster than
        its rows), so it is timed again, once more while the repeat is 10 % faster, and
        the fastest counts."""
        secs = [timer(m)]
        while secs[-1] >= 1.25 * points[n] * m / n and len(secs) < 3:
            secs.append(timer(m))
            if secs[-1] > 0.9 * secs[-2]:
                break
        return min(secs)

    while n < top:
        nxt = min(top, n * (4 if flat else 2))
        if timer.spent + points[n] * (1.25 if flat else nxt / n) > limit_s:
            break
        points[nxt] = settled(nxt, n)
        if not flat and points[nxt] >= 0.8 * points[n] * nxt / n:
            break  # past the knee and growing with the rows: the last slope extrapolates
        if flat and points[nxt] >= 1.25 * points[n]:  # the knee: time the widths inside
            flat = False
            for m in sorted({a for a in at if n < a < nxt}):
                if timer.spent + points[nxt] > limit_s:
                    break
                points[m] = settled(m, n)
        n = nxt
    steps = sorted(points)
    return CostModel(tuple(m * per_step for m in steps), tuple(points[m] for m in steps),
                     "probe")


def check_probe_options(max_rows: int | None, budget: float, repeats: int,
                        cache: bool) -> None:
    """The probe's options, each named when wrong."""
    if max_rows is not None and (not _is_int(max_rows) or max_rows < 1):
        raise ValueError(f"max_rows must be an int >= 1 (network rows) or None, got {max_rows!r}")
    if not (_is_real(budget) and math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0 (a fraction of the serial "
                         f"run), got {budget!r}")
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {type(cache).__name__}")


@torch.no_grad()
def probe(denoiser: Denoiser, schedule: Schedule, x: Tensor, num_steps: int, *,
          max_rows: int | None = None, budget: float = 0.15, repeats: int = 2,
          cache: bool = True, timer: _Timer | None = None,
          first: float | None = None, at: tuple[int, ...] = ()) -> CostModel:
    """Time the bound ``denoiser`` at a few call widths on ``x``'s device, dtype and shape
    (the checked form: :func:`~adapters.diffusion.measure_call_cost`).

    One step's latency after a warm-up (:meth:`_Timer.warm`; or ``first``, measured by
    ``timer`` already), then calls of ``n`` steps (``n * batch`` rows, twice that with
    guidance), ``n`` growing 4x while flat and 2x once the cost grows, up to ``max_rows``
    rows, while the probe, warm-up included, stays under ``budget`` times the predicted
    serial run (``num_steps`` one-step calls); every width is priced before it is timed.
    Widths of ``at`` steps (default: powers of two) between the last flat width and the
    first that grew are timed as well (the knee). Beyond the widest measured the curve is
    extrapolated (:class:`CostModel`). Cached per
    (network, sample shape, dtype, device, conditioning) for the process; a wrapper that
    builds a new model object per run around the same network names it as ``cost_key``.

    Raises:
        ModelOutputError: the model returned NaN/Inf during the probe.
    """
    check_probe_options(max_rows, budget, repeats, cache)
    N = check_num_steps(num_steps, schedule.max_steps)
    key = _model_key(denoiser, x)
    per_step = rows_per_step(denoiser, x)
    max_rows = max_rows or 256 * per_step
    hit = _cached_probe(denoiser, x, max_rows)
    if cache and hit is not None:
        return hit
    timer = timer or _Timer(denoiser, schedule, x, N)
    if first is None:
        first = timer.warm(repeats)
    cost = _probe_widths(timer, first, per_step, max(1, max_rows // per_step),
                         budget * N * first, at or tuple(2 ** k for k in range(1, 12)))
    if cache:
        _PROBES[key] = (_ref(_network(denoiser)), cost, max_rows)
    return cost


def _cached_probe(denoiser: Denoiser, x: Tensor, max_rows: int) -> CostModel | None:
    """The curve probed earlier for this network, shape, dtype, device and conditioning up
    to ``max_rows`` rows or wider (where it stopped short, by its budget or because the
    cost grew with the rows, it is what that probe could learn), if any."""
    hit = _PROBES.get(_model_key(denoiser, x))
    if hit is not None and hit[0]() is _network(denoiser) and hit[2] >= max_rows:
        return hit[1]
    return None


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
    only a few steps) or past its ``limit_s`` of predicted seconds (a candidate that can
    no longer be the fastest)."""


class _Recorder(torch.nn.Module):
    """Records the rows, the start and the network seconds of every call of the proxy;
    stops the run (:class:`_Enough`) past ``limit`` calls, or once the calls so far,
    priced by ``price(rows)``, pass ``limit_s``."""

    def __init__(self, net: torch.nn.Module, limit: int | None = None,
                 price: Callable[[int], float] | None = None, limit_s: float = math.inf) -> None:
        super().__init__()
        self.net, self.rows, self.seconds, self.limit = net, [], 0.0, limit
        self.price, self.limit_s, self.priced = price, limit_s, 0.0
        self.stamps: list[float] = []
        self.net_s: list[float] = []
        self.prediction_type = net.prediction_type

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t0 = time.perf_counter()
        if self.limit is not None and len(self.rows) >= self.limit:
            raise _Enough
        if self.price is not None:
            self.priced += self.price(x.shape[0])
            if self.priced > self.limit_s:
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
_SERIAL_STEPS = 10
_TRACES: dict[tuple, tuple[list[int], float, float]] = {}
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


def _run_proxy(run: Runner, net: _Recorder, schedule: Schedule, x: Tensor, N: int,
               kw: dict[str, Any]) -> tuple[float, bool]:
    """Run one sampler on the proxy: its wall-clock, and whether it ran to the end (one
    CPU thread: the proxy's tensors are tiny, and on a busy machine threads stall)."""
    threads = torch.get_num_threads()
    if x.device.type == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        run(net, schedule, x, N, **kw)
        done = True
    except _Enough:
        done = False
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - t0, done


def proxy_trace(runners: Mapping[str, Runner], schedule: Schedule, grid: SamplingGrid,
                skey: tuple, x_T: Tensor, sampler: str, options: Mapping[str, Any],
                tol: float | None, eta: float, solver: str | None,
                price: Callable[[int], float] | None = None,
                limit_s: float = math.inf) -> tuple[list[int], float, float] | None:
    """``(steps per call, engine seconds per call, proxy seconds per call)`` of ``sampler``
    (``"serial"`` too) on the mixture proxy on ``grid`` (the schedule's at ``N`` steps,
    keyed ``skey``). The engine seconds are the run's wall-clock less the proxy network's
    own compute (timed around every call), over its calls; the proxy seconds what the run
    cost the planner per call. ``None`` when the calls, priced by ``price(steps)``, pass
    ``limit_s`` before the run ends (the candidate cannot be the fastest). Cached for the
    process (a pure function of the grid, tolerance and candidate)."""
    N = grid.num_steps
    key = (skey, N, str(x_T.dtype), str(x_T.device), sampler, tuple(sorted(options.items())),
           tol, eta, solver)
    if key in _TRACES:
        return _TRACES[key]
    serial = sampler == "serial"
    b = min(_PROXY_BATCH, x_T.shape[0])
    per_call = None if serial or price is None else (lambda rows: price(rows // b))
    net = _Recorder(_GridMixture(grid, schedule.prediction_type, _PROXY_DIM, 0).to(x_T.device),
                    _SERIAL_STEPS if serial else None, per_call, limit_s)
    g = torch.Generator(device=x_T.device).manual_seed(0)
    x = torch.randn(b, _PROXY_DIM, generator=g, device=x_T.device, dtype=x_T.dtype)
    kw = dict(options, eta=eta, sampler=solver,
              generator=torch.Generator(device=x_T.device).manual_seed(1))
    if tol is not None and not serial:
        kw["tol"] = tol
    wall, done = _run_proxy(runners[sampler], net, schedule, x, N, kw)
    k = len(net.rows)
    if not done and not serial:
        return None
    if serial:  # per step, between the second call and the last (no set-up)
        if k > 2:  # engine: medians (one descheduled step on a busy machine does not
            # count); the planner's cost per step: the mean (what a proxy run will cost)
            gaps = [b - a for a, b in zip(net.stamps[1:], net.stamps[2:], strict=False)]
            step = (net.stamps[-1] - net.stamps[1]) / (k - 2)
            engine = statistics.median(gaps) - statistics.median(net.net_s[1:-1])
        else:
            step, engine = wall / max(1, k), max(0.0, wall - net.seconds) / max(1, k)
        trace = ([1] * N, max(0.0, engine), step)
    else:
        trace = ([r // b for r in net.rows], max(0.0, wall - net.seconds) / max(1, k),
                 wall / max(1, k))
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
    """What :func:`make_plan` (``plan_sampling``) found: every candidate and the choice.

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


_PLANS: dict[tuple, tuple[Any, SamplingPlan]] = {}
#: a typical number of sequential calls of a window of ``w`` steps on the mixture proxy at
#: tol 1e-3 (N = 100 and 200), ``a N / w + b``: the order in which candidates are priced,
#: rescaled by the calls of those priced already
_GUESS = {"taa": (1.4, 6.0), "quasi_newton": (2.0, 7.0), "picard": (2.0, 10.0)}
#: a candidate whose typical time is above the best predicted by more than this share is
#: not priced (its typical time errs by about this much)
GUESS_SLACK = 0.35
#: before a candidate's proxy run has been timed: its engine seconds per call as a multiple
#: of serial's per step, and the planner's seconds per proxy call as a multiple of serial's
#: per proxy step, ``(2 + steps per call / 8)`` (both from the mixture at N = 100 and 200)
_ENGINE_GUESS = {"srds": 2.0, "picard": 2.0, "quasi_newton": 4.0, "taa": 5.0}
#: the planner's seconds per proxy step of serial before one has been timed (about what it
#: takes on a quiet 2-core CPU: the check it serves only spares the serial proxy steps
#: when even that cheap a proxy run could not fit; the measured steps decide then)
_PROXY_STEP_PRIOR = 0.0005


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
    """A typical number of calls (see :data:`_GUESS`); SRDS about ``B + 3.5 N / B``
    pipelined and ``B + 3.7 (N / B + B)`` as a sweep (3-4 iterations)."""
    if sampler == "srds":
        B = options["num_blocks"]
        return B + 3.5 * N / B if options.get("pipelined") else B + 3.7 * (N / B + B)
    a, b = _GUESS[sampler]
    return max(_calls_bound(sampler, options, N), a * N / options["window"] + b)


@dataclass
class _Request:
    """What one plan is made for, and what it has learnt while pricing."""

    denoiser: Denoiser
    schedule: Schedule
    x: Tensor
    N: int
    tol: float | None
    eta: float
    solver: str | None
    runners: Mapping[str, Runner]
    devices: int
    gather: float
    grid: SamplingGrid = field(init=False)
    skey: tuple = field(init=False)
    mkey: tuple = field(init=False)
    per_step: int = field(init=False)
    #: the planner's seconds per proxy step of serial; measured/guessed proxy seconds
    proxy_step_s: float = 0.0
    proxy_scale: list[float] = field(default_factory=list)
    engine: dict[str, float] = field(default_factory=dict)
    calls_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = SamplingGrid.build(self.schedule, self.N, self.solver, self.eta)
        self.skey = _schedule_key(self.schedule, self.grid)
        self.mkey = _model_key(self.denoiser, self.x)
        self.per_step = rows_per_step(self.denoiser, self.x)

    @property
    def key(self) -> tuple:
        """What recorded runs and a plan's match are filed under."""
        return (self.mkey, self.skey, self.N, self.tol, self.eta, self.solver)

    def rows(self, steps: int) -> int:
        """Network rows of a call of ``steps`` steps on the widest rank."""
        return math.ceil(steps / self.devices) * self.per_step

    def trace(self, sampler: str, options: Mapping[str, Any],
              price: Callable[[int], float] | None = None,
              limit_s: float = math.inf) -> tuple[list[int], float, float] | None:
        """The candidate's proxy trace (see :func:`proxy_trace`)."""
        return proxy_trace(self.runners, self.schedule, self.grid, self.skey, self.x, sampler,
                           options, None if sampler == "serial" else self.tol, self.eta,
                           self.solver, price, limit_s)

    def traced(self, sampler: str, options: Mapping[str, Any]) -> bool:
        """Whether the candidate's proxy trace is cached already (pricing it is free)."""
        return (self.skey, self.N, str(self.x.dtype), str(self.x.device), sampler,
                tuple(sorted(options.items())), None if sampler == "serial" else self.tol,
                self.eta, self.solver) in _TRACES

    def record(self, sampler: str, options: Mapping[str, Any]) -> int | None:
        """The calls a recorded run of the candidate took (:func:`record_run`), if any."""
        rec = _RECORDS.get((*self.key, sampler, tuple(sorted(options.items()))))
        return rec[1] if rec is not None and rec[0]() is _network(self.denoiser) else None

    def guess_calls(self, sampler: str, options: Mapping[str, Any]) -> float:
        """A typical number of calls, scaled by what the priced candidates showed."""
        scales = self.calls_scale
        s = scales.get(sampler, sorted(scales.values())[len(scales) // 2] if scales else 1.0)
        return _calls_guess(sampler, options, self.N) * s

    def proxy_cost(self, sampler: str, options: Mapping[str, Any]) -> float:
        """The planner's seconds a proxy run of the candidate would take (0 if cached)."""
        if self.traced(sampler, options):
            return 0.0
        scale = sum(self.proxy_scale) / len(self.proxy_scale) if self.proxy_scale else 1.0
        per_call = self.proxy_step_s * (2 + _steps_per_call(options) / 8) * scale
        return self.guess_calls(sampler, options) * per_call

    def learn(self, sampler: str, options: Mapping[str, Any], trace: tuple, took: float) -> None:
        """Rescale later guesses by a priced candidate's calls, engine and proxy seconds."""
        steps, engine, _ = trace
        self.calls_scale[sampler] = len(steps) / _calls_guess(sampler, options, self.N)
        self.engine[sampler] = engine
        if self.proxy_step_s > 0 and took > 0:
            unit = self.proxy_step_s * (2 + _steps_per_call(options) / 8) * len(steps)
            self.proxy_scale.append(took / unit)


def _configs(N: int, samplers: tuple[str, ...], grid: SamplingGrid, devices: int,
             per_step: int, max_batch: int | None) -> tuple[list[tuple[str, dict]], list[str]]:
    """The candidates a plan considers, and those left out with why."""
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
    return configs, excluded


_SKIPPED = {
    "bound_serial": "a lower bound on their time (from the cost model alone), raised by its "
                    "error band, is not below serial's",
    "bound_best": "a lower bound on their time is not below the best predicted",
    "guess_best": f"their typical time (calls guessed from the candidates priced) is more than "
                  f"{GUESS_SLACK:.0%} above the best predicted",
    "passed_best": "their proxy run passed the best predicted time (or serial's, less the "
                   "error band) and was stopped",
    "budget": "the planning budget ({share:.0%} of serial's predicted time) would be passed",
}


def _candidate(req: _Request, sampler: str, options: dict, cost: CostModel, trace: tuple,
               rec: int | None) -> Candidate:
    """A priced candidate from its proxy trace (calls from ``rec``, a recorded run, if any)."""
    steps, engine, _ = trace
    if cost.engine_s is not None:
        engine = cost.engine_s
    rows = [req.rows(n) for n in steps]
    calls, estimate, error = len(rows), "proxy", PROXY_ERROR
    if rec is not None:
        calls, estimate, error = rec, "recorded run", RECORDED_ERROR
    scale = calls / max(1, len(rows))
    t = scale * sum(cost(r) + engine + req.gather for r in rows)
    return Candidate(sampler, options, calls, max(rows), round(scale * sum(rows)), t,
                     estimate, error, engine)


def _price(req: _Request, configs: list[tuple[str, dict]], serial: Candidate,
           cost: CostModel, deadline: float, exhaustive: bool) -> tuple[list[Candidate],
                                                                       dict[str, int]]:
    """Price the candidates, most promising first, skipping those that cannot be chosen
    or would pass the ``deadline`` (see :func:`make_plan`); the priced, and the skipped
    counted by why."""
    widest = max([1] + [_steps_per_call(o) for _, o in configs])
    call_min, step_min = [math.inf], [math.inf]  # cheapest call / step over widths <= n
    for n in range(1, widest + 1):
        c = cost(req.rows(n)) + req.gather
        call_min.append(min(call_min[-1], c))
        step_min.append(min(step_min[-1], c / n))
    serial_engine = serial.engine_s

    def guess(s: str, o: dict) -> float:
        eng = cost.engine_s if cost.engine_s is not None else req.engine.get(
            s, _ENGINE_GUESS[s] * serial_engine)
        return req.guess_calls(s, o) * (cost(req.rows(_steps_per_call(o))) + req.gather + eng)

    parallel: list[Candidate] = []
    skipped = dict.fromkeys(_SKIPPED, 0)
    left = list(configs)
    while left:
        s, o = min(left, key=lambda c: guess(*c))
        left.remove((s, o))
        rec = req.record(s, o)
        best = min((c.predicted_s for c in parallel), default=math.inf)
        err = RECORDED_ERROR if rec else PROXY_ERROR
        limit = math.inf
        if not exhaustive:
            w = _steps_per_call(o)
            lb = max(_calls_bound(s, o, req.N) * call_min[w], req.N * step_min[w])
            why = ("bound_serial" if lb * (1 + err) >= serial.predicted_s else
                   "bound_best" if lb >= best else
                   "guess_best" if guess(s, o) * (1 - GUESS_SLACK) >= best else
                   "budget" if time.perf_counter() + req.proxy_cost(s, o) > deadline else None)
            if why:
                skipped[why] += 1
                continue
            limit = math.inf if rec else min(best, serial.predicted_s / (1 + err))
        t0, cached = time.perf_counter(), req.traced(s, o)
        trace = req.trace(s, o, lambda n: cost(req.rows(n)) + req.gather, limit)
        if trace is None:
            skipped["passed_best"] += 1
            continue
        req.learn(s, o, trace, 0.0 if cached else time.perf_counter() - t0)
        parallel.append(_candidate(req, s, o, cost, trace, rec))
    parallel.sort(key=lambda c: c.predicted_s)
    return parallel, skipped


def _choose(serial: Candidate, parallel: list[Candidate], configs: list,
            max_batch: int | None) -> tuple[Candidate, str]:
    """The choice and why: the fastest predicted parallel candidate, when its prediction
    raised by its error band is below serial's; else serial."""
    if not parallel:
        if not configs:
            return serial, ("no parallel candidate fits" + (
                f" max_batch={max_batch} (a window of two steps needs {2 * serial.max_rows} "
                "rows)" if max_batch is not None else "") + ": serial")
        return serial, ("no parallel candidate priced can be faster than serial by more than "
                        "its error band (lower bounds from the measured cost model, or the "
                        "planning budget): serial")
    best = parallel[0]
    edge = best.predicted_s * (1 + best.error)
    if edge < serial.predicted_s:
        return best, (f"predicted {serial.predicted_s / best.predicted_s:.2f}x faster than "
                      f"serial, {serial.predicted_s / edge:.2f}x at the edge of its error band")
    return serial, (f"no parallel candidate is predicted faster than serial by more than its "
                    f"error band (best: {best.label}, "
                    f"{serial.predicted_s / best.predicted_s:.2f}x)")


def _serial(req: _Request, cost: CostModel, proxy: bool = True) -> Candidate:
    """Serial priced: ``N`` calls of one step at the cost model's latency plus serial's own
    engine seconds per step (timed on a few proxy steps, unless ``proxy`` is false and
    none were timed yet: then none; ``cost.engine_s`` if given)."""
    engine = 0.0
    if proxy or req.traced("serial", {}):
        _, engine, req.proxy_step_s = req.trace("serial", {})
    if cost.engine_s is not None:
        engine = cost.engine_s
    N, rows = req.N, req.per_step
    return Candidate("serial", {}, N, rows, N * rows, N * (cost(rows) + engine), "exact", 0.0,
                     engine)


def _check_options(samplers: tuple[str, ...], runners: Mapping[str, Runner],
                   max_batch: int | None, gather_s: float, budget: float | None,
                   exhaustive: bool, reuse: bool, cost: CostModel | None) -> None:
    """The planner's own options, each named when wrong."""
    if max_batch is not None and (not _is_int(max_batch) or max_batch < 1):
        raise ValueError(f"max_batch must be an int >= 1 (network rows per call), got {max_batch!r}")
    unknown = sorted(set(samplers) - set(PARALLEL))
    if unknown:
        raise ValueError(f"samplers must be among {', '.join(PARALLEL)}; got {unknown}")
    missing = sorted({"serial", *samplers} - set(runners))
    if missing:
        raise ValueError(f"runners must hold an entry point for {', '.join(missing)}")
    if not (_is_real(gather_s) and math.isfinite(gather_s) and gather_s >= 0):
        raise ValueError(f"gather_s must be a finite number >= 0 (seconds), got {gather_s!r}")
    if budget is not None and not (_is_real(budget) and budget >= 0 and not math.isnan(budget)):
        raise ValueError(f"budget must be a number >= 0 (a share of the serial time) or None, "
                         f"got {budget!r}")
    for name, flag in (("exhaustive", exhaustive), ("reuse", reuse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if cost is not None and not isinstance(cost, CostModel):
        raise TypeError(f"cost must be a CostModel or None, got {type(cost).__name__}")


@torch.no_grad()
def make_plan(denoiser: Denoiser, schedule: Schedule, x: Tensor, num_steps: int, *,
              runners: Mapping[str, Runner], tol: float | None = None,
              max_batch: int | None = None, eta: float = 0.0, solver: str | None = None,
              cost: CostModel | None = None, executor: object | None = None,
              samplers: tuple[str, ...] = PARALLEL, gather_s: float = 0.0,
              budget: float | None = None, exhaustive: bool = False,
              reuse: bool = False) -> SamplingPlan:
    """Predict the wall-clock of each sampler configuration on this device; pick the fastest.

    The checked, public form is :func:`~adapters.diffusion.plan_sampling` (its docstring
    has the arguments); here ``denoiser`` is bound and ``x`` checked, and ``runners`` maps
    ``"serial"`` and every name in ``samplers`` to its entry point.

    Pricing. Serial costs ``N * (latency(rows per step) + serial's engine seconds per
    step)``, the latter timed on a few steps of serial on the proxy; a parallel candidate
    the latency of each of its proxy run's calls plus *its own* engine seconds per call
    (that run's wall-clock less the proxy network's compute). A given ``cost.engine_s``
    replaces every measured engine time.

    What planning costs, and when it stops. With ``cost=None`` a first plan may spend
    ``budget`` (default :data:`PLAN_BUDGET`, 8 %) of the predicted serial time, every step
    priced before it is taken: one step's latency (warm-up included) and a few proxy steps
    of serial come first; if the cheapest proxy run would already pass the budget, the plan
    is serial and probes no further (a short run, or a fast network: planning cannot pay
    for itself). The probe's wider calls then get at most :data:`PROBE_SHARE` of the budget.
    Candidates are priced most promising first (their typical calls, :data:`_GUESS`,
    rescaled by those priced, at their width's latency), and one is not priced (counted in
    ``excluded``) when a lower bound on its time from the cost model alone, raised by its
    error band, is not below serial's, or is not below the best predicted so far; when its
    typical time is more than :data:`GUESS_SLACK` above the best; or when its proxy run,
    priced before it starts, would pass the budget. A proxy run stops as soon as its calls
    so far cost more than the best predicted time. A run of fewer than
    :data:`MIN_PLAN_STEPS` steps gets serial after one timed call. ``exhaustive=True``
    prices every candidate (benchmarks); with a given ``cost`` the budget is unlimited
    unless ``budget`` is given.

    Plans made once. Every plan is kept for the process under what it depends on (network,
    sample shape, batch, dtype, device, conditioning, grid, ``num_steps``, ``tol``, ``eta``,
    solver, ``max_batch``, ranks, ``cost``, ``samplers``, ``budget``); ``reuse=True`` (what
    ``sample(sampler="auto")`` passes) returns the kept plan for an identical request, its
    choice unchanged, with ``reused=True`` and ``planning_s`` the lookup's seconds. A run
    recorded by :func:`record_run` refines only plans made afterwards (``reuse=False``, or
    ``sample(..., replan=True)``), which may choose differently: a user re-running a seed
    with ``sample(sampler="auto")`` gets the same sample bit for bit.
    """
    t_start = time.perf_counter()
    N = check_num_steps(num_steps, schedule.max_steps)
    _check_options(samplers, runners, max_batch, gather_s, budget, exhaustive, reuse, cost)
    devices = _world_size(executor)
    req = _Request(denoiser, schedule, x, N, tol, eta, solver, runners, devices,
                   gather_s if devices > 1 else 0.0)
    plan_key = (req.mkey, x.shape[0], req.skey, N, tol, eta, solver, max_batch,
                tuple(samplers), devices, gather_s, cost, budget, exhaustive)
    if reuse:
        hit = _PLANS.get(plan_key)
        if hit is not None and hit[0]() is _network(denoiser):
            return replace(hit[1], planning_s=time.perf_counter() - t_start, reused=True)
    configs, excluded = _configs(N, tuple(samplers), req.grid, devices, req.per_step,
                                 max_batch)
    measured = cost is None
    share = math.inf if exhaustive else (
        (PLAN_BUDGET if measured else math.inf) if budget is None else budget)

    def finish(candidates: list[Candidate], choice: Candidate, reason: str,
               cost: CostModel) -> SamplingPlan:
        if devices > 1:  # every rank runs rank 0's choice (timing-dependent pruning differs)
            candidates, index, reason, excluded_, cost = _from_rank_0(
                executor, (candidates, candidates.index(choice), reason, excluded, cost))
            choice = candidates[index]
        else:
            excluded_ = excluded
        plan = SamplingPlan(candidates, choice, reason, cost, excluded_, key=req.key,
                            planning_s=time.perf_counter() - t_start)
        _PLANS[plan_key] = (_ref(_network(denoiser)), plan)
        return plan

    timer = _Timer(denoiser, schedule, x, N) if measured else None
    if measured and N < MIN_PLAN_STEPS and not exhaustive:
        lat = timer(1)
        serial = Candidate("serial", {}, N, req.per_step, N * req.per_step, N * lat, "exact",
                           0.0)
        excluded.append(f"every parallel candidate: a run of {N} < {MIN_PLAN_STEPS} steps is "
                        "too short for planning to pay")
        return finish([serial], serial, f"{N} steps: too short for planning to pay "
                      f"(under {MIN_PLAN_STEPS}); serial without a probe",
                      CostModel((req.per_step,), (lat,), "probe"))
    if measured:
        cost, cut = _measure(req, timer, configs, share, t_start)
        if cut is not None:
            serial = _serial(req, cost, proxy=False)
            excluded.append(f"every parallel candidate: {cut}")
            return finish([serial], serial, f"planning cannot pay for itself ({cut}); serial "
                          "after one step's latency", replace(cost, engine_s=serial.engine_s))
    serial = _serial(req, cost)
    parallel, skipped = _price(req, configs, serial, cost, t_start + share * serial.predicted_s,
                               exhaustive)
    excluded += [f"{n} candidates not priced: " + _SKIPPED[why].format(share=share)
                 for why, n in skipped.items() if n]
    choice, reason = _choose(serial, parallel, configs, max_batch)
    return finish([serial, *parallel], choice, reason,
                  cost if cost.engine_s is not None else replace(cost, engine_s=serial.engine_s))


def _cannot_pay(req: _Request, configs: list[tuple[str, dict]], allowed: float,
                t_start: float, more: float) -> str | None:
    """Why planning cannot pay for itself, if it cannot: the seconds spent, ``more`` to
    come, and the cheapest proxy run would pass ``allowed``."""
    if not configs:
        return None
    cheapest = min(req.proxy_cost(s, o) for s, o in configs)
    spent = time.perf_counter() - t_start
    if spent + more + cheapest <= allowed:
        return None
    return (f"{spent:.3g} s spent and a proxy run of ~{cheapest + more:.3g} s would pass the "
            f"planning budget, {allowed:.3g} s")


def _measure(req: _Request, timer: _Timer, configs: list[tuple[str, dict]], share: float,
             t_start: float) -> tuple[CostModel, str | None]:
    """The device's cost curve for a plan: one step's latency, serial's proxy steps, then
    (if the cheapest proxy run fits the budget at all) the probe's wider calls within
    :data:`PROBE_SHARE` of the budget. Returns the curve and, when planning cannot pay for
    itself, why (the curve is then one step's latency)."""
    widest = max([1] + [_steps_per_call(o) for _, o in configs])
    max_rows = req.rows(widest)
    hit = _cached_probe(req.denoiser, req.x, max_rows)
    if hit is not None:
        return hit, None
    first = timer.warm()
    one = CostModel((req.per_step,), (first,), "probe")
    allowed = share * req.N * first
    if not req.traced("serial", {}):  # before any proxy ran: the prior, then serial's own
        req.proxy_step_s = _PROXY_STEP_PRIOR
        cut = _cannot_pay(req, configs, allowed, t_start, _SERIAL_STEPS * _PROXY_STEP_PRIOR)
        if cut:
            return one, cut
    serial = _serial(req, one)
    allowed = share * serial.predicted_s
    cut = _cannot_pay(req, configs, allowed, t_start, 0.0)
    if cut:
        return one, cut
    cheapest = min((req.proxy_cost(s, o) for s, o in configs), default=0.0)
    spent = time.perf_counter() - t_start
    if math.isinf(allowed):  # (exhaustive, or a budget of inf: the probe's own default)
        limit = timer.spent + 0.15 * req.N * first
    else:
        limit = min(timer.spent + PROBE_SHARE * allowed, allowed - cheapest - spent + timer.spent)
    at = tuple(sorted({math.ceil(_steps_per_call(o) / req.devices) for _, o in configs}))
    cost = probe(req.denoiser, req.schedule, req.x, req.N, max_rows=max_rows,
                 budget=limit / (req.N * first), timer=timer, first=first, at=at)
    return cost, None


def check_plan_made(plan: object) -> None:
    """``plan`` must be a :class:`SamplingPlan` made by the planner (holding its run's key)."""
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a SamplingPlan (from plan_sampling), got "
                        f"{type(plan).__name__}")
    if not plan.key:
        raise ValueError("plan holds no key of the run it was made for: make it with "
                         "plan_sampling(...)")


def check_plan_matches(plan: SamplingPlan, denoiser: Denoiser, schedule: Schedule, x: Tensor,
                       N: int, tol: float | None, eta: float, solver: str | None) -> None:
    """``plan`` must have been made for this run (the checked, public form:
    :func:`~adapters.diffusion.auto.check_plan`); a ``ValueError`` naming each thing that
    differs otherwise."""
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
    differ("rows per step (batch x guidance)", plan.serial.max_rows, rows_per_step(denoiser, x))
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


__all__ = ["CostModel", "Candidate", "SamplingPlan", "probe", "make_plan", "proxy_trace",
           "check_plan_made", "check_plan_matches", "record_run", "clear_caches",
           "rows_per_step", "PROXY_ERROR", "RECORDED_ERROR", "PLAN_BUDGET", "PROBE_SHARE",
           "GUESS_SLACK", "MIN_PLAN_STEPS", "PARALLEL"]
