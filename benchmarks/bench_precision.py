"""Half precision: sequential calls and distances to serial of the parallel samplers when
the network runs in bfloat16 or float16 (issue 29's table).

    python benchmarks/bench_precision.py [--quick] [--label after] [--out DIR]
    python benchmarks/bench_precision.py --device cuda --seeds 1 --label cuda   # on a GPU

For each case (the bundled ``digits`` and ``digits-flow`` models cast to bfloat16, N = 50,
batch 8; tiny random SD3 and Flux pipelines in bfloat16 and Flux in float16, N = 28, two
prompts: :func:`bench_text_to_image.tiny_sd3` / ``tiny_flux``) and seed it records:

- ``serial_vs_fp32``: max-abs distance of pint's serial sample in the low precision to the
  float32 serial sample (the network's own precision, the yardstick);
- ``diffusers_vs_fp32`` and ``serial_vs_diffusers``: the same for diffusers' own loop in
  the low precision (``pipe(..., output_type="latent")``; for the bundled models the
  scheduler's ``step`` on low precision latents, as ``DDIMPipeline`` runs it);
- per sampler (``srds``, ``picard``, ``quasi_newton``, all at their defaults): sequential
  model calls (``stats.depth``), the tolerance used, and the max-abs distance of its sample
  to the serial sample of the same precision.

The goal (issue 29): Picard and quasi-Newton at most 0.4 N calls, SRDS at most 0.6 N, each
at most ``serial_vs_fp32`` from serial. The script runs on any checkout (run it on an older
one, ``PYTHONPATH=OLD python benchmarks/bench_precision.py --label before``, for the
"before" rows); it merges its rows into ``precision.json`` under ``--label``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "benchmarks"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

SAMPLERS = ("srds", "picard", "quasi_newton")
GOAL = {"srds": 0.6, "picard": 0.4, "quasi_newton": 0.4}


def dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def diffusers_loop(unet: Any, scheduler: Any, x_T: torch.Tensor, N: int) -> torch.Tensor:
    """diffusers' own sampling loop in ``x_T``'s dtype (what ``DDIMPipeline`` runs)."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(N)
    x = x_T * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample.to(x_T.dtype)
    return x


def bundled_case(name: str, dtype: torch.dtype, N: int, batch: int, seed: int,
                 device: str = "cpu") -> dict[str, Any]:
    """One seed of a bundled model cast to ``dtype``."""
    import adapters.diffusion as D
    from adapters.diffusion.pretrained import inspect_pretrained

    m32, sched = D.load_pretrained(name, device=device)
    lo, _ = D.load_pretrained(name, device=device, dtype=dtype)
    x = torch.randn(batch, *m32.sample_shape, generator=torch.Generator().manual_seed(seed)
                    ).to(device)
    ref32 = D.serial_sample(m32, sched, x, N)
    ser = D.serial_sample(lo, sched, x.to(dtype), N)
    row: dict[str, Any] = {"serial_vs_fp32": dist(ser, ref32)}
    if device != "cpu":  # float32 on the device against the CPU
        cpu = D.serial_sample(D.load_pretrained(name)[0], sched, x.cpu(), N)
        row["fp32_device_vs_cpu"] = dist(ref32.cpu(), cpu)
    try:
        import diffusers

        info = inspect_pretrained(name)
        scheduler = getattr(diffusers, info.scheduler_class).from_config(info.scheduler_config)
        unet = getattr(lo, "unet", None) or getattr(lo, "model", None) or lo
        own = diffusers_loop(unet, scheduler, x.to(dtype), N)
        row.update(diffusers_vs_fp32=dist(own, ref32), serial_vs_diffusers=dist(ser, own))
    except Exception as err:  # noqa: BLE001 (a model wrapper this script can't unwrap)
        row["diffusers_note"] = f"{type(err).__name__}: {err}"
    fns = {"srds": D.srds_sample, "picard": D.picard_sample,
           "quasi_newton": D.quasi_newton_sample}
    for s in SAMPLERS:
        t0 = time.perf_counter()
        out = fns[s](lo, sched, x.to(dtype), N)
        row[s] = {"calls": out.stats.depth, "tol": out.tol, "to_serial": dist(out.sample, ser),
                  "wall_s": time.perf_counter() - t0}
    return row


