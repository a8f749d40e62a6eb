"""One training step of the neural ODE example: serial vs Parareal, backprop vs adjoint.

    python benchmarks/bench_odeint.py [--quick] [--out DIR]

The model and data are those of ``examples/neural_ode.py`` (imported from it): the MLP
``ODEFunc`` (2-32-2, tanh, float64, seed 0) fitted to Van der Pol observed at 13 times on
``[0, 3]``, ``method="rk4"``, ``step_size=0.02`` (each interval of 0.25 takes
``ceil(0.25 / 0.02) = 13`` equal steps: 156 steps, serial ``forward_depth`` 156), 16 blocks
for every variant (so the four solve the same discrete problem). One training step is the forward solve, the
mean-squared loss and ``loss.backward()``. Four variants:

* ``serial_backprop``: ``pint.odeint(..., parallel=False)``, autograd through the solve;
* ``serial_adjoint``: ``adjoint=True``: the discrete adjoint, block after block;
* ``parareal_backprop``: ``parallel=True``, autograd through every Parareal iteration;
* ``parareal_adjoint``: ``parallel=True, adjoint=True``: Parareal forward, and the adjoint
  recursion solved with Parareal too.

Parareal runs as in the example (``tol=1e-10``, ``max_iters`` default). Measured per step:

* ``forward_depth``: ``Result.stats.depth`` of the forward solve (propagator steps on the
  critical path; an RK4 step is 4 right-hand-side calls).
* Sequential right-hand-side evaluations, forward and backward, counted by a wrapper around
  ``func``: every (vmap-batched) call of ``func`` counts one, and an autograd Function on its
  output counts every (batched) vector-Jacobian product through it. Each batched call is one
  sequential step, whatever its rows, so these counts are the depth in ``func`` evaluations
  (``forward_calls`` equals ``stats.f_calls``). The backward pass counts VJPs, plus for the
  adjoint the forward re-evaluations of the blocks it differentiates (``backward_calls``);
  ``backward_seq = backward_calls + backward_vjps`` and ``step_seq`` = forward + backward.
* ``forward_rows`` / ``backward_rows``: total work, evaluations counted per block row
  (``stats.f_evals`` for the forward solve).
* ``saved_mb``: peak memory of the step, as the peak total size of the tensors autograd
  holds for backward, tracked live with ``torch.autograd.graph.saved_tensors_hooks``
  (storages counted once however many nodes save them, released when their graph is
  freed; it includes the graphs the adjoint builds block by block inside its backward
  pass). ``tracemalloc`` does not see torch tensors; this measure is device-independent
  and counts what the training step itself adds (not parameters' ``.grad`` or the
  optimiser).
* ``grad_diff``: max-abs difference of the parameter gradients against ``serial_backprop``.
* ``wall_ratio``: the step's wall-clock (median of repeats, one thread, this CPU) over
  ``serial_backprop``'s, measured in the same run. On a CPU a batched call over 16 blocks
  costs more than a single one, so this is not the GPU picture the depth predicts.

A sweep over ``max_iters`` (``tol=0``, so every iteration runs) shows the Parareal
variants' memory and depth per iteration count: backprop-through-iterations grows with the
iterations, the adjoint does not, and at ``max_iters = num_blocks`` both gradients equal
serial backprop's to round-off. The seed-0 network's flow is smooth, so the default
coarse propagator (one or two RK4 steps a block) is already accurate to 1.1e-8 and
Parareal converges in 2 iterations.

What the numbers show (``odeint.json``): depth per training step (forward + backward
sequential ``func`` calls) 1248 for serial backprop, 1872 serial adjoint, 760 Parareal
backprop (the fewest: 2 iterations), 1220 Parareal adjoint. The serial adjoint holds one
block's graph (0.015 MB against 0.163 MB for serial backprop). The Parareal adjoint's
forward pass keeps only the block boundaries (0.0005 MB), but its peak (0.165 MB) is the
parameter-gradient VJP, one batched call over all blocks, as large as serial backprop's
graph: the same 0.165 MB at ``max_iters`` 1, 2, 4, 8 and 16, where backprop through the
iterations grows from 0.21 to 1.86 MB. Every variant's gradient equals serial backprop's
to 1e-14. ``--quick``: ``t`` on ``[0, 1.2]`` (60 steps), 8 blocks, one repeat. Writes
``odeint.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pint  # noqa: E402
from pint import problems  # noqa: E402

VARIANTS = {
    "serial_backprop": dict(),
    "serial_adjoint": dict(adjoint=True),
    "parareal_backprop": dict(parallel=True),
    "parareal_adjoint": dict(parallel=True, adjoint=True),
}


def load_example():
    """``examples/neural_ode.py`` as a module (its ``ODEFunc``)."""
    spec = importlib.util.spec_from_file_location("neural_ode",
                                                  ROOT / "examples" / "neural_ode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(x: torch.Tensor) -> int:
    """Block rows of a tensor seen inside ``torch.func.vmap`` (1 outside it)."""
    from torch._C import _functorch as ft

    n = 1
    while ft.is_batchedtensor(x):
        n *= ft.get_unwrapped(x).shape[ft.maybe_get_bdim(x)]
        x = ft.get_unwrapped(x)
    return n


class _Tap(torch.autograd.Function):
    """Identity whose backward counts one (batched) vector-Jacobian product."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y: torch.Tensor, counter: Counted) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.counter = inputs[1]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ctx.counter.vjps += 1
        ctx.counter.vjp_rows += _rows(g)
        return g, None


