"""
1. Parareal on a general ODE
============================

The Van der Pol oscillator :math:`x'' = \\mu (1 - x^2) x' - x` is a small nonlinear ODE
with a limit cycle. We solve it with Parareal and learn how to choose the coarse and
fine propagators, how the iteration converges, and why the answer is *exactly* the
serial one.
"""

import matplotlib.pyplot as plt
import torch

import pint

# %%
# The problem
# -----------
# A problem binds the right-hand side to an initial state and a time span. ``f`` is
# written for one state (``y`` of shape ``[2]``: position and velocity); pint vectorises
# it over the blocks with :func:`torch.func.vmap`. float64 keeps round-off out of the
# way.

MU = 1.0


def van_der_pol(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


problem = pint.ODEProblem(van_der_pol, torch.tensor([2.0, 0.0], dtype=torch.float64),
                          t_span=(0.0, 20.0))
B = 20  # blocks of one time unit each

# %%
# The fine propagator defines the answer: 100 RK4 steps per block (step 0.01). The serial
# solve runs it block after block; Parareal must reproduce it.

fine = pint.RK4(steps=100)
serial = pint.serial(problem, fine, num_blocks=B)
print("serial: y(20) =", serial.y.tolist(), "| sequential steps:", serial.stats.depth)

# %%
# Choosing the coarse propagator
# ------------------------------
# The coarse propagator runs block after block, so it must be cheap; it must also be
# *stable* at its large step and close enough to the fine one for the correction to
# converge. We try a few and count iterations and sequential steps (``stats.depth``: the
# critical path, where one batched fine call over all blocks counts once).

candidates = {
    "Euler(1)": pint.Euler(steps=1),
    "Euler(4)": pint.Euler(steps=4),
    "Heun(2)": pint.Heun(steps=2),
    "RK4(1)": pint.RK4(steps=1),
    "RK4(2)": pint.RK4(steps=2),
    "RK4(4)": pint.RK4(steps=4),
}
results = {}
print(f"{'coarse':>9} | iterations | sequential steps | error vs serial")
for name, coarse in candidates.items():
    try:
        res = pint.parareal(problem, coarse, fine, num_blocks=B, tol=1e-8)
    except pint.NonFiniteStateError as err:  # an unstable coarse step blows up
        print(f"{name:>9} | failed: {err}")
        continue
    results[name] = res
    error = (res.y - serial.y).abs().max().item()
    print(f"{name:>9} | {res.iterations:10d} | {res.stats.depth:16d} | {error:.1e}")

best = min(results, key=lambda name: results[name].stats.depth)
print("shortest critical path:", best)

# %%
# With a step of one time unit, explicit methods with too few steps are unstable and the
# solve stops with :class:`pint.NonFiniteStateError` (naming block and iteration). Among
# the stable ones, a more accurate coarse propagator needs fewer iterations, and each
# iteration costs a fine solve (100 steps) plus a coarse sweep, so a few more coarse steps
# per block usually pay off. Every converged run agrees with the serial solution to about
# the tolerance.
#
# Convergence
# -----------
# ``res.history`` holds the largest change of any block boundary in each iteration; the
# loop stops when it falls below ``tol``. The callback shows the boundary states after the
# coarse sweep and after every iteration.

coarse = candidates[best]
iterates = []
res = pint.parareal(problem, coarse, fine, num_blocks=B, tol=1e-8,
                    callback=lambda info: iterates.append(info.boundaries.clone()))

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
t = res.times.numpy()
for k, U in enumerate(iterates[:4]):
    ax[0].plot(t, U[:, 0].numpy(), "o-", ms=3, label=f"iteration {k}")
ax[0].plot(t, serial.boundaries[:, 0].numpy(), "k--", label="serial")
ax[0].set(xlabel="t", ylabel="x at the block boundaries", title="iterates")
ax[0].legend(fontsize=8)
for name, r in results.items():
    ax[1].semilogy(range(1, len(r.history) + 1), r.history, "o-", ms=4, label=name)
ax[1].axhline(1e-8, color="gray", ls=":", label="tol")
ax[1].set(xlabel="iteration", ylabel="max boundary change", title="convergence per coarse")
ax[1].legend(fontsize=8)
fig.tight_layout()

# %%
# Exactness after k iterations
# ----------------------------
# Whatever the propagators, after ``k`` iterations the first ``k`` block boundaries equal
# the serial fine solution (the coarse terms cancel there; see the theory page). With
# ``tol=0`` and ``max_iters=k`` we stop after exactly ``k`` iterations and compare every
# boundary with the serial one. A poor coarse propagator makes the effect easy to see.

poor = pint.Euler(steps=4)
fig, ax = plt.subplots(figsize=(6, 4))
for k in range(0, 7):
    r = pint.parareal(problem, poor, fine, num_blocks=B, tol=0.0, max_iters=k)
    err = (r.boundaries - serial.boundaries).abs().amax(dim=1)
    assert err[: k + 1].max() < 1e-12  # exact up to round-off
    ax.semilogy(range(B + 1), err.clamp(min=1e-17).numpy(), "o-", ms=3, label=f"k = {k}")
ax.set(xlabel="block boundary i", ylabel="|U_i - serial_i|",
       title="after k iterations, boundaries 0..k are exact")
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()

# %%
# With ``max_iters`` left at its default (``num_blocks``) Parareal therefore always ends
# with the serial answer, even for a propagator pair that converges slowly.
#
# The pipelined schedule
# ----------------------
# ``pipelined=True`` starts a block's next fine solve as soon as its start value is
# known instead of waiting for the whole coarse sweep. Same recursion, same numbers, a
# shorter critical path.

pipe = pint.parareal(problem, coarse, fine, num_blocks=B, tol=1e-8, pipelined=True)
print("iterations:", res.iterations, "(sweep),", pipe.iterations, "(pipelined)")
print("max difference of the results:", (pipe.y - res.y).abs().max().item())
print("sequential steps: serial", serial.stats.depth, "| sweep", res.stats.depth,
      "| pipelined", pipe.stats.depth)
print(f"ideal speedup with {B} parallel workers: sweep {serial.stats.depth / res.stats.depth:.1f}x, "
      f"pipelined {serial.stats.depth / pipe.stats.depth:.1f}x")
