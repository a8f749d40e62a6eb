"""StableDiffusion 3 / 3.5: CLIP-L/G + T5 encoders, a flow-matching SD3 transformer."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import vae_decode
from .family import Call, Conditioning, PipelineFamily

TEXT2 = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def encode(pipe: Any, call: Call) -> Conditioning:
    """``pipe.encode_prompt`` with every text encoder: joint and pooled embeddings."""
    g = call.get
    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompt=g("prompt"), prompt_2=g("prompt_2"), prompt_3=g("prompt_3"),
        negative_prompt=g("negative_prompt"), negative_prompt_2=g("negative_prompt_2"),
        negative_prompt_3=g("negative_prompt_3"), do_classifier_free_guidance=call.cfg,
        prompt_embeds=g("prompt_embeds"), negative_prompt_embeds=g("negative_prompt_embeds"),
        pooled_prompt_embeds=g("pooled_prompt_embeds"),
        negative_pooled_prompt_embeds=g("negative_pooled_prompt_embeds"),
        clip_skip=g("clip_skip"), device=call.device, num_images_per_prompt=call.n_img,
        lora_scale=(g("joint_attention_kwargs") or {}).get("scale"),
        max_sequence_length=g("max_sequence_length", 256))
    return Conditioning({"encoder_hidden_states": pe, "pooled_projections": ppe},
                        {"encoder_hidden_states": npe, "pooled_projections": nppe}
                        if call.cfg else None)


def timesteps(pipe: Any, call: Call) -> dict[str, Any]:
    """SD3's ``mu`` when its scheduler shifts dynamically (from the image's token count)."""
    cfg = pipe.scheduler.config
    if not cfg.get("use_dynamic_shifting", None):
        return {}
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    patch = pipe.transformer.config.patch_size
    seq_len = (call.shape[2] // patch) * (call.shape[3] // patch)
    return {"mu": calculate_shift(seq_len, cfg.get("base_image_seq_len", 256),
                                  cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                  cfg.get("max_shift", 1.16))}


def decode(pipe: Any, latents: Tensor, output_type: str, height: Any, width: Any):
    """``latents / scaling_factor + shift_factor`` through the VAE."""
    return vae_decode(pipe, latents, output_type)


FAMILIES = {
    "StableDiffusion3Pipeline": PipelineFamily(
        "transformer", ("transformer", "vae", *TEXT2), 28, 7.0, pooled=True,
        timesteps=timesteps, encode=encode, decode=decode),
}
