"""Issue 31: Wan 2.1 and Wan 2.2 (two experts switched at ``boundary_ratio``, a second
guidance scale below it) through ``srds_pipeline`` on tiny random pipelines: video latents
``[B, C, F, H, W]``, UniPC on flow sigmas; the serial path equals ``pipe(...,
output_type="latent")``, the parallel samplers converge with windows that span the boundary,
decoded frames match."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from adapters.pipelines import srds_pipeline  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bench_pipelines", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pipelines.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
KW = dict(prompt="a photo of a cat", negative_prompt="blurry", height=16, width=16,
          num_frames=9, max_sequence_length=bench.MAX_TOKENS)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wan")
    return {"2.1": bench.tiny_wan(tmp), "2.2": bench.tiny_wan(tmp, two_experts=True)}


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("version,extra", [("2.1", {}), ("2.2", dict(guidance_scale_2=3.0)),
                                           ("2.2", dict(guidance_scale=1.0))])
def test_serial_matches_pipeline_call(pipes, version, extra):
    kw = dict(KW, num_inference_steps=8, **extra)
    if extra.get("guidance_scale") == 1.0:
        kw.pop("negative_prompt")
    ref = pipes[version](**kw, generator=gen(), output_type="latent").frames
    ours = srds_pipeline(pipes[version], sampler="serial", generator=gen(), output_type="latent",
                         **kw)
    assert ours.latents.shape == ref.shape == (1, 16, 3, 2, 2)
    assert rel_err(ours.latents, ref) < 1e-5


def test_windows_spanning_the_boundary_converge(pipes):
    pipe = pipes["2.2"]
    kw = dict(KW, num_inference_steps=16, guidance_scale_2=3.0)
    pipe.scheduler.set_timesteps(16)
    ts = pipe.scheduler.timesteps
    assert 0 < int((ts >= 875).sum()) < 16  # both experts take part
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    for sampler in ("srds", "quasi_newton"):
        out = srds_pipeline(pipe, sampler=sampler, generator=gen(), output_type="latent", **kw)
        assert out.sampling.converged and out.stats.depth < 16, sampler
        assert (out.latents - ref.latents).abs().max() < 1e-3, sampler


def test_decoded_frames_match_the_pipeline(pipes):
    kw = dict(KW, num_inference_steps=3)
    ref = pipes["2.1"](**kw, generator=gen(), output_type="np").frames
    ours = srds_pipeline(pipes["2.1"], sampler="serial", generator=gen(), output_type="np", **kw)
    assert ours.images.shape == ref.shape == (1, 9, 16, 16, 3)
    assert np.abs(ours.images - ref).max() < 1e-4


def test_second_guidance_scale_needs_two_experts(pipes):
    with pytest.raises(ValueError, match="guidance_scale_2 is only supported"):
        srds_pipeline(pipes["2.1"], guidance_scale_2=2.0, **KW)
