"""Issue 20 on the sampling side: inputs that once returned a wrong answer without an error
now raise one that names the culprit (or return the right result)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.diffusion import (
    Denoiser,
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
)

SCHED = VPSchedule.linear(1000)
X = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))


class Conditional(torch.nn.Module):
    """eps depends on the conditioning ``c`` ([b, 4]), so guidance changes the sample."""

    def forward(self, x, t, c):
        return 0.5 * x + c * (t.float() / 1000).view(-1, 1)


def test_a_key_missing_from_uncond_kwargs_is_an_error():
    c = torch.ones(2, 4)
    for unc in ({}, {"cc": torch.zeros(2, 4)}):
        with pytest.raises(ValueError, match=r"uncond_kwargs .*missing \['c'\]"):
            srds_sample(Conditional(), SCHED, X, 20, model_kwargs={"c": c},
                        guidance_scale=3.0, uncond_kwargs=unc)


def test_guidance_changes_the_sample():
    c = torch.ones(2, 4)
    plain = serial_sample(Conditional(), SCHED, X, 20, model_kwargs={"c": c})
    guided = serial_sample(Conditional(), SCHED, X, 20, model_kwargs={"c": c},
                           guidance_scale=3.0, uncond_kwargs={"c": torch.zeros(2, 4)})
    assert (plain - guided).abs().max() > 1e-2


def test_uncond_kwargs_without_guidance_is_an_error():
    with pytest.raises(ValueError, match="uncond_kwargs is given without guidance_scale"):
        serial_sample(Conditional(), SCHED, X, 5, model_kwargs={"c": torch.ones(2, 4)},
                      uncond_kwargs={"c": torch.zeros(2, 4)})


class NaNAt(torch.nn.Module):
    def __init__(self, bad_t):
        super().__init__()
        self.bad_t = bad_t

    def forward(self, x, t):
        out = 0.1 * x
        return torch.where((t == self.bad_t).view(-1, 1), torch.full_like(out, math.nan), out)


@pytest.mark.parametrize("run", [picard_sample, quasi_newton_sample])
def test_window_samplers_never_call_a_nan_window_converged(run):
    bad_t = int(SCHED.timesteps(20)[7])
    with pytest.raises(FloatingPointError, match="non-finite|NaN"):
        run(NaNAt(bad_t), SCHED, X, 20, window=8, check_finite=False)


def test_clip_sample_range_must_be_positive():
    with pytest.raises(ValueError, match="clip_sample_range must be a finite number > 0"):
        VPSchedule.linear(1000, clip_sample=True, clip_sample_range=-1.0)
    with pytest.raises(ValueError, match="clip_sample_range"):
        VPSchedule.linear(1000, clip_sample=True, clip_sample_range=math.nan)
    with pytest.raises(ValueError, match="clip_range"):
        Denoiser(lambda x, t: x, clip_sample=True, clip_range=0.0)


GMM = GaussianMixtureDenoiser.random(SCHED, dim=4, components=3, seed=0)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(num_blocks=4, partition=[0, 5, 20]), ValueError, "num_blocks or partition, not both"),
    (dict(partition=["0", "a"]), TypeError, "partition must be"),
    (dict(partition=[[0, 10], [10, 20]]), ValueError, "partition must be 1-D"),
    (dict(callback=5), TypeError, "callback must be callable"),
    (dict(guidance_scale=math.nan, uncond_kwargs={}), ValueError, "guidance_scale must be a finite"),
    (dict(sampler="ddpm", noise=torch.full((20, 2, 4), math.nan)), ValueError, "noise must be finite"),
    (dict(initial=torch.full((21, 2, 4), math.nan)), ValueError, "initial must be finite"),
    (dict(noise=torch.zeros(20, 2, 4)), ValueError, "noise is given, but"),
    (dict(x_T=torch.randn(0, 4)), ValueError, "x_T must hold at least one sample"),
])
def test_srds_bad_input_names_the_argument(kwargs, exc, match):
    args = dict(model=GMM, schedule=SCHED, x_T=X, num_steps=20)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        srds_sample(**args)


@pytest.mark.parametrize("run", [picard_sample, quasi_newton_sample])
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(max_iters=2.7), TypeError, "max_iters must be an int"),
    (dict(max_iters="3"), TypeError, "max_iters must be an int"),
    (dict(callback=5), TypeError, "callback must be callable"),
    (dict(initial=torch.full((21, 2, 4), math.inf)), ValueError, "initial must be finite"),
])
def test_window_bad_input_names_the_argument(run, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        run(GMM, SCHED, X, 20, **kwargs)


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(-4, 4), key=st.sampled_from(["c", "d"]))
def test_conditioning_property_guided_equals_manual_mix(scale, key):
    """The guided serial sample equals DDIM on the explicitly mixed model output, for any
    scale: guidance is neither dropped nor applied to the wrong key."""
    c, u = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)

    def model(x, t, **kw):
        return 0.3 * x + kw[key] * (t.double() / 1000).view(-1, 1)

    x = X.double()
    guided = serial_sample(model, SCHED, x, 10, model_kwargs={key: c}, guidance_scale=scale,
                           uncond_kwargs={key: u})

    def mixed(x, t):
        a, b = model(x, t, **{key: c}), model(x, t, **{key: u})
        return b + scale * (a - b)

    assert torch.allclose(guided, serial_sample(mixed, SCHED, x, 10), atol=1e-12)


def test_model_wrapped_once_with_its_conditioning():
    """A Denoiser carries the model options; every sampler gives the keyword form's sample."""
    c, u = torch.ones(2, 4), torch.zeros(2, 4)
    opts = dict(model_kwargs={"c": c}, guidance_scale=2.0, uncond_kwargs={"c": u})
    wrapped = Denoiser(Conditional(), **opts)
    alone = serial_sample(Conditional(), SCHED, X, 20, **opts)
    assert torch.equal(serial_sample(wrapped, SCHED, X, 20), alone)
    for run, kw in ((srds_sample, dict(tol=1e-5)), (quasi_newton_sample, dict(window=5)),
                    (picard_sample, dict(window=5))):
        a, b = run(wrapped, SCHED, X, 20, **kw), run(Conditional(), SCHED, X, 20, **kw, **opts)
        assert torch.equal(a.sample, b.sample) and a.stats.model_calls == b.stats.model_calls
    assert wrapped.calls == 0  # each run counts on its own bound copy
    with pytest.raises(ValueError, match="model is a Denoiser"):
        serial_sample(wrapped, SCHED, X, 5, guidance_scale=1.0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['guidance'\]"):
        srds_sample(Conditional(), SCHED, X, 5, guidance=1.0)


def test_guidance_passes_values_without_a_sample_dimension_unchanged():
    """Flux-style ids ``[tokens, 3]`` reach the model once, not doubled by the CFG batch;
    different cond/uncond values without a sample dimension are an error."""
    ids = torch.arange(12.0).view(4, 3)
    seen = []

    def model(x, t, c, ids):
        seen.append(ids.shape)
        return 0.5 * x + c * ids.sum() / 100

    c, u = torch.ones(2, 4), torch.zeros(2, 4)
    serial_sample(model, SCHED, X, 3, model_kwargs={"c": c, "ids": ids}, guidance_scale=2.0,
                  uncond_kwargs={"c": u, "ids": ids})
    assert seen == [(4, 3)] * 3
    with pytest.raises(ValueError, match=r"model_kwargs\['ids'\] has no per-sample"):
        serial_sample(model, SCHED, X, 3, model_kwargs={"c": c, "ids": ids}, guidance_scale=2.0,
                      uncond_kwargs={"c": u, "ids": ids + 1})
