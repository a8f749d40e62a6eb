"""The pipelined (wavefront) Parareal schedule.

Same recursion as the sweep in :mod:`pint.parareal`, scheduled by data dependencies
instead of by iteration: as soon as a boundary ``U^k_i`` is known, its coarse step
``G(U^k_i)`` and the next iteration's fine solve ``F(U^k_i)`` start, and every tick
advances **all** running solves (coarse and fine, of every iteration in flight) by one
step in one batched call. A block's fine solve of iteration ``k + 1`` therefore overlaps
the fine solves of iteration ``k`` on later blocks. With ``M`` fine steps per block the
critical path shrinks from ``B g + sum_k (M + (B - k) g)`` steps (sweep) to about
``K M + B g``, and the numbers are those of the sweep (up to batching round-off).

Both propagators must be :class:`~pint.StepPropagator` s; when ``coarse.batches_with(fine)``
a tick is one batched call. Otherwise (different methods) a tick with coarse and fine work
costs two calls, and the plain wavefront can be deeper than the sweep; the schedule then
runs coarse work first (the fine solves wait and start aligned: with equal step counts per
block, the sweep's call sequence) unless a dry run of the wavefront shows it within the
sweep's depth at every iteration (:func:`choose_coarse_first`). The depth is then never
above the sweep's; the shorter path needs coarse and fine of one method.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .problem import ODEProblem
from .propagators.base import StepPropagator
from .result import IterationInfo, Result
from .runner import Runner
from .stopping import StoppingRule


@dataclass
class _Task:
    kind: str  # "coarse" or "fine"
    k: int  # coarse: G(U^k_i); fine: F^k_i = F(U^{k-1}_i)
    i: int
    t0: float
    h: float
    n: int
    j: int = 0


def pipelined_parareal(problem: ODEProblem, coarse, fine, times: Tensor,
                       stopping: StoppingRule, max_iters: int, callback,
                       initial: Tensor | None = None) -> Result:
    for name, prop in (("coarse", coarse), ("fine", fine)):
        if not isinstance(prop, StepPropagator):
            raise ValueError(
                f"pipelined=True needs step-by-step propagators (pint.StepPropagator) so "
                f"that steps of different blocks and iterations share one call; {name} is "
                f"{prop!r}. Use pipelined=False, or a fixed-step method such as pint.RK4"
            )
    B = times.shape[0] - 1
    K = max_iters
    run = Runner(problem)
    rhs = run.rhs
    merged = coarse.batches_with(fine)
    y0 = problem.y0
    # the schedule's bookkeeping lives in Python numbers: a tick costs one host->device copy
    t_host = times.detach().cpu().double().tolist()
    n_coarse = coarse.steps_per_block(times[:-1], times[1:]).cpu().tolist()
    n_fine = fine.steps_per_block(times[:-1], times[1:]).cpu().tolist()

    # Two groups (coarse and fine are different methods) cost two calls in a tick where
    # both have work; unless a dry run shows the wavefront within the sweep's depth at
    # every iteration's test, coarse work goes first (see ``coarse_first``).
    coarse_first = not merged and choose_coarse_first(B, K, n_coarse, n_fine,
                                                      initial is not None)

    # The running solves, one batch per batched call: ``states`` holds the rows of
    # ``tasks`` in order; solves started since the last tick wait in ``fresh``.
    groups = {"all": _Group()} if merged else {"coarse": _Group(), "fine": _Group()}
    # Every value is dropped as soon as its last reader ran (see ``resolve``): G^k_i lives
    # until U^{k+1}_{i+1} is formed, F^k_i until U^k_{i+1} is, U^k until iteration k + 1
    # is tested. Peak: the boundaries of the iterations in flight, about one coarse value
    # and one running solve per block (measured in benchmarks/bench_overhead.py).
    U: dict[tuple[int, int], Tensor] = {}
    G: dict[tuple[int, int], Tensor] = {}
    F: dict[tuple[int, int], Tensor] = {}
    exact: dict[int, Tensor] = {}  # U_i once it equals the serial solution (from iteration i)

    def start(kind: str, k: int, i: int, y: Tensor) -> None:
        n = (n_coarse if kind == "coarse" else n_fine)[i]
        a, b = t_host[i], t_host[i + 1]
        group = groups["all" if merged else kind]
        group.tasks.append(_Task(kind, k, i, a, (b - a) / n, n))
        group.fresh.append(y)

    def known(k: int, i: int, value: Tensor) -> None:
        """Record ``U^k_i`` and start the work that waits for it."""
        U[(k, i)] = value
        if i == k:
            exact[i] = value
        if k <= i < B:
            start("coarse", k, i, value)
            if k + 1 <= K:
                start("fine", k + 1, i, value)

    def keep_coarse(k: int, i: int) -> None:
        """``G^k_i`` was used for ``U^k_{i+1}``; iteration ``k + 1`` reads it again as its
        old coarse value only for blocks ``i >= k + 1``."""
        if not (i >= k + 1 and k + 1 <= K):
            G.pop((k, i), None)

    def resolve(k: int, i: int) -> None:
        """Try to compute ``U^k_{i+1}`` after ``G^k_i`` or ``F^k_i`` finished."""
        if (k, i + 1) in U:
            return
        if k == 0:
            if (0, i) in G:
                known(0, i + 1, G[(0, i)])
                keep_coarse(0, i)
        elif i + 1 == k:
            if (k, i) in F:
                known(k, k, F.pop((k, i)))
        elif (k, i) in G and (k, i) in F and (k - 1, i) in G:
            value = F.pop((k, i)).add_(G[(k, i)]).sub_(G.pop((k - 1, i)))
            keep_coarse(k, i)
            known(k, i + 1, value)

    history: list[float] = []
    converged = False
    done_iter = -1  # last iteration whose U^k_B was checked
    final: Tensor | None = None
    known(0, 0, y0)  # U^k_0 = y0 = exact[0] for every k; only k = 0 starts work at block 0
    if initial is not None:  # warm start: every U^0_i is known, all blocks start at once
        for i in range(1, B + 1):
            known(0, i, initial[i])

    while True:
        # --- check iterations whose last boundary is known, in order
        while (done_iter + 1, B) in U:
            k = done_iter + 1
            done_iter = k
            Uk = torch.stack([exact[i] if i < k else U[(k, i)] for i in range(B + 1)])
            if k == 0:
                run.check_finite(Uk[1:], 0, first_block=0, what="coarse sweep")
                if callback is not None:
                    callback(IterationInfo(0, Uk, math.nan, 0, run.stats))
            else:
                run.check_finite(Uk[k:], k, first_block=k - 1, what="pipelined iteration")
                old = torch.stack([exact[k - 1] if i == k - 1 else U[(k - 1, i)]
                                   for i in range(k, B + 1)])
                index = torch.arange(k, B + 1, device=Uk.device)
                change, passed = stopping(Uk[k:].detach(), old.detach(), index)
                history.append(change)
                if callback is not None:
                    callback(IterationInfo(k, Uk, change, k, run.stats))
                if passed or k == B:
                    converged = True
                for i in range(k - 1, B + 1):  # iteration k - 1 is no longer a candidate
                    U.pop((k - 1, i), None)
                del old
            if converged or k == K:
                final = Uk
                break
            del Uk  # the stacks are rebuilt for each test; hold nothing between ticks
        if final is not None:
            break
        if not any(g.tasks for g in groups.values()):
            raise RuntimeError("pipelined schedule stalled (internal error)")

        # --- one tick: advance every running solve by one step, one call per group
        finished: list[tuple[_Task, Tensor]] = []
        # coarse first: a tick with coarse work makes only the coarse call (the fine
        # solves wait, and start aligned once the coarse chain is through)
        coarse_only = coarse_first and bool(groups["coarse"].tasks)
        for kind, group in groups.items():
            if not group.tasks or (coarse_only and kind == "fine"):
                continue
            prop = coarse if kind == "coarse" else fine
            group.admit()
            tasks = group.tasks
            # time and step size of every row: one host->device copy, no sync
            th = _to_device([(t.t0 + t.j * t.h, t.h) for t in tasks], times.dtype, times.device)
            group.states = prop.step(rhs, th[:, 0], group.states, th[:, 1])
            run.stats.depth += 1
            run.stats.rows += len(tasks)
            nc = sum(t.kind == "coarse" for t in tasks)
            run.stats.coarse_steps += nc
            run.stats.fine_steps += len(tasks) - nc
            finished.extend(group.retire())
        for t, out in finished:
            (G if t.kind == "coarse" else F)[(t.k, t.i)] = out
        for t, _ in finished:
            resolve(t.k, t.i)
            if t.kind == "coarse" and t.k + 1 <= K:  # G^k_i is also G_old of k + 1
                resolve(t.k + 1, t.i)

    k = done_iter
    return Result(final[-1].clone(), final, times, k, converged, history, run.stats)


def sweep_depths(K: int, n_coarse: list[int], n_fine: list[int], warm: bool) -> list[int]:
    """The sweep schedule's depth when iteration ``k`` is tested, ``k = 0 .. K`` (as
    :func:`pint.parareal` counts it: one call per coarse block, one batched fine call)."""
    depth = max(n_coarse) if warm else sum(n_coarse)
    out = [depth]
    for k in range(1, K + 1):
        depth += max(n_fine[k - 1:]) + sum(n_coarse[k:])
        out.append(depth)
    return out


def simulate(B: int, K: int, n_coarse: list[int], n_fine: list[int], warm: bool,
             coarse_first: bool) -> list[int]:
    """Dry run of the two-group schedule (no arithmetic): the depth when iteration ``k``
    is tested, ``k = 0 .. K``. Every tick makes the call of each group with work, or with
    ``coarse_first`` only the coarse call where there is coarse work. Mirrors the
    dependencies of :func:`pipelined_parareal` (the schedule does not depend on the
    values, only on ``B``, ``K`` and the step counts)."""
    U: set[tuple[int, int]] = set()
    G: set[tuple[int, int]] = set()
    F: set[tuple[int, int]] = set()
    calls = {"coarse": 0, "fine": 0}
    running: dict[str, list[tuple[int, int, int]]] = {"coarse": [], "fine": []}

    def known(k: int, i: int) -> None:
        U.add((k, i))
        if k <= i < B:
            heapq.heappush(running["coarse"], (calls["coarse"] + n_coarse[i], k, i))
            if k + 1 <= K:
                heapq.heappush(running["fine"], (calls["fine"] + n_fine[i], k + 1, i))

    def resolve(k: int, i: int) -> None:
        if (k, i + 1) in U:
            return
        if k == 0:
            if (0, i) in G:
                known(0, i + 1)
        elif i + 1 == k:
            if (k, i) in F:
                known(k, k)
        elif (k, i) in G and (k, i) in F and (k - 1, i) in G:
            known(k, i + 1)

    known(0, 0)
    if warm:
        for i in range(1, B + 1):
            known(0, i)
    depth, done, out = 0, -1, []
    while True:
        while (done + 1, B) in U:
            done += 1
            out.append(depth)
            if done == K:
                return out
        if not (running["coarse"] or running["fine"]):
            raise RuntimeError("pipelined schedule stalled (internal error)")
        coarse_only = coarse_first and bool(running["coarse"])
        finished = []
        for kind in ("coarse", "fine"):
            heap = running[kind]
            if not heap or (coarse_only and kind == "fine"):
                continue
            calls[kind] += 1
            depth += 1
            while heap and heap[0][0] <= calls[kind]:
                _, k, i = heapq.heappop(heap)
                finished.append((kind, k, i))
        for kind, k, i in finished:
            (G if kind == "coarse" else F).add((k, i))
        for kind, k, i in finished:
            resolve(k, i)
            if kind == "coarse" and k + 1 <= K:
                resolve(k + 1, i)


def choose_coarse_first(B: int, K: int, n_coarse: list[int], n_fine: list[int],
                        warm: bool) -> bool:
    """Whether the two-group schedule runs coarse work first.

    The plain wavefront (both calls in every tick with work for both) overlaps the fine
    solves of iteration ``k + 1`` with the coarse chain of iteration ``k``, which pays when
    the chains are long against the fine solves, but every such tick costs two calls, so
    at some iterations it can be deeper than the sweep (catalog ``heat``: 556 against 544).
    Coarse first, the fine solves start aligned after the chain: with equal step counts per
    block that is the sweep's call sequence, so its depth equals the sweep's. The wavefront
    is kept when the dry run (:func:`simulate`) finds it within the sweep's depth at the
    test of every iteration ``1 .. K``, since the stopping iteration is not known ahead."""
    if K == 0:
        return False
    ref = sweep_depths(K, n_coarse, n_fine, warm)
    wave = simulate(B, K, n_coarse, n_fine, warm, False)
    return any(d > r for d, r in zip(wave[1:], ref[1:], strict=True))


class _Group:
    """Running solves advanced by one batched call: ``states[r]`` is ``tasks[r]``'s state."""

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.states: Tensor | None = None
        self.fresh: list[Tensor] = []  # start values of the last len(fresh) tasks

    def admit(self) -> None:
        """Append the start values of the solves started since the last tick."""
        if self.fresh:
            new = torch.stack(self.fresh)
            self.states = new if self.states is None else torch.cat([self.states, new])
            self.fresh = []

    def retire(self) -> list[tuple[_Task, Tensor]]:
        """Count the step just taken; remove the solves that are done and return them
        with their end states (copies)."""
        done, keep = [], []
        for r, t in enumerate(self.tasks):
            t.j += 1
            (done if t.j == t.n else keep).append(r)
        if not done:
            return []
        assert self.states is not None
        # each end state gets its own storage: it may outlive the batch by many ticks
        ends = [(self.tasks[r], self.states[r].clone()) for r in done]
        self.states = self.states[_to_device(keep, torch.int64, self.states.device)] \
            if keep else None
        self.tasks = [self.tasks[r] for r in keep]
        return ends


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Host numbers as a tensor on ``device``, copied without a stream sync (the source
    is a fresh host tensor that nothing else writes)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
