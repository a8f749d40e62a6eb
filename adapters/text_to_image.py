"""Parallel-in-time sampling of text-to-image diffusers pipelines with the pipeline's own
components: StableDiffusion (UNet), StableDiffusion 3 / 3.5 and Flux.1 (transformers with
flow matching).

``srds_pipeline(pipe, prompt, ...)`` encodes the prompt with ``pipe.encode_prompt`` (every
text encoder the pipeline has), draws the initial latents with ``pipe.prepare_latents`` from
the caller's ``generator`` (Flux: packed latents and image ids), maps the scheduler (with
the shift / ``mu`` the pipeline computes) onto a pint schedule, samples the latents with
any pint sampler (serial, SRDS, Picard, quasi-Newton, auto) with classifier-free guidance
in one batched network call per step (Flux: embedded guidance, or true CFG with a negative
prompt), and decodes the final latents once with the VAE. With the same scheduler, seed
and guidance the serial path gives the latents of ``pipe(..., output_type="latent")``, and
the parallel samplers converge to them. Needs the ``diffusers`` extra (with
``transformers``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adapters.diffusers import SUPPORTED_SCHEDULERS, DiffusersModel, schedule_from_scheduler
from adapters.diffusion.grid import SamplingGrid
from adapters.diffusion.planner import PARALLEL_SAMPLERS, plan_sampling, record_run
from adapters.diffusion.pretrained import PretrainedNotFoundError
from adapters.diffusion.progress import check_progress
from adapters.diffusion.samplers import SampleOutput, SamplerStats, serial_sample
from adapters.diffusion.schedule import VPSchedule, check_num_steps


@dataclass(frozen=True)
class PipelineFamily:
    """What differs between the supported pipelines.

    Attributes:
        net: the denoising network's component name (``"unet"`` or ``"transformer"``).
        components: the components :func:`srds_pipeline` needs (``text_encoder_3`` of SD3
            may be ``None``, as the pipeline allows).
        steps, guidance: the pipeline's default ``num_inference_steps`` and
            ``guidance_scale`` (Flux: embedded guidance, used when the transformer has
            ``guidance_embeds``).
        cfg_arg: the argument that turns classifier-free guidance on.
    """

    net: str
    components: tuple[str, ...]
    steps: int
    guidance: float
    cfg_arg: str


_TEXT2 = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
FAMILIES: dict[str, PipelineFamily] = {
    "StableDiffusionPipeline": PipelineFamily(
        "unet", ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), 50, 7.5,
        "guidance_scale"),
    "StableDiffusion3Pipeline": PipelineFamily(
        "transformer", ("transformer", "vae", *_TEXT2), 28, 7.0, "guidance_scale"),
    "FluxPipeline": PipelineFamily(
        "transformer", ("transformer", "vae", *_TEXT2), 28, 3.5, "true_cfg_scale"),
}
#: pipeline classes that :func:`srds_pipeline` samples and :func:`load_text_to_image` loads
TEXT_TO_IMAGE_PIPELINES = tuple(FAMILIES)
#: what a StableDiffusionPipeline must have (kept for older callers)
COMPONENTS = FAMILIES["StableDiffusionPipeline"].components
SAMPLERS = ("srds", "serial", "picard", "quasi_newton", "auto")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_ITERATIVE = ("tol", "max_iters", "callback", "return_iterates", "initial")


@dataclass
class TextToImageOutput:
    """What :func:`srds_pipeline` returns.

    Attributes:
        images: the decoded images as ``output_type`` asks: a list of PIL images, numpy
            ``[b, H, W, 3]`` or a tensor ``[b, 3, H, W]`` in ``[0, 1]``; the latents for
            ``"latent"``.
        latents: the final latents, as ``pipe(..., output_type="latent")`` returns them:
            ``[b, C, h, w]`` (SD, SD3) or packed ``[b, h w / 4, 4 C]`` (Flux).
        initial_latents: the initial noise ``x_T`` the sampler started from (same shape).
        sampling: the sampler's :class:`~adapters.diffusion.SampleOutput` (iterations,
            history, stats, tol, num_blocks or window; ``iterates`` with
            ``return_iterates``, ``trajectory`` with ``return_trajectory``, ``boundaries``
            for SRDS: pass the output as ``initial=`` to warm-start a neighbouring prompt).
        nsfw_content_detected: the pipeline's safety checker verdicts, or ``None`` when it
            has none (or nothing was decoded).
        sampler: the sampler that ran (what ``"auto"`` chose).
        guidance_scale: the guidance in effect (``None``: none): the CFG scale for SD/SD3
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


