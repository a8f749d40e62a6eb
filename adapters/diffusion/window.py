"""The sliding-window loop that every window sampler runs: Picard and quasi-Newton
(:mod:`.picard`) and ParaTAA's family (:mod:`.taa`) are couplings plugged into it.

The serial sampler is the recursion ``x_{j+1} = Phi_j(x_j)``. A window sampler holds a guess
of the whole trajectory and, while the window ``a .. e - 1`` (``e = min(a + w, N)``) has not
reached the end, iterates (:func:`run_window`):

1. *evaluate*: one batched model call gives ``Phi_j(x_j)`` at every input of the window
   (split over the ranks of a :class:`pint.DistributedExecutor` when given one:
   :class:`Ranks`, :func:`evaluate`);
2. *rebuild*: the coupling turns those outputs into new states of the window (model free)
   and tests every step; the test's summary ``[first_bad, worst, flag]`` is read by the host
   once (on a GPU: one sync), after the ranks have compared theirs;
3. *slide*: the window moves past the steps the test accepted (at least one: the window's
   first step is exact after one evaluation, so ``N`` iterations always reproduce the serial
   sampler), and the steps entering it take a first value from the coupling;
4. *account*: history, progress bar, callback; at the end :func:`finish_stats` counts the
   model calls (every rank's, with an executor).

A coupling (:class:`WindowCoupling`) says how a window is evaluated and rebuilt, what the
test accepts and what entering steps start from; the loop is the same for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from .output import SamplerStats
from .progress import progress_bar


class WindowCoupling(Protocol):
    """What a window sampler plugs into :func:`run_window` (see the module doc)."""

    #: sequential model calls made before the loop (an initialisation's), counted in depth
    setup_calls: int

    def start(self) -> int:
        """Fill the trajectory's first guess; return the first window's start (the steps
        before it exact)."""

    def iterate(self, a: int, e: int) -> tuple[Tensor, Tensor | None]:
        """One model call on the window ``a .. e - 1`` and its rebuild and test: the device
        tensor ``[first_bad, worst, flag]`` (float64) and, with ranks, whether their
        previous decisions differ (:meth:`Ranks.evaluate`)."""

    def accept(self, a: int, e: int, it: int, first_bad: float, worst: float,
               flag: float) -> tuple[int, float]:
        """The host's reading of :meth:`iterate`'s test: raise on a non-finite window, write
        the accepted states; return the stride (``>= 1``) and the history's entry."""

    def enter(self, e: int, new_e: int) -> None:
        """First values of the states ``e + 1 .. new_e`` entering the window."""

    def state(self, a: int) -> Tensor:
        """The state at the window's start, as the callback receives it."""


def run_window(coupling: WindowCoupling, N: int, window: int, max_iters: int, *, name: str,
               progress: bool, callback: Callable | None,
               ranks: Ranks | None) -> tuple[int, int, list[float]]:
    """Run the window loop to the end (or ``max_iters`` iterations): returns the final
    window start (``N`` when converged), the iterations and the history. An error on one
    rank is reported to the others (they stop with a :class:`pint.DistributedError`)."""
    history: list[float] = []
    try:
        a = coupling.start()
        it = 0
        with progress_bar(progress, N, name, unit="step") as bar:
            if bar is not None and a > 0:
                bar.update(a)
            while a < N and it < max_iters:
                e = min(a + window, N)
                decision, diverged = coupling.iterate(a, e)
                it += 1
                if ranks is not None:  # sent with the next call, and compared there
                    ranks.record(decision)
                    decision = torch.cat([decision, diverged.double().view(1)])
                first_bad, worst, flag, *other = decision.tolist()  # the one host read
                if other and other[0]:
                    raise ranks.divergence(it)
                stride, worst = coupling.accept(a, e, it, first_bad, worst, flag)
                history.append(worst)
                new_a = a + stride
                new_e = min(new_a + window, N)
                if new_e > e:
                    coupling.enter(e, new_e)
                if bar is not None:  # the steps this call made exact
                    bar.set_postfix(calls=coupling.setup_calls + it, refresh=False)
                    bar.update(stride)
                a = new_a
                if callback is not None:
                    callback(it, coupling.state(a), worst)
    except BaseException as err:
        if ranks is not None:
            ranks.link.report(err, 0)  # the other ranks stop with a DistributedError naming it
        raise
    return a, it, history


def finish_stats(denoiser: Any, ranks: Ranks | None, it: int, depth: int,
                 last: Tensor) -> SamplerStats:
    """The run's :class:`SamplerStats` (``depth`` sequential calls); with ranks, every rank's
    counters in ``stats.engine`` after checking that all end with the same ``last`` state."""
    stats = SamplerStats(denoiser.calls, denoiser.rows, depth)
    if ranks is not None:
        stats.engine = ranks.finish(denoiser, it, last, depth)
    return stats


def evaluate(ranks: Ranks | None, step: Callable, pos: Tensor, y: Tensor,
             h: Tensor) -> tuple[Tensor, Tensor | None]:
    """``step(None, pos, y, h)`` on the whole window: here, or over the ranks
    (:meth:`Ranks.evaluate`); and whether the ranks' previous decisions differ (``None``
    without ranks)."""
    if ranks is None:
        return step(None, pos, y, h), None
    return ranks.evaluate(step, pos, y, h)


def check_window_tol(name: str, value: object) -> None:
    """``value`` is a finite number ``>= 0`` (a ``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def affine_scan(A: Tensor, B: Tensor) -> Tensor:
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


class Ranks:
    """A window sampler's model calls split over the ranks of a
    :class:`pint.DistributedExecutor` (see ``executor`` in
    :func:`~adapters.diffusion.picard_sample`).

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
                fields: dict[str, str]) -> Ranks | None:
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
        """The error every rank raises when the ranks' decisions differ."""
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


def describe(value: Any) -> str:
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
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in sorted(value.items())) + "}"
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def rank_arguments(name: str, denoiser: Any, grid: Any, x_T: Tensor, N: int, window: int,
                   tol: float, max_iters: int, noise: Tensor | None, initial: Tensor | None,
                   callback: Any, return_trajectory: bool) -> dict[str, str]:
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
        "noise": describe(noise),
        "initial": describe(initial),
        "model": describe(denoiser.model),
        "model options": (f"prediction_type={denoiser.prediction_type} "
                          f"clip={denoiser.clip_sample}/{denoiser.clip_range} "
                          f"guidance_scale={denoiser.guidance_scale!r} "
                          f"check_finite={denoiser.check_finite}"),
        "model_kwargs": describe(denoiser.model_kwargs),
        "uncond_kwargs": describe(denoiser.uncond_kwargs),
        "callback": "given" if callback is not None else "none",
        "return_trajectory": str(bool(return_trajectory)),
    }
