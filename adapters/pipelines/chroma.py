"""Chroma: a T5 encoder with attention masks (extended by the image tokens), Flux-style packed
latents and shifted flow-matching sigmas, classifier-free guidance (the pipeline's two calls
with their own masks run here as the halves of one call)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import flux
from .family import Call, Conditioning, PipelineFamily

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def _mask(mask: Tensor | None, n: int, tokens: int) -> Tensor | None:
    """The text mask with the image tokens appended (the pipeline's
    ``_prepare_attention_mask``)."""
    if mask is None:
        return None
    ones = torch.ones(n, tokens, device=mask.device, dtype=torch.bool)
    return torch.cat([mask, ones], dim=1)


def encode(pipe: Any, call: Call) -> Conditioning:
    """T5 embeddings, masks and text ids (and the negative ones with CFG)."""
    g = call.get
    pe, ids, pm, npe, nids, npm = pipe.encode_prompt(
        prompt=g("prompt"), negative_prompt=g("negative_prompt"),
        prompt_embeds=g("prompt_embeds"), negative_prompt_embeds=g("negative_prompt_embeds"),
        prompt_attention_mask=g("prompt_attention_mask"),
        negative_prompt_attention_mask=g("negative_prompt_attention_mask"),
        do_classifier_free_guidance=call.cfg, device=call.device,
        num_images_per_prompt=call.n_img, max_sequence_length=g("max_sequence_length", 512),
        lora_scale=(g("joint_attention_kwargs") or {}).get("scale"))
    tokens = call.shape[1]
    cond = {"encoder_hidden_states": pe, "attention_mask": _mask(pm, call.n, tokens)}
    unc = None
    if call.cfg:
        if nids.shape != ids.shape:
            raise ValueError(f"the negative prompt encodes to {nids.shape[0]} tokens, the prompt "
                             f"to {ids.shape[0]}; give embeddings of the same length")
        unc = {"encoder_hidden_states": npe, "attention_mask": _mask(npm, call.n, tokens)}
    if cond["attention_mask"] is None:
        cond.pop("attention_mask")
        if unc is not None:
            unc.pop("attention_mask", None)
    return Conditioning(cond, unc, {"txt_ids": ids})


def network(pipe: Any, call: Call):
    """The Chroma transformer, ``timestep / 1000`` as the pipeline passes it."""
    net = pipe.transformer

    def fn(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return net(hidden_states=x, timestep=t.to(x.dtype) / 1000, return_dict=False, **kw)[0]
    return fn


FAMILIES = {
    "ChromaPipeline": PipelineFamily(
        "transformer", COMPONENTS, 35, 5.0,
        inputs=("prompt_attention_mask", "negative_prompt_attention_mask"),
        geometry=flux.geometry, timesteps=flux.timesteps, encode=encode, latents=flux.latents,
        network=network, decode=flux.decode),
}
