"""Where Parareal's work runs: :class:`DistributedExecutor` spreads the blocks over the ranks
of a ``torch.distributed`` process group (one process per device, started by ``torchrun``)::

    # torchrun --nproc-per-node 2 script.py
    torch.distributed.init_process_group("gloo")     # "nccl" with one GPU per rank
    res = pint.parareal(problem, coarse, fine, num_blocks=20,
                        executor=pint.DistributedExecutor())

Every rank calls :func:`pint.parareal` with the same arguments and gets the same
:class:`~pint.Result`: the numbers of the single-process call (up to the round-off of
batching fewer blocks per call), its iterations, history and convergence flag.

How the work is split (classic distributed Parareal):

* the ``B`` blocks are cut into contiguous shards, rank ``0`` first in time (the first
  ``B mod R`` of ``R`` ranks get one block more; ranks beyond ``B`` stay idle); each rank
  runs the fine solves of its shard in one batched call per iteration, and the coarse
  correction of its shard;
* boundary states travel forward with point-to-point messages: rank ``r`` receives the
  start state of its shard from ``r - 1`` and sends its end state to ``r + 1``, so the
  coarse correction runs along the ranks like a relay. A shard is exact after as many
  iterations as its end index, and its rank then leaves the relay;
* the stopping test is reduced along the same relay (each message carries the largest
  change so far and whether every boundary so far passed; :class:`~pint.stopping.MaxAbsChange`
  and :class:`~pint.stopping.FinalStateChange` decompose like this). The last rank
  publishes the decision in the process group's key-value store
  (:class:`torch.distributed.Store`), where the others read it. With a ``callback``, or a
  stopping rule of another type, every iteration ends instead with an ``all_gather`` of
  all boundaries, and every rank evaluates the rule and calls the callback itself;
* at the end an ``all_gather`` hands every rank all boundaries and the statistics.

``pipelined=True``: a rank starts the fine solves of iteration ``k + 1`` as soon as its own
correction of iteration ``k`` is done, while later ranks still correct iteration ``k`` (the
overlap of classic pipelined Parareal). These solves are speculative until the decision on
iteration ``k`` arrives: messages of iteration ``k + 1`` are only sent and received once it
did (so no message is ever left unmatched), and a step-by-step fine propagator is stopped
between two steps when the decision says stop. Without pipelining a rank waits for the
decision before its fine solves (the bulk-synchronous sweep). As on one device,
``pipelined=True`` needs :class:`~pint.StepPropagator` s; with a callback or a stopping rule
that does not decompose, the gather ends every iteration and nothing overlaps.

Statistics (``result.stats``, a :class:`DistributedStats`): the work counters (steps,
``f`` calls and evaluations, rows) are summed over ranks, speculative work included, and
``per_rank`` keeps each rank's own. ``depth`` is the critical path in propagator steps
*across ranks*: every rank keeps a Lamport clock (the steps on the longest chain of
dependent steps that ends at its current state; a batched call adds its most steps, as on
one device), messages and decisions carry it, and ``depth`` is the largest clock at which a
rank finished its part of the returned iterate. It counts steps, not messages: on a real
machine add the latency of one message per rank hop.

Faults: every wait is bounded by ``timeout``. A rank that raises inside :func:`parareal`
writes its error to the store; the others stop at their next wait with a
:class:`DistributedError` naming that rank and its error. A rank that dies is noticed by
its neighbours (gloo reports the closed connection, or the wait times out), which report it
in turn. Arguments that differ across ranks (shapes, dtypes, the values of ``y0``, blocks,
``max_iters``, propagators, settings) raise the same ``ValueError`` on every rank before any
work. After a :class:`DistributedError` the process group may hold unmatched operations:
end the processes (torchrun does).

The window samplers of :mod:`adapters.diffusion.picard` take the same executor and use
its machinery through :meth:`DistributedExecutor.connect` (the argument check of
:func:`agree`, the bounded waits, the error reports): each rank evaluates a contiguous
slice of every window call's steps and one ``all_gather`` into a preallocated buffer hands
every rank the whole window.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import check_number
from .problem import ODEProblem
from .propagators.base import Propagator, StepPropagator
from .result import IterationInfo, Result, Stats
from .stopping import FinalStateChange, MaxAbsChange, StoppingRule

__all__ = ["DistributedExecutor", "DistributedError", "DistributedStats", "agree", "tensor_digest"]


class DistributedError(RuntimeError):
    """Another rank failed, died or stalled; the message names the rank and the cause.

    Attributes:
        remote: whether the cause was reported by another rank (``False``: this rank
            noticed a lost connection or a timeout itself).
    """

    def __init__(self, message: str, remote: bool = False) -> None:
        super().__init__(message)
        self.remote = remote


@dataclass
class DistributedStats(Stats):
    """:class:`~pint.Stats` of a distributed solve: counters summed over ranks, ``depth``
    the critical path across ranks (see :mod:`pint.executors`).

    Attributes:
        world_size: ranks in the process group.
        per_rank: each rank's own counters (``depth``: its clock when it finished).
    """

    world_size: int = 1
    per_rank: list[dict[str, int]] = field(default_factory=list)


class DistributedExecutor:
    """Run :func:`pint.parareal` over the ranks of a ``torch.distributed`` process group.

    Call ``torch.distributed.init_process_group`` first (gloo for CPU states, NCCL for GPU
    states with ``torch.cuda.set_device(local_rank)``, each rank on its own device), then
    pass ``executor=DistributedExecutor()`` to :func:`pint.parareal` (or
    :func:`adapters.diffusion.srds_sample`) on every rank with the same arguments. With one
    rank the local engine runs.

    Args:
        group: the process group; ``None`` is the default group.
        timeout: seconds (or a ``timedelta``) any one wait may last: for a message, a
            decision or a collective. It must exceed the longest work of one rank between two
            messages (about one iteration's fine solve of a shard); default 600 (NCCL's).
    """

    def __init__(self, group: Any = None, timeout: float | timedelta = 600.0) -> None:
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        self.timeout = check_number("timeout", timeout, positive=True)
        self.group = group

    def __repr__(self) -> str:
        return f"DistributedExecutor(group={self.group!r}, timeout={self.timeout:g})"

    def connect(self, device: torch.device, fields: dict[str, str], caller: str,
                what: str, hints: dict[str, str] | None = None) -> _Link:
        """This rank's link to the group, for a parallel method outside :func:`pint.parareal`
        that splits its own work (the window samplers of :mod:`adapters.diffusion.picard`).

        With more than one rank, every rank first checks that the others describe their
        arguments by the same ``fields`` (see ``pint.executors.agree``: the same ``ValueError`` on every
        rank otherwise, before any work). The link's ``rank``, ``world``,
        ``all_gather_into`` and ``all_gather`` (every wait bounded by ``timeout``, raising
        :class:`DistributedError` naming a failed rank) are what the caller uses; on an
        error of its own it calls ``link.report(err, 0)`` and re-raises, so that the other
        ranks stop with a :class:`DistributedError` naming it."""
        link = _Link(self.group, device, self.timeout)
        if link.world > 1:
            agree(link, fields, caller, what, hints)
        return link

    def parareal(self, problem: ODEProblem, coarse: Propagator, fine: Propagator, times: Tensor,
                 stopping: StoppingRule, max_iters: int, pipelined: bool,
                 callback: Callable[[IterationInfo], None] | None) -> Result:
        """The executor protocol of :func:`pint.parareal` (arguments already checked there)."""
        link = _Link(self.group, problem.y0.device, self.timeout)
        if link.world == 1:
            from .parareal import parareal

            return parareal(problem, coarse, fine, partition=times, stopping=stopping,
                            max_iters=max_iters, pipelined=pipelined, callback=callback)
        # first agree on the arguments (a rank that raised alone would leave the others waiting)
        _agree(link, problem, coarse, fine, times, stopping, max_iters, pipelined, callback)
        if pipelined:
            for name, prop in (("coarse", coarse), ("fine", fine)):
                if not isinstance(prop, StepPropagator):
                    raise ValueError(
                        f"pipelined=True needs step-by-step propagators (pint.StepPropagator); "
                        f"{name} is {prop!r}. Use pipelined=False, or a fixed-step method such as "
                        "pint.RK4")
        try:
            return _Relay(link, problem, coarse, fine, times, stopping, max_iters, pipelined,
                          callback).run()
        except BaseException as err:
            link.report(err, max_iters)
            raise


# --------------------------------------------------------------------------- communication

_CALLS: dict[Any, itertools.count] = {}
_NEUTRAL = (-math.inf, 0.0)  # (largest change so far, some boundary failed)


class _Link:
    """This rank's view of the process group: point-to-point messages, collectives and
    the store, every wait bounded by ``timeout`` and watching for errors of other ranks."""

    def __init__(self, group: Any, device: torch.device, timeout: float) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedExecutor needs torch.distributed: run the script under torchrun "
                "and call torch.distributed.init_process_group() first ('gloo' for CPU, "
                "'nccl' for GPUs)")
        self.group, self.device, self.timeout = group, device, timeout
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the executor's group")
        self.world = dist.get_world_size(group)
        backend = str(dist.get_backend(group))
        if device.type == "cuda" and "nccl" not in backend and "gloo" not in backend:
            raise ValueError(f"y0 is on {device} but the process group backend is {backend!r}")
        if device.type == "cpu" and "gloo" not in backend and "mpi" not in backend:
            raise ValueError(
                f"y0 is on the CPU but the process group backend is {backend!r}: move the "
                "problem to this rank's GPU (torch.cuda.set_device(local_rank)) or use gloo")
        self.poll = device.type == "cuda" and "nccl" in backend  # NCCL work can be polled
        self.store = dist.distributed_c10d._get_default_store()
        self.prefix = ""
        self.sends: list[tuple[Any, Tensor]] = []

    def ident(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    # --- errors and the store
    def _key(self, name: str) -> str:
        return self.prefix + name

    def check_remote(self) -> None:
        """Raise the error another rank reported, if any."""
        try:
            failed = self.store.check([self._key("error")])
        except Exception as err:  # the store's host (rank 0 or the torchrun agent) is gone
            raise DistributedError(
                f"rank {self.rank}: lost contact with the process group's store (the process "
                f"hosting it, rank 0 or the launcher, may have died): {_first_line(err)}"
            ) from None
        if failed:
            raise DistributedError(self.store.get(self._key("error")).decode(), remote=True)

    def report(self, err: BaseException, max_iters: int) -> None:
        """Tell the other ranks that this one failed (best effort): the error text, and
        every decision key so that ranks waiting for a decision wake up."""
        if not self.prefix or (isinstance(err, DistributedError) and err.remote):
            return
        text = f"rank {self.rank} failed: {type(err).__name__}: {err}"
        try:
            self.store.compare_set(self._key("error"), "", text)
            for j in range(1, max_iters + 1):
                self.store.compare_set(self._key(f"d{j}"), "", "error")
        except Exception:
            pass

    def publish(self, j: int, value: str) -> None:
        self.store.set(self._key(f"d{j}"), value)

    def has_decision(self, j: int) -> bool:
        return self.store.check([self._key(f"d{j}")])

    def decision(self, j: int, source: str) -> str:
        """Wait for the decision on iteration ``j``."""
        key = self._key(f"d{j}")
        try:
            self.store.wait([key], timedelta(seconds=self.timeout))
            value = self.store.get(key).decode()
        except Exception as err:
            self.check_remote()
            raise DistributedError(
                f"rank {self.rank}: no decision on iteration {j} from {source} within "
                f"{self.timeout:g} s (the executor's timeout): that rank may have died or "
                f"stalled ({_first_line(err)})") from None
        self.check_remote()
        return value

    def forget(self, js: range) -> None:
        for j in js:
            try:
                self.store.delete_key(self._key(f"d{j}"))
            except Exception:
                pass

    # --- tensors
    def send(self, tensors: list[Tensor], dst: int, what: str) -> None:
        for t in tensors:
            work = self._post(lambda t=t: dist.isend(t, self.ident(dst), group=self.group),
                              f"{what} to rank {dst}")
            self.sends.append((work, t))

    def recv(self, tensors: list[Tensor], src: int, what: str) -> None:
        what = f"{what} from rank {src}"
        works = [self._post(lambda t=t: dist.irecv(t, self.ident(src), group=self.group), what)
                 for t in tensors]
        self.wait(works, what)

    def all_gather(self, t: Tensor, what: str) -> list[Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.wait([self._post(lambda: dist.all_gather(out, t, group=self.group, async_op=True),
                              what)], what)
        return out

    def all_gather_into(self, out: Tensor, mine: Tensor, what: str) -> Tensor:
        """Every rank's ``mine`` (the same shape on every rank) into the preallocated
        ``out [world, *mine.shape]`` (contiguous), with one collective and no host copy;
        returns ``out``."""
        if self.poll:  # NCCL: one flat buffer
            start = lambda: dist.all_gather_into_tensor(out, mine, group=self.group,  # noqa: E731
                                                        async_op=True)
        else:  # gloo: views into the buffer
            views = list(out.unbind(0))
            start = lambda: dist.all_gather(views, mine, group=self.group,  # noqa: E731
                                            async_op=True)
        self.wait([self._post(start, what)], what)
        return out

    def _post(self, start: Callable[[], Any], what: str) -> Any:
        try:
            return start()
        except Exception as err:  # gloo notices a closed connection when posting
            raise self._lost(err, what) from None

    def flush(self) -> None:
        """Wait until every message this rank sent was received."""
        works = [w for w, _ in self.sends]
        self.sends = []
        self.wait(works, "the delivery of its boundary states")

    def wait(self, works: list[Any], what: str) -> None:
        """Wait for ``works``; raise :class:`DistributedError` if another rank reports an
        error, a connection is lost, or ``timeout`` passes."""
        if not works:
            return
        deadline = time.monotonic() + self.timeout
        if self.poll:
            look = time.monotonic() + 0.02
            while not all(w.is_completed() for w in works):
                time.sleep(1e-4)
                if time.monotonic() > look:  # the store at most every 20 ms
                    self._tick(deadline, what)
                    look = time.monotonic() + 0.02
            for w in works:
                w.wait()
            return
        # gloo marks a receive complete only inside wait(): wait in a helper thread
        done, box = threading.Event(), []

        def target() -> None:
            try:
                for w in works:
                    w.wait(timedelta(seconds=self.timeout))
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                box.append(err)
            done.set()

        threading.Thread(target=target, daemon=True, name="pint-wait").start()
        while not done.wait(0.02):
            self._tick(deadline + 5.0, what)
        if box:
            raise self._lost(box[0], what) from None

    def _lost(self, err: BaseException, what: str) -> DistributedError:
        self.check_remote()  # another rank's report names the cause
        return DistributedError(
            f"rank {self.rank}: {what} failed: {_first_line(err)}. A rank probably died or "
            "failed; see its log")

    def _tick(self, deadline: float, what: str) -> None:
        self.check_remote()
        if time.monotonic() > deadline:
            raise DistributedError(
                f"rank {self.rank}: timed out after {self.timeout:g} s (the executor's timeout) "
                f"waiting for {what}: a rank may have died or stalled")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# --------------------------------------------------------------------------- agreement


def _agree(link: _Link, problem: ODEProblem, coarse: Propagator, fine: Propagator, times: Tensor,
           stopping: StoppingRule, max_iters: int, pipelined: bool, callback: object) -> None:
    """Check that every rank got the same arguments (one small ``all_gather`` of digests)
    and agree on the store prefix of this call. Raises the same ValueError on every rank."""
    y0 = problem.y0
    t = times.detach().double().cpu()
    fields = {
        "y0 shape": str(tuple(y0.shape)),
        "y0 dtype": str(y0.dtype),
        "y0 device type": y0.device.type,
        "y0 values": f"checksum {_checksum(y0)}",
        "t_span": str(problem.t_span),
        "num_blocks": str(times.shape[0] - 1),
        "block times": f"digest {hashlib.blake2b(t.numpy().tobytes(), digest_size=6).hexdigest()}",
        "max_iters": str(max_iters),
        "pipelined": str(bool(pipelined)),
        "stopping": _describe_rule(stopping),
        "coarse": _describe_prop(coarse, times),
        "fine": _describe_prop(fine, times),
        "callback": "given" if callback is not None else "none",
    }
    agree(link, fields, "parareal", "problem, partition, propagators and settings",
          {"y0 values": "seed every rank's generator identically, or broadcast y0 from rank 0"})


def agree(link: _Link, fields: dict[str, str], caller: str, what: str,
          hints: dict[str, str] | None = None) -> None:
    """Check that every rank describes its arguments by the same ``fields`` (name -> text;
    one small ``all_gather`` of their digests) and agree on the store prefix of this call
    (which :meth:`_Link.report` needs). Where they differ, every rank raises the same
    ``ValueError`` naming the fields and each rank's value (``hints[field]``: advice
    appended when that field differs). Also checks the call number: ranks must make their
    executor calls in the same order."""
    key = "world" if link.group is None else tuple(dist.get_process_group_ranks(link.group))
    call = next(_CALLS.setdefault(key, itertools.count()))
    fields = {**fields, "executor call number": str(call)}
    digests = [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little",
                              signed=True) for v in fields.values()]
    nonce = int.from_bytes(os.urandom(7), "little")
    mine = torch.tensor(digests + [nonce], dtype=torch.int64, device=link.device)
    table = torch.stack(link.all_gather(mine, "the argument check at the start")).cpu()
    bad = [name for i, name in enumerate(fields) if bool((table[:, i] != table[0, i]).any())]
    if bad:
        seen: list[Any] = [None] * link.world
        dist.all_gather_object(seen, {k: fields[k] for k in bad}, group=link.group)
        parts = [f"{k}: " + ", ".join(f"rank {r} {seen[r][k]}" for r in range(link.world))
                 for k in bad]
        hint = "".join(f" ({h})" for k, h in (hints or {}).items() if k in bad)
        raise ValueError(
            f"DistributedExecutor: the ranks called {caller} with different arguments; "
            + "; ".join(parts) + f". Every rank must pass the same {what}" + hint)
    link.prefix = f"pint/{int(table[0, -1]):x}/"


def tensor_digest(y: Tensor) -> str:
    """``"checksum N"``: an exact integer digest of ``y``'s bytes (computed on its device),
    for the ``fields`` of :func:`agree`."""
    return f"checksum {_checksum(y)}"


def _checksum(y: Tensor) -> int:
    """An exact integer digest of ``y``'s bytes, computed on its device."""
    b = y.detach().contiguous().reshape(-1).view(torch.uint8)
    total, chunk = 0, 1 << 22
    for s in range(0, b.numel(), chunk):
        c = b[s:s + chunk].to(torch.int64)
        w = torch.arange(s, s + c.numel(), device=c.device) % 65521 + 1
        total += int((c * w).sum()) + int(c.sum()) * 65536
    return total