class Counted(torch.nn.Module):
    """``func`` with counters of its calls and of the VJPs through it."""

    def __init__(self, func: torch.nn.Module) -> None:
        super().__init__()
        self.func = func
        self.reset()

    def reset(self) -> None:
        self.calls = self.rows = self.vjps = self.vjp_rows = 0

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.calls, self.rows, self.vjps, self.vjp_rows

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += _rows(y)
        return _Tap.apply(self.func(t, y), self)


class SavedMemory:
    """Live and peak bytes of the tensors autograd saves for backward (storages counted
    once, released when the last node holding them is freed)."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]

    def pack(self, x: torch.Tensor):
        storage = x.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else id(x)
        if key in self.live:
            self.live[key][0] += 1
        else:
            self.live[key] = [1, storage.nbytes()]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        return _Handle(self, key, x)

    @staticmethod
    def unpack(h: _Handle) -> torch.Tensor:
        return h.x

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Handle:
    __slots__ = ("mem", "key", "x")

    def __init__(self, mem: SavedMemory, key: int, x: torch.Tensor) -> None:
        self.mem, self.key, self.x = mem, key, x

    def __del__(self) -> None:
        self.mem._release(self.key)


def setup(quick: bool) -> dict:
    case = problems.get("van_der_pol")
    t_end, blocks = (1.2, 8) if quick else (3.0, 16)
    n_t = 7 if quick else 13
    t = torch.linspace(0.0, t_end, n_t, dtype=torch.float64)
    opts = dict(method="rk4", options=dict(step_size=0.02), num_blocks=blocks)
    observed = pint.odeint(case.problem.f, case.problem.y0, t, **opts)
    return dict(y0=case.problem.y0, t=t, opts=opts, observed=observed, blocks=blocks)


def train_step(example, cfg: dict, kw: dict) -> dict:
    """One forward + backward from the seed-0 network, with every measurement."""
    torch.manual_seed(0)
    func = Counted(example.ODEFunc())
    mem = SavedMemory()
    with mem.hooks():
        ys, res = pint.odeint(func, cfg["y0"], cfg["t"], return_result=True, **cfg["opts"],
                              **kw)
        loss = ((ys - cfg["observed"]) ** 2).mean()
        fwd = func.snapshot()
        saved_after_forward = mem.current
        loss.backward()
    bwd = [a - b for a, b in zip(func.snapshot(), fwd, strict=True)]
    assert fwd[2] == 0, "no VJP runs in the forward pass"
    assert fwd[0] == res.stats.f_calls, (fwd[0], res.stats.f_calls)
    return {
        "iterations": res.iterations,
        "forward_depth": res.stats.depth,
        "forward_calls": fwd[0],
        "forward_f_calls_stats": res.stats.f_calls,
        "forward_rows": fwd[1],
        "backward_calls": bwd[0],
        "backward_vjps": bwd[2],
        "backward_seq": bwd[0] + bwd[2],
        "backward_rows": bwd[1] + bwd[3],
        "step_seq": fwd[0] + bwd[0] + bwd[2],
        "saved_mb_after_forward": saved_after_forward / 2**20,
        "saved_mb": mem.peak / 2**20,
        "loss": float(loss.detach()),
        "grads": [p.grad.detach().clone() for p in func.func.parameters()],
    }


def wall(example, cfg: dict, kw: dict, repeats: int) -> float:
    """Median seconds of one training step (forward + backward), no counters or hooks."""
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        func = example.ODEFunc()
        start = time.perf_counter()
        ys = pint.odeint(func, cfg["y0"], cfg["t"], **cfg["opts"], **kw)
        ((ys - cfg["observed"]) ** 2).mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grad_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="t on [0, 1.2], 8 blocks, one wall-clock repeat")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    example = load_example()
    cfg = setup(args.quick)
    B = cfg["blocks"]
    repeats = 1 if args.quick else 5
    par = dict(tol=1e-10)  # as the example

    rows: dict[str, dict] = {}
    for name, kw in VARIANTS.items():
        kw = {**kw, **par} if kw.get("parallel") else kw
        rows[name] = train_step(example, cfg, kw)
    ref = rows["serial_backprop"]["grads"]
    walls = {name: wall(example, cfg, {**kw, **par} if kw.get("parallel") else kw, repeats)
             for name, kw in VARIANTS.items()}
    for name, row in rows.items():
        row["grad_diff"] = grad_diff(row.pop("grads"), ref)
        row["wall_s"] = walls[name]
        row["wall_ratio"] = walls[name] / walls["serial_backprop"]

    sweep = []
    iters = sorted({1, 2, B // 4, B // 2, B} - {0})
    for k in iters:
        for name in ("parareal_backprop", "parareal_adjoint"):
            r = train_step(example, cfg, {**VARIANTS[name], "tol": 0.0, "max_iters": k})
            sweep.append({"variant": name, "max_iters": k, "iterations": r["iterations"],
                          "forward_depth": r["forward_depth"], "step_seq": r["step_seq"],
                          "backward_seq": r["backward_seq"], "saved_mb": r["saved_mb"],
                          "grad_diff": grad_diff(r["grads"], ref)})

    fastest = min(rows, key=lambda n: rows[n]["step_seq"])
    head = (f"{'variant':18s} {'iters':>5s} {'fwd depth':>9s} {'fwd seq':>7s} {'bwd seq':>7s} "
            f"{'step seq':>8s} {'rows':>6s} {'fwd MB':>7s} {'saved MB':>8s} {'grad diff':>9s} {'wall':>5s}")
    table = [head]
    for name, r in rows.items():
        table.append(f"{name:18s} {r['iterations']:5d} {r['forward_depth']:9d} "
                     f"{r['forward_calls']:7d} {r['backward_seq']:7d} {r['step_seq']:8d} "
                     f"{r['forward_rows'] + r['backward_rows']:6d} {r['saved_mb_after_forward']:7.3f} "
                     f"{r['saved_mb']:8.3f} "
                     f"{r['grad_diff']:9.1e} {r['wall_ratio']:5.2f}")
    table.append(f"fastest in depth (sequential func evaluations per step): {fastest}")
    table.append("max_iters sweep (tol=0): variant, max_iters, step seq, saved MB, grad diff")
    for s in sweep:
        table.append(f"  {s['variant']:18s} {s['max_iters']:3d} {s['step_seq']:6d} "
                     f"{s['saved_mb']:8.3f} {s['grad_diff']:9.1e}")
    print("\n".join(table))

    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "config": {"model": "examples/neural_ode.py ODEFunc (2-32-2 tanh MLP, float64, "
                            "seed 0)",
                   "problem": "van_der_pol", "t": cfg["t"].tolist(), "method": "rk4",
                   "step_size": 0.02, "num_blocks": B, "parareal_tol": par["tol"],
                   "quick": args.quick, "wall_repeats": repeats},
        "note": "seq = sequential (batched) calls of func or of its VJP; saved_mb = peak "
                "bytes of tensors saved for backward (saved_tensors_hooks); wall_ratio = "
                "median step wall-clock / serial_backprop's, one CPU thread",
        "variants": rows,
        "fastest_in_depth": fastest,
        "max_iters_sweep": sweep,
        "table": table,
        "runtime_s": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "odeint.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
