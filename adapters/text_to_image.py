"""SRDS for text-to-image latent diffusion: a StableDiffusion-class diffusers pipeline
sampled by pint's samplers with the pipeline's own components.

``srds_pipeline(pipe, prompt, ...)`` encodes the prompt with ``pipe.encode_prompt``, draws
the initial latents with ``pipe.prepare_latents`` from the caller's ``generator`` (as
``pipe(...)`` does), samples the latents with SRDS (or the serial sampler, or Picard) with
classifier-free guidance in one batched UNet call per step, and decodes the final latents
with the VAE. With the same scheduler (DDIM or DDPM), seed and guidance the serial path
gives the latents of ``pipe(..., output_type="latent")``, and SRDS converges to them.
Needs the ``diffusers`` extra (with ``transformers``).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adapters.diffusers import SUPPORTED_SCHEDULERS, DiffusersModel, decode_latents, schedule_from_scheduler
from adapters.diffusion.picard import picard_sample
from adapters.diffusion.pretrained import PretrainedNotFoundError
from adapters.diffusion.samplers import SampleOutput, SamplerStats, serial_sample, srds_sample
from adapters.diffusion.schedule import SamplingGrid

#: pipeline classes whose folders :func:`load_text_to_image` loads
TEXT_TO_IMAGE_PIPELINES = ("StableDiffusionPipeline",)
#: what a pipeline object must have for :func:`srds_pipeline`
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SAMPLERS = ("srds", "serial", "picard")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_WEIGHTED = ("unet", "vae", "text_encoder")


@dataclass
class TextToImageOutput:
    """What :func:`srds_pipeline` returns.

    Attributes:
        images: the decoded images as ``output_type`` asks: a list of PIL images, numpy
            ``[b, H, W, 3]`` or a tensor ``[b, 3, H, W]`` in ``[0, 1]``; the latents for
            ``"latent"``.
        latents: the final latents ``[b, C, h, w]`` (as ``pipe(..., output_type="latent")``).
        initial_latents: the initial noise ``x_T`` the sampler started from (same shape).
        sampling: the sampler's :class:`~adapters.diffusion.SampleOutput` (iterations,
            history, stats, tol, num_blocks, and with ``return_iterates`` the latents after
            every iteration).
        nsfw_content_detected: the pipeline's safety checker verdicts, or ``None`` when it
            has none (or nothing was decoded).
    """

    images: Any
    latents: Tensor
    initial_latents: Tensor
    sampling: SampleOutput
    nsfw_content_detected: list[bool] | None = None

    @property
    def stats(self) -> SamplerStats:
        """Model calls, rows and sequential depth of the sampling run (UNet only)."""
        return self.sampling.stats


def load_text_to_image(folder: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, scheduler: str | None = None):
    """Load a local StableDiffusion-class pipeline folder (``model_index.json`` with
    ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), offline and from
    safetensors only.

    Args:
        folder: the pipeline folder (as written by ``pipe.save_pretrained``).
        device, dtype: where and in which dtype to put the pipeline (default CPU, float32).
        scheduler: ``"ddim"`` or ``"ddpm"`` replaces the folder's scheduler by a
            ``DDIMScheduler``/``DDPMScheduler`` built from its config (same betas); ``None``
            keeps it, which must then be one of pint's.

    Raises:
        PretrainedNotFoundError: not a folder, not a text-to-image pipeline, a missing
            component, pickled weights only, or a scheduler pint can't map (all checked
            before any weight is loaded).
    """
    import diffusers

    path = Path(folder).expanduser()
    index = path / "model_index.json"
    if not index.is_file():
        raise PretrainedNotFoundError(
            f"{folder} is not a text-to-image pipeline folder: no model_index.json (expected "
            f"a folder written by {TEXT_TO_IMAGE_PIPELINES[0]}.save_pretrained)")
    cfg = json.loads(index.read_text())
    name = cfg.get("_class_name")
    if name not in TEXT_TO_IMAGE_PIPELINES:
        raise PretrainedNotFoundError(
            f"{folder} holds a {name}, not a text-to-image pipeline; supported: "
            f"{', '.join(TEXT_TO_IMAGE_PIPELINES)}")
    missing = [c for c in COMPONENTS if not (isinstance(cfg.get(c), list) and cfg[c][0]
                                              and (path / c).is_dir())]
    if missing:
        raise PretrainedNotFoundError(f"{folder} lacks the component(s) {', '.join(missing)}")
    checker = cfg.get("safety_checker")
    weighted = _WEIGHTED + (("safety_checker",) if isinstance(checker, list) and checker[0] else ())
    for c in weighted:
        if not any((path / c).glob("*.safetensors")):
            raise PretrainedNotFoundError(
                f"{path / c} holds no safetensors weights; pint loads safetensors only, because "
                "unpickling runs arbitrary code. Convert a folder you trust once with "
                f"{name}.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    kinds = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}
    if scheduler is not None and scheduler not in kinds:
        raise ValueError(f"scheduler must be None, 'ddim' or 'ddpm', got {scheduler!r}")
    sched_name = kinds[scheduler] if scheduler else sched_cfg.get("_class_name")
    if sched_name not in SUPPORTED_SCHEDULERS:
        raise PretrainedNotFoundError(
            f"{path / 'scheduler'} holds a {sched_name}; pint samples with {SUPPORTED_SCHEDULERS} "
            "steps. Use the same betas with DDIM steps: scheduler='ddim' (pint-sample "
            "--scheduler ddim)")
    sched = getattr(diffusers, sched_name).from_config(sched_cfg)
    schedule_from_scheduler(sched)  # thresholding etc.: refuse before loading weights
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name)
    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    pipe = getattr(diffusers, name).from_pretrained(
        path, scheduler=sched, use_safetensors=True, local_files_only=True,
        **{key: dtype or torch.float32})
    return pipe.to(device or "cpu")


def _check_pipe(pipe: Any) -> None:
    missing = [c for c in COMPONENTS if getattr(pipe, c, None) is None]
    if missing or not all(hasattr(pipe, m) for m in ("encode_prompt", "prepare_latents")):
        raise TypeError(
            f"pipe must be a text-to-image pipeline such as StableDiffusionPipeline (components "
            f"{', '.join(COMPONENTS)} and encode_prompt/prepare_latents), got "
            f"{type(pipe).__name__}" + (f" without {', '.join(missing)}" if missing else ""))
    ucfg = pipe.unet.config
    if getattr(ucfg, "time_cond_proj_dim", None) is not None:
        raise ValueError("pipe.unet has time_cond_proj_dim (a guidance-distilled UNet, as in LCM); "
                         "not supported")
    if getattr(ucfg, "addition_embed_type", None) is not None:
        raise ValueError(f"pipe.unet needs added conditioning ({ucfg.addition_embed_type!r}, as in "
                         "SDXL); only StableDiffusion-class UNets are supported")


def _check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                   guidance_scale) -> int:
    """The number of prompts ``b``."""
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of prompt (str or list of str) and prompt_embeds")
    if prompt is not None:
        if isinstance(prompt, str):
            b = 1
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            b = len(prompt)
        else:
            raise TypeError(f"prompt must be a str or a non-empty list of str, got {prompt!r}")
    else:
        if not isinstance(prompt_embeds, Tensor) or prompt_embeds.dim() != 3:
            raise ValueError("prompt_embeds must be a tensor [batch, tokens, dim], got "
                             f"{getattr(prompt_embeds, 'shape', type(prompt_embeds).__name__)}")
        b = prompt_embeds.shape[0]
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not \
            math.isfinite(guidance_scale):
        raise TypeError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
    if (negative_prompt is not None or negative_prompt_embeds is not None) and guidance_scale <= 1:
        raise ValueError(
            f"a negative prompt needs classifier-free guidance, guidance_scale > 1; got "
            f"guidance_scale={guidance_scale}, where the pipeline would ignore it")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        if not (isinstance(negative_prompt, (list, tuple))
                and all(isinstance(p, str) for p in negative_prompt)):
            raise TypeError(f"negative_prompt must be a str or a list of str, got {negative_prompt!r}")
        if len(negative_prompt) != b:
            raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but there are {b} "
                             "prompts; give one negative prompt per prompt (or a single str)")
    if negative_prompt_embeds is not None:
        if prompt_embeds is None:
            raise ValueError("negative_prompt_embeds needs prompt_embeds (or give negative_prompt)")
        if not isinstance(negative_prompt_embeds, Tensor) or \
                negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds must have prompt_embeds' shape "
                             f"{tuple(prompt_embeds.shape)}, got "
                             f"{tuple(getattr(negative_prompt_embeds, 'shape', ()))}")
    return b


def latents_to_images(pipe: Any, latents: Tensor, output_type: str = "pil"):
    """Decode latents ``[n, C, h, w]`` as ``pipe(...)`` does: VAE, the pipeline's safety
    checker (if any), ``pipe.image_processor.postprocess``. Returns ``(images, nsfw)``;
    ``output_type="np"`` gives ``[n, H, W, 3]`` in ``[0, 1]``."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "latent":
        return latents, None
    image = decode_latents(pipe.vae, latents)
    nsfw = None
    if getattr(pipe, "safety_checker", None) is not None:
        image, nsfw = pipe.run_safety_checker(image, latents.device, latents.dtype)
    denorm = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denorm), nsfw


