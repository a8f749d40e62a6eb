"""Parareal on several processes with torch.distributed: every rank gets the same result.

    torchrun --nproc-per-node 2 examples/distributed.py               # CPU: gloo
    torchrun --nproc-per-node 4 examples/distributed.py --pipelined
    torchrun --nproc-per-node 2 examples/distributed.py --t-end 10    # more iterations

With GPUs (one per rank, NCCL) the same command runs on ``cuda:LOCAL_RANK``. Each rank
solves the Lorenz system (``pint.problems``) and samples a Gaussian-mixture diffusion model
with SRDS, the blocks shared out over the ranks, then checks both results against the
single-process calls it also runs, and prints one line each.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import pint
import pint.problems


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--t-end", type=float, default=2.0, help="Lorenz horizon")
    ap.add_argument("--steps", type=int, default=200, help="SRDS sampling steps")
    ap.add_argument("--pipelined", action="store_true", help="overlap the ranks' iterations")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds any one wait may last")
    args = ap.parse_args(argv)

    own_group = not dist.is_initialized()  # under torchrun: create the default group
    if own_group:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    executor = pint.DistributedExecutor(timeout=args.timeout)

    case = pint.problems.get("lorenz", t_end=args.t_end)
    problem = pint.ODEProblem(case.problem.f, case.problem.y0.to(device), case.problem.t_span)
    solve = dict(coarse=case.coarse, fine=case.fine, num_blocks=case.num_blocks, tol=case.tol,
                 pipelined=args.pipelined)
    res = pint.parareal(problem, executor=executor, **solve)
    ref = pint.parareal(problem, **solve)  # the single-process call, on this rank alone
    ode = {
        "iterations": res.iterations,
        "iterations_single": ref.iterations,
        "max_difference": float((res.boundaries - ref.boundaries).abs().max()),
        "depth": res.stats.depth,
        "depth_single": ref.stats.depth,
        "fine_steps_per_rank": [p["fine_steps"] for p in res.stats.per_rank],
    }
    print(f"rank {rank}/{world} Lorenz: {res.iterations} iterations (single process "
          f"{ref.iterations}), y = {[round(v, 8) for v in res.y.tolist()]}, max difference "
          f"to the single-process boundaries {ode['max_difference']:.1e}; sequential steps "
          f"{res.stats.depth} (one device {ref.stats.depth}); fine steps per rank "
          f"{ode['fine_steps_per_rank']}", flush=True)

    from adapters.diffusion import GaussianMixtureDenoiser, VPSchedule, srds_sample

    schedule = VPSchedule.linear(1000)
    model = GaussianMixtureDenoiser.random(schedule, dim=16, seed=0).to(device)  # a replica per rank
    # every rank must start from the same noise: seed the generator identically
    x_T = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        out = srds_sample(model, schedule, x_T, args.steps, tol=1e-6, pipelined=args.pipelined,
                          executor=executor)
        one = srds_sample(model, schedule, x_T, args.steps, tol=1e-6, pipelined=args.pipelined)
    srds = {
        "iterations": out.iterations,
        "iterations_single": one.iterations,
        "max_difference": float((out.sample - one.sample).abs().max()),
        "depth": out.stats.depth,
    }
    print(f"rank {rank}/{world} SRDS: {out.iterations} iterations (single process "
          f"{one.iterations}), max difference to the single-process sample "
          f"{srds['max_difference']:.1e}, {out.stats.depth} sequential model calls", flush=True)

    ok = (res.iterations == ref.iterations and ode["max_difference"] < 1e-10
          and out.iterations == one.iterations and srds["max_difference"] < 1e-10)
    if own_group:
        dist.destroy_process_group()
    if not ok:
        raise SystemExit(f"rank {rank}: the distributed result differs from the single-process one")
    return {"rank": rank, "world": world, "lorenz": ode, "srds": srds}


if __name__ == "__main__":
    main()