# ---- loading ------------------------------------------------------------------------------

def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        cfg = json.loads(file.read_text())
    except OSError as err:
        raise PretrainedNotFoundError(f"cannot read {file} ({what}): {err.strerror or err}") from None
    except ValueError as err:
        raise PretrainedNotFoundError(f"{file} ({what}) is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise PretrainedNotFoundError(f"{file} ({what}) must hold a JSON object, got "
                                      f"{type(cfg).__name__}")
    return cfg


def _dynamic_mu(cfg: Any) -> dict[str, float]:
    """A placeholder ``mu`` that lets a dynamically shifted scheduler be checked."""
    return {"mu": 0.0} if getattr(cfg, "use_dynamic_shifting", False) else {}


def load_text_to_image(folder: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, scheduler: str | None = None):
    """Load a local text-to-image pipeline folder (``StableDiffusionPipeline``,
    ``StableDiffusion3Pipeline`` or ``FluxPipeline``, as written by ``save_pretrained``),
    offline and from safetensors only, with the folder's own scheduler.

    Args:
        folder: the pipeline folder (``model_index.json`` and one folder per component).
        device, dtype: where and in which dtype to put the pipeline (default CPU, float32).
        scheduler: StableDiffusion only: ``"ddim"`` or ``"ddpm"`` replaces the folder's
            scheduler by a ``DDIMScheduler``/``DDPMScheduler`` built from its config (same
            betas); ``None`` keeps it, which must then be one of pint's. SD3 and Flux
            sample with their own flow-matching scheduler.

    Raises:
        PretrainedNotFoundError: not a folder, a malformed ``model_index.json`` or scheduler
            config (naming the file), not a supported pipeline, a missing component,
            pickled weights only, or a scheduler pint can't map (all checked before any
            weight is loaded).
    """
    import diffusers

    path = Path(folder).expanduser()
    index = path / "model_index.json"
    if not index.is_file():
        raise PretrainedNotFoundError(
            f"{folder} is not a text-to-image pipeline folder: no model_index.json (expected "
            f"a folder written by {' / '.join(TEXT_TO_IMAGE_PIPELINES)}.save_pretrained)")
    cfg = _read_json(index, "the pipeline index")
    name = cfg.get("_class_name")
    if name not in FAMILIES:
        raise PretrainedNotFoundError(
            f"{folder} holds a {name}, not a supported text-to-image pipeline; supported: "
            f"{', '.join(TEXT_TO_IMAGE_PIPELINES)}")
    fam = FAMILIES[name]

    def given(c: str) -> bool:
        v = cfg.get(c)
        return isinstance(v, list) and len(v) == 2 and bool(v[0]) and bool(v[1])

    missing = [c for c in fam.components if not (given(c) and (path / c).is_dir())]
    if missing:
        raise PretrainedNotFoundError(f"{folder} lacks the component(s) {', '.join(missing)} "
                                      f"(a {name} needs {', '.join(fam.components)})")
    # every model component (a config.json beside its weights) must ship safetensors
    for c in sorted(k for k in cfg if given(k) and (path / k / "config.json").is_file()):
        if not any((path / c).glob("*.safetensors")):
            raise PretrainedNotFoundError(
                f"{path / c} holds no safetensors weights; pint loads safetensors only, because "
                "unpickling runs arbitrary code. Convert a folder you trust once with "
                f"{name}.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched_cfg = _read_json(sched_file, "the scheduler config")
    kinds = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}
    if scheduler is not None and scheduler not in kinds:
        raise ValueError(f"scheduler must be None, 'ddim' or 'ddpm', got {scheduler!r}")
    if scheduler is not None and fam.net != "unet":
        raise ValueError(f"scheduler={scheduler!r} replaces a StableDiffusionPipeline's "
                         f"scheduler; a {name} samples with its own flow-matching scheduler "
                         "(scheduler=None)")
    sched_name = kinds[scheduler] if scheduler else sched_cfg.get("_class_name")
    if sched_name not in SUPPORTED_SCHEDULERS:
        hint = (". Use the same betas with DDIM steps: scheduler='ddim' (pint-sample "
                "--scheduler ddim)" if fam.net == "unet" else "")
        raise PretrainedNotFoundError(
            f"{path / 'scheduler'} holds a {sched_name}; pint samples with "
            f"{SUPPORTED_SCHEDULERS} steps{hint}")
    try:
        sched = getattr(diffusers, sched_name).from_config(sched_cfg)
        schedule_from_scheduler(sched, **_dynamic_mu(sched.config))  # before any weight loads
    except (TypeError, ValueError, KeyError) as err:
        raise PretrainedNotFoundError(f"{sched_file}: {err}") from None
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name)
    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    pipe = getattr(diffusers, name).from_pretrained(
        path, scheduler=sched, use_safetensors=True, local_files_only=True,
        low_cpu_mem_usage=False, **{key: dtype or torch.float32})
    return pipe.to(device or "cpu")


