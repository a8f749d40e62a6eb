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
a tick is one batched call, otherwise two (one per method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .problem import ODEProblem
from .propagators.base import StepPropagator
from .result import IterationInfo, Result
from .stopping import StoppingRule


@dataclass
class _Task:
    kind: str  # "coarse" or "fine"
    k: int  # coarse: G(U^k_i); fine: F^k_i = F(U^{k-1}_i)
    i: int
    slot: int
    t0: float
    h: float
    n: int
    j: int = 0


def pipelined_parareal(problem: ODEProblem, coarse, fine, times: Tensor,
                       stopping: StoppingRule, max_iters: int, callback,
                       initial: Tensor | None = None) -> Result:
    from .parareal import Runner

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
    state = tuple(y0.shape)
    t_cpu = times.detach().cpu().double()
    n_coarse = coarse.steps_per_block(times[:-1], times[1:]).cpu().tolist()
    n_fine = fine.steps_per_block(times[:-1], times[1:]).cpu().tolist()

    capacity = 2 * B + 2
    work = y0.new_empty((capacity, *state))
    free = list(range(capacity - 1, -1, -1))
    tasks: list[_Task] = []
    U: dict[tuple[int, int], Tensor] = {}
    G: dict[tuple[int, int], Tensor] = {}
    F: dict[tuple[int, int], Tensor] = {}
    exact: dict[int, Tensor] = {}  # U_i once it equals the serial solution (from iteration i)

    def start(kind: str, k: int, i: int, y: Tensor) -> None:
        nonlocal work
        if not free:  # grow the work buffer (rare: only with very uneven costs)
            extra = work.shape[0]
            work = torch.cat([work, work.new_empty((extra, *state))])
            free.extend(range(2 * extra - 1, extra - 1, -1))
        slot = free.pop()
        work[slot] = y
        n = (n_coarse if kind == "coarse" else n_fine)[i]
        a, b = t_cpu[i].item(), t_cpu[i + 1].item()
        tasks.append(_Task(kind, k, i, slot, a, (b - a) / n, n))

    def known(k: int, i: int, value: Tensor) -> None:
        """Record ``U^k_i`` and start the work that waits for it."""
        U[(k, i)] = value
        if i == k:
            exact[i] = value
        if i < B:
            if i >= k:
                start("coarse", k, i, value)
            if k + 1 <= K and i >= k:
                start("fine", k + 1, i, value)

    def resolve(k: int, i: int) -> None:
        """Try to compute ``U^k_{i+1}`` after ``G^k_i`` or ``F^k_i`` finished."""
        if (k, i + 1) in U:
            return
        if k == 0:
            if (0, i) in G:
                known(0, i + 1, G[(0, i)])
        elif i + 1 == k:
            if (k, i) in F:
                known(k, k, F[(k, i)])
        elif (k, i) in G and (k, i) in F and (k - 1, i) in G:
            known(k, i + 1, G[(k, i)] + F[(k, i)] - G[(k - 1, i)])

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
                change, passed = stopping(Uk[k:], old, index)
                history.append(change)
                if callback is not None:
                    callback(IterationInfo(k, Uk, change, k, run.stats))
                if passed or k == B:
                    converged = True
                # free what no later iteration needs
                for i in range(B + 1):
                    G.pop((k - 1, i), None)
                    F.pop((k, i), None)
                    U.pop((k - 1, i), None)
            if converged or k == K:
                final = Uk
                break
        if final is not None:
            break
        if not tasks:
            raise RuntimeError("pipelined schedule stalled (internal error)")

        # --- one tick: advance every running solve by one step
        groups = [("all", tasks)] if merged else [
            ("coarse", [t for t in tasks if t.kind == "coarse"]),
            ("fine", [t for t in tasks if t.kind == "fine"]),
        ]
        for kind, group in groups:
            if not group:
                continue
            prop = fine if kind in ("all", "fine") else coarse
            slots = torch.tensor([t.slot for t in group], device=work.device)
            tt = torch.tensor([t.t0 + t.j * t.h for t in group], dtype=times.dtype,
                              device=times.device)
            hh = torch.tensor([t.h for t in group], dtype=times.dtype, device=times.device)
            work[slots] = prop.step(rhs, tt, work[slots], hh)
            run.stats.depth += 1
            run.stats.rows += len(group)
            nc = sum(t.kind == "coarse" for t in group)
            run.stats.coarse_steps += nc
            run.stats.fine_steps += len(group) - nc
        finished = []
        for t in tasks:
            t.j += 1
            if t.j == t.n:
                finished.append(t)
        if finished:
            tasks = [t for t in tasks if t.j < t.n]
            for t in finished:
                out = work[t.slot].clone()
                free.append(t.slot)
                (G if t.kind == "coarse" else F)[(t.k, t.i)] = out
            for t in finished:
                resolve(t.k, t.i)
                if t.kind == "coarse" and t.k + 1 <= K:  # G^k_i is also G_old of k + 1
                    resolve(t.k + 1, t.i)

    k = done_iter
    return Result(final[-1].clone(), final, times, k, converged, history, run.stats)
