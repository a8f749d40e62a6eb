"""Issue 31: the registry and the families beyond SD/SDXL: the worked registration example of
docs/pipelines.md run as written (PixArtAlphaPipeline), PixArt-Sigma and Flux img2img against
their pipelines, Flux's ``negative_prompt_2`` refused before any model call, unlisted
pipelines named, and no import circle between the bridge and the pipelines."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from adapters import pipelines  # noqa: E402
from adapters.pipelines import FAMILIES, PipelineFamily, register_family, srds_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_pipelines",
                                               ROOT / "benchmarks" / "bench_pipelines.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
TOK = dict(max_sequence_length=bench.MAX_TOKENS)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def ddim(pipe):
    """The same pipeline on DDIM steps (the tiny untrained networks converge slowly under
    DPM-Solver++: 18-19 of 20 calls on SD and PixArt alike, 7 under DDIM)."""
    return type(pipe)(**{**pipe.components, "scheduler": bench.sd_scheduler("ddim")})


@pytest.fixture(scope="module")
def alpha_registered():
    """The registration block of docs/pipelines.md, executed as written."""
    text = (ROOT / "docs" / "pipelines.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                 if "register_family(" in b)
    before = dict(FAMILIES)
    exec(compile(block, "docs/pipelines.md", "exec"), {})
    yield
    FAMILIES.clear()
    FAMILIES.update(before)


def test_the_documented_registration_example_works(tmp_path, alpha_registered):
    pipe = bench.tiny_pixart(tmp_path, "PixArtAlphaPipeline")
    kw = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="blurry", height=16,
              width=16, num_inference_steps=8, use_resolution_binning=False, **TOK)
    ref = pipe(**kw, generator=gen(), output_type="latent", clean_caption=False).images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5
    kw["num_inference_steps"] = 16
    pipe = ddim(pipe)
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 16 and (out.latents - ref.latents).abs().max() < 1e-3
    with pytest.raises(ValueError, match="use_resolution_binning=False"):
        srds_pipeline(pipe, "a cat", **TOK)


def test_pixart_sigma_matches_its_pipeline(tmp_path):
    pipe = bench.tiny_pixart(tmp_path)
    kw = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=10,
              use_resolution_binning=False, **TOK)
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5
    kw["num_inference_steps"] = 16
    pipe = ddim(pipe)
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    for sampler in ("srds", "picard"):
        out = srds_pipeline(pipe, sampler=sampler, generator=gen(), output_type="latent", **kw)
        assert out.stats.depth < 16 and (out.latents - ref.latents).abs().max() < 1e-3, sampler
    with pytest.raises(ValueError, match="use_resolution_binning=True needs a transformer"):
        srds_pipeline(pipe, "a cat", height=16, width=16, **TOK)


def test_flux_img2img_matches_its_pipeline(tmp_path):
    pipe = bench.tiny_flux_img2img(tmp_path)
    kw = dict(prompt="a cat", image=bench.image(), height=16, width=16, strength=0.7,
              num_inference_steps=10, **TOK)  # Flux's rounding: 7 steps (SD's would run 7 too)
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5 and ours.stats.depth == 7
    kw.update(num_inference_steps=28, strength=0.6)  # int(28 - 16.8) = 11: 17 steps run
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert ref.stats.depth == 17
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 17 and (out.latents - ref.latents).abs().max() < 1e-3


def test_flux_negative_prompt_2_alone_is_refused_before_any_model_call(tmp_path):
    pipe = bench.t2i.tiny_flux(tmp_path)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1))
             for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    with pytest.raises(ValueError, match="negative_prompt_2 alone"):
        srds_pipeline(pipe, "sea", negative_prompt_2="fog", true_cfg_scale=3.0, height=16,
                      width=16, **TOK)
    for h in hooks:
        h.remove()
    assert not calls
    # with negative_prompt as well it runs true CFG, as the pipeline does
    kw = dict(prompt="sea", negative_prompt="blurry", negative_prompt_2="fog",
              true_cfg_scale=3.0, height=16, width=16, num_inference_steps=4, **TOK)
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5


def test_unlisted_pipelines_are_named_with_the_way_in():
    class SomeVideoPipeline:
        pass

    with pytest.raises(TypeError, match="StableDiffusionXLPipeline.*got SomeVideoPipeline.*"
                                        "register_family"):
        srds_pipeline(SomeVideoPipeline(), "a cat")
    with pytest.raises(TypeError, match="encode is required"):
        register_family("MyPipeline", PipelineFamily("unet", ("unet",), 10, 1.0))
    with pytest.raises(ValueError, match="registered already"):
        register_family("FluxPipeline", FAMILIES["FluxPipeline"])
    assert set(pipelines.supported_pipelines()) >= {
        "StableDiffusionXLPipeline", "StableDiffusionImg2ImgPipeline", "FluxImg2ImgPipeline",
        "StableDiffusionInpaintPipeline", "StableDiffusionControlNetPipeline"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is None:
            pass
        elif isinstance(node, ast.ImportFrom) and node.module == "adapters":
            out.update(f"adapters.{a.name}" for a in node.names)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "adapters":
            out.update(f"adapters.{a.name}" for a in node.names)
    return out


def test_the_bridge_and_the_pipelines_import_one_way():
    """adapters.diffusers (public) -> adapters.pipelines -> adapters.bridge, never back, lazy
    imports included; pint never imports the adapters."""
    pkg = ROOT / "adapters" / "pipelines"
    for f in pkg.glob("*.py"):
        assert not _imports(f) & {"adapters.diffusers", "adapters.text_to_image"}, f.name
    assert not _imports(ROOT / "adapters" / "bridge.py") & {
        "adapters.diffusers", "adapters.pipelines", "adapters.text_to_image"}
    for f in (ROOT / "pint").rglob("*.py"):
        assert not any(m.startswith("adapters") for m in _imports(f)), f


def test_chroma_matches_its_pipeline_with_both_masks_in_one_call(tmp_path):
    pipe = bench.tiny_chroma(tmp_path)
    kw = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="blurry", height=16,
              width=16, num_inference_steps=6, **TOK)
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5 and ours.stats.model_calls == 6
    kw["num_inference_steps"] = 12
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 12 and (out.latents - ref.latents).abs().max() < 1e-3


def test_flux_kontext_image_tokens_match_its_pipeline(tmp_path):
    pipe = bench.tiny_kontext(tmp_path)
    kw = dict(prompt="a cat", negative_prompt="blurry", true_cfg_scale=2.0, image=bench.image(),
              height=16, width=32, max_area=512, _auto_resize=False, num_inference_steps=6,
              **TOK)  # 32 x 16 at max_area 512: the pipeline samples 32 x 16
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert ours.latents.shape == ref.shape and rel_err(ours.latents, ref) < 1e-5
    kw["num_inference_steps"] = 12
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="srds", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 12 and (out.latents - ref.latents).abs().max() < 1e-3


def test_sana_matches_its_pipeline(tmp_path):
    pipe = bench.tiny_sana(tmp_path)
    kw = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="blurry", height=32,
              width=32, use_resolution_binning=False, complex_human_instruction=None,
              num_inference_steps=6, **TOK)
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5
    kw["num_inference_steps"] = 12
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 12 and (out.latents - ref.latents).abs().max() < 1e-3
    with pytest.raises(ValueError, match="divisible by 32"):
        srds_pipeline(pipe, "a cat", height=16, width=16, use_resolution_binning=False, **TOK)


def test_qwenimage_norm_rescaled_true_cfg_matches_its_pipeline(tmp_path):
    pipe = bench.tiny_qwenimage(tmp_path)
    kw = dict(prompt=["a photo of a cat", "red tree"], negative_prompt="ugly", height=16,
              width=16, num_inference_steps=6)  # true_cfg_scale: the pipeline's 4.0
    ref = pipe(**kw, generator=gen(), output_type="latent").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-5 and ours.guidance_scale == 4.0
    assert ours.stats.model_rows == 6 * 2 * 2  # both halves of both prompts, every step
    kw["num_inference_steps"] = 12
    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="latent", **kw)
    out = srds_pipeline(pipe, sampler="quasi_newton", generator=gen(), output_type="latent", **kw)
    assert out.stats.depth < 12 and (out.latents - ref.latents).abs().max() < 1e-3
    ref = pipe(**dict(kw, num_inference_steps=2), generator=gen(), output_type="np").images
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(), output_type="np",
                         **dict(kw, num_inference_steps=2))
    assert abs(ours.images - ref).max() < 1e-4
