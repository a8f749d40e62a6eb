"""ParaDiGMS: Picard iteration over a sliding window of sampler steps (Shih et al., 2023).

The serial sampler is the recursion ``x_{j+1} = Phi_j(x_j)``. Picard iteration solves it
on a window of ``w`` steps at once: one batched model call evaluates every increment
``d_j = Phi_j(x_j) - x_j`` of the window, then ``x_{a+i+1} = x_a + sum_{l<=i} d_{a+l}``.
The window slides past every leading step whose change passed the stopping test
``||x_new - x_old||^2 / (dim * sigma_j^2) <= tol^2`` (ParaDiGMS's per-step rule, with
``sigma_j^2`` the DDPM posterior variance of step ``j``), and at least one step per
iteration (the first step of the window is exact after one evaluation). It is the peer
that SRDS is measured against in ``benchmarks/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .model import Model
from .ode import DDIMStep
from .samplers import SampleOutput, SamplerStats, _setup
from .schedule import VPSchedule


def picard_sample(
    model: Model,
    schedule: VPSchedule,
    x_T: Tensor,
    num_steps: int,
    window: int | None = None,
    tol: float = 1e-3,
    max_iters: int | None = None,
    prediction_type: str | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, float], None] | None = None,
    *,
    sampler: str = "ddim",
    noise: Tensor | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond_kwargs: Mapping[str, Any] | None = None,
    check_finite: bool = True,
    initial: Tensor | None = None,
) -> SampleOutput:
    """Sample with sliding-window Picard iteration (ParaDiGMS).

    ``model``, ``schedule``, ``x_T``, ``num_steps``, ``prediction_type``, ``eta``,
    ``generator``, ``sampler``, ``noise``, ``model_kwargs``, ``guidance_scale``,
    ``uncond_kwargs`` and ``check_finite`` are as in :func:`~adapters.diffusion.srds_sample`.

    Args:
        window: steps ``w`` evaluated per model call (``1 <= w <= num_steps``, default
            ``min(32, num_steps)``); the batch of each call is ``w * batch`` samples.
        tol: per-step tolerance (relative to the step's noise scale, see the module doc);
            ``0`` slides one step per iteration (the serial sampler, batched).
        max_iters: limit on model calls (default: ``num_steps``, which always suffices).
        callback: ``callback(iteration, window_start, max_error)`` after every iteration.
        initial: a trajectory guess ``[num_steps + 1, *x_T.shape]`` to start from (warm
            start); default: ``x_T`` everywhere.

    Returns:
        :class:`~adapters.diffusion.SampleOutput`; ``iterations`` and ``stats.depth`` are
        the number of sequential model calls, ``history`` the largest normalised error of
        each iteration, ``num_blocks`` the window.
    """
    N, denoiser, grid, noise, _ = _setup(
        model, schedule, x_T, num_steps, prediction_type, eta, generator, sampler, noise,
        model_kwargs, guidance_scale, uncond_kwargs, check_finite)
    if window is None:
        window = min(32, N)
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if not 1 <= window <= N:
        raise ValueError(f"window must be between 1 and num_steps={N}, got {window}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    max_iters = N if max_iters is None else int(max_iters)
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    stepper = DDIMStep(denoiser, grid, fine=True, noise=noise)
    dev = x_T.device
    # per-step noise scale: the DDPM posterior variance (ParaDiGMS); never below 1e-8
    a_in, a_out = grid.alpha_in, grid.alpha_out
    var = ((1 - a_out) / (1 - a_in) * (1 - a_in / a_out)).clamp(min=1e-8).to(dev)
    dim = x_T[0].numel()

    if initial is None:
        traj = x_T.unsqueeze(0).repeat(N + 1, *([1] * x_T.dim()))
    else:
        if tuple(initial.shape) != (N + 1, *x_T.shape):
            raise ValueError(f"initial must have shape {(N + 1, *x_T.shape)}, "
                             f"got {tuple(initial.shape)}")
        traj = initial.to(device=dev, dtype=x_T.dtype).clone()
        traj[0] = x_T
    ones = torch.ones(window, dtype=torch.float64, device=dev)
    history: list[float] = []
    a, it = 0, 0
    tol2 = tol * tol
    while a < N and it < max_iters:
        e = min(a + window, N)
        n = e - a
        pos = torch.arange(a, e, dtype=torch.float64, device=dev)
        y = traj[a:e]
        d = stepper.step(None, pos, y, ones[:n]) - y
        new = traj[a] + torch.cumsum(d, dim=0)
        diff = (new - traj[a + 1: e + 1]).double().reshape(n, x_T.shape[0], -1)
        # normalised error per step, worst sample of the batch
        err = diff.pow(2).sum(-1).amax(-1) / (dim * var[a:e])
        traj[a + 1: e + 1] = new
        it += 1
        bad = (err > tol2).nonzero()
        stride = n if bad.numel() == 0 else max(1, int(bad[0]))
        worst = math.sqrt(float(err.max()))
        history.append(worst)
        if check_finite and not bool(torch.isfinite(new).all()):
            raise FloatingPointError(f"non-finite state in the Picard window starting at step "
                                     f"{a} (iteration {it})")
        new_a = a + stride
        new_e = min(new_a + window, N)
        if new_e > e and initial is None:  # new steps start from the window's last value
            traj[e + 1: new_e + 1] = traj[e]
        a = new_a
        if callback is not None:
            callback(it, traj[a], worst)
    converged = a >= N
    stats = SamplerStats(denoiser.calls, denoiser.rows, it)
    return SampleOutput(traj[N].clone(), it, converged, history, stats, float(tol), window)
