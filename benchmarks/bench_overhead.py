"""What the samplers cost besides the model, in counts a noisy machine cannot blur.

    python benchmarks/bench_overhead.py            # N = 1000
    python benchmarks/bench_overhead.py --quick    # N = 100 (smoke test)

Samplers: serial DDIM, SRDS sweep (B = sqrt N), SRDS pipelined (B = sqrt N and 2 sqrt N),
Picard and quasi-Newton (window 32). Per model call, with a model that costs nothing
(zeros; 16 samples of 1x8x8, float32; SRDS runs 4 iterations, the windows tol 1e-3):

* ``kernels``: aten operations outside the model that launch a kernel (views excluded).
  On a GPU each costs a launch of a few microseconds of device time;
* ``host_reads``: values the host reads from tensors computed from the state or the model
  (``item``/``bool``/``nonzero``/``tolist``). On a GPU each one waits for every queued
  kernel (a stream synchronisation), so the host cannot run ahead of the model: per-call
  Python time then adds to the model's instead of hiding behind it;
* ``us_per_call``: CPU wall-clock per call (best of 3 runs without the probe).

Memory, with the exact Gaussian-mixture denoiser (16-D, float64, 16 samples, N, tol 1e-3):
at every model call, the tensors alive (found by the garbage collector, storages counted
once) that did not exist before the sampler was called, less the call's own input;
``held_states`` counts those shaped like states (trailing dims of a sample) in units of
the whole batch ``x_T``, and ``held_per_block`` divides by the number of blocks.
``width_rows`` is the widest call in block rows (samples / batch): the model's activation
memory is that many times one batch's.

Writes ``overhead.json`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_samplers import machine_info  # noqa: E402

from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
)

READS = {"aten._local_scalar_dense", "aten.nonzero"}
VIEWS = {"aten.view", "aten.select", "aten.slice", "aten.unsqueeze", "aten.expand",
         "aten._unsafe_view", "aten.as_strided", "aten.squeeze", "aten.permute",
         "aten.t", "aten.alias", "aten.detach", "aten.unbind", "aten.split", "aten.chunk",
         "aten.transpose", "aten.lift_fresh", "aten.split_with_sizes"}


class _Marked:
    """Identity set of live tensors (no ``__eq__`` on tensors, no references kept)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        self._refs[id(t)] = weakref.ref(t)

    def __contains__(self, t: torch.Tensor) -> bool:
        r = self._refs.get(id(t))
        return r is not None and r() is t


class OpProbe(TorchDispatchMode):
    """Counts kernels and host reads outside the model. "Device" values are ``x_T``, the
    model's outputs and everything computed from them (tracked op by op)."""

    def __init__(self) -> None:
        super().__init__()
        self.device_values = _Marked()
        self.kernels = 0
        self.reads = 0
        self.read_sites: collections.Counter = collections.Counter()
        self.in_model = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.in_model:
            return out
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        from_device = any(a in self.device_values for a in inputs)
        name = str(func.overloadpacket)
        if name in READS:
            if from_device:
                self.read(name)
            return out
        if name not in VIEWS:
            self.kernels += 1
        if from_device:
            if func._schema.is_mutable:
                for a in inputs:
                    self.device_values.add(a)
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self.device_values.add(o)
        return out

    def read(self, what: str) -> None:
        self.reads += 1
        self.read_sites[what] += 1


