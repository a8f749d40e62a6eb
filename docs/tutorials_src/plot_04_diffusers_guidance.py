"""
4. A diffusers model from a local folder, with classifier-free guidance
=======================================================================

Any diffusers UNet (``UNet2DModel`` or ``UNet2DConditionModel``) with a DDIM or DDPM
scheduler runs on pint's samplers through :func:`adapters.diffusers.from_diffusers`. The
schedule keeps the scheduler's betas, prediction type, timestep spacing and final alpha,
so ``serial_sample`` reproduces diffusers' own loop, and ``srds_sample`` reproduces that.

Nothing is downloaded here: we build a tiny text-conditioned UNet from a config (random
weights), save it to a local folder in the diffusers pipeline layout, and load it back
the way you would load a real model you have on disk.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from adapters.diffusers import from_diffusers
from adapters.diffusion import load_pretrained, serial_sample, srds_sample

# %%
# A model folder
# --------------
# A pipeline folder holds ``unet/`` (``config.json`` and safetensors weights) and
# ``scheduler/`` (``scheduler_config.json``), as ``save_pretrained`` writes them.

torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
    layers_per_block=1, cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)

folder = Path(tempfile.mkdtemp()) / "tiny-text-to-latent"
unet.save_pretrained(folder / "unet")  # safetensors
scheduler.save_pretrained(folder / "scheduler")
for path in sorted(folder.rglob("*")):
    if path.is_file():
        print(path.relative_to(folder))

# %%
# Loading it
# ----------
# Load the parts with diffusers as usual and hand them to ``from_diffusers``; it returns
# pint's model wrapper (``model(x [R, 4, 8, 8], t [R], **kwargs)``) and a
# :class:`~adapters.diffusion.VPSchedule`.

unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
model, schedule = from_diffusers(unet, scheduler)
print(schedule)
print("sample shape:", model.sample_shape)

# %%
# ``load_pretrained(folder)`` does the same in one call (it accepts the pipeline layout
# or ``config.json`` and ``scheduler_config.json`` side by side, and loads safetensors
# only, since unpickling runs arbitrary code).

model2, schedule2 = load_pretrained(folder)
print("same schedule:", torch.equal(schedule2.alphas_cumprod, schedule.alphas_cumprod))

# %%
# Conditioning and classifier-free guidance
# -----------------------------------------
# ``model_kwargs`` go to the UNet with every call (here ``encoder_hidden_states``, the
# "text embeddings" ``[batch, tokens, cross_attention_dim]``). With ``guidance_scale=w``
# and ``uncond_kwargs`` (the unconditional embeddings), every model call evaluates the
# conditional and the unconditional halves in **one** batched call and combines them as
# ``uncond + w (cond - uncond)``; across all blocks of an SRDS iteration, still one call.

b, w, N = 4, 5.0, 50
cond = torch.randn(b, 3, 12)
uncond = torch.zeros(b, 3, 12)
guidance = dict(model_kwargs={"encoder_hidden_states": cond}, guidance_scale=w,
                uncond_kwargs={"encoder_hidden_states": uncond})
x_T = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(1))

with torch.no_grad():
    serial = serial_sample(model, schedule, x_T, N, **guidance)
    out = srds_sample(model, schedule, x_T, N, return_iterates=True, **guidance)

# %%
# The reference: diffusers' own guided DDIM loop (what a diffusers pipeline does).

scheduler.set_timesteps(N)
y = x_T.clone()
with torch.no_grad():
    for t in scheduler.timesteps:
        eps = unet(torch.cat([y, y]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = eps.chunk(2)
        y = scheduler.step(eps_uncond + w * (eps_cond - eps_uncond), t, y).prev_sample

scale = y.abs().max().item()
print(f"serial_sample vs diffusers' loop: max relative difference "
      f"{(serial - y).abs().max().item() / scale:.1e}")
print(f"SRDS: {out.iterations} iterations over {out.num_blocks} blocks, "
      f"{out.stats.depth} sequential calls instead of {N}, max relative difference to "
      f"diffusers {(out.sample - y).abs().max().item() / scale:.1e}")
print(f"rows through the UNet: {out.stats.model_rows} (guidance counts both halves)")

# %%
# The iterations converge to diffusers' sample. Stronger guidance makes the sampler's ODE
# harder for the one-step coarse jump to follow: the changes per iteration grow with
# ``w``, and with them, eventually, the iterations needed.
# (The weights are random, so the samples are noise-like latents; with a trained model
# the same code gives its images.)

errors = [(it - y).abs().max().item() / scale for it in out.iterates]
scales = [1.0, 2.0, 5.0, 10.0]
with torch.no_grad():
    runs = {s: srds_sample(model, schedule, x_T, N, model_kwargs={"encoder_hidden_states": cond},
                           guidance_scale=s, uncond_kwargs={"encoder_hidden_states": uncond})
            for s in scales}

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
ax[0].semilogy(range(len(errors)), errors, "o-")
ax[0].set(xlabel="iteration", ylabel="max relative difference to diffusers",
          title=f"SRDS with guidance w = {w:g}, N = {N}")
ax[0].set_xticks(range(len(errors)))
for s, r in runs.items():
    ax[1].semilogy(range(1, len(r.history) + 1), r.history, "o-",
                   label=f"w = {s:g}: {r.iterations} iterations, {r.stats.depth} calls")
ax[1].axhline(out.tol, color="gray", ls=":", label="tol")
ax[1].set(xlabel="iteration", ylabel="change of the final sample", title="guidance scale")
ax[1].set_xticks(range(1, max(r.iterations for r in runs.values()) + 1))
ax[1].legend(fontsize=8)
fig.tight_layout()
