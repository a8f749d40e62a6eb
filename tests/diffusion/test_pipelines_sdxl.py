"""Issue 31: StableDiffusion XL (two text encoders, pooled embeddings, added time ids,
``guidance_rescale``), SDXL img2img and SDXL ControlNet through ``srds_pipeline`` on tiny
random pipelines built from configs; loading a saved SDXL folder back."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from adapters.pipelines import load_text_to_image, srds_pipeline  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bench_pipelines", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pipelines.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

P = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="blurry", height=16,
         width=16)
IMG = bench.image()
TEXT = dict(prompt=P["prompt"], negative_prompt="blurry")  # img2img: the image sets the size


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    return {"t2i": bench.tiny_sdxl(tmp),
            "img2img": bench.tiny_sdxl(tmp, "StableDiffusionXLImg2ImgPipeline"),
            "controlnet": bench.tiny_sdxl(tmp, "StableDiffusionXLControlNetPipeline"),
            "inpaint": bench.tiny_sdxl(tmp, "StableDiffusionXLInpaintPipeline")}


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = {
    "rescale_and_sizes": ("t2i", dict(P, num_inference_steps=8, guidance_rescale=0.6,
                                      original_size=(32, 32), crops_coords_top_left=(4, 0),
                                      negative_original_size=(8, 8),
                                      negative_target_size=(16, 16))),
    "unguided_two_images": ("t2i", dict(prompt="red tree", guidance_scale=1.0, height=16,
                                        width=16, num_images_per_prompt=2,
                                        num_inference_steps=6)),
    "img2img": ("img2img", dict(TEXT, image=IMG, strength=0.6, num_inference_steps=10)),
    "controlnet": ("controlnet", dict(P, image=IMG, num_inference_steps=6,
                                      controlnet_conditioning_scale=0.5)),
    "inpaint_default_strength": ("inpaint", dict(P, image=IMG, mask_image=bench.mask(),
                                                 num_inference_steps=10)),  # 0.9999: 9 run
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serial_matches_pipeline_call(pipes, case):
    name, kw = CASES[case]
    pipe = pipes[name]
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert ours.latents.shape == ref.shape and rel_err(ours.latents, ref) < 1e-5


def test_parallel_samplers_converge_with_guidance_rescale(pipes):
    kw = dict(P, num_inference_steps=20, guidance_rescale=0.5)
    ref = srds_pipeline(pipes["t2i"], sampler="serial", generator=gen(), output_type="latent",
                        **kw)
    for sampler in ("srds", "picard", "quasi_newton", "taa", "auto"):
        out = srds_pipeline(pipes["t2i"], sampler=sampler, generator=gen(),
                            output_type="latent", **kw)
        assert out.stats.depth < 20 or out.sampler == "serial", sampler
        assert (out.latents - ref.latents).abs().max() < 1e-3, sampler
        if out.sampler != "serial":
            assert out.sampling.converged
            # both guidance halves of both prompts in every call (guided inside the model)
            assert out.stats.model_rows >= 2 * 2 * out.stats.model_calls


def test_decoded_images_match_the_pipeline(pipes):
    kw = dict(P, num_inference_steps=3)
    ref = pipes["t2i"](**kw, generator=gen(), output_type="np").images
    ours = srds_pipeline(pipes["t2i"], sampler="serial", generator=gen(), output_type="np", **kw)
    assert abs(ours.images - ref).max() < 1e-4


@pytest.mark.parametrize("name,kw,match", [
    ("t2i", dict(P, denoising_end=0.8), "denoising_end: an argument of StableDiffusionXL"),
    ("t2i", dict(P, original_size=32), r"original_size must be a pair of ints"),
    ("t2i", dict(P, prompt_3="x"), "prompt_3: not an argument"),
    ("img2img", dict(TEXT, image=IMG, denoising_start=0.5), "denoising_start: an argument"),
    ("img2img", dict(TEXT), "image is required"),
    ("img2img", dict(P, image=IMG), "height, width: not an argument"),
    ("inpaint", dict(P, image=IMG), "mask_image is required"),
])
def test_unsupported_options_are_refused_before_any_model_call(pipes, name, kw, match):
    calls = []
    mods = [m for m in pipes[name].components.values() if isinstance(m, torch.nn.Module)]
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in mods]
    try:
        with pytest.raises(ValueError, match=match):
            srds_pipeline(pipes[name], **kw)
    finally:
        for h in hooks:
            h.remove()
    assert not calls


def test_sdxl_folder_loads_back_offline(pipes, tmp_path):
    pipes["t2i"].save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    pipe = load_text_to_image(tmp_path / "sdxl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    ddim = load_text_to_image(tmp_path / "sdxl", scheduler="ddim")
    assert type(ddim.scheduler).__name__ == "DDIMScheduler"
