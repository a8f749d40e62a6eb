"""The samplers' common inputs, checked once: ``x_T``, the model and its options wrapped
as a :class:`~adapters.diffusion.Denoiser`, the grid, the per-step noise, a warm start, and
the first state in the precision the run works at (:mod:`.precision`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import pint

from .grid import SamplingGrid
from .model import Denoiser, Model
from .precision import network_dtype, state_dtype
from .schedule import SigmaSchedule, VPSchedule, check_num_steps

Schedule = VPSchedule | SigmaSchedule


def check_x(x_T: object, model: Model) -> Tensor:
    """``x_T`` checked: a finite floating-point tensor ``[batch, *sample]`` (the model's
    ``sample_shape`` where it has one); a ``TypeError``/``ValueError`` naming it otherwise."""
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor [batch, *sample], got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"x_T must be floating point, got {x_T.dtype}")
    expected = getattr(model, "sample_shape", None)
    if expected is not None and tuple(x_T.shape[1:]) != tuple(expected):
        raise ValueError(
            f"x_T must have shape [batch, {', '.join(map(str, expected))}] for this model, "
            f"got {tuple(x_T.shape)}"
        )
    if x_T.dim() < 2:
        raise ValueError(f"x_T must be [batch, *sample] (at least 2-D), got {tuple(x_T.shape)}")
    if x_T.numel() == 0:
        raise ValueError(f"x_T must hold at least one sample, got shape {tuple(x_T.shape)}")
    check_finite_input("x_T", x_T)
    return x_T


def initial_state(grid: SamplingGrid, x_T: Tensor) -> Tensor:
    """The sampler's first state: ``x_T * init_noise_sigma``, with zeroed history slots
    ``[batch, S, *sample]`` for multistep solvers."""
    x = x_T if grid.init_noise_sigma == 1.0 else x_T * grid.init_noise_sigma
    if grid.num_slots == 1:
        return x
    return torch.stack([x] + [torch.zeros_like(x)] * (grid.num_slots - 1), 1)


def sample_of(grid: SamplingGrid, state: Tensor) -> Tensor:
    """The sample ``[batch, *sample]`` held by one state (slot 0 of a multistep state)."""
    return state if grid.num_slots == 1 else state[:, 0]


def check_finite_input(name: str, value: Tensor, dtype: torch.dtype | None = None) -> None:
    """``value`` must hold finite numbers (``dtype``: also once converted to ``dtype``, the
    network's, which a float32 warm start can overflow in a float16 run)."""
    if value.is_meta:
        raise ValueError(f"{name} is a meta tensor, which holds no values; give it on a real "
                         "device (cpu, cuda, ...)")
    if not bool(torch.isfinite(value if dtype is None else value.to(dtype)).all()):
        if dtype is None:
            raise ValueError(f"{name} must be finite (it contains NaN or Inf)")
        raise ValueError(f"{name} must be finite in x_T's dtype {dtype}: converted to it and "
                         "anchored at x_T, its values overflow (Inf or NaN)")


#: the keywords that describe the model and its conditioning (see :class:`Denoiser`); every
#: sampler takes them as ``**model_options``, or wrapped once: ``model = Denoiser(net, ...)``
MODEL_OPTIONS = ("prediction_type", "model_kwargs", "guidance_scale", "uncond_kwargs",
                 "check_finite")


def denoiser_for(model: Model | Denoiser, schedule: Schedule,
                 model_options: Mapping[str, Any],
                 input_dtype: torch.dtype | None = None) -> Denoiser:
    """The run's :class:`Denoiser`: ``model`` wrapped with ``model_options``, or a
    :class:`Denoiser` given as ``model`` bound to ``schedule`` (and the network's
    ``input_dtype``, see :mod:`.precision`)."""
    unknown = sorted(set(model_options) - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the model options are "
                        f"{', '.join(MODEL_OPTIONS)}")
    if isinstance(model, Denoiser):
        if model_options:
            raise ValueError(f"model is a Denoiser, which holds the model options: pass "
                             f"{sorted(model_options)} to Denoiser(...), not to the sampler")
        return model.bind(schedule, input_dtype)
    return Denoiser(model, **model_options).bind(schedule, input_dtype)


def prepare(model, schedule, x_T, num_steps, eta, generator, sampler, noise, model_options):
    """What every sampler starts from, its common arguments checked: ``(N, denoiser, grid,
    noise, problem)`` with ``noise`` drawn (``[N, *x_T.shape]``) for a stochastic grid and
    ``problem.y0`` the first state (:func:`initial_state`).

    The precision policy (:mod:`.precision`): ``denoiser.input_dtype`` is the network's
    dtype; the state (``problem.y0``, ``noise``) is in :func:`~.precision.state_dtype` of
    it, float32 for a half precision network."""
    if not isinstance(schedule, (VPSchedule, SigmaSchedule)):
        raise TypeError("schedule must be a VPSchedule or SigmaSchedule (see "
                        f"adapters.diffusers.schedule_from_scheduler), got {type(schedule).__name__}")
    x_T = check_x(x_T, model)
    N = check_num_steps(num_steps, schedule.max_steps)
    if sampler is not None and not isinstance(sampler, str):
        raise TypeError(f"sampler must be a solver name, got {type(sampler).__name__}")
    grid = SamplingGrid.build(schedule, N, sampler, eta)
    network = network_dtype(model, x_T.dtype)
    work = state_dtype(network)
    denoiser = denoiser_for(model, schedule, model_options, network)
    if grid.stochastic:
        if noise is None:
            noise = torch.stack([
                torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype,
                            device=generator.device if generator is not None else x_T.device)
                for _ in range(N)
            ]).to(x_T.device)
        elif not isinstance(noise, Tensor) or tuple(noise.shape) != (N, *x_T.shape):
            raise ValueError(f"noise must have shape {(N, *x_T.shape)}, got "
                             f"{tuple(getattr(noise, 'shape', ())) or type(noise).__name__}")
        else:
            check_finite_input("noise", noise)
        noise = noise.to(work)
    elif noise is not None:
        raise ValueError(f"noise is given, but the {grid.solver} sampler here is deterministic "
                         "(eta=0); pass eta > 0, sampler='ddpm' or an ancestral solver")
    problem = pint.ODEProblem(None, initial_state(grid, x_T.to(work)), (0.0, float(N)))
    return N, denoiser, grid, noise, problem


def check_callback(callback: object) -> None:
    """``callback`` is ``None`` or callable (a ``TypeError`` otherwise)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")


def check_initial(initial: object, N: int, y0: Tensor) -> None:
    """A warm start ``initial`` has the trajectory's shape ``[N + 1, *y0.shape]`` and finite
    values."""
    if not isinstance(initial, Tensor) or tuple(initial.shape) != (N + 1, *y0.shape):
        raise ValueError(f"initial must have shape {(N + 1, *y0.shape)}, "
                         f"got {tuple(getattr(initial, 'shape', ())) or type(initial).__name__}")
    check_finite_input("initial", initial)