# ---- checks -------------------------------------------------------------------------------

def pipeline_family(pipe: Any) -> tuple[str, PipelineFamily]:
    """``(class name, family)`` of a supported pipeline (or a subclass of one).

    Raises:
        TypeError: another class, naming the supported ones; a missing component.
    """
    name = next((c.__name__ for c in type(pipe).__mro__ if c.__name__ in FAMILIES), None)
    if name is None:
        raise TypeError(f"pipe must be a text-to-image pipeline: one of "
                        f"{', '.join(TEXT_TO_IMAGE_PIPELINES)} (or a subclass), got "
                        f"{type(pipe).__name__}")
    fam = FAMILIES[name]
    missing = [c for c in fam.components if getattr(pipe, c, None) is None]
    if missing:
        raise TypeError(f"pipe must be a text-to-image pipeline with the components "
                        f"{', '.join(fam.components)}; this {type(pipe).__name__} has no "
                        f"{', '.join(missing)}")
    if fam.net == "unet":
        ucfg = pipe.unet.config
        if getattr(ucfg, "time_cond_proj_dim", None) is not None:
            raise ValueError("pipe.unet has time_cond_proj_dim (a guidance-distilled UNet, as in "
                             "LCM); not supported")
        if getattr(ucfg, "addition_embed_type", None) is not None:
            raise ValueError(f"pipe.unet needs added conditioning ({ucfg.addition_embed_type!r}, "
                             "as in SDXL); only StableDiffusion-class UNets are supported")
    return name, fam


def _batch(name: str, value: Any, b: int | None) -> int | None:
    """The number of prompts in ``value`` (a str or a non-empty list of str), checked
    against ``b``."""
    if value is None:
        return b
    if isinstance(value, str):
        return b if b is not None else 1
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value)):
        raise TypeError(f"{name} must be a str or a non-empty list of str, got {value!r}")
    if b is not None and len(value) != b:
        raise ValueError(f"{name} has {len(value)} entries but there are {b} prompts; give one "
                         f"per prompt (or a single str)")
    return len(value)


