"""
7. Text-to-image: SRDS for a local StableDiffusion folder
=========================================================

:func:`adapters.diffusers.srds_pipeline` samples a loaded diffusers
``StableDiffusionPipeline`` with SRDS (or ``sampler="serial"`` / ``"picard"``) using the
pipeline's own components: ``encode_prompt`` (or your ``prompt_embeds`` /
``negative_prompt_embeds``), latents from your ``generator`` via ``prepare_latents``,
classifier-free guidance in one batched UNet call per step, and one VAE decode of the
final latents. Everything is offline and safetensors-only.

This page is not run while the documentation is built (it needs a StableDiffusion
folder, and a GPU to be worth it). The same code path is tested on a tiny pipeline built
from configs (``tests/diffusion/test_text_to_image.py``): the serial path gives the
latents of ``pipe(..., output_type="latent")`` to 1e-4 relative, and SRDS converges to
them.
"""

# %%
# Load the folder
# ---------------
# StableDiffusion folders ship a PNDM scheduler, which pint does not sample;
# ``scheduler="ddim"`` swaps in DDIM steps on the *same* betas (the same model, the DDIM
# sampler of the paper). Folders that are not text-to-image pipelines, or whose scheduler
# cannot be mapped, are refused before any weights are loaded.

import torch

from adapters.diffusers import load_text_to_image, srds_pipeline

pipe = load_text_to_image("path/to/stable-diffusion", device="cuda", dtype=torch.float16,
                          scheduler="ddim")

# %%
# Sample, and check against the serial sampler
# --------------------------------------------
# With the same seed the serial path reproduces the pipeline's own latents, and SRDS
# converges to them. ``out.stats.depth`` counts the UNet calls on the critical path.

prompt = "a photo of a cat"
kw = dict(num_inference_steps=25, guidance_scale=7.5, negative_prompt="blurry")
out = srds_pipeline(pipe, prompt, generator=torch.Generator().manual_seed(0), **kw)
ref = srds_pipeline(pipe, prompt, generator=torch.Generator().manual_seed(0),
                    sampler="serial", **kw)
print(out.sampling.iterations, out.sampling.history, out.stats.depth)
print((out.latents - ref.latents).abs().max())
out.images[0].save("cat.png")

# %%
# What to expect on a GPU
# -----------------------
# * The paper's settings are 25 and 100 DDIM steps with blocks of about sqrt(N) steps
#   (5 x 5 and 10 x 10: ``num_blocks=5, pipelined=False``), where it reports 1.7x and
#   2.3x wall-clock on 4 A100s. pint's default is the pipelined schedule with about
#   2 sqrt(N) blocks: fewer sequential calls, wider batches.
# * Each UNet call holds up to ``num_blocks x 2 x images`` latents (guidance doubles the
#   batch). A large UNet on one GPU is compute bound well before that, so wall-clock
#   follows the sequential depth only while such a batch costs about as much as one
#   image; ``pint-sample --compare-serial`` measures the real ratio.
# * The tolerance is on the latents (max-abs change of the final latents in one
#   iteration). SD's latents are scaled by the VAE's ``scaling_factor`` to about unit
#   spread, so the defaults apply (2e-3 in float32, 2e-2 in float16); keep ``tol`` a few
#   times above the serial sampler's own round-off floor (``--compare-serial`` reports it,
#   in float16 especially).
# * Memory: SRDS holds ``num_blocks + 1`` latents, never images; only the final latents
#   are decoded.
#
# From the command line::
#
#     pint-sample --model path/to/stable-diffusion --scheduler ddim \
#         --prompt "a photo of a cat" --negative-prompt blurry --guidance-scale 7.5 \
#         --steps 25 --num-samples 4 --compare-serial --out out/
#
# writes ``samples.png``, ``convergence.png`` (the change per iteration, the final decoded
# images and each iteration's difference to them), ``report.json``, every image under
# ``images/`` and the latents.
