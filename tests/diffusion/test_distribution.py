"""Every solver on every family samples the right distribution, not only parallel == serial.

The exact denoiser of a Gaussian mixture (``GaussianMixtureDenoiser``) is the network a
perfect training run would give; a sampler run on it must end at the mixture: the mean and
the variance of many samples are compared with the mixture's own, within the solver's
discretisation error at the chosen step count plus the sampling error. A wrong step
formula (the variance-exploding ancestral step on a flow schedule gave variance 0.40 for
0.25) fails here even where every parallel sampler reproduces the serial one. The same
drawn case then checks a parallel sampler, run to the end, against serial (float64).
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    SigmaSchedule,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
    taa_sample,
)


def vp_sigmas() -> SigmaSchedule:
    """A VP network sampled on Karras sigmas (diffusers' Euler / DPM-Solver++ / UniPC on
    SD-like models), with timesteps = sigmas so the exact denoiser can read its level."""
    def levels(N: int):
        ramp = torch.linspace(0, 1, N, dtype=torch.float64)
        hi, lo = 14.6 ** (1 / 7), 0.03 ** (1 / 7)
        sig = (hi + ramp * (lo - hi)) ** 7
        return sig.clone(), torch.cat([sig, torch.zeros(1, dtype=torch.float64)]), \
            float((1 + sig[0] ** 2) ** 0.5)  # Euler's VE state starts at sqrt(1 + s^2)

    return SigmaSchedule(levels, "vp", "epsilon", "euler", max_steps=10**6, timestep_scale=1.0,
                         name="vp-karras")


SIGMA_SOLVERS = ("euler", "euler_ancestral", "dpmpp_2m", "unipc")
FAMILIES = {
    "vp-sigmas": vp_sigmas,
    "flow": lambda: SigmaSchedule.flow_matching(shift=3.0),
    "edm": lambda: SigmaSchedule.edm(sigma_max=80.0),
}
#: (family, solver, eta): every solver each family accepts
CASES = [("vp", "ddim", 0.0), ("vp", "ddim", 1.0), ("vp", "ddpm", 0.0)] + [
    (fam, solver, 0.0) for fam in FAMILIES for solver in SIGMA_SOLVERS]


def build(family: str, solver: str):
    if family == "vp":
        return VPSchedule.linear(timestep_spacing="trailing")
    return FAMILIES[family]().with_solver(solver)


def stochastic(solver: str, eta: float) -> bool:
    return solver in ("ddpm", "euler_ancestral") or eta > 0


def mixture(means, stds, w):
    """The mean and the per-dimension variance of ``sum_k w_k N(mu_k, s_k^2 I)``."""
    mean = (w[:, None] * means).sum(0)
    second = (w[:, None] * (means**2 + stds[:, None] ** 2)).sum(0)
    return mean, second - mean**2


components = st.tuples(
    st.lists(st.floats(-2.0, 2.0), min_size=4, max_size=4),   # two means in 2-D
    st.lists(st.floats(0.2, 0.8), min_size=2, max_size=2),    # their stds
    st.floats(0.2, 0.8),                                       # the first weight
)


@pytest.mark.parametrize("family, solver, eta", CASES, ids=[f"{f}-{s}-eta{e:g}" for f, s, e in CASES])
@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mix=components, seed=st.integers(0, 2**16),
       parallel=st.sampled_from(["srds", "picard", "quasi_newton", "taa"]))
def test_every_solver_samples_the_mixture(family, solver, eta, mix, seed, parallel):
    schedule = build(family, solver)
    means = torch.tensor(mix[0], dtype=torch.float64).view(2, 2)
    stds = torch.tensor(mix[1], dtype=torch.float64)
    w = torch.tensor([mix[2], 1 - mix[2]], dtype=torch.float64)
    den = GaussianMixtureDenoiser(means, stds, schedule, weights=w)
    want_mean, want_var = mixture(means, stds, w)

    # the distribution: n samples at a step count where the solver's bias is small
    noisy = stochastic(solver, eta)
    n, N = 2048, (400 if noisy else 100)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    out = serial_sample(den, schedule, x, N, eta=eta, generator=gen)
    assert torch.isfinite(out).all()
    var = want_var.max().item()
    se_mean = math.sqrt(var / n)
    # a mixture's sample variance has a standard error below (m4 / n)^(1/2), m4 <= 3 (var + d^2)^2
    spread = (means[0] - means[1]).abs().max().item()
    se_var = math.sqrt(3 * (var + spread**2) ** 2 / n)
    bias = 0.08 * var if noisy else 0.02 * var  # first-order stochastic solvers: ~1/N
    assert (out.mean(0) - want_mean).abs().max() < 5 * se_mean + bias, (out.mean(0), want_mean)
    assert (out.var(0) - want_var).abs().max() < 5 * se_var + bias, (out.var(0), want_var)

    # parallel == serial: the same case, run to the end, in float64 (fixed noise for the
    # stochastic ones: the same generator state draws it)
    small, N = x[:3], 24
    ref = serial_sample(den, schedule, small, N, eta=eta, generator=torch.Generator().manual_seed(seed))
    kw = dict(eta=eta, generator=torch.Generator().manual_seed(seed))
    if parallel == "srds":
        par = srds_sample(den, schedule, small, N, num_blocks=4, tol=0, max_iters=4, **kw)
    elif parallel == "taa":
        par = taa_sample(den, schedule, small, N, window=N, tol=0, max_iters=N, **kw)
    else:
        run = picard_sample if parallel == "picard" else quasi_newton_sample
        par = run(den, schedule, small, N, window=8, tol=0, max_iters=N, **kw)
    assert (par.sample - ref).abs().max() < 1e-10, parallel