@torch.no_grad()
def srds_pipeline(
    pipe: Any,
    prompt: str | list[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    tol: float | None = None,
    *,
    sampler: str = "srds",
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    num_images_per_prompt: int = 1,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: Tensor | None = None,
    eta: float = 0.0,
    num_blocks: int | None = None,
    max_iters: int | None = None,
    pipelined: bool = True,
    return_iterates: bool = False,
    callback: Callable[..., None] | None = None,
    output_type: str = "pil",
    cross_attention_kwargs: Mapping[str, Any] | None = None,
    clip_skip: int | None = None,
    **sampler_kwargs: Any,
) -> TextToImageOutput:
    """Sample a StableDiffusion-class pipeline with SRDS (or ``"serial"``/``"picard"``).

    The arguments mean what they mean for ``pipe(...)``; with ``sampler="serial"`` the
    latents equal those of ``pipe(..., output_type="latent")`` (same scheduler, generator
    and guidance) to float round-off, and SRDS converges to them. ``negative_prompt``,
    ``prompt_embeds``, ``negative_prompt_embeds``, ``num_images_per_prompt``, ``height``,
    ``width``, ``cross_attention_kwargs`` and ``clip_skip`` are as for ``pipe(...)``.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` (or one with the same components and
            ``encode_prompt``/``prepare_latents``) whose scheduler is a ``DDIMScheduler``
            (deterministic for ``eta=0``) or ``DDPMScheduler`` (ancestral).
        prompt: one prompt or a list (``b`` prompts); or give ``prompt_embeds`` instead.
        num_inference_steps: ``N``, the scheduler's steps.
        guidance_scale: classifier-free guidance ``w``; ``> 1`` runs the unconditional and
            conditional halves in one UNet call per step, ``<= 1`` none (as the pipeline).
        tol: the sampler's tolerance on the **latents** (``srds``: the max-abs change of the
            final latents in one iteration, default ``DEFAULT_TOL`` of the dtype; ``picard``:
            its per-step rule, default 1e-3). SD latents (times ``scaling_factor``) have
            about unit spread, like pixels in ``[-1, 1]``, so the defaults carry over.
        sampler: ``"srds"``, ``"serial"`` or ``"picard"``.
        generator: draws the initial latents (and, for ``eta > 0`` or DDPM, the per-step
            noise, all up front, in the order the pipeline draws them).
        latents: initial latents ``[b * num_images_per_prompt, C, h, w]`` instead.
        eta: DDIM noise.
        num_blocks, pipelined, return_iterates: SRDS's, see
            :func:`~adapters.diffusion.srds_sample` (pipelined by default here).
        max_iters, callback: the sampler's (SRDS: ``callback(info)`` per iteration;
            Picard: ``callback(iteration, window_start, error)``).
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (no VAE decode).
        **sampler_kwargs: further arguments of the sampler (``window`` for Picard;
            ``stopping``, ``coarse``, ``partition`` for SRDS, ...).

    Returns:
        :class:`TextToImageOutput`. Memory: SRDS holds ``num_blocks`` latents (and the
        iterates with ``return_iterates``); only the final latents are decoded.

    Raises:
        TypeError, ValueError: bad input, before any model call.
    """
    _check_pipe(pipe)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    schedule = schedule_from_scheduler(pipe.scheduler)  # refuses what pint can't map
    kind = "ddpm" if type(pipe.scheduler).__name__ == "DDPMScheduler" else "ddim"
    if kind == "ddpm" and eta != 0:
        raise ValueError("eta is for DDIMScheduler; a DDPMScheduler samples ancestrally")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
            or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an int >= 1, got {num_images_per_prompt!r}")
    b = _check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                       guidance_scale)
    if isinstance(prompt, (list, tuple)) and isinstance(negative_prompt, str):
        negative_prompt = [negative_prompt] * b
    prompt = list(prompt) if isinstance(prompt, tuple) else prompt
    n = b * num_images_per_prompt
    ucfg = pipe.unet.config
    sf = pipe.vae_scale_factor
    size = ucfg.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    height, width = height or size[0] * sf, width or size[1] * sf
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be divisible by 8, got {height} and {width}")
    shape = (n, ucfg.in_channels, height // sf, width // sf)
    if latents is not None and (not isinstance(latents, Tensor) or tuple(latents.shape) != shape):
        raise ValueError(
            f"latents must have shape {shape} ({b} prompt(s) x num_images_per_prompt="
            f"{num_images_per_prompt}), got {tuple(getattr(latents, 'shape', ()))}")
    if isinstance(generator, list) and len(generator) != n:
        raise ValueError(f"generator is a list of {len(generator)} but {b} prompt(s) x "
                         f"num_images_per_prompt={num_images_per_prompt} = {n} images are drawn")
    if prompt_embeds is not None and prompt_embeds.shape[-1] != ucfg.cross_attention_dim:
        raise ValueError(f"prompt_embeds must end in the UNet's cross_attention_dim "
                         f"{ucfg.cross_attention_dim}, got {tuple(prompt_embeds.shape)}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                            or not math.isfinite(tol) or tol < 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    run, extra = _sampler_call(sampler, num_blocks, pipelined, max_iters, tol, callback,
                               return_iterates, sampler_kwargs)
    N = num_inference_steps
    SamplingGrid.build(schedule, N, kind, eta)  # checks N (and its spacing) and eta up front

    device = pipe._execution_device
    cfg = guidance_scale > 1
    cond, uncond = pipe.encode_prompt(
        prompt, device, num_images_per_prompt, cfg, negative_prompt, prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip,
        lora_scale=(cross_attention_kwargs or {}).get("scale"))
    x_T = pipe.prepare_latents(n, ucfg.in_channels, height, width, cond.dtype, device, generator,
                               latents)
    noise = None
    if kind == "ddpm" or eta > 0:  # the scheduler's per-step draws, in its order
        from diffusers.utils.torch_utils import randn_tensor

        noise = torch.stack([randn_tensor(shape, generator=generator, device=device,
                                          dtype=x_T.dtype) for _ in range(N)])
    model = DiffusersModel(pipe.unet)
    model.sample_shape = shape[1:]
    kw: dict[str, Any] = {"encoder_hidden_states": cond}
    if cross_attention_kwargs is not None:
        kw["cross_attention_kwargs"] = dict(cross_attention_kwargs)
    common = dict(sampler=kind, eta=eta, noise=noise, model_kwargs=kw,
                  guidance_scale=guidance_scale if cfg else None,
                  uncond_kwargs={"encoder_hidden_states": uncond} if cfg else None)
    if run is serial_sample:
        sample = serial_sample(model, schedule, x_T, N, **common)
        rows = N * n * (2 if cfg else 1)
        out = SampleOutput(sample, 0, True, [], SamplerStats(N, rows, N), 0.0, 1)
    else:
        out = run(model, schedule, x_T, N, **extra, **common)
    images, nsfw = latents_to_images(pipe, out.sample, output_type)
    if hasattr(pipe, "maybe_free_model_hooks"):
        pipe.maybe_free_model_hooks()
    return TextToImageOutput(images, out.sample, x_T, out, nsfw)


def _sampler_call(sampler, num_blocks, pipelined, max_iters, tol, callback, return_iterates,
                  sampler_kwargs):
    """The sampler function and its sampler-specific arguments (checked up front)."""
    if sampler == "serial":
        given = {k: v for k, v in dict(tol=tol, num_blocks=num_blocks, max_iters=max_iters,
                                       callback=callback).items() if v is not None}
        if given or sampler_kwargs or return_iterates:
            names = ", ".join([*given, *sampler_kwargs]) or "return_iterates"
            raise ValueError(f"sampler='serial' takes no {names}")
        return serial_sample, {}
    if sampler == "srds":
        run = srds_sample
        extra = dict(num_blocks=num_blocks, pipelined=pipelined, return_iterates=return_iterates)
    else:
        run = picard_sample
        if num_blocks is not None or return_iterates:
            raise ValueError("num_blocks and return_iterates are SRDS's; Picard takes window=")
        extra = {}
    extra.update(max_iters=max_iters, callback=callback)
    if tol is not None:
        extra["tol"] = tol
    params = inspect.signature(run).parameters
    own = {"model", "schedule", "x_T", "num_steps", "sampler", "eta", "noise", "model_kwargs",
           "guidance_scale", "uncond_kwargs", "generator", "prediction_type"}
    bad = [k for k in sampler_kwargs if k not in params or k in own]
    if bad:
        raise TypeError(f"{run.__name__} takes no argument(s) {', '.join(bad)} here")
    extra.update(sampler_kwargs)
    return run, extra
