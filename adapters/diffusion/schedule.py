"""Noise schedules: where a sampler's grid puts its noise levels, for every model family.

Every family writes a noisy sample as ``x = alpha x0 + sigma eps``:

- **variance-preserving** (DDPM, SD 1.x/2.x, SDXL): :class:`VPSchedule` is the sequence
  ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)`` over the training timesteps ``t = 0 .. T-1``
  with ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)`` (DDIM/DDPM grids);
- **rectified flow / flow matching** (SD3, Flux, Wan): ``alpha = 1 - s``, ``sigma = s``;
- **variance-exploding / EDM**: ``alpha = 1``, ``sigma = s``.

:class:`SigmaSchedule` describes the last two, and VP models sampled on a grid of
k-diffusion sigmas ``s = sqrt((1 - alpha_bar) / alpha_bar)`` (Euler, DPM-Solver++, UniPC in
diffusers), by the levels ``s`` of its grid. Everything is float64 and cast to the state's
dtype where it meets the state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
FAMILIES = ("vp", "flow", "ve")
SIGMA_SOLVERS = ("euler", "euler_ancestral", "dpmpp_2m", "unipc")
VP_SOLVERS = ("ddim", "ddpm")
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
        solver: the default solver: ``"ddim"`` (diffusers' DDIMScheduler) or ``"ddpm"``
            (DDPMScheduler's ancestral step); a bridged scheduler sets its own.
        prev_timestep: where a DDIM step lands: ``"next"``, the next timestep of the grid
            (right for every spacing), or ``"stride"``, ``t - T // N`` as diffusers'
            DDIMScheduler computes it (which a bridged DDIMScheduler keeps, to equal its
            loop): with ``"trailing"`` or ``"linspace"`` spacing and ``N`` not dividing
            ``T`` the step then lands beside the next timestep and the samples' distribution
            is off (diffusers issue 12633; a warning says so).

    ``alphas_cumprod`` may end at 0 (zero terminal SNR, diffusers'
    ``rescale_betas_zero_snr=True``); a grid that starts there needs a network that
    predicts ``"v_prediction"`` or ``"sample"`` (noise alone does not give ``x0``).
    """

    alphas_cumprod: Tensor
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    final_alpha_cumprod: float = 1.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    solver: str = "ddim"
    prev_timestep: str = "next"

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod).detach().to("cpu", torch.float64).flatten()
        if ac.numel() < 1:
            raise ValueError("alphas_cumprod must hold at least one timestep")
        first, last = torch.arange(ac.numel()) == 0, torch.arange(ac.numel()) == ac.numel() - 1
        if not bool(((ac > 0) & (ac < 1) | (ac == 1) & first | (ac == 0) & last & ~first).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1] (the last one may be 0: zero "
                             "terminal SNR)")
        if not bool((torch.diff(ac) <= 0).all()):
            raise ValueError("alphas_cumprod must be non-increasing (betas in [0, 1))")
        object.__setattr__(self, "alphas_cumprod", ac)
        if self.prediction_type not in VP_PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {VP_PREDICTION_TYPES}, got "
                f"{self.prediction_type!r}"
            )
        if self.clip_sample and not (isinstance(self.clip_sample_range, (int, float))
                                     and math.isfinite(self.clip_sample_range)
                                     and self.clip_sample_range > 0):
            raise ValueError("clip_sample_range must be a finite number > 0 with clip_sample=True,"
                             f" got {self.clip_sample_range!r}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}"
            )
        if not 0 < self.final_alpha_cumprod <= 1:
            raise ValueError(f"final_alpha_cumprod must be in (0, 1], got {self.final_alpha_cumprod}")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) \
                or self.steps_offset < 0:
            raise ValueError(f"steps_offset must be an int >= 0, got {self.steps_offset!r}")
        if self.prev_timestep not in ("next", "stride"):
            raise ValueError(f"prev_timestep must be 'next' or 'stride', got {self.prev_timestep!r}")
        if self.solver not in VP_SOLVERS:
            raise ValueError(f"solver must be one of {VP_SOLVERS} for a VPSchedule, got "
                             f"{self.solver!r}")

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

    @property
    def max_steps(self) -> int:
        """The most sampling steps the schedule allows (``T``)."""
        return self.num_train_timesteps

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


