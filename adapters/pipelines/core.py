"""The shared core: the default hooks, the network as a pint model (with its guidance), the
truncated grid of img2img, the sampler run and the decode. Family modules supply only what
differs (:class:`~adapters.pipelines.family.PipelineFamily`)."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adapters.bridge import DiffusersModel, schedule_from_scheduler
from adapters.diffusion.auto import PARALLEL_SAMPLERS, plan_sampling, record_run
from adapters.diffusion.precision import serial_precision
from adapters.diffusion.samplers import SampleOutput, SamplerStats, serial_sample
from adapters.diffusion.schedule import SigmaSchedule, VPSchedule

from .checks import pipeline_family
from .family import Call

SAMPLERS = ("srds", "serial", "picard", "quasi_newton", "taa", "auto")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: prefix of the unconditional inputs when a family's own guidance runs inside the model
UNCOND = "uncond__"


@dataclass
class TextToImageOutput:
    """What :func:`~adapters.pipelines.srds_pipeline` returns.

    Attributes:
        images: the decoded images as ``output_type`` asks: a list of PIL images, numpy
            ``[b, H, W, 3]`` or a tensor ``[b, 3, H, W]`` in ``[0, 1]``; the latents for
            ``"latent"``.
        latents: the final latents, as ``pipe(..., output_type="latent")`` returns them:
            ``[b, C, h, w]`` (SD, SDXL, SD3) or packed ``[b, h w / 4, 4 C]`` (Flux).
        initial_latents: the state ``x_T`` the sampler started from (same shape; img2img:
            the noised image latents at the first step that runs).
        sampling: the sampler's :class:`~adapters.diffusion.SampleOutput` (iterations,
            history, stats, tol, num_blocks or window; ``iterates`` with
            ``return_iterates``, ``trajectory`` with ``return_trajectory``, ``boundaries``
            for SRDS: pass the output as ``initial=`` to warm-start a neighbouring prompt).
        nsfw_content_detected: the pipeline's safety checker verdicts, or ``None`` when it
            has none (or nothing was decoded).
        sampler: the sampler that ran (what ``"auto"`` chose).
        guidance_scale: the guidance in effect (``None``: none): the CFG scale
            (``true_cfg_scale`` for Flux), or Flux's embedded guidance.
        height, width: the image size in pixels.
    """

    images: Any
    latents: Tensor
    initial_latents: Tensor
    sampling: SampleOutput
    nsfw_content_detected: list[bool] | None = None
    sampler: str = "srds"
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None

    @property
    def stats(self) -> SamplerStats:
        """Network calls, rows and sequential depth of the sampling run (UNet/transformer)."""
        return self.sampling.stats


# ---- the default hooks --------------------------------------------------------------------

def default_geometry(pipe: Any, call: Call) -> tuple[int, int, int, tuple[int, ...]]:
    """``(height, width, channels, shape [n, C, h, w])`` from ``height``/``width`` (default:
    the network's sample size times the VAE factor), checked as the pipeline needs them."""
    net = getattr(pipe, call.family.net)
    sf = pipe.vae_scale_factor
    size = getattr(net.config, "sample_size", None)
    if call.family.net == "unet" and size is not None:
        default = (size, size) if isinstance(size, int) else tuple(size)
        mult = 8
    else:
        d = getattr(pipe, "default_sample_size", None) or size
        default = (d, d) if isinstance(d, int) else tuple(d)
        mult = sf * (getattr(net.config, "patch_size", None) or 1)
    height, width = call.get("height", default[0] * sf), call.get("width", default[1] * sf)
    check_size(call.name, height, width, mult)
    C = net.config.in_channels
    return height, width, C, (call.n, C, height // sf, width // sf)


def check_size(name: str, height: Any, width: Any, mult: int) -> None:
    """``height``/``width``: ints >= 1 divisible by ``mult``."""
    for k, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")
    if height % mult or width % mult:
        raise ValueError(f"height and width must be divisible by {mult} for this {name}, "
                         f"got {height} and {width}")


def default_latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents(n, C, h, w, dtype, device, generator, latents)``, divided by
    the scheduler's ``init_noise_sigma`` (pint's samplers multiply by it)."""
    init = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
    x = pipe.prepare_latents(call.n, call.channels, call.height, call.width, call.dtype,
                             call.device, call.generator, call.get("latents"))
    return x / init if init != 1.0 else x


def default_network(pipe: Any, call: Call) -> Callable[..., Tensor]:
    """The network component called as diffusers pipelines call its class."""
    return DiffusersModel(getattr(pipe, call.family.net))


def vae_decode(pipe: Any, latents: Tensor, output_type: str, shift: bool = True
               ) -> tuple[Any, list[bool] | None]:
    """``latents / scaling_factor (+ shift_factor)`` through the VAE, the safety checker (if
    any) and ``pipe.image_processor.postprocess``."""
    vae = pipe.vae
    z = latents / vae.config.scaling_factor
    sh = getattr(vae.config, "shift_factor", None)
    if shift and sh is not None:
        z = z + sh
    image = vae.decode(z.to(next(vae.parameters()).dtype), return_dict=False)[0]
    nsfw = None
    if getattr(pipe, "safety_checker", None) is not None:
        image, nsfw = pipe.run_safety_checker(image, latents.device, latents.dtype)
    denorm = [True] * image.shape[0] if nsfw is None else [not x for x in nsfw]
    return pipe.image_processor.postprocess(image, output_type=output_type,
                                            do_denormalize=denorm), nsfw


def latents_to_images(pipe: Any, latents: Tensor, output_type: str = "pil",
                      height: int | None = None, width: int | None = None):
    """Decode final latents as ``pipe(...)`` does (the family's own decode: Flux unpacking,
    scaling and shift, the VAE, the safety checker, ``postprocess``). Returns ``(images,
    nsfw)``; ``output_type="np"`` gives ``[n, H, W, 3]`` in ``[0, 1]``.

    Args:
        latents: ``[n, C, h, w]``, or Flux's packed ``[n, tokens, 4 C]``.
        height, width: the image size in pixels (packed layouts; default: square).
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "latent":
        return latents, None
    _, fam = pipeline_family(pipe)
    if fam.decode is not None:
        return fam.decode(pipe, latents, output_type, height, width)
    return vae_decode(pipe, latents, output_type)


# ---- the network as a pint model -----------------------------------------------------------

class PipelineModel(torch.nn.Module):
    """The pipeline's network as a pint model with the run's constants bound (inputs without
    a batch dimension, which the samplers must neither tile nor concatenate):
    ``model(x [R, *sample], t [R], **per_sample)``.

    With ``guide``, classifier-free guidance runs here rather than in the sampler: the
    unconditional inputs come as ``uncond__<key>``, both halves go through the network in
    one call (two where their shapes differ), and ``guide(cond, uncond, t)`` combines them
    (``t``: the rows' timesteps, for guidance that changes along the grid).
    """

    def __init__(self, fn: Callable[..., Tensor], net: Any, sample_shape: tuple[int, ...],
                 constants: Mapping[str, Any],
                 guide: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.cost_key = net  # the planner's probe cache: one network, many runs
        self.sample_shape = tuple(sample_shape)
        self.constants = {k: v for k, v in constants.items() if v is not None}
        self.guide = guide

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        if self.guide is None:
            return self.fn(x, t, **self.constants, **kwargs)
        cond = {k: v for k, v in kwargs.items() if not k.startswith(UNCOND)}
        unc = {k: v for k, v in cond.items() if UNCOND + k not in kwargs}  # shared
        unc.update({k[len(UNCOND):]: v for k, v in kwargs.items() if k.startswith(UNCOND)})
        if set(cond) == set(unc) and all(_stackable(cond[k], unc[k]) for k in cond):
            both = {k: torch.cat([v, unc[k]]) if isinstance(v, Tensor) and v is not unc[k]
                    else _twice(v) for k, v in cond.items()}
            out = self.fn(torch.cat([x, x]), torch.cat([t, t]), **self.constants, **both)
            c, u = out.chunk(2)
        else:  # different token counts (Qwen-Image's, Chroma's masks): two calls
            c = self.fn(x, t, **self.constants, **cond)
            u = self.fn(x, t, **self.constants, **unc)
        return self.guide(c, u, t)


def _stackable(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape
    return a is b or not isinstance(a, Tensor) and not isinstance(b, Tensor)


def _twice(v: Any) -> Any:
    return torch.cat([v, v]) if isinstance(v, Tensor) and v.dim() > 0 else v


def linear_guide(scale: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``uncond + scale (cond - uncond)`` (what the samplers do themselves)."""
    return lambda c, u, t=None: u + scale * (c - u)


def rescaled_guide(scale: float, rescale: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Classifier-free guidance with diffusers' ``rescale_noise_cfg`` (``guidance_rescale``,
    Lin et al. 2023): the guided output rescaled towards the conditional one's std."""
    def guide(c: Tensor, u: Tensor, t: Tensor | None = None) -> Tensor:
        g = u + scale * (c - u)
        dims = list(range(1, c.dim()))
        r = g * (c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True))
        return rescale * r + (1 - rescale) * g
    return guide


# ---- schedules -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _TruncatedVP(VPSchedule):
    """A VP schedule whose ``n``-step grid is the last ``n`` steps of its ``full``-step one
    (img2img's ``timesteps[begin:]``); DDIM lands on the next timestep of the full grid,
    which equals diffusers' stride there (checked where it is built)."""

    full: int = 1
    begin: int = 0

    def timesteps(self, num_steps: int) -> Tensor:
        if num_steps != self.full - self.begin:
            raise ValueError(f"this img2img grid runs {self.full - self.begin} steps, got "
                             f"num_steps={num_steps}")
        return VPSchedule.timesteps(self, self.full)[self.begin:]


def truncate(schedule: VPSchedule | SigmaSchedule, N: int, begin: int
             ) -> VPSchedule | SigmaSchedule:
    """The schedule whose ``N - begin``-step grid is ``schedule``'s ``N``-step grid from
    step ``begin`` on, starting from the given state (no ``init_noise_sigma`` factor)."""
    if isinstance(schedule, SigmaSchedule):
        full = schedule.levels_fn

        def levels(n: int) -> tuple[Tensor, Tensor, float]:
            if n != N - begin:
                raise ValueError(f"this img2img grid runs {N - begin} steps, got num_steps={n}")
            ts, sig, _ = full(N)
            return ts[begin:], sig[begin:], 1.0

        return dataclasses.replace(schedule, levels_fn=levels, start_scale=lambda s, sig: 1.0,
                                   name=f"{schedule.name}[{begin}:{N}]")
    ts = schedule.timesteps(N)
    if schedule.prev_timestep == "stride":
        T = schedule.num_train_timesteps
        stride, nxt = ts - T // N, torch.cat([ts[1:], torch.tensor([-1])])
        if bool((stride.clamp(min=-1) != nxt.clamp(min=-1))[begin:].any()):
            raise ValueError(
                f"img2img with a DDIMScheduler on a {schedule.timestep_spacing!r} grid of {N} "
                "steps: its steps land beside the next timestep (diffusers' stride), which "
                "pint reproduces only on full grids; use timestep_spacing='leading' or "
                "a number of steps that divides num_train_timesteps")
    fields = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(VPSchedule)}
    return _TruncatedVP(**{**fields, "prev_timestep": "next"}, full=N, begin=begin)


def build_schedule(pipe: Any, call: Call) -> VPSchedule | SigmaSchedule:
    """The pipeline's scheduler as a pint schedule with the family's ``set_timesteps``
    arguments, truncated at ``call.begin``."""
    schedule = schedule_from_scheduler(pipe.scheduler, **call.timestep_kwargs)
    if call.family.strength is not None:
        from adapters.diffusion.schedule import check_num_steps

        check_num_steps(call.num_steps, schedule.max_steps)
        return truncate(schedule, call.num_steps, call.begin)
    return schedule


# ---- the sampler ---------------------------------------------------------------------------

def plan(sampler: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The sampler that runs (``"auto"`` resolved later) and its arguments, checked against
    its signature before any model call. ``options`` holds the arguments the caller gave."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    opts = dict(options)
    if "max_batch" in opts and sampler != "auto":
        raise ValueError("max_batch is only used with sampler='auto'")
    if sampler == "auto":  # resolved by plan_sampling once the model and latents exist
        fixed = sorted(set(opts) & {"window", "num_blocks", "pipelined"})
        if fixed:
            raise ValueError(f"sampler='auto' chooses {', '.join(fixed)} itself; give "
                             "sampler='quasi_newton' or 'srds' to set it")
        bad = sorted(set(opts) - {"max_batch", "tol", "max_iters", "cost", "executor"})
        if bad:
            raise ValueError(f"sampler='auto' takes no {', '.join(bad)}: they differ between "
                             "the samplers it may choose; name the sampler to use them")
        return sampler, opts
    if sampler == "serial":
        if opts:
            raise ValueError(f"sampler='serial' takes no {', '.join(opts)}")
        return sampler, opts
    if sampler == "srds":
        opts.setdefault("pipelined", True)
    run = PARALLEL_SAMPLERS[sampler]
    params = inspect.signature(run).parameters
    own = {"model", "schedule", "x_T", "num_steps", "sampler", "eta", "noise", "model_kwargs",
           "guidance_scale", "uncond_kwargs", "generator", "prediction_type"}
    bad = [k for k in opts if k not in params or k in own]
    if bad:
        if sampler != "srds" and set(bad) <= {"num_blocks", "return_iterates"}:
            raise ValueError(f"{', '.join(bad)}: SRDS's; the window samplers take window=")
        raise TypeError(f"{run.__name__} takes no argument(s) {', '.join(bad)} here")
    return sampler, opts


def run_sampler(model: PipelineModel, schedule: Any, x_T: Tensor, N: int, sampler: str,
                kw: dict[str, Any], common: dict[str, Any]) -> tuple[str, SampleOutput]:
    """Run ``sampler`` (``"auto"``: the fastest candidate measured on this model) and
    return ``(what ran, its output)``."""
    plan_ = None
    if sampler == "auto":
        plan_ = plan_sampling(model, schedule, x_T, N, tol=kw.get("tol"),
                              max_batch=kw.pop("max_batch", None), eta=common["eta"],
                              solver=common["sampler"], cost=kw.pop("cost", None),
                              executor=kw.get("executor"), model_kwargs=common["model_kwargs"],
                              guidance_scale=common["guidance_scale"],
                              uncond_kwargs=common["uncond_kwargs"], reuse=True)
        sampler, kw = plan_.choice.sampler, {**plan_.choice.options, **kw}
        if sampler == "serial":  # nothing iterates: the iteration options have no effect
            kw = {}
    if sampler == "serial":
        final = serial_sample(model, schedule, x_T, N, **common)
        rows = N * x_T.shape[0] * (2 if common["guidance_scale"] is not None else 1)
        out = SampleOutput(final, 0, True, [], SamplerStats(N, rows, N), 0.0, 1,
                           precision=serial_precision(model, x_T.dtype))
    else:
        out = PARALLEL_SAMPLERS[sampler](model, schedule, x_T, N, **kw, **common)
    if plan_ is not None:
        record_run(plan_, plan_.choice, out.stats.depth, model)
        out.plan = plan_
    if model.guide is not None:  # both halves ran inside each call
        out.stats.model_rows *= 2
    return sampler, out


def guidance_inputs(call: Call, cond: dict[str, Any], uncond: dict[str, Any] | None,
                    guide: Callable[..., Tensor] | None
                    ) -> tuple[dict[str, Any], dict[str, Any] | None, float | None]:
    """``(model_kwargs, uncond_kwargs, guidance_scale)`` for the samplers: the samplers'
    own linear guidance, or (with ``guide``) the unconditional inputs folded into the model's
    keywords for :class:`PipelineModel` to combine."""
    if not call.cfg:
        return cond, None, None
    if guide is None:
        return cond, uncond, call.cfg_scale
    return {**cond, **{UNCOND + k: v for k, v in (uncond or {}).items()}}, None, None


def is_finite_number(v: Any) -> bool:
    """Whether ``v`` is a real finite number (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
