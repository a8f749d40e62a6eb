"""
3. Writing your own propagator
==============================

A propagator advances **a batch of block states at once**: given states ``y`` of shape
``[n, *state]`` at per-row start times ``t0`` (shape ``[n]``) it returns the states at
the per-row end times ``t1``. pint's engine only ever calls propagators this way, so any
solver with this contract can be Parareal's coarse or fine propagator. We write two: a
one-step method (explicit midpoint) and a whole-block solver (the matrix exponential of
a linear system).
"""

import math

import matplotlib.pyplot as plt
import torch

import pint
from pint import problems
from pint.propagators import expand_as_state

# %%
# A one-step method
# -----------------
# Subclass :class:`pint.FixedStepPropagator` and write one step. ``f`` is the batched
# right-hand side, ``t`` and ``h`` have shape ``[n]`` (one time and step size per block
# row), ``y`` has shape ``[n, *state]``; :func:`~pint.propagators.expand_as_state` makes
# ``h`` broadcast against ``y``. The base class applies the step ``steps`` times per block.


class Midpoint(pint.FixedStepPropagator):
    """The explicit midpoint rule: order 2, two evaluations of ``f`` per step."""

    evals_per_step = 2

    def step(self, f, t, y, h):
        hb = expand_as_state(h, y)
        return y + hb * f(t + h / 2, y + hb / 2 * f(t, y))


# %%
# Check the order on ``y' = cos(t) y``, whose solution is ``y(t) = exp(sin t)``: halving the
# step should divide the error by four.

problem = pint.ODEProblem(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=torch.float64),
                          t_span=(0.0, 2.0))
exact = math.exp(math.sin(2.0))
steps = [40, 80, 160, 320, 640]
errors = [abs(pint.serial(problem, Midpoint(s), num_blocks=1).y.item() - exact) for s in steps]
orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:], strict=True)]
print("errors:", [f"{e:.2e}" for e in errors])
print("observed orders:", [f"{p:.2f}" for p in orders])
assert all(abs(p - 2) < 0.1 for p in orders)

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(steps, errors, "o-", label="Midpoint")
ax.loglog(steps, [errors[0] * (steps[0] / s) ** 2 for s in steps], "k--", label="slope -2")
ax.set(xlabel="steps", ylabel="error at t = 2", title="a second-order method")
ax.legend()
fig.tight_layout()

# %%
# ``Midpoint`` now works wherever a built-in method does, as coarse or fine propagator and
# in the pipelined schedule (which needs step-by-step methods, because it advances steps
# of different blocks and iterations in one batched call).

case = problems.get("van_der_pol")
res = pint.parareal(case.problem, Midpoint(steps=8), case.fine, case.num_blocks, case.tol)
pipe = pint.parareal(case.problem, Midpoint(steps=8), case.fine, case.num_blocks, case.tol,
                     pipelined=True)
ref = pint.serial(case.problem, case.fine, case.num_blocks)
print(f"Van der Pol with a Midpoint(8) coarse step: {res.iterations} iterations, "
      f"error vs serial {(res.y - ref.y).abs().max():.1e}, "
      f"pipelined gives the same result: {torch.allclose(res.y, pipe.y, rtol=0, atol=1e-12)}")

# %%
# A whole-block solver
# --------------------
# A propagator may also solve each block in one go. Subclass :class:`pint.Propagator` and
# implement ``__call__(f, y, t0, t1)``. For a linear system ``y' = A y`` the exact
# propagator is the matrix exponential ``exp(A (t1 - t0))``; one batched
# :func:`torch.linalg.matrix_exp` serves every block. It ignores ``f`` and knows its
# dynamics itself. ``steps_per_block`` tells the cost accounting how many steps each block
# takes (one here); an adaptive solver would return ``None`` and pint would count its
# ``f`` calls instead.


class MatrixExp(pint.Propagator):
    """Exact solution of ``y' = A y`` over each block: ``y1 = expm(A (t1 - t0)) y``."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A

    def __call__(self, f, y, t0, t1):
        dt = (t1 - t0).to(y.dtype)
        return (torch.linalg.matrix_exp(self.A * dt[:, None, None]) @ y[..., None])[..., 0]

    def steps_per_block(self, t0, t1):
        return torch.ones(t0.shape, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"MatrixExp(A of shape {tuple(self.A.shape)})"


# %%
# A damped oscillator ``x'' = -x - 0.2 x'`` as a first-order system, with the exact
# propagator as the fine one and our ``Midpoint`` (four steps per block) as the coarse one:
# Parareal converges to the exact solution.

A = torch.tensor([[0.0, 1.0], [-1.0, -0.2]], dtype=torch.float64)
oscillator = pint.ODEProblem(lambda t, y: A @ y, torch.tensor([1.0, 0.0], dtype=torch.float64),
                             t_span=(0.0, 30.0))
res = pint.parareal(oscillator, Midpoint(steps=4), MatrixExp(A), num_blocks=30, tol=1e-10)
y_exact = torch.linalg.matrix_exp(30.0 * A) @ oscillator.y0
print(f"{res.iterations} iterations, error vs the exact solution {(res.y - y_exact).abs().max():.1e}")
print("history:", [f"{c:.1e}" for c in res.history])

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(res.times.numpy(), res.boundaries[:, 0].numpy(), "o", label="Parareal boundaries")
ts = torch.linspace(0, 30, 300, dtype=torch.float64)
ax.plot(ts.numpy(), [(torch.linalg.matrix_exp(t * A) @ oscillator.y0)[0].item() for t in ts],
        "k-", lw=0.8, label="exact")
ax.set(xlabel="t", ylabel="x", title="damped oscillator, exact fine propagator")
ax.legend()
fig.tight_layout()

# %%
# What the engine checks
# ----------------------
# The engine checks what a propagator returns, and the pipelined schedule refuses
# propagators that cannot advance step by step, with messages that say what to do:

try:
    pint.parareal(oscillator, Midpoint(4), MatrixExp(A), num_blocks=30, pipelined=True)
except ValueError as err:
    print("ValueError:", err)


class Broken(pint.Propagator):
    def __call__(self, f, y, t0, t1):
        return y[:, :1]  # drops a component

    def __repr__(self) -> str:
        return "Broken()"


try:
    pint.parareal(oscillator, Midpoint(4), Broken(), num_blocks=30)
except TypeError as err:
    print("TypeError:", err)
