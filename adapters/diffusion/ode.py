"""The sampler's recursion as an ODE on the pint engine.

Time is the position ``s`` on the sampler's grid: the state at ``s = j`` is the sample
after ``j`` of the ``N`` steps, so ``t_span = (0, N)``. A block ``[s0, s1)`` holds steps
``s0 .. s1 - 1``. The fine propagator takes those steps one by one (one model call per
step, batched over blocks) with the serial solver's own coefficients (:mod:`.grid`); the
coarse propagator jumps across the whole block with one first-order (DDIM) step from the
noise level of step ``s0`` to the level after step ``s1 - 1``. Both are the same
:class:`GridStep` with different step sizes, so the pipelined schedule batches coarse and
fine rows into one model call.

Multistep solvers carry their history in the state: it is ``[batch, S, *sample]`` with
the sample in slot 0 (``S = 1`` keeps the plain ``[batch, *sample]`` layout), so every
step is a deterministic map of the state and Parareal stays exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pint import StepPropagator

from .grid import SamplingGrid
from .model import Denoiser


class GridStep(StepPropagator):
    """One solver step on a sampler grid. ``fine=True``: one step per grid step (the exact
    serial sampler, including its noise and history); ``fine=False``: one deterministic
    first-order jump per block.

    Args:
        denoiser: the wrapped model.
        grid: the sampler's per-step tables.
        fine: which of the two propagators this is.
        noise: per-step noise ``[N, *sample]`` for stochastic grids (drawn up front).
        order: for the coarse jump: 1 (DDIM) or 2 (DPM-Solver++(2S): a second model
            evaluation at the block's middle grid step, second order in log-SNR; one-step
            solvers only).
    """

    def __init__(self, denoiser: Denoiser, grid: SamplingGrid, fine: bool,
                 noise: Tensor | None = None, order: int = 1) -> None:
        if grid.stochastic and noise is None:
            raise ValueError("a stochastic sampler grid needs its per-step noise")
        if order not in (1, 2):
            raise ValueError(f"coarse order must be 1 (DDIM) or 2 (DPM-Solver++(2S)), got {order!r}")
        if order == 2 and grid.num_slots > 1:
            raise ValueError(f"coarse='dpm2' needs a one-step solver, not {grid.solver!r}")
        self.denoiser, self.grid, self.fine, self.noise = denoiser, grid, fine, noise
        self.order = 1 if fine else order
        self.evals_per_step = self.order
        S = grid.num_slots
        single, jump = grid.coef, grid.jump_coef()
        if not grid.stochastic:
            single, jump = single[..., :-1], jump[..., :-1]
        # the ingredients each output slot ever uses (zero columns cost no kernels)
        used = (single != 0).any(0) | (jump != 0).any(0)
        self._used = [[k for k in range(used.shape[1]) if bool(used[s, k])] for s in range(S)]
        self._tables = (single, jump)
        self._scaled_input = bool((grid.c_in != 1).any())  # else no input multiply
        self._dev: dict = {}

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor:
        if self.fine:
            return (t1 - t0).round().to(torch.int64)
        return torch.ones(t0.shape, dtype=torch.int64)

    def batches_with(self, other) -> bool:
        return (isinstance(other, GridStep) and other.denoiser is self.denoiser
                and other.grid is self.grid and other.order == self.order)

    def _coeffs(self, device: torch.device) -> dict[str, Tensor]:
        """The grid's tables on ``device`` (float64, built once per device): ``single[j]``
        the coefficients of grid step ``j``, ``jump[e]`` those of a first-order jump ending
        after step ``e``; ``levels[j]`` = ``(alpha, sigma, c_in)`` before step ``j``."""
        if device not in self._dev:
            g = self.grid
            single, jump = self._tables
            self._dev[device] = {
                "timesteps": g.timesteps.to(device),
                "levels": torch.stack([g.alpha_from, g.sigma_from, g.c_in], 1).to(device),
                "to": torch.stack([g.alpha_to, g.sigma_to], 1).to(device),
                "single": single.to(device), "jump": jump.to(device),
            }
        return self._dev[device]

    def _predict(self, c: dict[str, Tensor], x: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        lv = c["levels"][j]
        c_in = lv[:, 2] if self._scaled_input else None
        return self.denoiser.predict(x, c["timesteps"][j], lv[:, 0], lv[:, 1], c_in)

    def step(self, f, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        if self.order == 2:
            return self._step_2s(t, y, h)
        c = self._coeffs(y.device)
        j = t.round().to(torch.int64)
        hs = h.round().to(torch.int64)
        S = self.grid.num_slots
        slots = [y] if S == 1 else list(y.unbind(2))
        x0, eps = self._predict(c, slots[0], j)
        parts = slots + [x0, eps]
        if self.grid.stochastic:
            parts.append(self.noise[j].to(y.dtype))
        # one table of coefficients per block: a grid step where h = 1, a jump otherwise
        coef = torch.where((hs == 1).view(-1, 1, 1), c["single"][j], c["jump"][j + hs - 1])
        coef = coef.to(y.dtype)
        shape = (-1,) + (1,) * (slots[0].dim() - 1)
        out = []
        for s in range(S):
            acc = None
            for k in self._used[s]:
                term = coef[:, s, k].view(shape) * parts[k]
                acc = term if acc is None else acc + term
            out.append(acc if acc is not None else torch.zeros_like(slots[0]))
        return out[0] if S == 1 else torch.stack(out, 2)

    def _step_2s(self, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        """DPM-Solver++(2S) across each block: data prediction at the start ``s`` and at
        the block's middle grid step ``m``; deterministic (coarse only)."""
        c = self._coeffs(y.device)
        j = t.round().to(torch.int64)
        hs = h.round().to(torch.int64)
        m = j + hs // 2
        shape = (-1,) + (1,) * (y.dim() - 1)

        def cast(v: Tensor) -> Tensor:
            return v.to(y.dtype).view(shape)

        a_s, s_s = c["levels"][j, 0], c["levels"][j, 1]
        a_m, s_m = c["levels"][m, 0], c["levels"][m, 1]
        end = c["to"][j + hs - 1]
        a_t, s_t = end[:, 0], end[:, 1]
        x0_s, eps_s = self._predict(c, y, j)
        u = cast(a_m) * x0_s + cast(s_m) * eps_s  # first-order jump to m
        x0_m, _ = self._predict(c, u, m)

        def lam(a: Tensor, s: Tensor) -> Tensor:  # log-SNR, capped where sigma reaches 0
            ab = (a**2 / (a**2 + s**2)).clamp(max=1 - 1e-10)
            return 0.5 * (ab.log() - (1 - ab).log())

        # the weight of the middle prediction: 1 / (2 r), r = where the middle lies in
        # log-SNR. From pure noise (alpha_s = 0: flow matching's first level, zero terminal
        # SNR) log-SNR starts at -inf; there D is the exponential integrator's average of
        # x0 with x0_s before the middle and x0_m after it: weight 1 - exp(-(lam_t - lam_m))
        noisy = a_s == 0
        lam_s = torch.where(noisy, torch.zeros_like(a_s), lam(a_s, s_s))
        lam_m, lam_t = lam(a_m, s_m), lam(a_t, s_t)
        r = (lam_m - lam_s) / (lam_t - lam_s)
        w = torch.where(noisy, -torch.expm1(lam_m - lam_t), 1 / (2 * r.clamp(min=1e-6)))
        w = torch.where(hs > 1, w, torch.zeros_like(w))
        d = cast(1 - w) * x0_s + cast(w) * x0_m
        # x_t = sigma_t / sigma_s * x + (alpha_t - sigma_t alpha_s / sigma_s) * D
        ratio = s_t / s_s
        return cast(ratio) * y + cast(a_t - ratio * a_s) * d

    def __repr__(self) -> str:
        return (f"GridStep({self.grid.solver}, {'fine' if self.fine else 'coarse'}, "
                f"N={self.grid.num_steps})")


#: the former name of :class:`GridStep` (DDIM was its only solver)
DDIMStep = GridStep


def block_partition(num_steps: int, num_blocks: int) -> Tensor:
    """Block edges on the grid ``[num_blocks + 1]`` (int positions, float64): equal blocks
    where ``num_blocks`` divides ``num_steps``, else lengths differing by at most one,
    the longer blocks first (``N = 1000, B = 32`` gives 8 blocks of 32 and 24 of 31)."""
    base, extra = divmod(num_steps, num_blocks)
    lengths = [base + 1] * extra + [base] * (num_blocks - extra)
    edges = torch.zeros(num_blocks + 1, dtype=torch.float64)
    edges[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.float64), 0)
    return edges
