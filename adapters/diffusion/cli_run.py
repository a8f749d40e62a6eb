"""``pint-sample`` on an unconditional model (a bundled name or a local folder): checks,
loading, the sampler run and the serial comparison; and joining ``torchrun``'s ranks."""


from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch

from .cli_args import (
    DTYPES,
    SIGMA_SCHEDULERS,
    VP_SCHEDULERS,
    check_device,
    check_sampler_flags,
    check_steps,
    error,
    is_text_to_image,
    memory_note,
    window_tol,
)
from .cli_output import Outputs, check_out, serial_comparison, srds_report, window_report
from .cli_t2i import run_text_to_image


def connect_ranks(args) -> str | None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (gloo for
    ``--device cpu``, NCCL with this rank's GPU ``cuda:LOCAL_RANK`` for ``--device cuda``)
    and set ``args.executor`` to a :class:`pint.DistributedExecutor`, which SRDS, the
    window samplers and ``auto`` split their model calls over; every rank samples, rank 0
    alone shows progress and writes the outputs. Returns why not, or ``None``."""
    args.executor, args.rank, args.world = None, 0, 1
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

    import pint

    dev = torch.device(args.device)
    if dev.type == "cuda":
        if dev.index is None:  # one GPU per rank
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK") or 0))
            args.device = str(dev)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        return f"--device {args.device}: under torchrun the ranks need cpu (gloo) or cuda (nccl)"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    args.executor = pint.DistributedExecutor()
    args.rank, args.world = dist.get_rank(), dist.get_world_size()
    return None


def run(args) -> int | Outputs:
    """The run ``args`` ask for: the exit status of a refusal, or the outputs to write."""
    for err in (check_device(args.device), check_sampler_flags(args), check_out(args.out)):
        if err:
            return error(err)
    err = connect_ranks(args)
    if err:
        return error(err)
    args.progress = args.rank == 0
    if args.prompt is not None or is_text_to_image(args.model):
        if args.scheduler is not None and args.scheduler not in VP_SCHEDULERS:
            return error(f"--scheduler {args.scheduler}: a text-to-image pipeline folder takes "
                         f"--scheduler ddim or ddpm (StableDiffusion; SD3 and Flux sample with "
                         "their own flow-matching scheduler)")
        return run_text_to_image(args)
    given = [f for f, v in (("--negative-prompt", args.negative_prompt),
                            ("--guidance-scale", args.guidance_scale),
                            ("--true-cfg-scale", args.true_cfg_scale),
                            ("--height", args.height), ("--width", args.width),
                            ("--image", getattr(args, "image", None)))
             if v is not None]
    if given:
        return error(f"{', '.join(given)} need(s) --prompt and a text-to-image pipeline folder")
    return run_unconditional(args)


def run_unconditional(args) -> int | Outputs:
    """An unconditional model (bundled name or local folder): checked, loaded, sampled with
    ``--sampler`` (and the serial sampler, with ``--compare-serial``), decoded with its VAE
    when it has one."""
    from adapters.diffusion import pretrained

    try:
        info = pretrained.inspect_pretrained(args.model)
    except pretrained.PretrainedNotFoundError as err:
        return error(str(err))
    steps = args.steps or 1000
    err = check_steps(args, steps, info.num_train_timesteps)
    if err:
        return error(err)
    dtype = DTYPES[args.dtype]
    try:
        model, schedule = pretrained.load_pretrained(args.model, device=args.device, dtype=dtype)
    except pretrained.PretrainedNotFoundError as err:
        return error(str(err))
    err = check_steps(args, steps, getattr(schedule, "num_train_timesteps", None))
    if err:
        return error(err)
    if args.scheduler is not None:
        schedule, err = with_scheduler(args, info, schedule)
        if err:
            return error(err)
    solver = getattr(schedule, "solver", None)
    if args.sampler == "taa" and solver in MULTISTEP_SOLVERS:
        return error(f"--sampler taa needs a one-step solver (ddim, ddpm, euler, "
                     f"euler_ancestral); {args.model} samples with {solver}: add --scheduler "
                     "euler (or ddim on a VP model), or use --sampler quasi_newton")
    pipelined = True if args.pipelined is None else args.pipelined
    note = memory_note(args, steps, tuple(model.sample_shape), dtype, pipelined)
    if note and args.rank == 0:
        print(note, file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.num_samples, *model.sample_shape, generator=g).to(args.device, dtype)
    plan = None
    if args.sampler == "auto":  # measure this device, print the candidates and the choice
        from adapters.diffusion import plan_sampling

        with torch.inference_mode():
            plan = plan_sampling(model, schedule, x_T, steps, max_batch=args.max_batch,
                                 tol=window_tol(args),
                                 executor=args.executor)
        if args.rank == 0:  # (the table ends with the planning seconds)
            print(plan.table(), file=sys.stderr)
            print(f"auto: {plan.choice.label}, planned in {plan.planning_s:.3f} s",
                  file=sys.stderr)

    report: dict[str, Any] = {
        "model": str(args.model), "sampler": args.sampler,
        "scheduler": getattr(schedule, "solver", None), "steps": steps,
        "num_samples": args.num_samples, "seed": args.seed, "dtype": args.dtype,
        "device": args.device, "machine": platform.platform(), "torch": torch.__version__,
        "world_size": args.world,
    }
    with torch.inference_mode():
        sample, out = _sample(args, model, schedule, x_T, steps, plan, pipelined, report)
        if args.compare_serial:
            _compare_serial(args, model, schedule, x_T, steps, plan, sample, report)
        iterates = None if out is None else out.iterates
        vae_dir = info.folder / "vae"  # the resolved folder: a bundled name never means ./name
        if vae_dir.is_dir():  # a latent model: show decoded images, sample in latent space
            from diffusers import AutoencoderKL

            from adapters.diffusers import decode_latents

            vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True,
                                                low_cpu_mem_usage=False).to(args.device)
            sample = decode_latents(vae, sample)
            if out is not None:
                iterates = torch.stack([decode_latents(vae, row[:8]) for row in out.iterates])
            report["decoded_with_vae"] = str(vae_dir)

    return Outputs(report, sample, f"{args.model}: {args.sampler}, N = {steps}", out, iterates,
                   "max |change| of the final sample")


#: solvers that carry a history between steps (taa_sample refuses them)
MULTISTEP_SOLVERS = ("dpmpp_2m", "unipc")
_DIFFUSERS_SCHEDULERS = {"euler": "EulerDiscreteScheduler",
                         "euler_ancestral": "EulerAncestralDiscreteScheduler",
                         "dpmpp_2m": "DPMSolverMultistepScheduler",
                         "unipc": "UniPCMultistepScheduler"}


def with_scheduler(args, info, schedule) -> tuple[Any, str | None]:
    """``schedule`` sampling with ``--scheduler``'s solver: on a VP model ``ddim``/``ddpm``
    directly, the sigma solvers as diffusers' scheduler of that name built from the model's
    scheduler config; on a flow-matching (sigma) model the sigma solvers. Returns
    ``(schedule, None)`` or ``(None, why not)``."""
    import dataclasses

    from .schedule import VPSchedule

    name = args.scheduler
    if isinstance(schedule, VPSchedule):
        if name in VP_SCHEDULERS:
            return dataclasses.replace(schedule, solver=name), None
        import diffusers

        from adapters.diffusers import schedule_from_scheduler

        cls = getattr(diffusers, _DIFFUSERS_SCHEDULERS[name])
        try:
            return schedule_from_scheduler(cls.from_config(info.scheduler_config)), None
        except (TypeError, ValueError) as err:
            return None, f"--scheduler {name}: cannot build a {cls.__name__} for {args.model}: {err}"
    if name in SIGMA_SCHEDULERS:
        return schedule.with_solver(name), None
    return None, (f"--scheduler {name} needs a VP (DDPM-trained) model; {args.model} samples a "
                  f"{getattr(schedule, 'family', 'sigma')} schedule, which takes --scheduler "
                  f"{', '.join(SIGMA_SCHEDULERS)}")


def noise_for(args, schedule, x_T: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """``{"noise": ...}``, the per-step noise ``[N, *x_T.shape]`` of a stochastic solver
    (ddpm, euler_ancestral), drawn once from ``--seed`` so that every run of one command
    (the serial comparison too) sees the same noise; ``{}`` for a deterministic one."""
    if getattr(schedule, "solver", None) not in ("ddpm", "euler_ancestral"):
        return {}
    g = torch.Generator().manual_seed(args.seed + 1)
    return {"noise": torch.randn(steps, *x_T.shape, generator=g).to(x_T.device, x_T.dtype)}


def _sample(args, model, schedule, x_T, steps: int, plan, pipelined: bool,
            report: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """``--sampler``'s run: the sample and the sampler's output (``None`` for the serial
    sampler), its entries added to ``report``."""
    from adapters.diffusion import serial_sample, srds_sample

    t0 = time.perf_counter()
    if args.sampler == "serial":
        sample = serial_sample(model, schedule, x_T, steps, progress=args.progress,
                               **noise_for(args, schedule, x_T, steps))
        report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
        return sample, None
    if args.sampler == "srds":
        out = srds_sample(model, schedule, x_T, steps, num_blocks=args.blocks,
                          tol=args.tol, max_iters=args.max_iters, pipelined=pipelined,
                          return_iterates=True, progress=args.progress,
                          executor=args.executor, **noise_for(args, schedule, x_T, steps))
        report.update(srds_report(out, steps, pipelined, t0, "data in [-1, 1]"))
        return out.sample, out
    from adapters.diffusion import sample as sample_with

    kw: dict[str, Any] = {"tol": window_tol(args),
                          **noise_for(args, schedule, x_T, steps)}
    iterative = True
    if plan is not None:
        kw["plan"] = plan
        iterative = plan.choice.sampler != "serial"
    else:
        kw["window"] = min(args.window or 32, steps)
    if args.max_iters is not None and iterative:  # auto may pick the serial sampler
        kw["max_iters"] = args.max_iters
    if args.executor is not None:
        kw["executor"] = args.executor
    starts: list[torch.Tensor] = []
    if plan is None:  # the window's start after every call, for convergence.png
        kw.update(return_trajectory=True,
                  callback=lambda it, state, worst: starts.append(state.detach().clone()))
    out = sample_with(model, schedule, x_T, steps, sampler=args.sampler, progress=args.progress,
                      **kw)
    sample = out.sample
    if starts and out.trajectory is not None:
        report["accepted_steps"] = accepted_steps(out.trajectory, starts)
    if plan is not None and plan.choice.sampler == "serial":
        report.update(wall_s=time.perf_counter() - t0, model_calls=steps, depth=steps)
        out = None
    elif plan is not None and plan.choice.sampler == "srds":
        report.update(srds_report(out, steps, plan.choice.options["pipelined"], t0,
                                  "data in [-1, 1]"))
    else:
        report.update(window_report(out, steps, t0))
    if plan is not None:
        report.update(plan=plan.as_dict(), predicted_s=plan.choice.predicted_s,
                      planning_s=plan.planning_s)
    return sample, out


def accepted_steps(trajectory: torch.Tensor, starts: list[torch.Tensor]) -> list[int]:
    """The steps a window sampler had accepted after each call: the index of each call's
    window-start state (handed to its callback) in the final trajectory ``[N + 1, ...]``
    (accepted states are never changed again, so each is found there, at or after the
    previous one)."""
    out: list[int] = []
    lo = 0
    traj = trajectory.detach()
    for s in starts:
        d = (traj[lo:] - s.to(traj.device, traj.dtype)).abs().reshape(traj.shape[0] - lo, -1)
        lo += int(d.amax(1).argmin())
        out.append(lo)
    return out


def _compare_serial(args, model, schedule, x_T, steps: int, plan, sample: torch.Tensor,
                    report: dict[str, Any]) -> None:
    """``--compare-serial``: the serial sampler's wall clock and sample (and its own change
    with the first sample drawn alone) in ``report``."""
    from adapters.diffusion import serial_sample

    t1 = time.perf_counter()
    noise = noise_for(args, schedule, x_T, steps)
    ref = serial_sample(model, schedule, x_T, steps, progress=args.progress, **noise)
    serial_s = time.perf_counter() - t1
    alone = serial_sample(model, schedule, x_T[:1], steps, progress=args.progress,
                          **{k: v[:, :1] for k, v in noise.items()})
    if plan is not None:
        report.update(serial_predicted_s=plan.serial.predicted_s)
        print(f"auto: predicted {plan.choice.predicted_s:.2f} s ({plan.choice.label}, "
              f"planned in {plan.planning_s:.3f} s), measured {report['wall_s']:.2f} s; "
              "serial predicted "
              f"{plan.serial.predicted_s:.2f} s, measured {serial_s:.2f} s",
              file=sys.stderr)
    report.update(serial_comparison(serial_s, report["wall_s"]),
                  max_abs_diff_vs_serial=float((sample - ref).abs().max()),
                  serial_floor=float((ref[:1] - alone).abs().max()),
                  floor_note="serial_floor: the serial sampler's own change when the "
                             "first sample is drawn alone instead of in the batch")
