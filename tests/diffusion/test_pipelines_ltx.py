"""Issue 31: LTX-Video through ``srds_pipeline`` on a tiny random pipeline: packed video
tokens, ``mu`` from the video length, ``guidance_rescale``; serial == ``pipe(...,
output_type="latent")``, quasi-Newton converges, decoded frames match, a timestep-conditioned
VAE refused for decoding before any model call."""

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
KW = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="blurry", height=32,
          width=32, num_frames=9, guidance_rescale=0.3, max_sequence_length=bench.MAX_TOKENS)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield bench.tiny_ltx(tmp_path_factory.mktemp("ltx"))
    torch.set_num_threads(n)


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def test_serial_matches_and_quasi_newton_converges(pipe):
    kw = dict(KW, num_inference_steps=6)
    ref = pipe(**kw, generator=gen(), output_type="latent").frames
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert ours.latents.shape == ref.shape == (2, 192, 8)
    assert ((ours.latents - ref).abs().max() / ref.abs().max()) < 1e-5
    kw["num_inference_steps"] = 12
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 12 and (out.latents - ref.latents).abs().max() < 1e-3


def test_decoded_frames_match_and_timestep_conditioning_is_refused(pipe):
    kw = dict(KW, num_inference_steps=2)
    ref = pipe(**kw, generator=gen(), output_type="np").frames
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="np", **kw)
    assert ours.images.shape == ref.shape and np.abs(ours.images - ref).max() < 1e-4
    pipe.vae.register_to_config(timestep_conditioning=True)
    try:
        with pytest.raises(ValueError, match="timestep conditioning"):
            srds_pipeline(pipe, **kw)
    finally:
        pipe.vae.register_to_config(timestep_conditioning=False)


def test_cli_writes_every_frame_of_a_video_folder(pipe, tmp_path, capsys):
    import json

    from adapters.diffusion.cli import main

    pipe.save_pretrained(tmp_path / "ltx", safe_serialization=True)
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "ltx"), "--prompt", "a cat", "--steps", "2",
                 "--height", "32", "--width", "32", "--sampler", "serial",
                 "--num-samples", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "LTXPipeline" and report["num_frames"] == 161  # its default
    assert len(list((out / "images").glob("*.png"))) == 161 and (out / "samples.png").exists()
    from PIL import Image

    with Image.open(out / "video_000.gif") as gif:  # the sample as an animated file
        assert gif.n_frames == 161 and gif.size == (32, 32)