def _describe_prop(prop: Propagator, times: Tensor) -> str:
    text = repr(prop)
    if " at 0x" in text:
        text = type(prop).__qualname__
    steps = prop.steps_per_block(times[:-1], times[1:])
    if steps is not None:
        text += f" steps {steps.tolist()}"
    return text


def _describe_rule(rule: StoppingRule) -> str:
    simple = {k: v for k, v in sorted(vars(rule).items()) if isinstance(v, (int, float, str))} \
        if hasattr(rule, "__dict__") else {}
    return f"{type(rule).__qualname__} {simple}"


def _rule_kind(rule: StoppingRule) -> str | None:
    """How ``rule`` decomposes over the ranks' rows: ``"rows"`` (max change, every row
    passes), ``"final"`` (only the last boundary counts), ``None`` (gather everything)."""
    if type(rule) is MaxAbsChange:
        return "rows"
    if type(rule) is FinalStateChange:
        return "final"
    return None


# --------------------------------------------------------------------------- the relay


@dataclass
class _Decision:
    stop: bool
    passed: bool
    change: float
    clock: int

    def encode(self) -> str:
        return f"{int(self.stop)} {int(self.passed)} {self.change!r} {self.clock}"

    @staticmethod
    def decode(text: str) -> _Decision:
        stop, passed, change, clock = text.split()
        return _Decision(stop == "1", passed == "1", float(change), int(clock))


