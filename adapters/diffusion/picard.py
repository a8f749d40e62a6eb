"""Sliding-window fixed-point samplers: Picard (ParaDiGMS) and pint's quasi-Newton refinement.

The serial sampler is the recursion ``x_{j+1} = Phi_j(x_j)``. Both samplers solve it on a
window of ``w`` steps at once: one batched model call evaluates ``Phi_j`` at every input
of the window, then the window's states are rebuilt front to back with a model-free
correction,

    ``x'_{j+1} = Phi_j(x_j) + J_j (x'_j - x_j)``,

which is Parareal on the window whose coarse propagator is the linear map ``J_j`` (no
model call). ``J_j = I`` is ParaDiGMS's Picard update (Shih et al., 2023),
``x'_{a+i+1} = x_a + sum_{l<=i} (Phi_{a+l}(x_{a+l}) - x_{a+l})``.
:func:`quasi_newton_sample` takes ``J_j = r_j I`` with the secant gain
``r_j = <dPhi_j, dx_j> / |dx_j|^2`` from the step's two latest evaluations (per sample,
``J_j = I`` until a step has been evaluated twice): a scalar Broyden approximation of the
step's Jacobian, so a correction of an early step is carried through the window with the
gain the network actually has along it (a Newton step as in DEER/ParaSolver, without
Jacobian-vector products).

The window slides past every leading step whose change passed the stopping test
``||x_new - x_old||^2 / (dim * sigma_j^2) <= tol^2`` (ParaDiGMS's per-step rule, with
``sigma_j^2`` the DDPM posterior variance of step ``j``), and at least one step per
iteration (the first step of the window is exact after one evaluation), so ``N``
iterations always reproduce the serial sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .model import Model
from .ode import GridStep
from .progress import check_progress, progress_bar
from .samplers import (
    SampleOutput,
    SamplerStats,
    Schedule,
    _check_callback,
    _check_finite_input,
    _setup,
    sample_of,
)

_COMMON_ARGS = """
    ``model``, ``schedule``, ``x_T``, ``num_steps``, ``eta``, ``generator``, ``sampler``,
    ``noise`` and ``**model_options`` (``prediction_type``, ``model_kwargs``,
    ``guidance_scale``, ``uncond_kwargs``, ``check_finite``) are as in
    :func:`~adapters.diffusion.srds_sample`.

    Args:
        window: steps ``w`` evaluated per model call (``1 <= w <= num_steps``, default
            ``min(32, num_steps)``); the batch of each call is ``w * batch`` samples.
        tol: per-step tolerance (relative to the step's noise scale, see the module doc);
            ``0`` slides one step per iteration (the serial sampler, batched).
        max_iters: limit on model calls (default: ``num_steps``, which always suffices).
        callback: ``callback(iteration, window_start, max_error)`` after every iteration.
        initial: a trajectory guess ``[num_steps + 1, *x_T.shape]`` to start from (warm
            start, e.g. ``out.trajectory`` of a neighbouring ``x_T``); default: ``x_T``
            everywhere.
        return_trajectory: keep the whole trajectory ``[num_steps + 1, *x_T.shape]`` in
            ``out.trajectory`` (for warm starts).
        progress: a tqdm bar on stderr of ``num_steps`` steps, advanced after every model
            call by the steps that call made exact (the window's slide); the postfix counts
            the calls.
        executor: a :class:`pint.DistributedExecutor` (under ``torchrun``, the model on
            every rank): every window call's steps are split into contiguous slices over
            the ranks (the first ``n mod R`` of ``R`` ranks get one step more), each rank
            evaluates its slice (with its conditioning and guidance rows) and one
            ``all_gather`` per call hands every rank the whole window; the rebuild and the
            stopping test then run on every rank, on the same numbers (checked at every
            call: ranks that diverge raise :class:`pint.DistributedError`). Every rank
            returns the single-process result; ``stats.model_calls`` and ``model_rows``
            count this rank's own calls (``stats.engine``: a
            :class:`pint.DistributedStats` with every rank's), ``stats.depth`` the
            sequential calls. Ranks with different arguments raise the same
            ``ValueError`` before any model call; a rank that raises makes the others raise
            :class:`pint.DistributedError` naming it; every wait is bounded by the
            executor's ``timeout``.

    Returns:
        :class:`~adapters.diffusion.SampleOutput`; ``iterations`` and ``stats.depth`` are
        the number of sequential model calls, ``history`` the largest normalised error of
        each iteration, ``num_blocks`` the window.
"""


def picard_sample(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    num_steps: int,
    window: int | None = None,
    tol: float = 1e-3,
    max_iters: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, float], None] | None = None,
    *,
    sampler: str | None = None,
    noise: Tensor | None = None,
    initial: Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    executor: object | None = None,
    **model_options: Any,
) -> SampleOutput:
    return _window_sample(model, schedule, x_T, num_steps, window, tol, max_iters, eta, generator,
                          callback, sampler, noise, initial, return_trajectory, model_options,
                          progress=progress, coupling="identity", executor=executor)


picard_sample.__doc__ = """Sample with sliding-window Picard iteration (ParaDiGMS), the peer
    that pint's samplers are measured against in ``benchmarks/``.
""" + _COMMON_ARGS


def quasi_newton_sample(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    num_steps: int,
    window: int | None = None,
    tol: float = 1e-3,
    max_iters: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, float], None] | None = None,
    *,
    sampler: str | None = None,
    noise: Tensor | None = None,
    initial: Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    executor: object | None = None,
    **model_options: Any,
) -> SampleOutput:
    return _window_sample(model, schedule, x_T, num_steps, window, tol, max_iters, eta, generator,
                          callback, sampler, noise, initial, return_trajectory, model_options,
                          progress=progress, coupling="secant", executor=executor)


quasi_newton_sample.__doc__ = """Sample with the sliding window and a secant coarse correction
    (``J_j = r_j I``, see the module doc): the same calls, width and stopping rule as
    :func:`picard_sample`, fewer iterations where the steps' gains differ from 1.
""" + _COMMON_ARGS


@torch.no_grad()  # the trajectory would otherwise keep every call's graph
def _window_sample(
    model, schedule, x_T, num_steps, window, tol, max_iters, eta, generator, callback, sampler,
    noise, initial, return_trajectory, model_options, coupling: str, progress: bool = False,
    executor: object | None = None,
) -> SampleOutput:
    _check_callback(callback)
    check_progress(progress)
    N, denoiser, grid, noise, problem = _setup(
        model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options)
    if window is None:
        window = min(32, N)
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if not 1 <= window <= N:
        raise ValueError(f"window must be between 1 and num_steps={N}, got {window}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if max_iters is None:
        max_iters = N
    if isinstance(max_iters, bool) or not isinstance(max_iters, int):
        raise TypeError(f"max_iters must be an int >= 1, got {max_iters!r}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    stepper = GridStep(denoiser, grid, fine=True, noise=noise)
    dev = x_T.device
    # per-step noise scale: the DDPM posterior variance (ParaDiGMS); never below 1e-8
    var = grid.step_noise_var().to(dev)
    y0 = problem.y0  # x_T (times init_noise_sigma; with history slots for multistep solvers)
    dim = x_T[0].numel()

    def smp(states: Tensor) -> Tensor:
        """The sample slot of states ``[n, batch, (S,) *sample]``. For multistep solvers
        the rebuild carries the sample's correction into every slot that holds a sample
        (UniPC's corrected previous sample), and a predicted ``x0`` slot takes its fresh
        value (J = 0: each step overwrites it)."""
        return states if grid.num_slots == 1 else states[:, :, 0]

    sample_slots = [s for s, kind in enumerate(grid.slots) if kind == "x" and s > 0]

    traj = y0.unsqueeze(0).repeat(N + 1, *([1] * y0.dim()))
    guide = None
    if initial is not None:
        if not isinstance(initial, Tensor) or tuple(initial.shape) != (N + 1, *y0.shape):
            raise ValueError(f"initial must have shape {(N + 1, *y0.shape)}, "
                             f"got {tuple(getattr(initial, 'shape', ())) or type(initial).__name__}")
        _check_finite_input("initial", initial)
        # the guess's increments, anchored at x_T (a neighbouring run's trajectory starts
        # elsewhere; its steps are what carries over)
        guide = initial.to(device=dev, dtype=x_T.dtype)
        _check_finite_input("initial", guide, x_T.dtype)
        traj[1:] = y0 + (guide[1:] - guide[0])
        _check_finite_input("initial", traj, x_T.dtype)
    ones = torch.ones(window, dtype=torch.float64, device=dev)
    secant = _Secant(smp(traj), window) if coupling == "secant" else None
    history: list[float] = []
    tol2 = tol * tol
    name = "picard" if coupling == "identity" else "quasi_newton"
    ranks = None
    if executor is not None:
        ranks = _Ranks.connect(executor, y0, window, _arguments(
            name, denoiser, grid, x_T, N, window, tol, max_iters, noise, initial, callback,
            return_trajectory))
    try:
        out = _window_loop(N, window, max_iters, tol2, progress, name, traj, guide, smp, grid,
                           sample_slots, stepper, ones, secant, var, dim, y0, dev, denoiser,
                           callback, history, ranks)
    except BaseException as err:
        if ranks is not None:
            ranks.link.report(err, 0)  # the other ranks stop with a DistributedError naming it
        raise
    a, it = out
    denoiser.check()
    converged = a >= N
    stats = SamplerStats(denoiser.calls, denoiser.rows, it)
    if ranks is not None:
        stats.engine = ranks.finish(denoiser, it, traj[N])
    return SampleOutput(sample_of(grid, traj[N]).clone(), it, converged, history, stats, float(tol), window,
                        trajectory=traj if return_trajectory else None)


def _window_loop(N, window, max_iters, tol2, progress, name, traj, guide, smp, grid, sample_slots,
                 stepper, ones, secant, var, dim, y0, dev, denoiser, callback, history,
                 ranks) -> tuple[int, int]:
    """The iterations of :func:`_window_sample` (``traj`` and ``history`` in place);
    returns the window start and the iterations done."""
    a, it = 0, 0
    with progress_bar(progress, N, name, unit="step") as bar:
        while a < N and it < max_iters:
            e = min(a + window, N)
            n = e - a
            pos = torch.arange(a, e, dtype=torch.float64, device=dev)
            y = traj[a:e]
            if ranks is None:
                phi, diverged = stepper.step(None, pos, y, ones[:n]), None
            else:  # this rank's slice of the window, then every rank's (one collective)
                phi, diverged = ranks.evaluate(stepper.step, pos, y, ones[:n])
            ys, ps = smp(y), smp(phi)
            if secant is None:  # J = I: the rebuild is a cumulative sum
                new_s = ys[0] + torch.cumsum(ps - ys, dim=0)
            else:  # new_j = phi_j + r_j d_j with d_j = new_{j-1} - y_j, d_0 = 0 (exact start):
                # d_{j+1} = r_j d_j + (phi_j - y_{j+1}) is an affine recurrence, scanned
                gain = secant.gains(a, ys, ps)
                d = torch.cat([torch.zeros_like(ys[:1]), _affine_scan(gain[:-1], ps[:-1] - ys[1:])])
                new_s = ps + gain * d
            if grid.num_slots == 1:
                new = new_s
            else:
                new = phi.clone()
                new[:, :, 0] = new_s
                # the correction of each step's input sample, carried as the rebuild carries it
                shift = torch.cat([torch.zeros_like(ys[:1]), new_s[:-1] - ys[1:]])
                if secant is not None:
                    shift = gain * shift
                for slot in sample_slots:
                    new[:, :, slot] = phi[:, :, slot] + shift
            # the test measures the sample (the history follows it)
            diff = (new_s - smp(traj[a + 1: e + 1])).double().reshape(n, y0.shape[0], -1)
            # normalised error per step, worst sample of the batch
            err = diff.pow(2).sum(-1).amax(-1) / (dim * var[a:e])
            traj[a + 1: e + 1] = new
            it += 1
            # everything the host needs from this call in one read (one sync on a GPU):
            # the first step that failed the test (n if none), the worst error, finiteness
            # (always checked: a non-finite window must never pass the test)
            first_bad = torch.where(err > tol2, torch.arange(n, device=dev), n).min()
            finite = torch.isfinite(err).all()
            decision = torch.stack([first_bad.double(), err.max(), finite.double()])
            if ranks is not None:  # sent with the next call, and compared there
                ranks.record(decision)
                decision = torch.cat([decision, diverged.double().view(1)])
            first_bad, worst, finite, *other = decision.tolist()
            if other and other[0]:
                raise ranks.divergence(it)
            stride = max(1, int(first_bad))
            worst = math.sqrt(worst)
            history.append(worst)
            if not finite:
                denoiser.check()  # a NaN/Inf from the model is named by its timestep
                raise FloatingPointError(f"non-finite state in the sampler window starting at step "
                                         f"{a} (iteration {it})")
            new_a = a + stride
            if bar is not None:  # the steps this call made exact
                bar.set_postfix(calls=it, refresh=False)
                bar.update(stride)
            new_e = min(new_a + window, N)
            if new_e > e:  # steps entering the window start from its last value (plus the
                # guess's increments from there, with a warm start)
                traj[e + 1: new_e + 1] = traj[e] if guide is None else (
                    traj[e] + guide[e + 1: new_e + 1] - guide[e])
            a = new_a
            if callback is not None:
                callback(it, traj[a], worst)
    return a, it


class _Ranks:
    """A window sampler's model calls split over the ranks of a
    :class:`pint.DistributedExecutor` (see ``executor`` in :func:`picard_sample`).

    Every call exchanges one buffer per rank with one ``all_gather`` into a preallocated
    buffer: ``payload`` bytes for up to ``ceil(window / R)`` steps of model outputs, then a
    tail of float64 slots ``[kind, first_bad, worst, finite, calls, rows, sample_sum, 0]``
    (kind 0: a model call, carrying the previous call's stopping decision; kind 1: the end
    of the run, with this rank's counters). The buffer has the same size in every call, so a
    rank that stopped while others go on meets them in the same collective, and every rank
    compares the tails of all: ranks whose rebuilds or decisions differ all raise."""

    TAIL = 8

    def __init__(self, link: Any, y0: Tensor, window: int) -> None:
        self.link, self.R, self.rank = link, link.world, link.rank
        self.shape, self.dtype = tuple(y0.shape), y0.dtype
        self.row_bytes = y0.numel() * y0.element_size()
        width = -(-window // self.R)
        self.payload = -(-width * self.row_bytes // 8) * 8
        size = self.payload + 8 * self.TAIL
        self.send = torch.zeros(size, dtype=torch.uint8, device=y0.device)
        self.recv = torch.empty((self.R, size), dtype=torch.uint8, device=y0.device)
        self.tail = self.send[self.payload:].view(torch.float64)

    @classmethod
    def connect(cls, executor: object, y0: Tensor, window: int,
                fields: dict[str, str]) -> _Ranks | None:
        """``None`` with one rank (the local sampler runs)."""
        connect = getattr(executor, "connect", None)
        if not callable(connect):
            raise TypeError(f"executor must be a pint.DistributedExecutor, got "
                            f"{type(executor).__name__}")
        link = connect(y0.device, fields, "the window sampler",
                       "x_T, noise, model, conditioning and settings",
                       {"x_T values": "seed every rank's generator identically, or broadcast "
                                      "x_T from rank 0"})
        return cls(link, y0, window) if link.world > 1 else None

    def bounds(self, n: int) -> list[int]:
        """Where each rank's slice of a window of ``n`` steps starts (and ``n``)."""
        q, m = divmod(n, self.R)
        return [r * q + min(r, m) for r in range(self.R + 1)]

    def evaluate(self, step: Callable, pos: Tensor, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``step(None, pos, y, h)`` for the whole window, this rank evaluating its slice;
        and whether the ranks' previous decisions differ (a device bool)."""
        starts = self.bounds(y.shape[0])
        lo, hi = starts[self.rank], starts[self.rank + 1]
        if hi > lo:
            mine = step(None, pos[lo:hi], y[lo:hi], h[lo:hi])
            self._rows(self.send, hi - lo).copy_(mine)
        out = self._exchange("the window's model outputs")
        parts = [self._rows(out[r], starts[r + 1] - starts[r]) for r in range(self.R)
                 if starts[r + 1] > starts[r]]
        bits = out[:, self.payload:].view(torch.int64)[:, :4]
        return torch.cat(parts), (bits != bits[:1]).any()

    def record(self, decision: Tensor) -> None:
        """This call's ``[first_bad, worst, finite]``, sent with the next exchange."""
        self.tail[1:4].copy_(decision)

    def divergence(self, it: int) -> Exception:
        from pint import DistributedError

        return DistributedError(
            f"the ranks' stopping decisions differ after iteration {it}: the rebuild ran on "
            "the same model outputs but gave different numbers (non-deterministic kernels, "
            "or different devices on the ranks)")

    def finish(self, denoiser: Any, it: int, last: Tensor, depth: int | None = None) -> Any:
        """The end of the run: every rank's counters, and a check that every rank ends
        with the same decisions and final state. Returns a :class:`pint.DistributedStats`
        (``depth``: the sequential calls, default ``it``)."""
        from pint import DistributedError, DistributedStats

        self.tail[0] = 1.0
        self.tail[4], self.tail[5] = float(denoiser.calls), float(denoiser.rows)
        self.tail[6] = last.double().sum()
        out = self._exchange("the end of the run")
        tails = out[:, self.payload:].view(torch.float64)
        bits = tails.view(torch.int64)[:, [0, 1, 2, 3, 6]]
        if bool((bits != bits[:1]).any()):
            kinds = tails[:, 0].tolist()
            if any(k != 1.0 for k in kinds):
                raise DistributedError(
                    f"the ranks stopped after different iterations (ranks "
                    f"{[r for r, k in enumerate(kinds) if k != 1.0]} went on): their stopping "
                    "decisions differ (non-deterministic kernels, or different devices)")
            raise self.divergence(it)
        counts = tails[:, 4:6].tolist()
        per_rank = [{"model_calls": int(c), "model_rows": int(r)} for c, r in counts]
        return DistributedStats(f_calls=sum(p["model_calls"] for p in per_rank),
                                rows=sum(p["model_rows"] for p in per_rank),
                                depth=it if depth is None else depth,
                                world_size=self.R, per_rank=per_rank)

    def _rows(self, buf: Tensor, k: int) -> Tensor:
        return buf[:k * self.row_bytes].view(self.dtype).view(k, *self.shape)

    def _exchange(self, what: str) -> Tensor:
        return self.link.all_gather_into(self.recv, self.send, what)


def _describe(value: Any) -> str:
    """A value of the arguments, for the ranks' agreement: tensors by shape, dtype and a
    digest of their bytes, modules by their type, size and a digest of a few weights."""
    from pint.executors import tensor_digest

    if value is None:
        return "none"
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)} {value.dtype} {tensor_digest(value)}"
    if isinstance(value, torch.nn.Module):
        ts = [t.detach().reshape(-1)[:16] for t in [*value.parameters(), *value.buffers()]]
        size = sum(p.numel() for p in value.parameters())
        head = [t.to(device=ts[0].device, dtype=torch.float64) for t in ts if t.is_floating_point()]
        return (f"{type(value).__qualname__} {size} parameters"
                + (f" {tensor_digest(torch.cat(head))}" if head else ""))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in sorted(value.items())) + "}"
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def _arguments(name: str, denoiser: Any, grid: Any, x_T: Tensor, N: int, window: int, tol: float,
               max_iters: int, noise: Tensor | None, initial: Tensor | None, callback: Any,
               return_trajectory: bool) -> dict[str, str]:
    """What every rank must agree on (see :func:`pint.executors.agree`)."""
    from pint.executors import tensor_digest

    tables = torch.cat([grid.timesteps.double().reshape(-1), grid.coef.double().reshape(-1)])
    return {
        "sampler": name,
        "x_T shape": str(tuple(x_T.shape)),
        "x_T dtype": str(x_T.dtype),
        "x_T device type": x_T.device.type,
        "x_T values": tensor_digest(x_T),
        "num_steps": str(N),
        "window": str(window),
        "tol": repr(float(tol)),
        "max_iters": str(max_iters),
        "solver": f"{grid.solver} {tensor_digest(tables)}",
        "noise": _describe(noise),
        "initial": _describe(initial),
        "model": _describe(denoiser.model),
        "model options": (f"prediction_type={denoiser.prediction_type} "
                          f"clip={denoiser.clip_sample}/{denoiser.clip_range} "
                          f"guidance_scale={denoiser.guidance_scale!r} "
                          f"check_finite={denoiser.check_finite}"),
        "model_kwargs": _describe(denoiser.model_kwargs),
        "uncond_kwargs": _describe(denoiser.uncond_kwargs),
        "callback": "given" if callback is not None else "none",
        "return_trajectory": str(bool(return_trajectory)),
    }


def _affine_scan(A: Tensor, B: Tensor) -> Tensor:
    """``[d_1 .. d_m]`` of ``d_{i+1} = A_i d_i + B_i``, ``d_0 = 0`` (``A``, ``B``: ``[m, ...]``,
    broadcasting): log2(m) batched rounds composing the affine maps (Hillis-Steele)
    instead of m sequential steps; products of the ``A`` only, no division, so gains
    near 0 are harmless."""
    s, m = 1, B.shape[0]
    while s < m:
        B = torch.cat([B[:s], A[s:] * B[:-s] + B[s:]])
        A = torch.cat([A[:s], A[s:] * A[:-s]])
        s *= 2
    return B


class _Secant:
    """Per-step, per-sample secant gains ``r_j = <dPhi, dx> / |dx|^2`` from the latest two
    evaluations of step ``j`` (``1`` until there are two, and where ``dx`` vanishes).

    Only the steps of the current window are ever looked up, and they are ``window``
    consecutive steps, so step ``j`` is kept in slot ``j % window`` (with ``owner`` saying
    which step a slot holds): memory of one window, not of the whole trajectory."""

    def __init__(self, traj: Tensor, window: int) -> None:
        batch = traj.shape[1]
        self.window = window
        self.x = torch.zeros((window, batch, traj[0, 0].numel()), dtype=torch.float64,
                             device=traj.device)
        self.phi = torch.zeros_like(self.x)
        self.owner = torch.full((window,), -1, dtype=torch.int64, device=traj.device)

    def gains(self, a: int, y: Tensor, phi: Tensor) -> Tensor:
        """Gains ``[n, batch, 1, ...]`` (broadcast over a sample) for steps ``a .. a+n-1``
        evaluated at ``y`` with results ``phi`` (both ``[n, batch, ...]``); records them."""
        n, batch = y.shape[0], y.shape[1]
        steps = torch.arange(a, a + n, device=self.owner.device)
        slots = steps % self.window
        x, f = y.reshape(n, batch, -1).double(), phi.reshape(n, batch, -1).double()
        dx, df = x - self.x[slots], f - self.phi[slots]
        den = dx.pow(2).sum(-1)
        r = (dx * df).sum(-1) / den.clamp(min=1e-300)
        ok = (self.owner[slots] == steps)[:, None] & (den > 1e-30) & torch.isfinite(r)
        r = torch.where(ok, r.clamp(0.0, 2.0), torch.ones_like(r))
        self.x[slots], self.phi[slots], self.owner[slots] = x, f, steps
        return r.to(y.dtype).view(n, batch, *([1] * (y.dim() - 2)))
