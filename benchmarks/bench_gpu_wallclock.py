"""Wall-clock of the samplers on one accelerator, eager and with CUDA graphs, in one run.

    python benchmarks/bench_gpu_wallclock.py --graphs           # CUDA: 35.7M UNet, fp16, N = 1000
    python benchmarks/bench_gpu_wallclock.py --dtype bfloat16 --vs-fp32 --name gpu_wallclock_bf16
    python benchmarks/bench_gpu_wallclock.py --tiny --device cpu --steps 20   # smoke test

The model is a randomly initialised diffusers ``UNet2DModel`` in the DDPM-CIFAR10 layout
(32x32x3, block_out_channels (128, 256, 256, 256), attention at 16x16: 35.7M parameters;
``--tiny``: 2 small blocks) on a linear 1000-step schedule. For each mode (eager, and with
``--graphs`` the same model replayed from CUDA graphs, applied to serial and parallel
samplers alike so that the baseline is as fast as it can be) it times, after one warm-up
run each: serial DDIM, SRDS pipelined, Picard (window 32) and quasi-Newton (window 32),
with the error of each sample against the serial one, the sequential model calls and the
rows. The window samplers run at tol 1e-3 in float32 and at the precision policy's
default in half precision. CUDA graphs need fixed shapes: every call is padded to the next
power-of-two batch, so a sampler replays a handful of graphs (:class:`GraphedModel`,
captured with ``torch.cuda.graph``; off CUDA ``--graphs`` times
``torch.compile(mode="reduce-overhead")`` instead, inductor's C++ code).

Per sampler it also records ``engine_share`` (the same sampler with a model that returns
zeros, over the real run: the engine's time if nothing overlapped) and, on CUDA, the stream
synchronisations of one run (``torch.cuda.set_sync_debug_mode``, counted) and its peak
allocated memory. ``--vs-fp32`` adds the distance of serial in ``--dtype`` to float32
serial, the yardstick for the samplers' errors in half precision.

Writes ``gpu_wallclock.json`` (``--out``, ``--name``; modes ``eager`` and ``cuda_graphs``,
or ``compiled`` off CUDA), after each mode. Ratios are serial time / method time,
measured in the same process and mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_samplers import ZeroModel  # noqa: E402

from adapters.diffusion import (  # noqa: E402
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
)


class PaddedModel(torch.nn.Module):
    """Pads every call to the next power-of-two batch (at least ``min_rows``) so that a
    compiled / CUDA-graph model sees few distinct shapes; returns the unpadded rows."""

    def __init__(self, model: torch.nn.Module, min_rows: int = 1) -> None:
        super().__init__()
        self.model, self.min_rows = model, min_rows
        self.sample_shape = model.sample_shape

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = max(self.min_rows, 1 << (n - 1).bit_length())
        if rows > n:
            x = torch.cat([x, x[-1:].expand(rows - n, *x.shape[1:])])
            t = torch.cat([t, t[-1:].expand(rows - n)])
        return self.model(x, t)[:n].clone()


class GraphedModel(torch.nn.Module):
    """CUDA graphs without a compiler: one graph per padded batch (the next power of two,
    at least ``min_rows``), captured on first use with static input buffers and replayed
    after (capture takes a warm-up call and a capture, well under a second, where
    ``torch.compile`` would take a compilation per shape). Returns the unpadded rows."""

    def __init__(self, model: torch.nn.Module, min_rows: int = 1) -> None:
        super().__init__()
        self.model, self.min_rows = model, min_rows
        self.sample_shape = model.sample_shape
        self.graphs: dict[tuple, tuple] = {}

    def _capture(self, rows: int, x: torch.Tensor, t: torch.Tensor) -> tuple:
        sx = x[:1].expand(rows, *x.shape[1:]).clone()
        st = t[:1].expand(rows).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture (allocator, kernels' setup)
            for _ in range(2):
                self.model(sx, st)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(sx, st)
        return graph, sx, st, out

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = max(self.min_rows, 1 << (n - 1).bit_length())
        key = (rows, x.dtype, t.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(rows, x, t)
        graph, sx, st, out = self.graphs[key]
        sx[:n].copy_(x)
        st[:n].copy_(t)
        if rows > n:
            sx[n:].copy_(x[-1:].expand(rows - n, *x.shape[1:]))
            st[n:].copy_(t[-1:].expand(rows - n))
        graph.replay()
        return out[:n].clone()


def make_model(tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DModel

    from adapters.diffusers import DiffusersModel

    torch.manual_seed(0)
    if tiny:
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(16, 32), norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    else:
        unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                           block_out_channels=(128, 256, 256, 256),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                             "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D",
                                           "UpBlock2D"))
    return DiffusersModel(unet.to(device=device, dtype=dtype).eval())


def timed(fn, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def methods(model, schedule, x, N: int) -> dict[str, Any]:
    """The timed samplers. The window samplers run at tol 1e-3 in float32 and at the
    precision policy's default (``WINDOW_TOL``) in half precision, what a user gets."""
    tol = 1e-3 if x.dtype in (torch.float32, torch.float64) else None
    return {
        "serial": lambda: serial_sample(model, schedule, x, N),
        "srds_pipelined": lambda: srds_sample(model, schedule, x, N, pipelined=True),
        "picard_w32": lambda: picard_sample(model, schedule, x, N, window=min(32, N), tol=tol),
        "qn_w32": lambda: quasi_newton_sample(model, schedule, x, N, window=min(32, N), tol=tol),
    }