class _Relay:
    """One rank's part of distributed Parareal (see the module docstring)."""

    def __init__(self, link: _Link, problem: ODEProblem, coarse: Propagator, fine: Propagator,
                 times: Tensor, stopping: StoppingRule, max_iters: int, pipelined: bool,
                 callback: Callable[[IterationInfo], None] | None) -> None:
        from .runner import Runner

        self.link, self.problem, self.coarse, self.fine = link, problem, coarse, fine
        self.times, self.stopping, self.max_iters, self.callback = times, stopping, max_iters, callback
        self.B = B = times.shape[0] - 1
        R = link.world
        q, m = divmod(B, R)
        self.starts = [r * q + min(r, m) for r in range(R + 1)]
        self.last = min(B, R) - 1  # the last rank with blocks
        self.a, self.b = self.starts[link.rank], self.starts[link.rank + 1]
        self.kind = _rule_kind(stopping) if callback is None else None
        self.speculate = pipelined and self.kind is not None
        self.run_ = Runner(problem)
        self.decided: dict[int, _Decision] = {}

    @property
    def clock(self) -> int:
        return self.run_.stats.depth

    @clock.setter
    def clock(self, value: int) -> None:
        self.run_.stats.depth = value

    # --- one run
    def run(self) -> Result:
        link, r, a, b, y0 = self.link, self.link.rank, self.a, self.b, self.problem.y0
        in_relay = r <= self.last
        n = b - a
        U = y0.new_empty((n + 1, *y0.shape))
        G_old = y0.new_empty((n, *y0.shape))
        t0, t1 = self.times[:-1], self.times[1:]
        if in_relay:  # iteration 0: the coarse sweep along the relay
            if r == 0:
                U[0] = y0
            else:
                self._receive(U, 0)
            for i in range(n):
                G_old[i] = self.run_(self.coarse, U[i:i + 1], t0[a + i:a + i + 1],
                                     t1[a + i:a + i + 1], "coarse")[0]
                U[i + 1] = G_old[i]
            self.run_.check_finite(U[1:], 0, first_block=a, what="coarse sweep")
            if r < self.last:
                self._send(U[n], _NEUTRAL)
        done_clock = self.clock
        full = None
        if self.kind is None:
            full = self._gather(U)
            if self.callback is not None:
                self.callback(IterationInfo(0, full, math.nan, 0, self.run_.stats))
        self.decided[0] = _Decision(self.max_iters == 0, False, math.nan, 0)
        history: list[float] = []
        j = 1
        while True:  # iteration j, once iteration j - 1 goes on
            active = in_relay and j <= b
            # pipelined: start the fine solves before the decision on iteration j - 1
            ahead = active and self.speculate and j - 1 not in self.decided
            F = self._fine(U, j, speculative=True) if ahead else None
            d = self._decision(j - 1)
            if j > 1:
                history.append(d.change)
            if d.stop:
                break
            self.clock = max(self.clock, d.clock)
            if active:
                if F is None:
                    F = self._fine(U, j, speculative=False)
                U = self._correct(U, G_old, F, j)
            done_clock = self.clock
            if self.kind is None:
                full = self._iterate_gathered(U, full, j)
            j += 1
        K = j - 1
        final = self.decided[K]
        U_all = self._gather(U) if full is None else full
        stats = self._stats(done_clock)
        link.flush()
        if r == self.last and self.kind is not None:
            link.forget(range(1, K + 1))
        converged = final.passed or K == self.B
        return Result(U_all[-1].clone(), U_all, self.times, K, converged, history, stats)

    # --- decisions
    def _decision(self, j: int) -> _Decision:
        """The decision on iteration ``j`` (waits for it)."""
        if j not in self.decided:
            self.decided[j] = _Decision.decode(self.link.decision(j, f"rank {self.last}"))
        return self.decided[j]

    def _peek(self, j: int) -> _Decision | None:
        """The decision on iteration ``j`` if it is already known (does not wait)."""
        if j not in self.decided and self.link.has_decision(j):
            return self._decision(j)
        return self.decided.get(j)

    def _decide(self, j: int, change: float, passed: bool) -> _Decision:
        d = _Decision(passed or j >= self.max_iters or j >= self.B, passed, change, self.clock)
        self.decided[j] = d
        return d

    def _iterate_gathered(self, U: Tensor, full: Tensor, j: int) -> Tensor:
        """Gather mode: every rank gets all boundaries, evaluates the rule, decides."""
        new = self._gather(U)
        index = torch.arange(j, self.B + 1, device=new.device)
        change, passed = self.stopping(new[j:], full[j:], index)
        self._decide(j, change, passed)
        if self.callback is not None:
            self.callback(IterationInfo(j, new, change, j, self.run_.stats))
        return new

    # --- work
    def _fine(self, U: Tensor, j: int, speculative: bool) -> Tensor | None:
        """``F(U^{j-1}_i)`` for this shard's blocks that are not exact (``i >= j - 1``);
        ``None`` if a speculative solve was stopped by the decision."""
        lo, a, b = max(self.a, j - 1), self.a, self.b
        y, t0, t1 = U[lo - a:b - a], self.times[lo:b], self.times[lo + 1:b + 1]
        fine = self.fine
        if speculative and type(fine).__call__ is StepPropagator.__call__:
            F = self._stepwise(fine, y, t0, t1, j - 1)
        else:
            F = self.run_(fine, y, t0, t1, "fine")
        if F is not None:
            self.run_.check_finite(F, j, first_block=lo, what="fine solve")
        return F

    def _stepwise(self, prop: StepPropagator, y: Tensor, t0: Tensor, t1: Tensor,
                  j: int) -> Tensor | None:
        """``prop(f, y, t0, t1)`` step by step (the same arithmetic as
        :meth:`StepPropagator.__call__`), looking between steps whether the decision on
        iteration ``j`` says stop; the cost is counted as :class:`~pint.parareal.Runner` does."""
        stats, f = self.run_.stats, self.run_.rhs
        n = prop.steps_per_block(t0, t1).to(t0.device)
        h = (t1 - t0) / n.to(t0.dtype)
        n_max = int(n.max())
        uniform = bool((n == n_max).all())
        if not uniform:
            y = y.clone()
        watch, next_look = True, 0.0
        done = n_max
        for s in range(n_max):
            if watch and time.monotonic() >= next_look:
                d = self._peek(j)
                if d is not None:
                    if d.stop:
                        done = s
                        break
                    watch = False
                next_look = time.monotonic() + 0.002
            if uniform:
                y = prop.step(f, t0 + s * h, y, h)
            else:
                rows = (n > s).nonzero().squeeze(1)
                y[rows] = prop.step(f, t0[rows] + s * h[rows], y[rows], h[rows])
        stats.depth += done
        stats.rows += y.shape[0]
        stats.fine_steps += int(n.clamp(max=done).sum())
        return y if done == n_max else None

    def _correct(self, U: Tensor, G_old: Tensor, F: Tensor, j: int) -> Tensor:
        """Iteration ``j``'s coarse correction of this shard: receive the shard's start
        from the previous rank while it still changes, correct, send the end onwards."""
        r, a, b = self.link.rank, self.a, self.b
        lo = max(a, j - 1)
        t0, t1 = self.times[:-1], self.times[1:]
        new = U.clone()
        acc = self._receive(new, j) if j <= a else _NEUTRAL
        for i in range(lo, b):
            if i == j - 1:  # the block after the exact ones: its fine solve is exact
                new[i + 1 - a] = F[i - lo]
                continue
            g = self.run_(self.coarse, new[i - a:i - a + 1], t0[i:i + 1], t1[i:i + 1], "coarse")[0]
            new[i + 1 - a] = g + F[i - lo] - G_old[i - a]
            G_old[i - a] = g
        first = max(j, a + 1)  # boundaries first .. b changed in this iteration
        self.run_.check_finite(new[first - a:], j, first_block=first - 1, what="coarse correction")
        if self.kind == "rows" or (self.kind == "final" and r == self.last):
            index = torch.arange(first, b + 1, device=new.device)
            change, passed = self.stopping(new[first - a:], U[first - a:], index)
            acc = (max(acc[0], change), max(acc[1], 0.0 if passed else 1.0))
        if r < self.last:
            self._send(new[b - a], acc)
        elif self.kind is not None:
            d = self._decide(j, acc[0], acc[1] == 0.0)
            self.link.publish(j, d.encode())
        return new

    # --- messages
    def _send(self, state: Tensor, acc: tuple[float, float]) -> None:
        header = torch.tensor([acc[0], acc[1], float(self.clock)], dtype=torch.float64,
                              device=state.device)
        self.link.send([header, state.clone()], self.link.rank + 1, "a boundary state")

    def _receive(self, U: Tensor, j: int) -> tuple[float, float]:
        header = torch.empty(3, dtype=torch.float64, device=U.device)
        state = torch.empty_like(U[0])
        self.link.recv([header, state], self.link.rank - 1,
                       f"the boundary state of iteration {j}")
        U[0] = state
        change, failed, clock = header.tolist()
        self.clock = max(self.clock, int(clock))
        return change, failed

    def _gather(self, U: Tensor) -> Tensor:
        """All boundaries ``[B + 1, *state]`` on every rank (shards padded to equal size);
        also brings every rank's clock to the largest."""
        sizes = [self.starts[r + 1] - self.starts[r] for r in range(self.link.world)]
        width = max(sizes)
        y0 = self.problem.y0
        mine = y0.new_zeros((width, *y0.shape))
        n = self.b - self.a
        if n:
            mine[:n] = U[1:]
        parts = self.link.all_gather(mine, "the boundaries of all ranks")
        clock = torch.tensor([self.clock], dtype=torch.int64, device=y0.device)
        self.clock = int(torch.stack(self.link.all_gather(clock, "the clocks of all ranks")).max())
        rows = [p[:s] for p, s in zip(parts, sizes, strict=True) if s]
        return torch.cat([y0.unsqueeze(0), *rows])

    def _stats(self, done_clock: int) -> DistributedStats:
        s = self.run_.stats
        names = ["coarse_steps", "fine_steps", "f_calls", "f_evals", "rows"]
        mine = torch.tensor([getattr(s, k) for k in names] + [done_clock], dtype=torch.int64,
                            device=self.problem.y0.device)
        table = torch.stack(self.link.all_gather(mine, "the statistics of all ranks")).cpu()
        per_rank = [dict(zip([*names, "depth"], row, strict=True)) for row in table.tolist()]
        total = {k: int(table[:, i].sum()) for i, k in enumerate(names)}
        return DistributedStats(**total, depth=int(table[:, -1].max()),
                                world_size=self.link.world, per_rank=per_rank)