class ZeroModel(torch.nn.Module):
    """Costs nothing; tells the probe where the model starts and ends."""

    def __init__(self, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.sample_shape = sample_shape
        self.probe: OpProbe | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.probe is None:
            return torch.zeros_like(x)
        self.probe.in_model = True
        out = torch.zeros_like(x)
        self.probe.in_model = False
        self.probe.device_values.add(out)
        return out


def samplers(N: int, srds: dict[str, Any]) -> dict[str, Callable]:
    """name -> run(model, schedule, x_T) for every sampler measured; ``srds``: the SRDS
    runs' stopping arguments."""
    B = round(math.sqrt(N))
    w = min(32, N)
    return {
        "serial": lambda m, s, x: serial_sample(m, s, x, N),
        f"srds_sweep_B{B}": lambda m, s, x: srds_sample(m, s, x, N, num_blocks=B,
                                                          pipelined=False, **srds),
        f"srds_pipelined_B{B}": lambda m, s, x: srds_sample(
            m, s, x, N, num_blocks=B, pipelined=True, **srds),
        f"srds_pipelined_B{2 * B}": lambda m, s, x: srds_sample(
            m, s, x, N, num_blocks=2 * B, pipelined=True, **srds),
        f"picard_w{w}": lambda m, s, x: picard_sample(m, s, x, N, window=w, tol=1e-3),
        f"quasi_newton_w{w}": lambda m, s, x: quasi_newton_sample(
            m, s, x, N, window=w, tol=1e-3),
    }


def count_ops(run: Callable, schedule: VPSchedule) -> dict[str, Any]:
    shape = (1, 8, 8)
    model = ZeroModel(shape)
    x = torch.randn((16, *shape), generator=torch.Generator().manual_seed(0))
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(model, schedule, x)
        walls.append(time.perf_counter() - t0)
    model.calls = 0
    probe = model.probe = OpProbe()
    probe.device_values.add(x)
    tolist = torch.Tensor.tolist

    def counted_tolist(t: torch.Tensor):
        if t in probe.device_values:
            probe.read("tolist")
        return tolist(t)

    torch.Tensor.tolist = counted_tolist  # type: ignore[method-assign]
    try:
        with probe:
            run(model, schedule, x)
    finally:
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
    calls = model.calls
    return {"model_calls": calls, "kernels_per_call": probe.kernels / calls,
            "host_reads_per_call": probe.reads / calls, "host_reads": probe.reads,
            "us_per_call": 1e6 * min(walls) / calls}


def _live_tensors() -> list[torch.Tensor]:
    with warnings.catch_warnings():  # isinstance on deprecated torch objects warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and o.device.type != "meta"]


def _states_bytes(sample_shape: tuple[int, ...], exclude: set[int]) -> tuple[int, int]:
    """(bytes of live state-shaped storages, bytes of all others), storages once."""
    seen: dict[int, tuple[int, bool]] = {}
    k = len(sample_shape)
    for o in _live_tensors():
        s = o.untyped_storage()
        ptr = s.data_ptr()
        if ptr == 0 or ptr in exclude:
            continue
        state_like = o.dim() > k and tuple(o.shape[-k:]) == sample_shape
        seen[ptr] = (s.nbytes(), state_like or seen.get(ptr, (0, False))[1])
    states = sum(n for n, st in seen.values() if st)
    return states, sum(n for n, st in seen.values() if not st)


class MemoryProbe(torch.nn.Module):
    """Wraps a model; at every call records what the sampler holds (see module doc)."""

    def __init__(self, model: torch.nn.Module, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.sample_shape = model, sample_shape
        self.before: set[int] = set()
        self.peak_states = self.peak_other = self.width = 0

    def start(self) -> None:
        gc.collect()
        self.before = {o.untyped_storage().data_ptr() for o in _live_tensors()}
        self.peak_states = self.peak_other = self.width = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        own = x.untyped_storage()  # the call's input, unless it is a view of held state
        skip = {own.data_ptr()} if own.nbytes() == x.nbytes else set()
        states, other = _states_bytes(self.sample_shape, self.before | skip)
        self.peak_states = max(self.peak_states, states)
        self.peak_other = max(self.peak_other, other)
        self.width = max(self.width, x.shape[0])
        return self.model(x, t)


def measure_memory(run: Callable, schedule: VPSchedule, batch: int = 16) -> dict[str, Any]:
    gmm = GaussianMixtureDenoiser.random(schedule, dim=16, components=8, seed=0)
    x = torch.randn(batch, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    probe = MemoryProbe(gmm, (16,))
    probe.start()
    out = run(probe, schedule, x)
    boundaries = getattr(out, "boundaries", None)  # SRDS only
    B = boundaries.shape[0] - 1 if boundaries is not None else None
    held = probe.peak_states / x.nbytes
    return {"held_states": held, "held_per_block": held / B if B else None,
            "held_other_bytes": probe.peak_other, "blocks": B,
            "width_rows": probe.width / batch,
            "iterations": getattr(out, "iterations", None)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 100")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    N = 100 if args.quick else 1000
    schedule = VPSchedule.linear(1000)
    t_start = time.perf_counter()
    rows = {}
    to_count = samplers(N, {"tol": 0.0, "max_iters": 4})
    for name, run in samplers(N, {"tol": 1e-3}).items():
        r = count_ops(to_count[name], schedule)
        r.update(measure_memory(run, schedule))
        rows[name] = r
        per_b = f"{r['held_per_block']:.2f}" if r["held_per_block"] else "-"
        print(f"{name:24s} calls {r['model_calls']:5d}  kernels/call {r['kernels_per_call']:6.1f}"
              f"  host reads/call {r['host_reads_per_call']:5.2f}  us/call {r['us_per_call']:6.0f}"
              f"  held {r['held_states']:7.1f} batches ({per_b}/block)"
              f"  widest {r['width_rows']:.0f} rows", flush=True)
    report = {"machine": machine_info(1), "N": N, "results": rows,
              "note": __doc__.split("\n\n", 2)[2], "runtime_s": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