def pipeline_case(kind: str, dtype: torch.dtype, N: int, seed: int,
                  device: str = "cpu") -> dict[str, Any]:
    """One seed of a tiny random pipeline (``"sd3"`` or ``"flux"``) in ``dtype``."""
    import bench_text_to_image as bt

    from adapters.text_to_image import srds_pipeline

    tmp = Path(tempfile.mkdtemp())
    cpu32 = (bt.tiny_sd3 if kind == "sd3" else bt.tiny_flux)(tmp)
    p32 = copy.deepcopy(cpu32).to(device)
    lo = copy.deepcopy(p32).to(dtype)
    kw: dict[str, Any] = dict(max_sequence_length=bt.MAX_TOKENS, output_type="latent")
    if kind == "flux":
        kw.update(height=16, width=16)
    prompts = ["a photo of a cat", "red tree"]

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    ref32 = srds_pipeline(p32, prompts, N, sampler="serial", generator=gen(), **kw).latents
    own = lo(prompts, num_inference_steps=N, generator=gen(), **kw).images
    ser = srds_pipeline(lo, prompts, N, sampler="serial", generator=gen(), **kw).latents
    row: dict[str, Any] = {"serial_vs_fp32": dist(ser, ref32), "diffusers_vs_fp32": dist(own, ref32),
                           "serial_vs_diffusers": dist(ser, own)}
    if device != "cpu":  # float32 on the device against diffusers' own loop and the CPU
        own32 = p32(prompts, num_inference_steps=N, generator=gen(), **kw).images
        cpu = srds_pipeline(cpu32, prompts, N, sampler="serial", generator=gen(), **kw).latents
        row.update(fp32_serial_vs_diffusers=dist(ref32, own32),
                   fp32_device_vs_cpu=dist(ref32.cpu(), cpu))
    for s in SAMPLERS:
        t0 = time.perf_counter()
        out = srds_pipeline(lo, prompts, N, sampler=s, generator=gen(), **kw)
        row[s] = {"calls": out.stats.depth, "tol": out.sampling.tol,
                  "to_serial": dist(out.latents, ser), "wall_s": time.perf_counter() - t0}
    return row


CASES = (  # (label, kind, dtype, N)
    ("digits bf16", "digits", torch.bfloat16, 50),
    ("digits-flow bf16", "digits-flow", torch.bfloat16, 50),
    ("tiny SD3 bf16", "sd3", torch.bfloat16, 28),
    ("tiny Flux bf16", "flux", torch.bfloat16, 28),
    ("tiny Flux fp16", "flux", torch.float16, 28),
)


def summarise(label: str, N: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst case over the seeds, and whether every seed met the goal."""
    out: dict[str, Any] = {"N": N, "seeds": rows,
                           "serial_vs_fp32": max(r["serial_vs_fp32"] for r in rows)}
    if all("serial_vs_diffusers" in r for r in rows):
        out["serial_vs_diffusers"] = max(r["serial_vs_diffusers"] for r in rows)
        out["diffusers_vs_fp32"] = max(r["diffusers_vs_fp32"] for r in rows)
    for s in SAMPLERS:
        calls = [r[s]["calls"] for r in rows]
        ok = [r[s]["calls"] <= GOAL[s] * N and r[s]["to_serial"] <= r["serial_vs_fp32"]
              for r in rows]
        out[s] = {"calls_max": max(calls), "calls_mean": sum(calls) / len(calls),
                  "to_serial_max": max(r[s]["to_serial"] for r in rows),
                  "tol": rows[0][s]["tol"], "goal_met": f"{sum(ok)}/{len(ok)} seeds"}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, the pipelines only")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--label", default="after", help="the key the rows are stored under")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--device", default="cpu", help="where the models run (e.g. cuda)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    seeds = range(1 if args.quick else args.seeds)
    table: dict[str, Any] = {}
    for label, kind, dtype, N in CASES:
        if args.quick and kind not in ("sd3", "flux"):
            continue
        rows = [pipeline_case(kind, dtype, N, s, args.device) if kind in ("sd3", "flux")
                else bundled_case(kind, dtype, N, 8, s, args.device) for s in seeds]
        table[label] = summarise(label, N, rows)
        t = table[label]
        print(f"{label:18s} N={N} serial vs fp32 {t['serial_vs_fp32']:.3g}"
              + (f", vs diffusers' own loop {t['serial_vs_diffusers']:.3g}"
                 if "serial_vs_diffusers" in t else "")
              + "".join(f" | {s} {t[s]['calls_max']} calls, {t[s]['to_serial_max']:.3g} "
                        f"({t[s]['goal_met']})" for s in SAMPLERS), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "precision.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = {"machine": platform.platform(), "torch": torch.__version__,
                        "device": (torch.cuda.get_device_name(args.device)
                                   if args.device.startswith("cuda") else "cpu"),
                        "seeds": len(seeds), "cases": table}
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path} [{args.label}]")
    return data


if __name__ == "__main__":
    main()
