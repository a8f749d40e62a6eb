"""The sampler's recursion as an ODE on the pint engine.

Time is the position ``s`` on the sampler's grid: the state at ``s = j`` is the sample
after ``j`` of the ``N`` steps, so ``t_span = (0, N)``. A block ``[s0, s1)`` holds steps
``s0 .. s1 - 1``. The fine propagator takes those steps one by one (one model call per
step, batched over blocks); the coarse propagator jumps across the whole block with one
DDIM step (eta = 0) from the noise level of step ``s0`` to the level after step
``s1 - 1``. Both are the same :class:`DDIMStep` method with different step sizes, so the
pipelined schedule batches coarse and fine rows into one model call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pint import StepPropagator

from .model import Denoiser
from .schedule import SamplingGrid


class DDIMStep(StepPropagator):
    """DDIM on a sampler grid. ``fine=True``: one step per grid step (the exact sampler,
    including its noise for eta > 0 or DDPM); ``fine=False``: one deterministic DDIM jump
    per block.

    Args:
        denoiser: the wrapped model.
        grid: the sampler's per-step coefficients.
        fine: which of the two propagators this is.
        noise: per-step noise ``[N, *sample]`` for stochastic grids (drawn up front).
        order: for the coarse jump: 1 (DDIM) or 2 (DPM-Solver++(2S): a second model
            evaluation at the block's middle grid step, second order in log-SNR).
    """

    def __init__(self, denoiser: Denoiser, grid: SamplingGrid, fine: bool,
                 noise: Tensor | None = None, order: int = 1) -> None:
        if grid.stochastic and noise is None:
            raise ValueError("a stochastic sampler grid needs its per-step noise")
        if order not in (1, 2):
            raise ValueError(f"coarse order must be 1 (DDIM) or 2 (DPM-Solver++(2S)), got {order!r}")
        self.denoiser, self.grid, self.fine, self.noise = denoiser, grid, fine, noise
        self.order = 1 if fine else order
        self.evals_per_step = self.order
        self._uses_x = bool((grid.c_x != 0).any())
        self._stochastic = grid.stochastic
        self._dev: dict = {}

    def steps_per_block(self, t0: Tensor, t1: Tensor) -> Tensor:
        if self.fine:
            return (t1 - t0).round().to(torch.int64)
        return torch.ones(t0.shape, dtype=torch.int64)

    def batches_with(self, other) -> bool:
        return (isinstance(other, DDIMStep) and other.denoiser is self.denoiser
                and other.grid is self.grid and other.order == self.order)

    def _coeffs(self, device: torch.device) -> dict[str, Tensor]:
        """The grid's per-step tables on ``device`` (float64, built once per device).
        ``single[j]`` holds the coefficients ``(c_x0, c_eps, c_x, sigma)`` of grid step
        ``j``; ``jump[e]`` those of a deterministic DDIM jump ending after step ``e``."""
        if device not in self._dev:
            g = self.grid
            zero = torch.zeros_like(g.alpha_out)
            self._dev[device] = {
                "timesteps": g.timesteps.to(device), "alpha_in": g.alpha_in.to(device),
                "alpha_out": g.alpha_out.to(device),
                "single": torch.stack([g.c_x0, g.c_eps, g.c_x, g.sigma], 1).to(device),
                "jump": torch.stack([g.alpha_out.sqrt(), (1 - g.alpha_out).sqrt(), zero, zero],
                                    1).to(device),
            }
        return self._dev[device]

    def step(self, f, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        if self.order == 2:
            return self._step_2s(t, y, h)
        c = self._coeffs(y.device)
        j = t.round().to(torch.int64)
        hs = h.round().to(torch.int64)
        x0, eps = self.denoiser.predict(y, c["timesteps"][j], c["alpha_in"][j])
        # one row of coefficients per block: a grid step where h = 1, a jump otherwise
        coef = torch.where((hs == 1).unsqueeze(1), c["single"][j], c["jump"][j + hs - 1])
        coef = coef.to(y.dtype).view(coef.shape[0], 4, *((1,) * (y.dim() - 1)))
        out = coef[:, 0] * x0 + coef[:, 1] * eps
        if self._uses_x:
            out = out + coef[:, 2] * y
        if self._stochastic:
            out = out + coef[:, 3] * self.noise[j].to(y.dtype)
        return out

    def _step_2s(self, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
        """DPM-Solver++(2S) across each block: data prediction at the start ``s`` and at
        the block's middle grid step ``m``; deterministic (coarse only)."""
        c = self._coeffs(y.device)
        j = t.round().to(torch.int64)
        hs = h.round().to(torch.int64)
        m = j + hs // 2
        a_s, a_m = c["alpha_in"][j], c["alpha_in"][m]
        a_t = c["alpha_out"][j + hs - 1]
        shape = (-1,) + (1,) * (y.dim() - 1)

        def cast(v: Tensor) -> Tensor:
            return v.to(y.dtype).view(shape)

        x0_s, eps_s = self.denoiser.predict(y, c["timesteps"][j], a_s)
        u = cast(a_m.sqrt()) * x0_s + cast((1 - a_m).sqrt()) * eps_s  # DDIM jump to m
        x0_m, _ = self.denoiser.predict(u, c["timesteps"][m], a_m)

        def lam(a: Tensor) -> Tensor:
            a = a.clamp(max=1 - 1e-10)
            return 0.5 * (a.log() - (1 - a).log())

        r = (lam(a_m) - lam(a_s)) / (lam(a_t) - lam(a_s))
        w = torch.where(hs > 1, 1 / (2 * r.clamp(min=1e-6)), torch.zeros_like(r))
        d = cast(1 - w) * x0_s + cast(w) * x0_m
        # x_t = sigma_t / sigma_s * x + (alpha_t - sigma_t alpha_s / sigma_s) * D
        ratio = ((1 - a_t) / (1 - a_s)).sqrt()
        return cast(ratio) * y + cast(a_t.sqrt() - ratio * a_s.sqrt()) * d

    def __repr__(self) -> str:
        return f"DDIMStep({'fine' if self.fine else 'coarse'}, N={self.grid.num_steps})"


def block_partition(num_steps: int, num_blocks: int) -> Tensor:
    """Block edges on the grid ``[num_blocks + 1]`` (int positions, float64): equal blocks
    where ``num_blocks`` divides ``num_steps``, else lengths differing by at most one,
    the longer blocks first (``N = 1000, B = 32`` gives 8 blocks of 32 and 24 of 31)."""
    base, extra = divmod(num_steps, num_blocks)
    lengths = [base + 1] * extra + [base] * (num_blocks - extra)
    edges = torch.zeros(num_blocks + 1, dtype=torch.float64)
    edges[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.float64), 0)
    return edges
