"""Qwen-Image: a Qwen2.5-VL text encoder behind a prompt template, packed latents, true CFG
whose result is rescaled to the conditional prediction's norm (nonlinear: the guidance runs
inside the model call), positive and negative embeddings of their own lengths and masks (two
network calls where they differ)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import flux
from .family import Call, Conditioning, PipelineFamily

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def check(pipe: Any, call: Call) -> None:
    """Guidance-distilled transformers need ``guidance_scale`` (as the pipeline says)."""
    if pipe.transformer.config.guidance_embeds and call.embedded is None:
        raise ValueError("guidance_scale is required for a guidance-distilled transformer")


def encode(pipe: Any, call: Call) -> Conditioning:
    """The templated prompt's hidden states and mask (``None`` where every token counts),
    and the negative prompt's, each of its own length."""
    g = call.get
    common = dict(device=call.device, num_images_per_prompt=call.n_img,
                  max_sequence_length=g("max_sequence_length", 512))
    pe, pm = pipe.encode_prompt(prompt=g("prompt"), prompt_embeds=g("prompt_embeds"),
                                prompt_embeds_mask=g("prompt_embeds_mask"), **common)
    cond = {"encoder_hidden_states": pe, "encoder_hidden_states_mask": pm}
    unc = None
    if call.cfg:
        npe, nm = pipe.encode_prompt(
            prompt=g("negative_prompt"), prompt_embeds=g("negative_prompt_embeds"),
            prompt_embeds_mask=g("negative_prompt_embeds_mask"), **common)
        unc = {"encoder_hidden_states": npe, "encoder_hidden_states_mask": nm}
    if call.embedded is not None:
        cond["guidance"] = torch.full([1], call.embedded, device=call.device,
                                      dtype=torch.float32).expand(call.n)
    sf = pipe.vae_scale_factor
    shapes = [[(1, call.height // sf // 2, call.width // sf // 2)]]
    return Conditioning(cond, unc, {"img_shapes": shapes})


def latents(pipe: Any, call: Call) -> Tensor:
    """``pipe.prepare_latents``: packed noise."""
    return pipe.prepare_latents(call.n, call.channels, call.height, call.width, call.dtype,
                                call.device, call.generator, call.get("latents"))


def network(pipe: Any, call: Call):
    """The Qwen-Image transformer, ``timestep / 1000`` as the pipeline passes it."""
    net, attn = pipe.transformer, call.get("attention_kwargs") or {}

    def fn(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return net(hidden_states=x, timestep=t.to(x.dtype) / 1000, attention_kwargs=attn,
                   return_dict=False, **kw)[0]
    return fn


def guide(pipe: Any, call: Call):
    """``comb = uncond + s (cond - uncond)``, rescaled to ``|cond|`` over the channels."""
    s = call.cfg_scale

    def combine(c: Tensor, u: Tensor, t: Tensor) -> Tensor:
        comb = u + s * (c - u)
        return comb * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    return combine


def decode(pipe: Any, latents: Tensor, output_type: str, height: int | None,
           width: int | None):
    """Unpack to one frame, de-normalise by ``latents_mean``/``latents_std``, decode."""
    vae = pipe.vae
    z = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
    image = vae.decode(z / std + mean, return_dict=False)[0][:, :, 0]
    return pipe.image_processor.postprocess(image, output_type=output_type), None


FAMILIES = {
    "QwenImagePipeline": PipelineFamily(
        "transformer", COMPONENTS, 50, None, cfg_arg="true_cfg_scale", cfg_default=4.0,
        inputs=("prompt_embeds_mask", "negative_prompt_embeds_mask", "attention_kwargs"),
        check=check, geometry=flux.geometry, timesteps=flux.timesteps, encode=encode,
        latents=latents, network=network, guide=guide, decode=decode),
}
