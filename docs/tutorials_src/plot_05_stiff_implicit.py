"""
5. Stiff problems: implicit coarse steps
========================================

Parareal's coarse propagator takes one large step per block. On a stiff problem (fast
decaying modes, such as diffusion on a fine grid) an explicit step of that size is
unstable, and Parareal then needs as many iterations as there are blocks, or blows up.
Implicit methods stay stable at any step: :class:`pint.BackwardEuler`,
:class:`pint.SDIRK2` and :class:`pint.ImplicitMidpoint` solve their stage equations with
a batched Newton iteration (per-row Jacobians from :mod:`torch.func`, one batched linear
solve for all blocks).
"""

import matplotlib.pyplot as plt
import torch

import pint
from pint import problems

# %%
# Stability at large steps
# ------------------------
# On ``y' = lambda y`` one step of size ``h`` multiplies ``y`` by the method's stability
# function ``R(z)``, ``z = h lambda``. We measure it with the propagators themselves: a
# state of many independent components, each with its own ``lambda``, one step of size 1.

z = -torch.logspace(-1, 3, 200, dtype=torch.float64)
decay = pint.ODEProblem(lambda t, y: z * y, torch.ones_like(z), t_span=(0.0, 1.0))
methods = {"Euler": pint.Euler(1), "RK4": pint.RK4(1), "ImplicitMidpoint": pint.ImplicitMidpoint(1),
           "BackwardEuler": pint.BackwardEuler(1), "SDIRK2": pint.SDIRK2(1)}
fig, ax = plt.subplots(figsize=(6, 4))
for name, method in methods.items():
    R = pint.serial(decay, method, num_blocks=1).y.abs()
    ax.loglog(-z.numpy(), R.clamp(min=1e-12).numpy(), label=name)
ax.axhline(1, color="k", lw=0.8, ls=":")
ax.set(xlabel="-z = -h lambda", ylabel="|R(z)|", ylim=(1e-4, 1e8),
       title="growth per step (> 1: unstable)")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Explicit methods grow without bound once ``|z|`` exceeds a few units. Backward Euler
# and SDIRK2 are *L-stable*: ``R(z) -> 0`` for very stiff modes, which they damp as the
# exact solution does. The implicit midpoint rule is stable (``|R| <= 1``) but
# ``R(z) -> -1``: stiff modes flip sign every step instead of decaying.
#
# The heat equation
# -----------------
# :func:`pint.problems.heat` is ``u_t = u_xx`` on 31 interior grid points (method of lines).
# Its stiffest mode decays at rate about ``4 / dx^2``; one coarse step per block of 20 is
# far beyond the explicit limit.

case = problems.get("heat")
p = case.problem
B = case.num_blocks
dx = case.params["length"] / (case.params["points"] + 1)
lam_max = 4 * case.params["diffusivity"] / dx ** 2
H = (p.t_end - p.t_start) / B
print(f"{case.params['points']} points, {B} blocks: coarse step {H:g}, h * lambda_max = {-H * lam_max:.0f} "
      f"(explicit Euler needs |h lambda| <= 2)")

exact = case.exact(p.t_end)  # the exact solution of the semi-discrete system
coarses = {"Euler(1)": pint.Euler(1), "BackwardEuler(1)": pint.BackwardEuler(1),
           "SDIRK2(1)": pint.SDIRK2(1), "ImplicitMidpoint(1)": pint.ImplicitMidpoint(1)}
heat_runs = {}
print(f"{'coarse':>20} | iterations | error vs exact")
for name, coarse in coarses.items():
    res = pint.parareal(p, coarse, case.fine, B, case.tol)
    heat_runs[name] = res
    print(f"{name:>20} | {res.iterations:10d} | {(res.y - exact).abs().max():.1e}")

# %%
# With explicit Euler the coarse sweep is useless (its stiffest mode grows by about
# ``|1 + z|`` per block) and Parareal only terminates because it is exact after ``B``
# iterations: no speedup. On Allen-Cahn below, it overflows outright. The implicit
# coarse steps converge in a few iterations. The smooth initial condition excites only
# slow modes here, so the implicit midpoint rule does well too.
#
# A nonlinear stiff problem
# -------------------------
# Allen-Cahn, ``u_t = epsilon^2 u_xx + u - u^3``: the state separates into phases ``+-1``
# joined by thin fronts. The coarse stage equations are now nonlinear, and Newton's
# method solves them for all blocks at once.

ac = problems.get("allen_cahn")
ref = ac.reference()  # scipy Radau at 1e-12
ac_runs = {}
print(f"{'coarse':>20} | iterations | error vs Radau")
for name, coarse in coarses.items():
    try:
        res = pint.parareal(ac.problem, coarse, ac.fine, ac.num_blocks, ac.tol)
    except pint.NonFiniteStateError as err:
        print(f"{name:>20} | failed: {err}")
        continue
    ac_runs[name] = res
    print(f"{name:>20} | {res.iterations:10d} | {(res.y - ref).abs().max():.1e}")

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for name, res in heat_runs.items():
    ax[0].semilogy(range(1, len(res.history) + 1), res.history, "o-", ms=3, label=f"heat, {name}")
for name, res in ac_runs.items():
    ax[0].semilogy(range(1, len(res.history) + 1), res.history, "s--", ms=3,
                   label=f"Allen-Cahn, {name}")
ax[0].set(xlabel="iteration", ylabel="max boundary change", title="convergence")
ax[0].legend(fontsize=7)
points = ac.params["points"]
x = [(i + 1) / (points + 1) for i in range(points)]
ax[1].plot(x, ac.problem.y0.numpy(), "k:", label="u(x, 0)")
ax[1].plot(x, ac_runs["SDIRK2(1)"].y.numpy(), "-", label=f"u(x, {ac.problem.t_end:g}), Parareal")
ax[1].plot(x, ref.numpy(), "--", label="Radau reference")
ax[1].set(xlabel="x", ylabel="u", title="Allen-Cahn: phase separation")
ax[1].legend(fontsize=8)
fig.tight_layout()

# %%
# SDIRK2 converges fastest on Allen-Cahn: second order and L-stable. The implicit
# midpoint rule's undamped stiff modes (``R -> -1``) slow it down here, and backward
# Euler's first order costs iterations. If Newton fails to converge within
# ``max_newton`` iterations, the solve stops with :class:`pint.NewtonConvergenceError`
# naming the block and the step; more coarse steps per block or a looser ``newton_tol``
# help. The choice of coarse propagator is the main lever on the iteration count: the
# benchmarks page compares it over the whole problem catalog.

# what the text above says, checked whenever the documentation is built
assert heat_runs["Euler(1)"].iterations == B
assert max(heat_runs[n].iterations for n in coarses if n != "Euler(1)") < B / 2
assert ac_runs["SDIRK2(1)"].iterations == min(r.iterations for r in ac_runs.values())
assert "Euler(1)" not in ac_runs
