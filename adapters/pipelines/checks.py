"""The argument checks every family shares (prompts, embeddings, guidance, numbers), all run
before any model call."""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import Tensor

from .family import FAMILIES, Call, PipelineFamily, find_family

#: srds_pipeline's named arguments that only some pipelines take: refused, by name, where the
#: pipeline's own ``__call__`` lacks them
PER_PIPELINE = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "height",
                "width", "latents", "cross_attention_kwargs", "joint_attention_kwargs",
                "clip_skip", "max_sequence_length")


def pipeline_family(pipe: Any) -> tuple[str, PipelineFamily]:
    """``(class name, family)`` of a supported pipeline (or a subclass of one), with its
    components present.

    Raises:
        TypeError: another class, naming the supported ones and how to add one; a missing
            component.
    """
    name, fam = find_family(pipe)
    missing = [c for c in fam.components if getattr(pipe, c, None) is None]
    if missing:
        raise TypeError(f"pipe must be a text-to-image pipeline with the components "
                        f"{', '.join(fam.components)}; this {type(pipe).__name__} has no "
                        f"{', '.join(missing)}")
    return name, fam


def call_parameters(pipe: Any) -> set[str]:
    """The argument names of ``pipe.__call__`` (empty where it takes ``**kwargs`` only)."""
    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return set()
    return {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def split_kwargs(pipe: Any, name: str, fam: PipelineFamily,
                 kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the family's own pipeline inputs, the sampler's arguments)`` from
    ``srds_pipeline``'s extra keywords; an argument of the pipeline's ``__call__`` that the
    family does not handle is a ``ValueError`` naming it."""
    params = call_parameters(pipe)
    own, rest, refused = {}, {}, []
    for k, v in kwargs.items():
        if k in fam.inputs:
            own[k] = v  # None kept: for some inputs it means "none" (Sana's instruction)
        elif k in params:
            refused.append(k)
        else:
            rest[k] = v
    if refused:
        handled = ", ".join(fam.inputs) or "none"
        raise ValueError(f"{', '.join(refused)}: an argument of {name} that pint does not "
                         f"reproduce (pint's {name} family takes, beyond the prompts: {handled})")
    return own, rest


def check_named(pipe: Any, name: str, values: dict[str, Any]) -> None:
    """Refuse srds_pipeline's per-pipeline arguments the pipeline does not take."""
    params = call_parameters(pipe)
    if not params:
        return
    wrong = [k for k in PER_PIPELINE if values.get(k) is not None and k not in params]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not an argument of a {name}")


def batch_size(name: str, value: Any, b: int | None) -> int | None:
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


def check_embeds(name: str, value: Any, dims: int, like: Tensor | None = None) -> None:
    """``value`` is ``None`` or a tensor of ``dims`` dimensions (the shape of ``like``)."""
    if value is None:
        return
    if not isinstance(value, Tensor) or value.dim() != dims:
        form = "[batch, tokens, dim]" if dims == 3 else "[batch, dim]"
        raise ValueError(f"{name} must be a tensor {form}, got "
                         f"{getattr(value, 'shape', type(value).__name__)}")
    if like is not None and value.shape != like.shape:
        raise ValueError(f"{name} must have the shape {tuple(like.shape)} of its positive "
                         f"counterpart, got {tuple(value.shape)}")


def number(name: str, value: Any) -> float | None:
    """``value`` as a float (``None`` stays ``None``); not a finite number: ``TypeError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` checked as an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_guidance(pipe_name: str, guidance_embeds: bool, guidance_scale: Any,
                   true_cfg_scale: Any, negative: bool) -> tuple[float | None, float | None]:
    """``(cfg_scale, embedded)`` for a pipeline class: the classifier-free guidance scale
    (``None``: no CFG) and an embedded guidance (Flux-type; ``None``: none;
    ``guidance_embeds`` is the transformer's config flag). A guidance option the model does
    not have is a ``ValueError`` naming it, never a silently unguided sample."""
    fam = FAMILIES[pipe_name]
    g = number("guidance_scale", guidance_scale)
    true_cfg = number("true_cfg_scale", true_cfg_scale)
    if fam.cfg_arg == "guidance_scale":
        if true_cfg is not None:
            raise ValueError(f"true_cfg_scale is FluxPipeline's; a {pipe_name} has "
                             "classifier-free guidance through guidance_scale")
        cfg, embedded = (fam.guidance if g is None else g), None
    else:  # Flux-type: guidance_scale is the embedded guidance, true_cfg_scale the CFG
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
        cfg = true_cfg if true_cfg is not None or not negative else fam.cfg_default
        if cfg is not None and cfg > 1 and not negative:
            raise ValueError(f"true_cfg_scale={cfg:g} needs a negative_prompt (or "
                             "negative_prompt_embeds): without one the pipeline runs no "
                             "classifier-free guidance")
    if negative and (cfg is None or cfg <= 1):
        raise ValueError(
            f"a negative prompt needs classifier-free guidance, {fam.cfg_arg} > 1; got "
            f"{fam.cfg_arg}={cfg}, where the pipeline would ignore it")
    return (cfg if cfg is not None and cfg > 1 else None), embedded


def check_prompts(call: Call) -> None:
    """Prompts, negative prompts and embeddings: sets ``call.b``; every check
    ``pipe(...)`` makes, with pint's messages."""
    g, fam, name = call.inputs.get, call.family, call.name
    prompt, prompt_embeds = g("prompt"), g("prompt_embeds")
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of prompt (str or list of str) and prompt_embeds")
    check_embeds("prompt_embeds", prompt_embeds, 3)
    b = prompt_embeds.shape[0] if prompt_embeds is not None else batch_size("prompt", prompt, None)
    for k in ("prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3"):
        batch_size(k, g(k), b)
    neg, neg_embeds = g("negative_prompt"), g("negative_prompt_embeds")
    if neg is not None and neg_embeds is not None:
        raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
    if neg_embeds is not None and prompt_embeds is None:
        raise ValueError("negative_prompt_embeds needs prompt_embeds (or give negative_prompt)")
    check_embeds("negative_prompt_embeds", neg_embeds, 3, prompt_embeds)
    pooled, neg_pooled = g("pooled_prompt_embeds"), g("negative_pooled_prompt_embeds")
    given = [k for k, v in (("pooled_prompt_embeds", pooled),
                            ("negative_pooled_prompt_embeds", neg_pooled)) if v is not None]
    if not fam.pooled and given:
        raise ValueError(f"{', '.join(given)}: a {name} has no pooled embeddings")
    if fam.pooled:
        if prompt_embeds is not None and pooled is None:
            raise ValueError(f"prompt_embeds needs pooled_prompt_embeds for a {name} "
                             "(from the same text encoders)")
        if neg_embeds is not None and neg_pooled is None:
            raise ValueError("negative_prompt_embeds needs negative_pooled_prompt_embeds")
        check_embeds("pooled_prompt_embeds", pooled, 2)
        check_embeds("negative_pooled_prompt_embeds", neg_pooled, 2, pooled)
    call.b = b
    if isinstance(prompt, tuple):
        call.inputs["prompt"] = list(prompt)
    if isinstance(prompt, (list, tuple)):  # one negative prompt for every prompt
        for k in ("negative_prompt", "negative_prompt_2", "negative_prompt_3"):
            if isinstance(call.inputs.get(k), str):
                call.inputs[k] = [call.inputs[k]] * b


def negative_given(call: Call) -> bool:
    """Whether any negative prompt (text or embeddings) was given."""
    return any(call.get(k) is not None for k in (
        "negative_prompt", "negative_prompt_embeds", "negative_prompt_2", "negative_prompt_3"))


def check_tol(tol: Any) -> None:
    """``tol`` is ``None`` or a finite number >= 0."""
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                            or not math.isfinite(tol) or tol < 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def check_strength(call: Call) -> int:
    """``strength`` in ``(0, 1]``; returns the first step of the grid that runs
    (diffusers' ``get_timesteps``: ``N - min(int(N * strength), N)``)."""
    s = number("strength", call.get("strength", call.family.strength))
    if s is None:
        return 0
    if not 0 < s <= 1:
        raise ValueError(f"strength must be in (0, 1], got {s:g}")
    N = call.num_steps
    rule = call.family.begin
    begin = rule(N, s) if rule is not None else max(N - min(int(N * s), N), 0)
    if begin >= N:
        raise ValueError(f"strength={s:g} with num_inference_steps={N} leaves no step to run; "
                         "raise strength or num_inference_steps")
    return begin
