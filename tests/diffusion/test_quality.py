"""The bundled digits model samples recognisable digits through pint's samplers."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from adapters.diffusion import load_pretrained, serial_sample, srds_sample  # noqa: E402
from adapters.diffusion.pretrained.quality import evaluate_samples  # noqa: E402


def test_bundled_digits_are_recognised():
    model, schedule = load_pretrained("digits")
    x = torch.randn(120, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        serial = serial_sample(model, schedule, x, 50)
        out = srds_sample(model, schedule, x, 50, pipelined=True)
    assert (out.sample - serial).abs().max() < 2e-3
    q = evaluate_samples(out.sample)
    assert q["mean_max_prob"] >= 0.85
    assert q["n_distinct"] == 10
    # noise is not recognised as digits with the same confidence
    assert evaluate_samples(torch.rand(120, 1, 8, 8) * 2 - 1)["mean_max_prob"] < 0.8


def test_bundled_flow_model_is_recognised_and_srds_matches_serial():
    """The rectified-flow digits model (flow-matching Euler, float timesteps) samples
    recognisable digits through pint, and every parallel sampler returns its serial sample."""
    from adapters.diffusion import quasi_newton_sample

    model, schedule = load_pretrained("digits-flow")
    assert schedule.family == "flow" and schedule.prediction_type == "flow_prediction"
    x = torch.randn(120, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        serial = serial_sample(model, schedule, x, 25)
        out = srds_sample(model, schedule, x, 25, pipelined=True)
        qn = quasi_newton_sample(model, schedule, x, 25, window=8, tol=1e-4)
    assert (out.sample - serial).abs().max() < 2e-3
    assert (qn.sample - serial).abs().max() < 2e-3
    assert out.stats.depth < 25 and qn.stats.depth < 25
    q = evaluate_samples(serial)
    assert q["mean_max_prob"] >= 0.85
    assert q["n_distinct"] == 10
