"""Exact denoisers of Gaussian and Gaussian-mixture data: models with known answers for
tests and benchmarks (no training, no weights)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedule import SigmaSchedule, VPSchedule


class GaussianMixtureDenoiser(torch.nn.Module):
    """The optimal denoiser for data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``, for every family.

    With ``x = alpha x0 + sigma eps``, component ``k`` gives ``x ~ N(alpha mu_k,
    (alpha^2 s_k^2 + sigma^2) I)``; the posterior mean of ``x0`` is the
    responsibility-weighted ``mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha mu_k)``
    and ``eps = (x - alpha E[x0 | x]) / sigma``. The output is what a network trained on the
    schedule's family would return: noise (VP), the flow velocity ``eps - x0`` (flow
    matching), or as the schedule's ``prediction_type`` says.

    Args:
        means: ``[K, *sample]`` component means (finite, at least 2-D).
        stds: ``[K]`` component standard deviations (finite, > 0), or one for all.
        schedule: a :class:`VPSchedule` (``alpha_bar`` at integer timesteps; epsilon
            output) or a :class:`SigmaSchedule` whose timesteps map back to levels
            (``flow_matching``, ``edm``).
        weights: ``[K]`` mixture weights, finite, ``>= 0`` and not all zero (normalised
            here); default uniform.

    ``forward(x [R, *sample], t [R]) -> [R, *sample]`` in ``x``'s dtype (computed in
    float64).
    """

    def __init__(self, means: Tensor, stds: Tensor | float, schedule: VPSchedule | SigmaSchedule,
                 weights: Tensor | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2 or means.numel() == 0:
            raise ValueError("means must be [K, *sample] (K >= 1 components, at least 2-D), "
                             f"got shape {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.shape not in ((), (1,), (K,)):
            raise ValueError(f"stds must be a number or [K] = [{K}] (one per mean), got shape "
                             f"{tuple(stds.shape)}")
        stds = stds.expand(K).clone()
        if not bool((torch.isfinite(stds) & (stds > 0)).all()):
            raise ValueError(f"stds must be finite and > 0, got {stds.tolist()}")
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if w.shape != (K,) or not bool((torch.isfinite(w) & (w >= 0)).all()) \
                or not 0 < float(w.sum()) < math.inf:
            raise ValueError(f"weights must be [K] = [{K}] (one per mean) finite numbers >= 0, "
                             f"not all zero, got {w.tolist()}")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_w", (w / w.sum()).log())
        if isinstance(schedule, VPSchedule):
            self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone())
            self.prediction_type = "epsilon"
        elif isinstance(schedule, SigmaSchedule):
            if schedule.timestep_scale is None:
                raise ValueError("schedule must map its timesteps back to noise levels "
                                 "(SigmaSchedule.flow_matching or .edm)")
            self.alphas_cumprod = None
            self.prediction_type = schedule.prediction_type
        else:
            raise TypeError("schedule must be a VPSchedule or SigmaSchedule, got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.sample_shape = tuple(means.shape[1:])

    def levels(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The ``(alpha, sigma)`` of timesteps ``t [R]`` (float64 ``[R]``)."""
        if self.alphas_cumprod is not None:
            a = self.alphas_cumprod[t.long()]
            return a.sqrt(), (1 - a).sqrt()
        return self.schedule.timestep_levels(t.to(self.means.device))

    @classmethod
    def random(cls, schedule: VPSchedule | SigmaSchedule, dim: int = 16, components: int = 8,
               spread: float = 1.0, std: float = 0.15, seed: int = 0) -> GaussianMixtureDenoiser:
        """A mixture with ``components`` means drawn uniformly in ``[-spread, spread]^dim``."""
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(components, dim, generator=g, dtype=torch.float64) * 2 - 1) * spread
        return cls(means, std, schedule)

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[x0 | x_t = x]`` for ``x [R, *sample]`` at timesteps ``t [R]``: shape of
        ``x``, float64 (data units)."""
        xd = x.to(torch.float64).reshape(x.shape[0], -1)
        al, sg = self.levels(t)
        al, sg = al.view(-1, 1, 1), sg.view(-1, 1, 1)                # [R, 1, 1]
        mu = self.means.reshape(1, self.means.shape[0], -1)         # [1, K, D]
        s2 = (self.stds**2).view(1, -1, 1)                          # [1, K, 1]
        var = al**2 * s2 + sg**2                                     # [R, K, 1]
        diff = xd[:, None, :] - al * mu                              # [R, K, D]
        D = xd.shape[1]
        logp = (self.log_w.view(1, -1) - 0.5 * (diff**2).sum(-1) / var[..., 0]
                - 0.5 * D * var[..., 0].log())
        w = (logp - logp.amax(dim=1, keepdim=True)).exp()
        r = (w / w.sum(dim=1, keepdim=True))[..., None]              # [R, K, 1]
        post = mu + al * s2 / var * diff                             # [R, K, D]
        return (r * post).sum(1).reshape(x.shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact network output ``[R, *sample]`` for ``x [R, *sample]`` at timesteps
        ``t [R]`` (noise, x0, v or flow velocity), in ``x``'s dtype."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        al, sg = self.levels(t)
        al, sg = al.view(shape), sg.view(shape)
        x0 = self.posterior_mean(x, t)
        eps = (x.to(torch.float64) - al * x0) / sg
        out = {"epsilon": eps, "sample": x0, "v_prediction": al * eps - sg * x0,
               "flow_prediction": eps - x0}[self.prediction_type]
        return out.to(x.dtype)
