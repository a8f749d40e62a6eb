"""Variance-preserving noise schedules and the timestep grids of samplers.

A VP schedule is the sequence ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)`` over the
training timesteps ``t = 0 .. T-1``; a noisy sample is ``x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps``. Everything is computed in float64 and cast to the state's
dtype where it meets the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class VPSchedule:
    """A discrete variance-preserving schedule plus the sampler conventions of diffusers.

    Attributes:
        alphas_cumprod: ``alpha_bar`` over the ``T`` training timesteps, float64 ``[T]``.
        prediction_type: what the model predicts: ``"epsilon"``, ``"sample"`` (x0) or
            ``"v_prediction"``.
        timestep_spacing: how ``N`` sampling steps pick training timesteps: ``"leading"``
            (``k * (T // N) + steps_offset``), ``"trailing"`` or ``"linspace"``, as in
            diffusers' schedulers.
        steps_offset: added to ``leading`` timesteps (diffusers' ``steps_offset``).
        final_alpha_cumprod: ``alpha_bar`` after the last step: 1.0 (diffusers'
            ``set_alpha_to_one=True``) or ``alpha_bar[0]``.
        clip_sample: clamp the predicted x0 to ``[-clip_sample_range, clip_sample_range]``.
        clip_sample_range: the clamp bound.
    """

    alphas_cumprod: Tensor
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    final_alpha_cumprod: float = 1.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod).detach().to("cpu", torch.float64).flatten()
        if ac.numel() < 1:
            raise ValueError("alphas_cumprod must hold at least one timestep")
        if not bool(((ac > 0) & (ac < 1) | (ac == 1) & (torch.arange(ac.numel()) == 0)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if not bool((torch.diff(ac) <= 0).all()):
            raise ValueError("alphas_cumprod must be non-increasing (betas in [0, 1))")
        object.__setattr__(self, "alphas_cumprod", ac)
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}"
            )
        if not 0 < self.final_alpha_cumprod <= 1:
            raise ValueError(f"final_alpha_cumprod must be in (0, 1], got {self.final_alpha_cumprod}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas: Tensor | np.ndarray | list, **conventions) -> VPSchedule:
        """From per-step betas ``[T]``, each in ``(0, 1)``."""
        b = torch.as_tensor(np.asarray(betas, dtype=np.float64)
                            if not isinstance(betas, Tensor) else betas.detach().cpu()
                            ).to(torch.float64).flatten()
        if b.numel() < 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must all lie in (0, 1)")
        return cls(torch.cumprod(1.0 - b, 0), **conventions)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | np.ndarray | list,
                            **conventions) -> VPSchedule:
        """From ``alpha_bar`` ``[T]`` directly (non-increasing, in ``(0, 1]``)."""
        return cls(torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64)
                                   if not isinstance(alphas_cumprod, Tensor)
                                   else alphas_cumprod.detach().cpu()), **conventions)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02, **conventions) -> VPSchedule:
        """Betas linear in ``t`` (DDPM's schedule; diffusers ``"linear"``)."""
        T = _check_T(num_train_timesteps)
        return cls.from_betas(np.linspace(beta_start, beta_end, T), **conventions)

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012, **conventions) -> VPSchedule:
        """Square roots of betas linear in ``t`` (latent diffusion; ``"scaled_linear"``)."""
        T = _check_T(num_train_timesteps)
        return cls.from_betas(np.linspace(beta_start**0.5, beta_end**0.5, T) ** 2, **conventions)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, max_beta: float = 0.999,
               **conventions) -> VPSchedule:
        """The cosine schedule of Nichol & Dhariwal (diffusers ``"squaredcos_cap_v2"``)."""
        T = _check_T(num_train_timesteps)

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]
        return cls.from_betas(betas, **conventions)

    def with_conventions(self, **conventions) -> VPSchedule:
        """A copy with other sampler conventions (``prediction_type``, spacing, ...)."""
        return replace(self, **conventions)

    # ------------------------------------------------------------------ grids
    @property
    def num_train_timesteps(self) -> int:
        """``T``, the number of training timesteps (the length of ``alphas_cumprod``)."""
        return self.alphas_cumprod.numel()

    def timesteps(self, num_steps: int) -> Tensor:
        """The ``num_steps`` training timesteps a sampler visits, descending, int64 ``[N]``
        (diffusers' ``set_timesteps``)."""
        T = self.num_train_timesteps
        N = check_num_steps(num_steps, T)
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + self.steps_offset
        else:
            ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(
                f"timestep_spacing={self.timestep_spacing!r} with steps_offset={self.steps_offset} "
                f"gives timesteps {int(ts.max())}..{int(ts.min())} for num_steps={N}, outside the "
                f"training range 0..{T - 1}; use timestep_spacing='trailing' or a smaller "
                "num_steps"
            )
        return torch.from_numpy(ts.copy())

    def __repr__(self) -> str:
        return (f"VPSchedule(T={self.num_train_timesteps}, prediction_type={self.prediction_type!r}, "
                f"timestep_spacing={self.timestep_spacing!r}, steps_offset={self.steps_offset}, "
                f"final_alpha_cumprod={self.final_alpha_cumprod:g}, clip_sample={self.clip_sample})")


def _check_T(T: object) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"num_train_timesteps must be an int >= 1, got {T!r}")
    return T