def _check_embeds(name: str, value: Any, dims: int, like: Tensor | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, Tensor) or value.dim() != dims:
        form = "[batch, tokens, dim]" if dims == 3 else "[batch, dim]"
        raise ValueError(f"{name} must be a tensor {form}, got "
                         f"{getattr(value, 'shape', type(value).__name__)}")
    if like is not None and value.shape != like.shape:
        raise ValueError(f"{name} must have the shape {tuple(like.shape)} of its positive "
                         f"counterpart, got {tuple(value.shape)}")


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_guidance(pipe_name: str, guidance_embeds: bool, guidance_scale: Any,
                   true_cfg_scale: Any, negative: bool) -> tuple[float | None, float | None]:
    """``(cfg_scale, embedded)`` for a pipeline class: the classifier-free guidance scale
    (``None``: no CFG) and Flux's embedded guidance (``None``: none; ``guidance_embeds`` is
    the transformer's config flag). A guidance option the model does not have is a
    ``ValueError`` naming it, never a silently unguided sample."""
    fam = FAMILIES[pipe_name]
    g = _number("guidance_scale", guidance_scale)
    true_cfg = _number("true_cfg_scale", true_cfg_scale)
    if fam.cfg_arg == "guidance_scale":
        if true_cfg is not None:
            raise ValueError(f"true_cfg_scale is FluxPipeline's; a {pipe_name} has "
                             "classifier-free guidance through guidance_scale")
        cfg, embedded = (fam.guidance if g is None else g), None
    else:  # Flux: guidance_scale is the embedded guidance, true_cfg_scale the CFG
        if guidance_embeds:
            embedded = fam.guidance if g is None else g
        elif g is not None:
            raise ValueError(
                f"guidance_scale={g:g}: this {pipe_name}'s transformer has no guidance "
                "embedding (guidance_embeds=False, as FLUX.1-schnell), so the pipeline would "
                "ignore it; for classifier-free guidance give true_cfg_scale > 1 with a "
                "negative_prompt, or drop guidance_scale")
        else:
            embedded = None
        cfg = true_cfg
        if cfg is not None and cfg > 1 and not negative:
            raise ValueError(f"true_cfg_scale={cfg:g} needs a negative_prompt (or "
                             "negative_prompt_embeds): without one the pipeline runs no "
                             "classifier-free guidance")
    if negative and (cfg is None or cfg <= 1):
        raise ValueError(
            f"a negative prompt needs classifier-free guidance, {fam.cfg_arg} > 1; got "
            f"{fam.cfg_arg}={cfg}, where the pipeline would ignore it")
    return (cfg if cfg is not None and cfg > 1 else None), embedded


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _plan(sampler: str, N: int, rows_per_step_batch: int, cfg: bool,
          options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The sampler that runs (``"auto"`` resolved) and its arguments, checked against its
    signature before any model call. ``options`` holds the arguments the caller gave."""
    import inspect

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


# ---- the pipeline parts -------------------------------------------------------------------

class _PipelineModel(torch.nn.Module):
    """The pipeline's network as a pint model with the run's constants bound (``txt_ids``,
    ``img_ids``, attention kwargs: inputs without a batch dimension, which the samplers
    must neither tile nor concatenate): ``model(x [R, *sample], t [R], **per_sample)``."""

    def __init__(self, net: torch.nn.Module, sample_shape: tuple[int, ...],
                 constants: Mapping[str, Any]) -> None:
        super().__init__()
        self.inner = DiffusersModel(net)
        self.cost_key = net  # the planner's probe cache: one network, many runs
        self.sample_shape = tuple(sample_shape)
        self.constants = {k: v for k, v in constants.items() if v is not None}

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.inner(x, t, **self.constants, **kwargs)


def _encode(pipe: Any, pipe_name: str, cfg: bool, n_img: int, device: Any, p: dict[str, Any]
            ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Any]]:
    """``(model_kwargs, uncond_kwargs, constants)`` from the pipeline's ``encode_prompt``:
    per-sample conditioning ``[n, ...]`` and the run's constants (Flux ``txt_ids``)."""
    neg = dict(negative_prompt=p["negative_prompt"],
               negative_prompt_embeds=p["negative_prompt_embeds"])
    if pipe_name == "StableDiffusionPipeline":
        cond, unc = pipe.encode_prompt(
            p["prompt"], device, n_img, cfg, p["negative_prompt"],
            prompt_embeds=p["prompt_embeds"], negative_prompt_embeds=p["negative_prompt_embeds"],
            clip_skip=p["clip_skip"], lora_scale=p["lora_scale"])
        return ({"encoder_hidden_states": cond},
                {"encoder_hidden_states": unc} if cfg else None, {})
    common = dict(device=device, num_images_per_prompt=n_img, lora_scale=p["lora_scale"],
                  max_sequence_length=p["max_sequence_length"])
    if pipe_name == "StableDiffusion3Pipeline":
        pe, npe, ppe, nppe = pipe.encode_prompt(
            prompt=p["prompt"], prompt_2=p["prompt_2"], prompt_3=p["prompt_3"],
            negative_prompt_2=p["negative_prompt_2"], negative_prompt_3=p["negative_prompt_3"],
            do_classifier_free_guidance=cfg, prompt_embeds=p["prompt_embeds"],
            pooled_prompt_embeds=p["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"],
            clip_skip=p["clip_skip"], **neg, **common)
        return ({"encoder_hidden_states": pe, "pooled_projections": ppe},
                {"encoder_hidden_states": npe, "pooled_projections": nppe} if cfg else None, {})
    pe, ppe, txt_ids = pipe.encode_prompt(
        prompt=p["prompt"], prompt_2=p["prompt_2"], prompt_embeds=p["prompt_embeds"],
        pooled_prompt_embeds=p["pooled_prompt_embeds"], **common)
    unc = None
    if cfg:
        npe, nppe, neg_ids = pipe.encode_prompt(
            prompt=p["negative_prompt"], prompt_2=p["negative_prompt_2"],
            prompt_embeds=p["negative_prompt_embeds"],
            pooled_prompt_embeds=p["negative_pooled_prompt_embeds"], **common)
        if neg_ids.shape != txt_ids.shape:
            raise ValueError(f"the negative prompt encodes to {neg_ids.shape[0]} tokens, the "
                             f"prompt to {txt_ids.shape[0]}; give embeddings of the same length")
        unc = {"encoder_hidden_states": npe, "pooled_projections": nppe}
    return {"encoder_hidden_states": pe, "pooled_projections": ppe}, unc, {"txt_ids": txt_ids}


def _latent_geometry(pipe: Any, pipe_name: str, fam: PipelineFamily, height: int | None,
                     width: int | None, n: int) -> tuple[int, int, int, tuple[int, ...]]:
    """``(height, width, channels, latent shape)``, checked as the pipeline needs them;
    Flux: ``channels`` per unpacked latent and the packed shape ``[n, tokens, 4 C]``."""
    net = getattr(pipe, fam.net)
    sf = pipe.vae_scale_factor
    if fam.net == "unet":
        size = net.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        default, mult = size, 8
    else:
        default = (pipe.default_sample_size,) * 2
        mult = sf * (2 if pipe_name == "FluxPipeline" else net.config.patch_size)
    height, width = height or default[0] * sf, width or default[1] * sf
    for k, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")
    if height % mult or width % mult:
        raise ValueError(f"height and width must be divisible by {mult} for this {pipe_name}, "
                         f"got {height} and {width}")
    C = net.config.in_channels
    h, w = height // sf, width // sf
    if pipe_name == "FluxPipeline":
        return height, width, C // 4, (n, (h // 2) * (w // 2), C)
    return height, width, C, (n, C, h, w)


def _scheduler_kwargs(pipe: Any, pipe_name: str, fam: PipelineFamily,
                      shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``set_timesteps`` arguments the pipeline passes: Flux's sigmas and ``mu`` from
    the image sequence length; SD3's ``mu`` when its scheduler shifts dynamically."""
    if fam.net == "unet":
        return {}
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = pipe.scheduler.config
    if pipe_name == "FluxPipeline":
        seq_len, max_shift = shape[1], 1.15
    else:
        patch = pipe.transformer.config.patch_size
        seq_len, max_shift = (shape[2] // patch) * (shape[3] // patch), 1.16
        if not cfg.get("use_dynamic_shifting", None):
            return {}
    kw: dict[str, Any] = {}
    if cfg.get("use_dynamic_shifting", None):  # FluxPipeline passes mu always; unused otherwise
        kw["mu"] = calculate_shift(
            seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift))
    if pipe_name == "FluxPipeline" and not cfg.get("use_flow_sigmas", False):
        kw["sigmas"] = lambda N: np.linspace(1.0, 1 / N, N)
    return kw


def latents_to_images(pipe: Any, latents: Tensor, output_type: str = "pil",
                      height: int | None = None, width: int | None = None):
    """Decode final latents as ``pipe(...)`` does: Flux unpacking, ``latents /
    scaling_factor + shift_factor`` (SD3, Flux), the VAE, the safety checker (SD, if any),
    ``pipe.image_processor.postprocess``. Returns ``(images, nsfw)``; ``output_type="np"``
    gives ``[n, H, W, 3]`` in ``[0, 1]``.

    Args:
        latents: ``[n, C, h, w]``, or Flux's packed ``[n, tokens, 4 C]``.
        height, width: the image size in pixels (Flux; default: square).
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "latent":
        return latents, None
    pipe_name, _ = pipeline_family(pipe)
    vae = pipe.vae
    if pipe_name == "FluxPipeline":
        if height is None or width is None:
            side = math.isqrt(latents.shape[1]) * 2 * pipe.vae_scale_factor
            height, width = height or side, width or side
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None and pipe_name != "StableDiffusionPipeline":
        z = z + shift
    image = vae.decode(z.to(next(vae.parameters()).dtype), return_dict=False)[0]
    nsfw = None
    if getattr(pipe, "safety_checker", None) is not None:
        image, nsfw = pipe.run_safety_checker(image, latents.device, latents.dtype)
    denorm = [True] * image.shape[0] if nsfw is None else [not x for x in nsfw]
    return pipe.image_processor.postprocess(image, output_type=output_type,
                                            do_denormalize=denorm), nsfw


# ---- the entry point ----------------------------------------------------------------------

@torch.no_grad()
def srds_pipeline(
    pipe: Any,
    prompt: str | list[str] | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    tol: float | None = None,
    *,
    sampler: str = "srds",
    negative_prompt: str | list[str] | None = None,
    prompt_2: str | list[str] | None = None,
    prompt_3: str | list[str] | None = None,
    negative_prompt_2: str | list[str] | None = None,
    negative_prompt_3: str | list[str] | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    negative_pooled_prompt_embeds: Tensor | None = None,
    true_cfg_scale: float | None = None,
    num_images_per_prompt: int = 1,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: Tensor | None = None,
    eta: float = 0.0,
    num_blocks: int | None = None,
    window: int | None = None,
    max_batch: int | None = None,
    max_iters: int | None = None,
    pipelined: bool | None = None,
    initial: Tensor | TextToImageOutput | None = None,
    return_iterates: bool = False,
    callback: Callable[..., None] | None = None,
    progress: bool = False,
    output_type: str = "pil",
    cross_attention_kwargs: Mapping[str, Any] | None = None,
    joint_attention_kwargs: Mapping[str, Any] | None = None,
    clip_skip: int | None = None,
    max_sequence_length: int | None = None,
    **sampler_kwargs: Any,
) -> TextToImageOutput:
    """Sample a StableDiffusion, StableDiffusion 3 or Flux pipeline with a pint sampler.

    The arguments mean what they mean for ``pipe(...)``; with ``sampler="serial"`` the
    latents equal those of ``pipe(..., output_type="latent")`` (same scheduler, generator
    and guidance) to float round-off, and the parallel samplers converge to them.
    ``prompt_2``/``prompt_3`` (and their negatives), ``pooled_prompt_embeds``,
    ``max_sequence_length``, ``joint_attention_kwargs`` (SD3, Flux) and
    ``cross_attention_kwargs`` (SD) are as for ``pipe(...)``.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` (any scheduler pint maps: DDIM/DDPM,
            Euler, DPM-Solver++, UniPC, ...), ``StableDiffusion3Pipeline`` or
            ``FluxPipeline`` (their ``FlowMatchEulerDiscreteScheduler``; shift / ``mu``
            as the pipeline computes them), or a subclass.
        prompt: one prompt or a list (``b`` prompts); or give ``prompt_embeds`` (SD3,
            Flux: and ``pooled_prompt_embeds``) instead.
        num_inference_steps: ``N``, the scheduler's steps (default: the pipeline's, 50
            for SD, 28 for SD3 and Flux).
        guidance_scale: SD, SD3: classifier-free guidance ``w`` (default 7.5 / 7.0); ``> 1``
            runs the unconditional and conditional halves in one network call per step.
            Flux: the embedded guidance of a guidance-distilled transformer (default 3.5);
            an error for a transformer without ``guidance_embeds``.
        true_cfg_scale: Flux's classifier-free guidance (needs a negative prompt), in one
            batched call as for SD3.
        tol: the sampler's tolerance on the **latents** (``srds``: the max-abs change of the
            final latents in one iteration, default ``DEFAULT_TOL`` of the dtype; window
            samplers: their per-step rule, default 1e-3).
        sampler: ``"srds"``, ``"serial"``, ``"picard"``, ``"quasi_newton"`` or ``"auto"``
            (see :func:`~adapters.diffusion.sample`; ``output.sampler`` says what ran).
        generator: draws the initial latents (and the per-step noise of stochastic
            schedulers, all up front, in the order the pipeline draws them).
        latents: initial latents instead, in the pipeline's layout (Flux: packed).
        eta: DDIM noise (DDIMScheduler only).
        num_blocks, pipelined: SRDS's (pipelined by default here).
        window: the window samplers' steps per call; ``max_batch``: network rows per call
            for ``"auto"``, which measures the transformer or UNet on these latents and
            runs the candidate predicted fastest on this device
            (:func:`~adapters.diffusion.plan_sampling`; ``cost=`` gives a
            :class:`~adapters.diffusion.CostModel` instead; ``output.sampling.plan``).
        max_iters, callback, return_iterates: the sampler's (SRDS: ``callback(info)`` per
            iteration; window samplers: ``callback(iteration, window_start, error)``).
        progress: the sampler's tqdm bar on stderr (every sampler, ``"serial"`` too).
        initial: warm start from an earlier run (a neighbouring prompt or seed): its
            :class:`TextToImageOutput` (window samplers: run with
            ``return_trajectory=True``) or the tensor the sampler takes as ``initial``.
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (no VAE decode).
        **sampler_kwargs: further arguments of the sampler (``stopping``, ``coarse``,
            ``partition`` for SRDS; ``return_trajectory`` for the window samplers, ...).
            ``executor=pint.DistributedExecutor()`` (under ``torchrun``, the pipeline loaded
            on every rank, the same ``generator`` seed): SRDS, the window samplers and
            ``"auto"`` split every model call over the ranks, and every rank returns the
            same latents (see :func:`~adapters.diffusion.picard_sample`).

    Returns:
        :class:`TextToImageOutput`; only the final latents are decoded.

    Raises:
        TypeError: an unsupported pipeline class (naming the supported ones), bad types.
        ValueError: bad input, a guidance option the model does not have (naming it),
            all before any model call.
    """
    pipe_name, fam = pipeline_family(pipe)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    n_img = _check_positive_int("num_images_per_prompt", num_images_per_prompt)
    # prompts and embeddings
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of prompt (str or list of str) and prompt_embeds")
    _check_embeds("prompt_embeds", prompt_embeds, 3)
    b = prompt_embeds.shape[0] if prompt_embeds is not None else _batch("prompt", prompt, None)
    for k, v in (("prompt_2", prompt_2), ("prompt_3", prompt_3), ("negative_prompt", negative_prompt),
                 ("negative_prompt_2", negative_prompt_2), ("negative_prompt_3", negative_prompt_3)):
        _batch(k, v, b)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
    if negative_prompt_embeds is not None and prompt_embeds is None:
        raise ValueError("negative_prompt_embeds needs prompt_embeds (or give negative_prompt)")
    _check_embeds("negative_prompt_embeds", negative_prompt_embeds, 3, prompt_embeds)
    pooled = fam.net == "transformer"
    given_pooled = [k for k, v in (("pooled_prompt_embeds", pooled_prompt_embeds),
                                   ("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds))
                    if v is not None]
    if not pooled and given_pooled:
        raise ValueError(f"{', '.join(given_pooled)}: a {pipe_name} has no pooled embeddings")
    if pooled:
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError(f"prompt_embeds needs pooled_prompt_embeds for a {pipe_name} "
                             "(from the same text encoders)")
        if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds needs negative_pooled_prompt_embeds")
        _check_embeds("pooled_prompt_embeds", pooled_prompt_embeds, 2)
        _check_embeds("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds, 2,
                      pooled_prompt_embeds)
    wrong = {"StableDiffusionPipeline": (("prompt_2", prompt_2), ("prompt_3", prompt_3),
                                         ("negative_prompt_2", negative_prompt_2),
                                         ("negative_prompt_3", negative_prompt_3),
                                         ("joint_attention_kwargs", joint_attention_kwargs),
                                         ("max_sequence_length", max_sequence_length)),
             "StableDiffusion3Pipeline": (("cross_attention_kwargs", cross_attention_kwargs),),
             "FluxPipeline": (("prompt_3", prompt_3), ("negative_prompt_3", negative_prompt_3),
                              ("cross_attention_kwargs", cross_attention_kwargs),
                              ("clip_skip", clip_skip))}[pipe_name]
    wrong_given = [k for k, v in wrong if v is not None]
    if wrong_given:
        raise ValueError(f"{', '.join(wrong_given)}: not an argument of a {pipe_name}")
    negative = any(v is not None for v in (negative_prompt, negative_prompt_embeds,
                                           negative_prompt_2, negative_prompt_3))
    embeds = fam.net == "transformer" and bool(getattr(pipe.transformer.config,
                                                       "guidance_embeds", False))
    cfg_scale, embedded = check_guidance(pipe_name, embeds, guidance_scale, true_cfg_scale,
                                         negative)
    cfg = cfg_scale is not None
    if pipe_name == "FluxPipeline" and not cfg and (negative_pooled_prompt_embeds is not None):
        raise ValueError("negative_pooled_prompt_embeds needs true_cfg_scale > 1")
    # latents, schedule, sampler
    n = b * n_img
    height, width, C, shape = _latent_geometry(pipe, pipe_name, fam, height, width, n)
    if latents is not None and (not isinstance(latents, Tensor) or tuple(latents.shape) != shape):
        raise ValueError(
            f"latents must have shape {shape} ({b} prompt(s) x num_images_per_prompt="
            f"{n_img}), got {tuple(getattr(latents, 'shape', ()))}")
    if isinstance(generator, list) and len(generator) != n:
        raise ValueError(f"generator is a list of {len(generator)} but {b} prompt(s) x "
                         f"num_images_per_prompt={n_img} = {n} images are drawn")
    if fam.net == "unet" and prompt_embeds is not None and \
            prompt_embeds.shape[-1] != pipe.unet.config.cross_attention_dim:
        raise ValueError(f"prompt_embeds must end in the UNet's cross_attention_dim "
                         f"{pipe.unet.config.cross_attention_dim}, got {tuple(prompt_embeds.shape)}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                            or not math.isfinite(tol) or tol < 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    schedule = schedule_from_scheduler(pipe.scheduler, **_scheduler_kwargs(pipe, pipe_name, fam,
                                                                            shape))
    N = check_num_steps(num_inference_steps or fam.steps, schedule.max_steps)
    kind = None
    if isinstance(schedule, VPSchedule):
        kind = "ddpm" if type(pipe.scheduler).__name__ == "DDPMScheduler" else "ddim"
        if kind == "ddpm" and eta != 0:
            raise ValueError("eta is for DDIMScheduler; a DDPMScheduler samples ancestrally")
    grid = SamplingGrid.build(schedule, N, kind, eta)  # checks N's spacing and eta up front
    if isinstance(initial, TextToImageOutput):
        s = initial.sampling
        initial = s.trajectory if s.trajectory is not None else s.boundaries
        if initial is None:
            raise ValueError("initial: this output holds neither a trajectory nor boundaries; "
                             "run the window samplers with return_trajectory=True")
    check_progress(progress)  # before the prompts are encoded
    given = dict(tol=tol, num_blocks=num_blocks, window=window, max_batch=max_batch,
                 max_iters=max_iters, pipelined=pipelined, initial=initial, callback=callback,
                 return_iterates=return_iterates or None)
    options = {k: v for k, v in given.items() if v is not None}
    ran, kw = _plan(sampler, N, n, cfg, {**options, **sampler_kwargs})

    # the pipeline's own encoding and latents
    device = pipe._execution_device
    attention = joint_attention_kwargs if fam.net == "transformer" else cross_attention_kwargs
    if negative and isinstance(prompt, (list, tuple)):  # one negative prompt for every prompt
        negative_prompt, negative_prompt_2, negative_prompt_3 = (
            [v] * b if isinstance(v, str) else v
            for v in (negative_prompt, negative_prompt_2, negative_prompt_3))
    p = dict(prompt=list(prompt) if isinstance(prompt, tuple) else prompt, prompt_2=prompt_2,
             prompt_3=prompt_3, negative_prompt=negative_prompt,
             negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
             prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
             pooled_prompt_embeds=pooled_prompt_embeds,
             negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
             lora_scale=(attention or {}).get("scale"),
             max_sequence_length=max_sequence_length or (256 if pipe_name !=
                                                         "FluxPipeline" else 512))
    model_kwargs, uncond_kwargs, constants = _encode(pipe, pipe_name, cfg, n_img, device, p)
    dtype = model_kwargs["encoder_hidden_states"].dtype
    if pipe_name == "FluxPipeline":
        x_T, constants["img_ids"] = pipe.prepare_latents(n, C, height, width, dtype, device,
                                                         generator, latents)
        if embedded is not None:
            g = torch.full([1], embedded, device=device, dtype=torch.float32).expand(n)
            model_kwargs["guidance"] = g
            if uncond_kwargs is not None:
                uncond_kwargs["guidance"] = g
    else:
        init = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
        x_T = pipe.prepare_latents(n, C, height, width, dtype, device, generator, latents)
        if fam.net == "unet" and init != 1.0:  # SD scales by it; pint's samplers do that
            x_T = x_T / init
    if attention is not None:
        constants[("joint" if fam.net == "transformer" else "cross") + "_attention_kwargs"] = \
            dict(attention)
    noise = None
    if grid.stochastic:  # the scheduler's per-step draws, in its order
        from diffusers.utils.torch_utils import randn_tensor

        noise = torch.stack([randn_tensor(shape, generator=generator, device=device,
                                          dtype=x_T.dtype) for _ in range(N)])
    model = _PipelineModel(getattr(pipe, fam.net), shape[1:], constants)
    common = dict(sampler=kind, eta=eta, noise=noise, model_kwargs=model_kwargs,
                  guidance_scale=cfg_scale, uncond_kwargs=uncond_kwargs, progress=progress)
    plan = None
    if ran == "auto":  # the fastest candidate on this device, measured on this model
        plan = plan_sampling(model, schedule, x_T, N, tol=kw.get("tol"),
                             max_batch=kw.pop("max_batch", None), eta=eta, solver=kind,
                             cost=kw.pop("cost", None), executor=kw.get("executor"),
                             model_kwargs=model_kwargs, guidance_scale=cfg_scale,
                             uncond_kwargs=uncond_kwargs)
        ran, kw = plan.choice.sampler, {**plan.choice.options, **kw}
        if ran == "serial":  # nothing iterates: the iteration options have no effect
            kw = {}
    if ran == "serial":
        final = serial_sample(model, schedule, x_T, N, **common)
        rows = N * n * (2 if cfg else 1)
        out = SampleOutput(final, 0, True, [], SamplerStats(N, rows, N), 0.0, 1)
    else:
        out = PARALLEL_SAMPLERS[ran](model, schedule, x_T, N, **kw, **common)
    if plan is not None:
        record_run(plan, plan.choice, out.stats.depth, model)
        out.plan = plan
    images, nsfw = latents_to_images(pipe, out.sample, output_type, height, width)
    if hasattr(pipe, "maybe_free_model_hooks"):
        pipe.maybe_free_model_hooks()
    return TextToImageOutput(images, out.sample, x_T, out, nsfw, ran,
                             cfg_scale if cfg else embedded, height, width)
