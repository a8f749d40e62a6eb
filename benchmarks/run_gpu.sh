#!/usr/bin/env bash
# The GPU benchmarks in one run (one device session, about 8 minutes on an H100/H200):
#   OUT=DIR bash benchmarks/run_gpu.sh [all|wallclock|rest]
# writes into $OUT (default benchmarks/results/gpu): gpu_wallclock.json (fp16, eager and
# CUDA graphs), gpu_wallclock_fp16_vs_fp32.json (the fp16 yardstick), planner.json/.png
# (sampler="auto" on the real UNet, eager), precision.json (the half-precision table on
# the GPU), gpu_wallclock_bf16.json (bf16, eager) and log.txt. Each part has its own time
# limit, so a slow part cannot take the others' time.
set -u
OUT=${OUT:-benchmarks/results/gpu}
part=${1:-all}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  $py -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  if [ "$part" != rest ]; then
    echo "== wall-clock, fp16, eager and CUDA graphs"
    timeout 300 $py benchmarks/bench_gpu_wallclock.py --graphs --out "$OUT"
  fi
  if [ "$part" != wallclock ]; then
    echo "== fp16 serial against float32 serial (the yardstick)"
    timeout 60 $py benchmarks/bench_gpu_wallclock.py --vs-fp32-only --name gpu_wallclock_fp16_vs_fp32 --out "$OUT"
    echo "== planner on the real UNet"
    timeout 130 $py benchmarks/bench_planner.py --devices gpu-unet-b1 --steps 200 --out "$OUT"
    echo "== half precision"
    timeout 75 $py benchmarks/bench_precision.py --device cuda --seeds 1 --label cuda --out "$OUT"
    echo "== wall-clock, bf16, eager"
    timeout 150 $py benchmarks/bench_gpu_wallclock.py --dtype bfloat16 --vs-fp32 --name gpu_wallclock_bf16 --out "$OUT"
  fi
} 2>&1 | grep -v "should be kept in float32" | tee "$OUT/log.txt"