def check_num_steps(num_steps: object, num_train_timesteps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be between 1 and the schedule's {num_train_timesteps} training "
            f"timesteps, got {num_steps}"
        )
    return num_steps


@dataclass
class SamplingGrid:
    """The per-step coefficients of an ``N``-step sampler on a schedule (all float64).

    Step ``j`` evaluates the model at ``timesteps[j]`` (noise level ``alpha_in[j]``) and
    moves the state to level ``alpha_out[j]`` by
    ``x <- c_x0[j] * x0 + c_eps[j] * eps + c_x[j] * x + sigma[j] * z_j``
    with the prediction ``(x0, eps)`` and the step's noise ``z_j``. ``kind="ddim"`` is
    DDIM with ``eta`` (eta = 0: the probability-flow ODE; eta = 1: ancestral);
    ``kind="ddpm"`` is diffusers' DDPMScheduler step (fixed_small variance).
    """

    timesteps: Tensor
    alpha_in: Tensor
    alpha_out: Tensor
    c_x0: Tensor
    c_eps: Tensor
    c_x: Tensor
    sigma: Tensor

    @property
    def num_steps(self) -> int:
        """``N``, the sampler's steps (the length of every per-step tensor)."""
        return self.timesteps.numel()

    @property
    def stochastic(self) -> bool:
        """Whether any step adds noise (``sigma > 0``: DDIM with ``eta > 0`` or DDPM)."""
        return bool((self.sigma > 0).any())

    @classmethod
    def build(cls, schedule: VPSchedule, num_steps: int, kind: str = "ddim",
              eta: float = 0.0) -> SamplingGrid:
        """The grid of a ``num_steps``-step sampler on ``schedule``: ``kind="ddim"``
        (with noise ``eta >= 0``) or ``"ddpm"``; every per-step tensor is float64 ``[N]``."""
        if kind not in ("ddim", "ddpm"):
            raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")
        if not (isinstance(eta, (int, float)) and 0.0 <= eta and math.isfinite(eta)):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        T = schedule.num_train_timesteps
        ts = schedule.timesteps(num_steps)
        N = ts.numel()
        if kind == "ddim":  # diffusers' DDIMScheduler: prev = t - T // N
            prev = ts - T // N
        else:  # DDPMScheduler: the next timestep of the list, -1 after the last
            prev = torch.cat([ts[1:], torch.tensor([-1])])
        ac = schedule.alphas_cumprod
        a_in = ac[ts.clamp(0, T - 1)]
        final = 1.0 if kind == "ddpm" else schedule.final_alpha_cumprod
        a_out = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(a_in, final))
        zero = torch.zeros_like(a_in)
        if kind == "ddim":
            var = (1 - a_out) / (1 - a_in) * (1 - a_in / a_out)
            sigma = eta * var.clamp(min=0).sqrt()
            c_x0, c_eps, c_x = a_out.sqrt(), (1 - a_out - sigma**2).clamp(min=0).sqrt(), zero
        else:
            alpha_t = a_in / a_out
            beta_t = 1 - alpha_t
            c_x0 = a_out.sqrt() * beta_t / (1 - a_in)
            c_x = alpha_t.sqrt() * (1 - a_out) / (1 - a_in)
            c_eps = zero
            var = ((1 - a_out) / (1 - a_in) * beta_t).clamp(min=1e-20)
            sigma = torch.where(ts > 0, var.sqrt(), zero)
        return cls(ts, a_in, a_out, c_x0, c_eps, c_x, sigma)