#: each sigma solver's options (diffusers' names) and their values: a tuple of the allowed
#: values, or a description checked by :func:`_valid_option`
SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "euler": {},
    "euler_ancestral": {},
    "dpmpp_2m": {"solver_order": (1, 2), "lower_order_final": (True, False),
                 "euler_at_final": (True, False), "final_sigmas_type": ("zero", "sigma_min"),
                 "solver_type": ("midpoint", "heun")},
    "unipc": {"solver_order": (1, 2), "lower_order_final": (True, False),
              "solver_type": ("bh1", "bh2"),
              "disable_corrector": "a list of step indices (ints >= 0)"},
}


def _valid_option(solver: str, key: str, value: Any) -> bool:
    allowed = SOLVER_OPTIONS[solver].get(key)
    if allowed is None:
        return False
    if key == "disable_corrector":
        return isinstance(value, (list, tuple, range)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    # type-strict: True is not the order 1, nor 1 the flag True
    return any(value == a and type(value) is type(a) for a in allowed)


def _check_option(solver: str, key: str, value: Any) -> None:
    known = SOLVER_OPTIONS[solver]
    if key not in known:
        raise ValueError(f"unknown option {key!r} for solver {solver!r}; its options are "
                         f"{sorted(known) or 'none'}")
    if not _valid_option(solver, key, value):
        raise ValueError(f"{key} must be one of {known[key]} for solver {solver!r}, got {value!r}"
                         if isinstance(known[key], tuple)
                         else f"{key} must be {known[key]} for solver {solver!r}, got {value!r}")


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


@dataclass(frozen=True, eq=False)
class SigmaSchedule:
    """A schedule given by the noise levels ``s`` of its sampler grid, for any family.

    Args:
        levels_fn: ``levels_fn(N) -> (timesteps [N], sigmas [N + 1], init_noise_sigma)``:
            the model's timestep value at each step (what the network is called with), the
            grid's levels ``s`` (decreasing, the last one usually 0) and the factor the
            initial standard-normal noise is multiplied by.
        family: how the **network** sees a noisy sample at level ``s``: ``"vp"``
            (``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s alpha``: a variance-preserving model
            on k-diffusion sigmas), ``"flow"`` (``alpha = 1 - s``, ``sigma = s``) or
            ``"ve"`` (``alpha = 1``, ``sigma = s``).
        prediction_type: what the network returns: ``"epsilon"``, ``"sample"``,
            ``"v_prediction"`` or ``"flow_prediction"`` (the velocity ``eps - x0``).
        solver: the default solver: ``"euler"``, ``"euler_ancestral"``, ``"dpmpp_2m"``
            or ``"unipc"``. Euler-type solvers on a ``"vp"`` family run in the VE state
            ``x / alpha`` with the model input scaled back (diffusers' Euler schedulers);
            the others run in the network's own parameterization.
        solver_options: the solver's settings, as diffusers names them
            (:data:`SOLVER_OPTIONS` lists each solver's and their values); an unknown
            option or value is an error.
        max_steps: the most sampling steps allowed.
        timestep_scale: for the analytic references: the model's timestep is
            ``s * timestep_scale`` (``"flow"``: ``num_train_timesteps``; ``"ve"``: 1).
        name: shown in ``repr``.
        start_scale: ``start_scale(solver, sigmas) -> float``: the factor ``x_T`` is
            multiplied by for ``solver`` on the levels ``sigmas`` (a diffusers scheduler's
            ``init_noise_sigma`` convention). Default: ``levels_fn``'s factor where the
            solver keeps the state of the schedule's own solver, else that state's scale
            ``sqrt(alpha^2 + sigma^2)`` at the first level (a ``"vp"`` family switching
            between the VE state of Euler and the VP state of DPM-Solver++/UniPC).
        init_solver: the solver whose ``init_noise_sigma`` ``levels_fn`` returns (default:
            ``solver``; :meth:`with_solver` keeps it).
    """

    levels_fn: Callable[[int], tuple[Tensor, Tensor, float]]
    family: str
    prediction_type: str
    solver: str = "euler"
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    max_steps: int = 1000
    timestep_scale: float | None = None
    name: str = "custom"
    start_scale: Callable[[str, Tensor], float] | None = None
    init_solver: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.levels_fn):
            raise TypeError("levels_fn must be callable levels_fn(num_steps)")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got "
                             f"{self.prediction_type!r}")
        if self.solver not in SIGMA_SOLVERS:
            raise ValueError(f"solver must be one of {SIGMA_SOLVERS}, got {self.solver!r}")
        if not isinstance(self.solver_options, Mapping):
            raise TypeError(f"solver_options must be a mapping, got "
                            f"{type(self.solver_options).__name__}")
        options = dict(self.solver_options)
        for key, value in options.items():
            _check_option(self.solver, key, value)
        if "disable_corrector" in options:
            options["disable_corrector"] = tuple(options["disable_corrector"])
        object.__setattr__(self, "solver_options", options)
        if self.init_solver is None:
            object.__setattr__(self, "init_solver", self.solver)
        elif self.init_solver not in SIGMA_SOLVERS:
            raise ValueError(f"init_solver must be one of {SIGMA_SOLVERS}, got {self.init_solver!r}")
        if self.start_scale is not None and not callable(self.start_scale):
            raise TypeError("start_scale must be callable start_scale(solver, sigmas)")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def flow_matching(cls, num_train_timesteps: int = 1000, shift: float = 1.0,
                      solver: str = "euler", **options: Any) -> SigmaSchedule:
        """Rectified flow as diffusers' ``FlowMatchEulerDiscreteScheduler`` with a static
        ``shift`` (SD3: 3.0): ``N`` levels ``linspace(1, s_min, N)`` shifted by
        ``shift s / (1 + (shift - 1) s)``, then 0; timesteps ``s * num_train_timesteps``."""
        T = _check_T(num_train_timesteps)
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a finite number > 0, got {shift!r}")

        def shifted(s: np.ndarray) -> np.ndarray:
            return shift * s / (1 + (shift - 1) * s)

        s_min = float(shifted(np.array([1.0 / T], dtype=np.float32))[0])

        def levels(N: int) -> tuple[Tensor, Tensor, float]:
            ts = np.linspace(T * 1.0, s_min * T, N, dtype=np.float32)
            sig = shifted((ts / T).astype(np.float32)).astype(np.float32)
            timesteps = torch.from_numpy(sig * T)
            sigmas = torch.cat([torch.from_numpy(sig).double(), torch.zeros(1, dtype=torch.float64)])
            return timesteps, sigmas, 1.0

        return cls(levels, "flow", "flow_prediction", solver, options, max_steps=10**6,
                   timestep_scale=float(T), name=f"flow_matching(shift={shift:g})")

    @classmethod
    def edm(cls, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
            prediction_type: str = "sample", solver: str = "euler",
            **options: Any) -> SigmaSchedule:
        """Variance-exploding levels of Karras et al. (EDM): ``N`` levels
        ``(s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, then 0; the model
        is called with ``s`` itself as its timestep and sees ``x = x0 + s eps``."""
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")

        def levels(N: int) -> tuple[Tensor, Tensor, float]:
            ramp = torch.linspace(0, 1, N, dtype=torch.float64)
            lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
            sig = (hi + ramp * (lo - hi)) ** rho
            return sig.clone(), torch.cat([sig, torch.zeros(1, dtype=torch.float64)]), sigma_max

        return cls(levels, "ve", prediction_type, solver, options, max_steps=10**6,
                   timestep_scale=1.0, name=f"edm(sigma_min={sigma_min:g}, sigma_max={sigma_max:g})")

    def with_solver(self, solver: str, **options: Any) -> SigmaSchedule:
        """A copy that samples with another solver and its ``options``
        (:data:`SOLVER_OPTIONS`): options of the current solver that the new one shares
        with the same meaning are kept, the others dropped; an unknown option or value in
        ``options`` is an error listing the valid ones."""
        if solver not in SIGMA_SOLVERS:
            raise ValueError(f"solver must be one of {SIGMA_SOLVERS}, got {solver!r}")
        kept = {k: v for k, v in self.solver_options.items() if _valid_option(solver, k, v)}
        return replace(self, solver=solver, solver_options={**kept, **options})

    # ------------------------------------------------------------------ levels
    def levels(self, num_steps: int) -> tuple[Tensor, Tensor, float]:
        """``(timesteps [N], sigmas [N + 1] float64, init_noise_sigma)`` of an ``N``-step
        grid, checked (levels finite, >= 0, non-increasing, the first > 0)."""
        N = check_num_steps(num_steps, self.max_steps)
        timesteps, sigmas, init = self.levels_fn(N)
        timesteps = torch.as_tensor(timesteps).flatten()
        sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
        if timesteps.numel() != N or sigmas.numel() != N + 1:
            raise ValueError(f"{self.name}: levels_fn({N}) gave {timesteps.numel()} timesteps and "
                             f"{sigmas.numel()} levels, expected {N} and {N + 1}")
        if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()) \
                or not sigmas[0] > 0 or bool((torch.diff(sigmas) > 0).any()):
            raise ValueError(f"{self.name}: the grid's levels must be finite, >= 0 and "
                             f"non-increasing from a level > 0, got {sigmas.tolist()}")
        return timesteps, sigmas, float(init)

    def init_noise_sigma(self, solver: str, sigmas: Tensor, init: float) -> float:
        """The factor ``x_T`` is multiplied by for ``solver`` on the levels ``sigmas``,
        where ``levels_fn`` gave ``init`` for the schedule's own solver (see
        ``start_scale``)."""
        if self.start_scale is not None:
            return float(self.start_scale(solver, sigmas))
        if self._ve_state(solver) == self._ve_state(self.init_solver):
            return float(init)
        a, s = self.state_alpha_sigma(sigmas[:1], solver)
        return float((a**2 + s**2).sqrt())

    def _ve_state(self, solver: str) -> bool:
        return self.family == "vp" and solver in ("euler", "euler_ancestral")

    def model_alpha_sigma(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` of the network's noisy input at levels ``s`` (float64)."""
        s = s.to(torch.float64)
        if self.family == "vp":
            a = 1 / (1 + s**2).sqrt()
            return a, s * a
        if self.family == "flow":
            return 1 - s, s.clone()
        return torch.ones_like(s), s.clone()

    def state_alpha_sigma(self, s: Tensor, solver: str) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` of the sampler's state at levels ``s``: the VE state for
        Euler-type solvers on a ``"vp"`` family, the network's own otherwise."""
        if self._ve_state(solver):
            return torch.ones_like(s, dtype=torch.float64), s.to(torch.float64)
        return self.model_alpha_sigma(s)

    def timestep_levels(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The network's ``(alpha, sigma)`` at its timestep values ``t`` (float64; needs
        ``timestep_scale``): the analytic references use it."""
        if self.timestep_scale is None:
            raise ValueError(f"{self.name} maps levels to timesteps without a closed form "
                             "(timestep_scale is None)")
        return self.model_alpha_sigma(t.to(torch.float64) / self.timestep_scale)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.solver_options.items())
        return (f"SigmaSchedule({self.name}, family={self.family!r}, prediction_type="
                f"{self.prediction_type!r}, solver={self.solver!r}{opts})")
