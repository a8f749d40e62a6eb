"""Exact denoisers of Gaussian and Gaussian-mixture data: models with known answers for
tests and benchmarks (no training, no weights)."""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import VPSchedule


class GaussianMixtureDenoiser(torch.nn.Module):
    """The optimal epsilon-predictor for data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``.

    With ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` (``a = alpha_bar_t``), component ``k``
    gives ``x_t ~ N(sqrt(a) mu_k, (a s_k^2 + 1 - a) I)``; the posterior mean of ``x0`` is
    the responsibility-weighted ``mu_k + sqrt(a) s_k^2 / (a s_k^2 + 1 - a) (x_t - sqrt(a) mu_k)``
    and ``eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a)``.

    Args:
        means: ``[K, *sample]`` component means.
        stds: ``[K]`` component standard deviations (> 0).
        weights: ``[K]`` mixture weights (normalised here); default uniform.
        schedule: gives ``alpha_bar`` for integer timesteps.

    ``forward(x [R, *sample], t [R]) -> eps [R, *sample]`` in ``x``'s dtype (computed in
    float64).
    """

    def __init__(self, means: Tensor, stds: Tensor | float, schedule: VPSchedule,
                 weights: Tensor | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        if not bool((stds > 0).all()):
            raise ValueError("stds must be > 0")
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_w", (w / w.sum()).log())
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone())
        self.sample_shape = tuple(means.shape[1:])

    @classmethod
    def random(cls, schedule: VPSchedule, dim: int = 16, components: int = 8, spread: float = 1.0,
               std: float = 0.15, seed: int = 0) -> GaussianMixtureDenoiser:
        """A mixture with ``components`` means drawn uniformly in ``[-spread, spread]^dim``."""
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(components, dim, generator=g, dtype=torch.float64) * 2 - 1) * spread
        return cls(means, std, schedule)

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[x0 | x_t = x]`` for ``x [R, *sample]`` at integer timesteps ``t [R]``: shape
        of ``x``, float64 (data units)."""
        xd = x.to(torch.float64).reshape(x.shape[0], -1)
        a = self.alphas_cumprod[t.long()].view(-1, 1, 1)            # [R, 1, 1]
        mu = self.means.reshape(1, self.means.shape[0], -1)         # [1, K, D]
        s2 = (self.stds**2).view(1, -1, 1)                          # [1, K, 1]
        var = a * s2 + 1 - a                                         # [R, K, 1]
        diff = xd[:, None, :] - a.sqrt() * mu                        # [R, K, D]
        D = xd.shape[1]
        logp = (self.log_w.view(1, -1) - 0.5 * (diff**2).sum(-1) / var[..., 0]
                - 0.5 * D * var[..., 0].log())
        w = (logp - logp.amax(dim=1, keepdim=True)).exp()
        r = (w / w.sum(dim=1, keepdim=True))[..., None]              # [R, K, 1]
        post = mu + a.sqrt() * s2 / var * diff                       # [R, K, D]
        return (r * post).sum(1).reshape(x.shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact noise prediction ``eps [R, *sample]`` (unit variance) for ``x [R,
        *sample]`` at integer timesteps ``t [R]``, in ``x``'s dtype."""
        a = self.alphas_cumprod[t.long()].view(-1, *([1] * (x.dim() - 1)))
        x0 = self.posterior_mean(x, t)
        eps = (x.to(torch.float64) - a.sqrt() * x0) / (1 - a).sqrt()
        return eps.to(x.dtype)
