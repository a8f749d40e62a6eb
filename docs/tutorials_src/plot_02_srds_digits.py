"""
2. SRDS on the bundled digits model
===================================

A diffusion sampler with :math:`N` steps turns noise into an image through :math:`N`
model calls, one after another. SRDS (Self-Refining Diffusion Samplers) runs the same
sampler as Parareal: a one-step DDIM jump per block is the coarse propagator, the
sampler's own steps are the fine one. It returns the serial sample, refined over a few
iterations, in far fewer *sequential* model calls.

The digits model ships with pint (a small UNet trained on scikit-learn's 8x8 digits), so
this runs offline in seconds. It needs the ``diffusers`` extra.
"""

import matplotlib.pyplot as plt
import torch

from adapters.diffusion import load_pretrained, serial_floor, serial_sample, srds_sample

# %%
# The model and the noise
# -----------------------
# ``load_pretrained`` returns the model (``model(x [R, 1, 8, 8], t [R]) -> eps``) and its
# noise schedule, with the sampler conventions of its diffusers scheduler.

model, schedule = load_pretrained("digits")
print(schedule)

N = 200  # sampler steps (the serial sampler makes N model calls)
x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # 8 samples


def show(images: torch.Tensor, ax: plt.Axes, title: str) -> None:
    """Draw a batch [b, 1, 8, 8] with values in [-1, 1] as one row of digits."""
    row = torch.cat(list(images[:, 0].clamp(-1, 1)), dim=1)
    ax.imshow(row.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9, loc="left")


# %%
# The serial sampler and SRDS
# ---------------------------
# ``srds_sample`` splits the ``N`` steps into ``B = sqrt(N)`` blocks by default and stops
# when the final sample changes by less than ``tol`` in one iteration (default: ``2e-3``
# in float32, data in ``[-1, 1]``). ``return_iterates=True`` keeps the sample after the
# coarse sweep and after every iteration.

with torch.no_grad():
    serial = serial_sample(model, schedule, x_T, N)
    out = srds_sample(model, schedule, x_T, N, return_iterates=True)

print(f"{out.num_blocks} blocks, {out.iterations} iterations, converged: {out.converged}")
print("change of the final sample per iteration:", [f"{c:.1e}" for c in out.history])
print(f"max difference to the serial sample: {(out.sample - serial).abs().max():.1e}")

# %%
# Samples after each iteration
# ----------------------------
# The coarse sweep (iteration 0: ``B`` one-step DDIM jumps) already sketches the digits;
# every iteration refines them towards the serial sample, and the last rows match it.

its = out.iterates  # [iterations + 1, 8, 1, 8, 8]
fig, axes = plt.subplots(len(its) + 1, 1, figsize=(10, 0.9 * (len(its) + 1)))
for k, images in enumerate(its):
    err = (images - serial).abs().max().item()
    show(images, axes[k], f"iteration {k}: max difference to serial {err:.1e}")
show(serial, axes[-1], f"serial sampler, {N} steps")
fig.tight_layout()

# %%
# The error against the serial sample falls faster than the change that the stopping
# rule measures (Parareal converges superlinearly), so the returned sample is closer to
# the serial one than ``tol``. In float32 the serial sampler itself is only reproducible
# to a floor: the same noise sampled in another batch composition rounds differently.
# ``serial_floor`` measures it; differences below it are noise.

with torch.no_grad():
    floor = serial_floor(model, schedule, x_T, N, singles=1)
errors = [(images - serial).abs().max().item() for images in its]
fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(range(len(errors)), errors, "o-", label="max |sample - serial|")
ax.semilogy(range(1, len(out.history) + 1), out.history, "s--", label="change (stopping rule)")
ax.axhline(out.tol, color="gray", ls=":", label=f"tol = {out.tol:g}")
ax.axhline(max(floor, 1e-9), color="red", ls=":", label=f"float32 floor {floor:.0e}")
ax.set(xlabel="iteration", title=f"SRDS on digits, N = {N}, B = {out.num_blocks}")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Speedup in model calls
# ----------------------
# ``out.stats.depth`` counts the model calls on the critical path: each one is batched
# over blocks (and samples), so on a GPU below saturation, or with blocks on several
# devices, wall-clock time follows it. The pipelined schedule overlaps iterations and
# needs fewer still.

with torch.no_grad():
    pipe = srds_sample(model, schedule, x_T, N, pipelined=True)

print(f"{'sampler':>15} | seq. calls | speedup | rows | max diff to serial")
print(f"{'serial':>15} | {N:10d} | {1:6.1f}x | {len(x_T) * N:4d} | 0")
for name, o in (("SRDS sweep", out), ("SRDS pipelined", pipe)):
    print(f"{name:>15} | {o.stats.depth:10d} | {N / o.stats.depth:6.1f}x | {o.stats.model_rows:4d} | "
          f"{(o.sample - serial).abs().max():.1e}")

# %%
# ``rows`` counts the images pushed through the network. Parallel samplers do more total
# work than the serial one; they win where a batch of rows costs about as much as one
# row (a GPU), not on a CPU, where a batch costs in proportion to its rows. Longer
# trajectories gain more, since the iterations needed barely grow with ``N`` (the
# benchmarks page measures ``N = 1000``). Run to the end (``max_iters=B``), SRDS returns
# the serial sample exactly; in float64 the agreement is to round-off.
