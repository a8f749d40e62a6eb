"""Issue 31: StableDiffusion img2img (strength: the truncated grid, the generator's order),
9-channel inpainting and ControlNet through ``srds_pipeline``, on tiny random pipelines built
from configs (``benchmarks/bench_pipelines.py``): the serial path equals ``pipe(...,
output_type="latent")``, the parallel samplers converge to it in fewer sequential calls than
steps, decoded images match, and options the family lacks are refused before any model
call."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from adapters.pipelines import srds_pipeline  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bench_pipelines", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pipelines.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

P = dict(prompt="a photo of a cat", negative_prompt="blurry")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    return {"img2img": bench.tiny_sd(tmp, "StableDiffusionImg2ImgPipeline"),
            "img2img_euler": bench.tiny_sd(tmp, "StableDiffusionImg2ImgPipeline", "euler"),
            "inpaint": bench.tiny_sd(tmp, "StableDiffusionInpaintPipeline"),
            "controlnet": bench.tiny_sd_controlnet(tmp),
            "t2i": bench.tiny_sd(tmp)}


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


IMG, MASK = bench.image(), bench.mask()
CASES = {
    "img2img_ddim_default_strength": ("img2img", dict(P, image=IMG, num_inference_steps=10)),
    "img2img_euler_half": ("img2img_euler", dict(P, image=IMG, strength=0.5,
                                                 num_inference_steps=10)),
    "inpaint_full": ("inpaint", dict(P, image=IMG, mask_image=MASK, num_inference_steps=8)),
    "inpaint_strength": ("inpaint", dict(P, image=IMG, mask_image=MASK, strength=0.6,
                                         num_inference_steps=10)),
    "controlnet_window": ("controlnet", dict(P, image=IMG, num_inference_steps=10,
                                             control_guidance_start=0.2,
                                             control_guidance_end=0.7,
                                             controlnet_conditioning_scale=0.8)),
    "t2i_guidance_rescale": ("t2i", dict(P, guidance_rescale=0.7, num_inference_steps=6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serial_matches_pipeline_call(pipes, case):
    name, kw = CASES[case]
    pipe = pipes[name]
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5
    N = kw["num_inference_steps"]
    ran = N - (N - int(N * kw.get("strength", 0.8 if name.startswith("img2img") else 1.0)))
    assert ours.stats.depth == ran and ours.stats.model_rows == 2 * ran


@pytest.mark.parametrize("name,kw", [
    ("img2img_euler", dict(P, image=IMG, strength=0.9, num_inference_steps=20)),
    ("inpaint", dict(P, image=IMG, mask_image=MASK, num_inference_steps=20)),
    ("controlnet", dict(P, image=IMG, num_inference_steps=20, control_guidance_end=0.6)),
])
def test_parallel_samplers_converge_in_fewer_sequential_calls(pipes, name, kw):
    pipe = pipes[name]
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    steps = ref.stats.depth
    for sampler in ("srds", "picard", "quasi_newton"):
        out = srds_pipeline(pipe, sampler=sampler, generator=gen(), output_type="latent", **kw)
        assert out.sampling.converged and out.stats.depth < steps, sampler
        assert (out.latents - ref.latents).abs().max() < 1e-3, sampler


def test_decoded_images_match_the_pipeline(pipes):
    kw = dict(P, image=IMG, mask_image=MASK, num_inference_steps=4)
    ref = pipes["inpaint"](**kw, generator=gen(), output_type="np").images
    ours = srds_pipeline(pipes["inpaint"], sampler="serial", generator=gen(), output_type="np",
                         **kw)
    assert ours.images.shape == ref.shape and abs(ours.images - ref).max() < 1e-4


@pytest.fixture
def no_model_calls(pipes):
    calls = []
    mods = [m for p in pipes.values() for m in p.components.values()
            if isinstance(m, torch.nn.Module)]
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in mods]
    yield
    for h in hooks:
        h.remove()
    assert not calls, "a model ran before the input was refused"


@pytest.mark.parametrize("name,kw,match", [
    ("img2img", dict(P), "image is required"),
    ("img2img", dict(P, image=IMG, strength=1.5), r"strength must be in \(0, 1\]"),
    ("img2img", dict(P, image=IMG, strength=0.05, num_inference_steps=10), "leaves no step"),
    ("img2img", dict(P, image=IMG, height=16), "height: not an argument"),
    ("img2img", dict(P, image=IMG, ip_adapter_image=IMG), "ip_adapter_image: an argument of"),
    ("inpaint", dict(P, image=IMG), "mask_image is required"),
    ("inpaint", dict(P, image=IMG, mask_image=MASK, padding_mask_crop=4),
     "padding_mask_crop: an argument of StableDiffusionInpaintPipeline that pint does not"),
    ("controlnet", dict(P, image=IMG, guess_mode=True), "guess_mode=True"),
    ("controlnet", dict(P, image=IMG, control_guidance_start=0.8, control_guidance_end=0.2),
     "control_guidance_start/end"),
    ("t2i", dict(P, guidance_rescale=2.0), r"guidance_rescale must be in \[0, 1\]"),
    ("t2i", dict(P, timesteps=[999, 500]), "timesteps: an argument of"),
])
def test_unsupported_options_are_refused_before_any_model_call(pipes, no_model_calls, name,
                                                               kw, match):
    with pytest.raises(ValueError, match=match):
        srds_pipeline(pipes[name], **kw)


def test_four_channel_inpainting_is_refused(tmp_path, no_model_calls):
    from diffusers import StableDiffusionInpaintPipeline

    parts = bench.tiny_sd(tmp_path).components
    pipe = StableDiffusionInpaintPipeline(**parts)
    with pytest.raises(ValueError, match="4 input channels; pint samples 9-channel"):
        srds_pipeline(pipe, "a cat", image=IMG, mask_image=MASK)


def test_cli_samples_an_img2img_folder_with_image(pipes, tmp_path, capsys):
    import json

    from PIL import Image

    from adapters.diffusion.cli import main

    folder = tmp_path / "img2img"
    pipes["img2img"].save_pretrained(folder, safe_serialization=True)
    png = tmp_path / "in.png"
    Image.fromarray((IMG[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(png)
    out = tmp_path / "out"
    args = ["--model", str(folder), "--prompt", "a cat", "--steps", "10", "--out", str(out)]
    assert main([*args, "--sampler", "quasi_newton", "--image", str(png),
                 "--compare-serial"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "StableDiffusionImg2ImgPipeline" and report["image"] == str(png)
    assert report["depth"] < 8 and report["max_abs_diff_vs_serial"] < 1e-3  # 8 steps run
    capsys.readouterr()
    assert main(args) == 2  # no --image: refused before loading
    assert "give --image" in capsys.readouterr().err
    assert main([*args, "--image", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