def syncs_and_peak(fn, device: torch.device) -> tuple[int | None, float | None]:
    """Stream synchronisations (CUDA's sync debug mode, counted) and peak allocated MiB
    of one run; ``(None, None)`` off CUDA."""
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return syncs, torch.cuda.max_memory_allocated(device) / 2**20


def run_mode(model, schedule, x, N: int, device: torch.device) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    ref = None
    zero = methods(ZeroModel(model.sample_shape), schedule, x, N)
    for name, fn in methods(model, schedule, x, N).items():
        fn()  # warm-up (compilation, graph capture, allocator)
        out, wall = timed(fn, device)
        sample = out if name == "serial" else out.sample
        if ref is None:
            ref = sample
        zero[name]()
        _, wall_zero = timed(zero[name], device)
        syncs, peak = syncs_and_peak(fn, device)
        calls = N if name == "serial" else out.stats.depth
        rows[name] = {"wall_s": wall, "sample_max_abs": float(sample.abs().max()),
                      "error_vs_serial": float((sample.double() - ref.double()).abs().max()),
                      "depth": calls,
                      "rows": N * x.shape[0] if name == "serial" else out.stats.model_rows,
                      # the same sampler with a free model: the engine's share, if nothing
                      # overlapped (an upper bound; the zero model's calls may differ for
                      # the window samplers, which stop on the model's output)
                      "wall_zero_model_s": wall_zero,
                      "engine_share": wall_zero / wall,
                      "syncs": syncs, "syncs_per_call": None if syncs is None else syncs / calls,
                      "peak_mib": peak}
    for r in rows.values():
        r["serial_over_method"] = rows["serial"]["wall_s"] / r["wall_s"]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                    help="default float16 on CUDA, float32 elsewhere")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="a small UNet (CPU smoke test)")
    ap.add_argument("--graphs", action="store_true",
                    help="also time CUDA graphs (on CUDA; torch.compile elsewhere)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--vs-fp32", action="store_true",
                    help="also the distance of serial in --dtype to float32 serial")
    ap.add_argument("--vs-fp32-only", action="store_true",
                    help="only that distance (no timings)")
    ap.add_argument("--name", default="gpu_wallclock",
                    help="the JSON file's stem (e.g. gpu_wallclock_bf16 for a second dtype)")
    args = ap.parse_args(argv)
    args.vs_fp32 = args.vs_fp32 or args.vs_fp32_only
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    schedule = VPSchedule.linear(1000)
    model = make_model(args.tiny, device, dtype)
    x = torch.randn(args.batch, *model.sample_shape, generator=torch.Generator().manual_seed(0)
                    ).to(device=device, dtype=dtype)
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or "cpu"},
        "config": {"steps": args.steps, "batch": args.batch, "dtype": str(dtype),
                   "tiny": args.tiny,
                   "parameters": sum(p.numel() for p in model.parameters())},
        "modes": {},
    }
    with torch.inference_mode():
        if args.vs_fp32 and dtype != torch.float32:  # the yardstick: the dtype's own error
            ref32 = serial_sample(make_model(args.tiny, device, torch.float32), schedule,
                                  x.float(), args.steps)
            ser = serial_sample(model, schedule, x, args.steps)
            report["serial_vs_fp32"] = float((ser.double() - ref32.double()).abs().max())
            report["fp32_sample_max_abs"] = float(ref32.abs().max())
            print(f"serial in {dtype} vs float32 serial: {report['serial_vs_fp32']:.3g} "
                  f"(float32 sample max-abs {report['fp32_sample_max_abs']:.3g})")
            save(report, args)
        if args.vs_fp32_only:
            return report
        report["modes"]["eager"] = run_mode(model, schedule, x, args.steps, device)
        save(report, args)
        if args.graphs and device.type == "cuda":
            graphed = GraphedModel(model, min_rows=args.batch)
            report["modes"]["cuda_graphs"] = run_mode(graphed, schedule, x, args.steps, device)
            report["cuda_graphs_captured"] = sorted(k[0] for k in graphed.graphs)
        elif args.graphs:
            compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
            padded = PaddedModel(compiled, min_rows=args.batch)
            report["modes"]["compiled"] = run_mode(padded, schedule, x, args.steps, device)
    for mode, rows in report["modes"].items():
        for name, r in rows.items():
            print(f"{mode:12s} {name:15s} {r['wall_s']:8.3f} s  serial/method "
                  f"{r['serial_over_method']:5.2f}  calls {r['depth']:5d}  "
                  f"error {r['error_vs_serial']:.1e}  engine share {r['engine_share']:.3f}  "
                  f"syncs {r['syncs']}  peak MiB {r['peak_mib']}")
    save(report, args)
    return report


def save(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Write what is measured so far (a run cut short keeps its finished modes)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
