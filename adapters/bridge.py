"""The diffusers bridge's core: diffusers networks as pint models and diffusers schedulers
as pint schedules (:func:`from_diffusers`, :func:`schedule_from_scheduler`,
:class:`DiffusersModel`, :func:`decode_latents`).

``from_diffusers(net, scheduler)`` keeps the scheduler's grid, prediction type and solver
(DDIM/DDPM, flow-matching Euler, Euler (Karras), Euler ancestral, DPM-Solver++ 2M, UniPC),
so that ``serial_sample(model, schedule, x, num_steps=K)`` reproduces diffusers' own loop
after ``scheduler.set_timesteps(K)``. Import these names from :mod:`adapters.diffusers`
(the public module, which also re-exports the pipeline samplers); the pipeline package
:mod:`adapters.pipelines` imports this module, never :mod:`adapters.diffusers`, so nothing
imports in a circle.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from adapters.diffusion.schedule import SigmaSchedule, VPSchedule

SUPPORTED_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
)
#: the network classes and how each is called: ``"unet"``: ``net(x, t)``; ``"sd3"``:
#: ``net(hidden_states=x, timestep=t)``; ``"flux"``: as SD3 with ``timestep = t / 1000``
#: (FluxPipeline's convention; ``x`` holds packed latents)
SUPPORTED_MODELS = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet",
                    "SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}


class DiffusersModel(torch.nn.Module):
    """A diffusers network as a pint model: ``model(x, t, **kwargs) -> tensor``.

    ``x``: ``[R, *sample]`` (``[R, C, H, W]`` for UNets and SD3; packed latents
    ``[R, tokens, C * 4]`` for Flux); ``t``: the scheduler's timestep values ``[R]``
    (int64 for DDIM/DDPM grids, floats for flow matching and Karras grids), passed as the
    pipeline passes them (Flux: divided by 1000). Keyword arguments
    (``encoder_hidden_states``, ``pooled_projections``, ``guidance``, ``img_ids``, ...) go
    to the network unchanged. ``sample_shape`` is ``(C, H, W)`` from the config where it
    fixes one (UNets), else ``None``.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        name = type(net).__name__
        if name not in SUPPORTED_MODELS:
            raise TypeError(f"model must be one of {sorted(SUPPORTED_MODELS)}, got {name}; any "
                            "other network works as a callable model(x, t, **kwargs)")
        self.net, self.kind = net, SUPPORTED_MODELS[name]
        cfg = net.config
        if self.kind == "unet" and getattr(cfg, "sample_size", None) is not None:
            size = cfg.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.sample_shape = (cfg.in_channels, *size)
        else:
            self.sample_shape = None

    @property
    def unet(self) -> torch.nn.Module:
        """The wrapped network (named ``unet`` before transformers were supported)."""
        return self.net

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's parameters."""
        return next(self.net.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters."""
        return next(self.net.parameters()).device

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        """The network's raw output for ``x [R, *sample]`` at timesteps ``t [R]``, shape of
        ``x`` (noise, x0, v or flow velocity, as the schedule's ``prediction_type`` says)."""
        if self.kind == "unet":
            return self.net(x, t, return_dict=False, **kwargs)[0]
        if self.kind == "flux":
            t = t / 1000
        return self.net(hidden_states=x, timestep=t, return_dict=False, **kwargs)[0]


def _require(cfg: Any, name: str, key: str, ok: Any, supported: str) -> None:
    value = getattr(cfg, key, ok)
    if (value not in ok) if isinstance(ok, tuple) else (value != ok):
        raise ValueError(f"{name} with {key}={value!r} is not supported; supported: {supported}")


def schedule_from_scheduler(scheduler: Any, **set_timesteps_kwargs: Any
                            ) -> VPSchedule | SigmaSchedule:
    """The pint schedule of a diffusers scheduler: its grid and its solver.

    ``serial_sample(model, schedule, x_T, N)`` then equals diffusers' loop
    ``scheduler.set_timesteps(N, **set_timesteps_kwargs); x = x_T * init_noise_sigma;
    for t in timesteps: x = scheduler.step(model(scale_model_input(x, t), t), t, x)``.

    Supported: ``DDIMScheduler`` / ``DDPMScheduler`` (a :class:`VPSchedule`);
    ``FlowMatchEulerDiscreteScheduler`` (static ``shift``; dynamic shifting needs
    ``mu=`` as Flux passes it), ``EulerDiscreteScheduler`` (every spacing, Karras /
    exponential / beta sigmas), ``EulerAncestralDiscreteScheduler`` (its noise drawn up
    front), ``DPMSolverMultistepScheduler`` (``dpmsolver++``, orders 1-2, midpoint/heun,
    ``lower_order_final``, ``euler_at_final``, both ``final_sigmas_type``, flow sigmas)
    and ``UniPCMultistepScheduler`` (``bh1``/``bh2``, orders 1-2, its corrector,
    ``disable_corrector``, flow sigmas): a :class:`SigmaSchedule` whose levels come from a
    private copy of ``scheduler`` (``set_timesteps`` is called on the copy for each ``N``;
    a callable keyword value is called with ``N`` first, e.g.
    ``sigmas=lambda n: np.linspace(1, 1 / n, n)`` as FluxPipeline passes them).

    Raises:
        TypeError: a scheduler class not listed.
        ValueError: an option pint does not reproduce (thresholding, SDE variants,
            stochastic flow sampling, ...), naming the supported ones; dynamic shifting
            without ``mu``.
    """
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise TypeError(
            f"scheduler must be one of {SUPPORTED_SCHEDULERS} (the schedulers whose steps pint "
            f"reproduces), got {name}"
        )
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        raise ValueError(f"{name} with thresholding=True (dynamic thresholding) is not "
                         "supported; use thresholding=False")
    if name in ("DDIMScheduler", "DDPMScheduler"):
        if set_timesteps_kwargs:
            raise ValueError(f"{name} takes no set_timesteps arguments here, got "
                             f"{sorted(set_timesteps_kwargs)}")
        return _vp_schedule(scheduler, name)
    if set_timesteps_kwargs.get("mu") is not None and not cfg.use_dynamic_shifting:
        raise ValueError(f"{name} got mu={set_timesteps_kwargs['mu']!r}, the dynamic shift, but "
                         "has use_dynamic_shifting=False (diffusers would ignore or reject it); "
                         "drop mu or build the scheduler with use_dynamic_shifting=True")
    family, prediction, solver, options = _solver_of(scheduler, name, set_timesteps_kwargs)
    template = copy.deepcopy(scheduler)
    fixed = _fixed_steps(name, set_timesteps_kwargs)
    # a grid given as sigmas=/timesteps= replaces the step count (FlowMatch takes both)
    with_count = fixed is None or name == "FlowMatchEulerDiscreteScheduler"

    def levels(N: int) -> tuple[Tensor, Tensor, float]:
        if fixed is not None and N != fixed:
            raise ValueError(f"num_steps={N}, but the schedule's set_timesteps arguments "
                             f"{sorted(set_timesteps_kwargs)} fix {fixed} steps")
        sched = copy.deepcopy(template)
        kwargs = {k: (v(N) if callable(v) else v) for k, v in set_timesteps_kwargs.items()}
        if with_count:
            sched.set_timesteps(N, **kwargs)
        else:
            sched.set_timesteps(**kwargs)
        sigmas = sched.sigmas.detach().cpu().double()
        if getattr(cfg, "interpolation_type", "linear") == "log_linear" and sigmas.numel() == N + 2:
            sigmas = sigmas[:-1]  # diffusers' loop never reaches the appended 0: it ends at sigmas[N]
        return sched.timesteps.detach().cpu().clone(), sigmas, float(getattr(sched, "init_noise_sigma", 1.0))

    if family == "vp":  # diffusers' Euler schedulers start at sigma_max, or sqrt(sigma_max^2 + 1)
        bare = cfg.timestep_spacing in ("linspace", "trailing")

        def start_scale(solver: str, sigmas: Tensor) -> float:
            if solver not in ("euler", "euler_ancestral"):
                return 1.0  # DPM-Solver++ / UniPC run in the VP state
            top = float(sigmas.max())
            return top if bare else (top**2 + 1) ** 0.5
    else:
        def start_scale(solver: str, sigmas: Tensor) -> float:
            return 1.0

    schedule = SigmaSchedule(levels, family, prediction, solver, options,
                             max_steps=fixed or int(cfg.num_train_timesteps),
                             timestep_scale=float(cfg.num_train_timesteps) if family == "flow" else None,
                             name=name, start_scale=start_scale)
    trial = fixed or min(10, int(cfg.num_train_timesteps))
    try:  # diffusers' own complaints about the arguments surface here, not at sampling time
        schedule.levels(trial)
    except (ValueError, TypeError, AssertionError, IndexError) as err:
        raise ValueError(f"{name}.set_timesteps({trial}, **{sorted(set_timesteps_kwargs)}) fails "
                         f"with this configuration: {err}") from err
    return schedule


def _solver_of(scheduler: Any, name: str, set_timesteps_kwargs: dict[str, Any]
               ) -> tuple[str, str, str, dict[str, Any]]:
    """``(family, prediction type, solver, solver options)`` of a sigma-grid scheduler, its
    unsupported options refused by name."""
    cfg = scheduler.config
    options: dict[str, Any] = {}
    if name == "FlowMatchEulerDiscreteScheduler":
        _require(cfg, name, "stochastic_sampling", False, "stochastic_sampling=False")
        _require(cfg, name, "invert_sigmas", False, "invert_sigmas=False")
        family, prediction, solver = "flow", "flow_prediction", "euler"
        if cfg.use_dynamic_shifting and set_timesteps_kwargs.get("mu") is None:
            raise ValueError(f"{name} has use_dynamic_shifting=True: pass mu= (the shift "
                             "the pipeline computes from the image size, e.g. Flux's "
                             "calculate_shift)")
    elif name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        family, prediction = "vp", cfg.prediction_type
        solver = "euler" if name == "EulerDiscreteScheduler" else "euler_ancestral"
    else:
        if name == "DPMSolverMultistepScheduler":
            _require(cfg, name, "algorithm_type", "dpmsolver++", "algorithm_type='dpmsolver++'")
            _require(cfg, name, "solver_type", ("midpoint", "heun"), "solver_type 'midpoint', 'heun'")
            _require(cfg, name, "variance_type", None, "variance_type=None")
            solver = "dpmpp_2m"
            keys = ("solver_order", "lower_order_final", "euler_at_final", "final_sigmas_type",
                    "solver_type")
        else:
            _require(cfg, name, "predict_x0", True, "predict_x0=True")
            _require(cfg, name, "solver_type", ("bh1", "bh2"), "solver_type 'bh1', 'bh2'")
            if getattr(scheduler, "solver_p", None) is not None:
                raise ValueError(f"{name} with solver_p is not supported; supported: solver_p=None")
            solver = "unipc"
            keys = ("solver_order", "lower_order_final", "solver_type", "disable_corrector")
        _require(cfg, name, "solver_order", (1, 2), "solver_order 1 or 2")
        options = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
        if solver == "unipc":
            options["disable_corrector"] = tuple(options.get("disable_corrector") or ())
        family = "flow" if getattr(cfg, "use_flow_sigmas", False) else "vp"
        prediction = cfg.prediction_type
        if cfg.use_dynamic_shifting and set_timesteps_kwargs.get("mu") is None:
            raise ValueError(f"{name} has use_dynamic_shifting=True: pass mu=")
    if family == "vp" and prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"{name} with prediction_type={prediction!r} is not supported on "
                         "VP sigmas; supported: 'epsilon', 'sample', 'v_prediction'")
    return family, prediction, solver, options


def _fixed_steps(name: str, kwargs: dict[str, Any]) -> int | None:
    """The step count a ``sigmas=`` / ``timesteps=`` list fixes (``None`` where none is
    given or it is a callable of the step count)."""
    lengths = {}
    for key in ("sigmas", "timesteps"):
        value = kwargs.get(key)
        if value is None or callable(value):
            continue
        n = len(value)
        # Euler's sigmas carry the final level; FlowMatch's (and every timesteps list) do not
        lengths[key] = n - 1 if key == "sigmas" and name != "FlowMatchEulerDiscreteScheduler" else n
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sigmas and timesteps give different step counts: {lengths}")
    n = next(iter(lengths.values()), None)
    if n is not None and n < 1:
        raise ValueError(f"{sorted(lengths)} must give at least one step, got {lengths}")
    return n


def _vp_schedule(scheduler: Any, name: str) -> VPSchedule:
    cfg = scheduler.config
    if name == "DDPMScheduler" and cfg.variance_type not in ("fixed_small", None):
        raise ValueError(f"DDPMScheduler variance_type {cfg.variance_type!r} is not supported "
                         "(only 'fixed_small')")
    ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    if name == "DDIMScheduler":
        final = float(scheduler.final_alpha_cumprod)
    else:
        final = 1.0
    return VPSchedule.from_alphas_cumprod(
        ac,
        solver="ddim" if name == "DDIMScheduler" else "ddpm",
        prev_timestep="stride" if name == "DDIMScheduler" else "next",
        prediction_type=cfg.prediction_type,
        timestep_spacing=cfg.timestep_spacing,
        steps_offset=int(cfg.steps_offset),
        final_alpha_cumprod=final,
        clip_sample=bool(cfg.clip_sample),
        clip_sample_range=float(getattr(cfg, "clip_sample_range", 1.0)),
    )


def decode_latents(vae: torch.nn.Module, latents: Tensor,
                   scaling_factor: float | None = None) -> Tensor:
    """Decode a latent diffusion model's final sample with its VAE (``AutoencoderKL``).

    ``latents``: ``[b, c, h, w]`` as sampled; they are divided by ``scaling_factor``
    (default ``vae.config.scaling_factor``) first, as diffusers' pipelines do. Returns images
    ``[b, 3, H, W]`` in the VAE's output range (about ``[-1, 1]``). Decode only what you
    show: SRDS itself holds latents, never images.
    """
    if not hasattr(vae, "decode"):
        raise TypeError(f"vae must be a diffusers autoencoder with .decode, got {type(vae).__name__}")
    sf = scaling_factor if scaling_factor is not None else getattr(vae.config, "scaling_factor", 1.0)
    z = latents.to(dtype=next(vae.parameters()).dtype) / sf
    return vae.decode(z, return_dict=False)[0]


def from_diffusers(unet: torch.nn.Module, scheduler: Any, **set_timesteps_kwargs: Any
                   ) -> tuple[DiffusersModel, VPSchedule | SigmaSchedule]:
    """``(model, schedule)`` for pint's samplers from a diffusers network and scheduler.

    Args:
        unet: the network: ``UNet2DModel``, ``UNet2DConditionModel``,
            ``SD3Transformer2DModel`` or ``FluxTransformer2DModel``.
        scheduler: any scheduler of :func:`schedule_from_scheduler` (which receives
            ``set_timesteps_kwargs``, e.g. ``mu=`` for dynamic shifting).
    """
    if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "config"):
        raise TypeError(f"unet must be a diffusers model, got {type(unet).__name__}")
    return DiffusersModel(unet), schedule_from_scheduler(scheduler, **set_timesteps_kwargs)
