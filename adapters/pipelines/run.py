"""``srds_pipeline``: any pint sampler on a registered pipeline family, with the pipeline's own
encoding, latents, guidance and decoding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from adapters.diffusion.grid import SamplingGrid
from adapters.diffusion.progress import check_progress
from adapters.diffusion.schedule import VPSchedule, check_num_steps

from .checks import (
    check_guidance,
    check_named,
    check_prompts,
    check_strength,
    check_tol,
    negative_given,
    pipeline_family,
    positive_int,
    split_kwargs,
)
from .core import (
    OUTPUT_TYPES,
    PipelineModel,
    TextToImageOutput,
    build_schedule,
    default_geometry,
    default_latents,
    default_network,
    guidance_inputs,
    latents_to_images,
    plan,
    run_sampler,
)
from .family import Call

_PROMPT_KEYS = ("prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2",
                "negative_prompt_3", "prompt_embeds", "negative_prompt_embeds",
                "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


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
    **kwargs: Any,
) -> TextToImageOutput:
    """Sample a diffusers pipeline with a pint sampler: StableDiffusion, SDXL, SD3, Flux,
    their img2img / inpainting / ControlNet variants, and any family registered with
    :func:`~adapters.pipelines.register_family` (``supported_pipelines()`` lists them).

    The arguments mean what they mean for ``pipe(...)``; with ``sampler="serial"`` the
    latents equal those of ``pipe(..., output_type="latent")`` (same scheduler, generator
    and guidance) to float round-off, and the parallel samplers converge to them. The
    pipeline's own further inputs (``image``, ``strength``, ``mask_image``,
    ``guidance_rescale``, ``original_size``, ``controlnet_conditioning_scale``, ...) are
    keywords too; one the family does not reproduce is a ``ValueError`` naming it.

    Args:
        pipe: a loaded pipeline of a registered family (or a subclass).
        prompt: one prompt or a list (``b`` prompts); or give ``prompt_embeds`` (pooled
            families: and ``pooled_prompt_embeds``) instead.
        num_inference_steps: ``N``, the scheduler's steps (default: the pipeline's);
            img2img runs the last ``int(N * strength)`` of them, as the pipeline does.
        guidance_scale: classifier-free guidance ``w`` (Flux: the embedded guidance of a
            guidance-distilled transformer); ``> 1`` runs the unconditional and conditional
            halves in one network call per step.
        true_cfg_scale: Flux's classifier-free guidance (needs a negative prompt).
        tol: the sampler's tolerance on the **latents** (``srds``: the max-abs change of the
            final latents in one iteration; window samplers: their per-step rule).
        sampler: ``"srds"``, ``"serial"``, ``"picard"``, ``"quasi_newton"`` or ``"auto"``
            (``output.sampler`` says what ran).
        generator: draws what the pipeline draws, in its order (VAE-encode samples of an
            input image, the initial noise, stochastic schedulers' per-step noise).
        latents: initial latents instead, in the pipeline's layout (Flux: packed).
        eta: DDIM noise (DDIMScheduler only).
        num_blocks, pipelined: SRDS's (pipelined by default here).
        window, max_batch, max_iters, callback, return_iterates, progress, initial: the
            samplers' (see :func:`~adapters.diffusion.sample`); ``initial`` may be an earlier
            :class:`TextToImageOutput`.
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (no VAE decode).
        **kwargs: the pipeline's own inputs that the family handles, and further sampler
            arguments (``stopping``, ``coarse``, ``executor``, ``return_trajectory``, ...).

    Returns:
        :class:`TextToImageOutput`; only the final latents are decoded.

    Raises:
        TypeError: an unsupported pipeline class (naming the supported ones and how to
            register one), bad types.
        ValueError: bad input, an option the family does not have (naming it), all before
            any model call.
    """
    name, fam = pipeline_family(pipe)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    named = dict(prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3,
                 negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                 negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
                 negative_prompt_embeds=negative_prompt_embeds,
                 pooled_prompt_embeds=pooled_prompt_embeds,
                 negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, height=height,
                 width=width, latents=latents, cross_attention_kwargs=cross_attention_kwargs,
                 joint_attention_kwargs=joint_attention_kwargs, clip_skip=clip_skip,
                 max_sequence_length=max_sequence_length, true_cfg_scale=true_cfg_scale,
                 guidance_scale=guidance_scale)
    own, sampler_kwargs = split_kwargs(pipe, name, fam, kwargs)
    call = Call(pipe, name, fam, {**named, **own, "output_type": output_type},
                generator=generator)
    call.n_img = positive_int("num_images_per_prompt", num_images_per_prompt)
    check_prompts(call)
    check_named(pipe, name, named)
    embeds = fam.net == "transformer" and bool(getattr(getattr(pipe, fam.net).config,
                                                       "guidance_embeds", False))
    call.cfg_scale, call.embedded = check_guidance(name, embeds, guidance_scale, true_cfg_scale,
                                                   negative_given(call))
    call.n = call.b * call.n_img
    schedule, grid, kind = _geometry_and_grid(call, num_inference_steps, eta)
    if isinstance(initial, TextToImageOutput):
        s = initial.sampling
        initial = s.trajectory if s.trajectory is not None else s.boundaries
        if initial is None:
            raise ValueError("initial: this output holds neither a trajectory nor boundaries; "
                             "run the window samplers with return_trajectory=True")
    check_progress(progress)  # before the prompts are encoded
    check_tol(tol)
    given = dict(tol=tol, num_blocks=num_blocks, window=window, max_batch=max_batch,
                 max_iters=max_iters, pipelined=pipelined, initial=initial, callback=callback,
                 return_iterates=return_iterates or None)
    options = {k: v for k, v in given.items() if v is not None}
    ran, kw = plan(sampler, {**options, **sampler_kwargs})
    if fam.check is not None:
        fam.check(pipe, call)  # the family's own inputs, before any model call
    return _execute(call, schedule, grid, kind, eta, ran, kw, progress, output_type)


def _geometry_and_grid(call: Call, num_inference_steps: int | None, eta: float
                       ) -> tuple[Any, SamplingGrid, str | None]:
    """Image size, latent shape, the schedule (truncated by ``strength``) and its grid,
    all checked before any model call."""
    pipe, fam = call.pipe, call.family
    call.height, call.width, call.channels, call.shape = (fam.geometry or default_geometry)(
        pipe, call)
    lat = call.get("latents")
    if lat is not None and (not isinstance(lat, Tensor) or tuple(lat.shape) != call.shape):
        raise ValueError(
            f"latents must have shape {call.shape} ({call.b} prompt(s) x num_images_per_prompt="
            f"{call.n_img}), got {tuple(getattr(lat, 'shape', ()))}")
    gen = call.generator
    if isinstance(gen, list) and len(gen) != call.n:
        raise ValueError(f"generator is a list of {len(gen)} but {call.b} prompt(s) x "
                         f"num_images_per_prompt={call.n_img} = {call.n} images are drawn")
    pe = call.get("prompt_embeds")
    if fam.net == "unet" and pe is not None and \
            pe.shape[-1] != pipe.unet.config.cross_attention_dim:
        raise ValueError(f"prompt_embeds must end in the UNet's cross_attention_dim "
                         f"{pipe.unet.config.cross_attention_dim}, got {tuple(pe.shape)}")
    call.timestep_kwargs = fam.timesteps(pipe, call) if fam.timesteps is not None else {}
    call.num_steps = num_inference_steps or fam.steps
    if fam.strength is not None:
        check_num_steps(call.num_steps, int(pipe.scheduler.config.num_train_timesteps))
        call.begin = check_strength(call)
    schedule = build_schedule(pipe, call)
    call.steps = check_num_steps(call.num_steps - call.begin, schedule.max_steps)
    kind = None
    if isinstance(schedule, VPSchedule):
        kind = "ddpm" if type(pipe.scheduler).__name__ == "DDPMScheduler" else "ddim"
        if kind == "ddpm" and eta != 0:
            raise ValueError("eta is for DDIMScheduler; a DDPMScheduler samples ancestrally")
    grid = SamplingGrid.build(schedule, call.steps, kind, eta)  # checks spacing and eta
    return schedule, grid, kind


def _execute(call: Call, schedule: Any, grid: SamplingGrid, kind: str | None, eta: float,
             ran: str, kw: dict[str, Any], progress: bool, output_type: str
             ) -> TextToImageOutput:
    """The model calls: the family's encoding and latents, the sampler, the decode."""
    pipe, fam = call.pipe, call.family
    call.device = pipe._execution_device
    enc = fam.encode(pipe, call)
    if call.dtype is None:
        first = next((v for v in enc.cond.values() if isinstance(v, Tensor)
                      and v.is_floating_point()), None)
        call.dtype = first.dtype if first is not None else getattr(pipe, fam.net).dtype
    x_T = (fam.latents or default_latents)(pipe, call)
    if call.more:  # conditioning the latents hook prepared (masks, control images)
        enc.cond.update(call.more)
        if enc.uncond is not None:
            enc.uncond.update(call.more)
    attention = call.get("joint_attention_kwargs") or call.get("cross_attention_kwargs")
    constants = {**enc.constants, **call.constants}
    if attention is not None:
        key = "joint" if call.get("joint_attention_kwargs") is not None else "cross"
        constants[f"{key}_attention_kwargs"] = dict(attention)
    noise = None
    if grid.stochastic:  # the scheduler's per-step draws, in its order
        from diffusers.utils.torch_utils import randn_tensor

        noise = torch.stack([randn_tensor(tuple(x_T.shape), generator=call.generator,
                                          device=call.device, dtype=x_T.dtype)
                             for _ in range(call.steps)])
    guide = fam.guide(pipe, call) if fam.guide is not None and call.cfg else None
    fn = (fam.network or default_network)(pipe, call)
    model = PipelineModel(fn, getattr(pipe, fam.net), tuple(x_T.shape[1:]), constants, guide)
    mk, uk, scale = guidance_inputs(call, enc.cond, enc.uncond, guide)
    common = dict(sampler=kind, eta=eta, noise=noise, model_kwargs=mk, guidance_scale=scale,
                  uncond_kwargs=uk, progress=progress)
    ran, out = run_sampler(model, schedule, x_T, call.steps, ran, kw, common)
    images, nsfw = latents_to_images(pipe, out.sample, output_type, call.height, call.width)
    if hasattr(pipe, "maybe_free_model_hooks"):
        pipe.maybe_free_model_hooks()
    return TextToImageOutput(images, out.sample, x_T, out, nsfw, ran,
                             call.cfg_scale if call.cfg else call.embedded, call.height,
                             call.width)
