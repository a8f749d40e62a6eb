"""pint's samplers on today's text-to-image pipelines: tiny StableDiffusion3Pipeline and
FluxPipeline built from configs (``benchmarks/bench_text_to_image.py``: SD3/Flux
transformers, CLIP and T5 encoders, tokenizers from a vocabulary written there), saved as
local folders and loaded back. The serial path against the pipeline's own ``__call__``,
SRDS / Picard / quasi-Newton / auto converging to it, the decoded images, pint-sample on
the folders, and guidance the model does not have refused before any model call."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from adapters.diffusion.cli import main  # noqa: E402
from adapters.diffusion.planner import CostModel  # noqa: E402
from adapters.diffusion.pretrained import PretrainedNotFoundError  # noqa: E402
from adapters.text_to_image import TextToImageOutput, load_text_to_image, srds_pipeline  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bench_text_to_image", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_text_to_image.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PROMPTS = ["a photo of a cat", "red tree"]
TOK = dict(max_sequence_length=bench.MAX_TOKENS)  # the tiny T5's token budget
FLUX = dict(height=16, width=16, **TOK)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2i")
    bench.tiny_sd3(tmp / "v").save_pretrained(tmp / "sd3", safe_serialization=True)
    bench.tiny_flux(tmp / "v").save_pretrained(tmp / "flux", safe_serialization=True)
    bench.tiny_flux(tmp / "v", guidance_embeds=False).save_pretrained(tmp / "schnell",
                                                                      safe_serialization=True)
    return {k: tmp / k for k in ("sd3", "flux", "schnell")}


@pytest.fixture(scope="module")
def pipes(folders):
    out = {}
    for k, f in folders.items():
        out[k] = load_text_to_image(f)
        out[k].set_progress_bar_config(disable=True)
    return out


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def reference(pipe, seed, **kw):
    return pipe(**kw, generator=gen(seed), output_type="latent").images


def test_folders_load_back_offline_with_their_schedulers(folders, pipes, capfd):
    load_text_to_image(folders["flux"])
    printed = capfd.readouterr()
    assert "accelerate" not in printed.out + printed.err
    assert type(pipes["sd3"]).__name__ == "StableDiffusion3Pipeline"
    assert type(pipes["flux"]).__name__ == "FluxPipeline"
    for p in pipes.values():
        assert type(p.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipes["flux"].scheduler.config.use_dynamic_shifting
    assert pipes["sd3"].scheduler.config.shift == 3.0
    assert pipes["sd3"].text_encoder_3 is not None and not pipes["sd3"].transformer.training


CASES = {  # pipe, arguments as for pipe(...); pint's extra: one negative prompt for a list
    "sd3_cfg_negative": ("sd3", dict(prompt=PROMPTS, negative_prompt=["ugly", "blurry"],
                                     guidance_scale=7.0, num_images_per_prompt=2, **TOK)),
    "sd3_unguided": ("sd3", dict(prompt="a photo of a dog", guidance_scale=1.0, **TOK)),
    "flux_embedded_guidance": ("flux", dict(prompt=PROMPTS, guidance_scale=3.5, **FLUX)),
    "flux_true_cfg": ("flux", dict(prompt="a cat", negative_prompt="blurry",
                                   true_cfg_scale=4.0, **FLUX)),
    "schnell_unguided": ("schnell", dict(prompt="red tree", num_inference_steps=4, **FLUX)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serial_matches_pipeline_call(pipes, case):
    name, kw = CASES[case]
    pipe = pipes[name]
    ref = reference(pipe, 3, **kw)
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(3), output_type="latent", **kw)
    assert isinstance(ours, TextToImageOutput) and ours.sampler == "serial"
    assert ours.latents.shape == ref.shape and ours.latents.dtype == torch.float32
    assert rel_err(ours.latents, ref) < 1e-4
    assert (ours.latents - ours.initial_latents).abs().max() > 0.1
    N = kw.get("num_inference_steps", 28)  # the pipelines' default
    cfg = kw.get("guidance_scale", 0) > 1 and name == "sd3" or "true_cfg_scale" in kw
    assert ours.stats.model_calls == ours.stats.depth == N
    assert ours.stats.model_rows == N * ref.shape[0] * (2 if cfg else 1)


@pytest.mark.parametrize("name,N", [("sd3", 28), ("flux", 50)])
def test_parallel_samplers_converge_to_the_pipeline(pipes, name, N):
    pipe = pipes[name]
    kw = dict(prompt=PROMPTS, num_inference_steps=N, **(FLUX if name == "flux" else TOK))
    if name == "sd3":
        kw.update(negative_prompt="blurry")  # one for both prompts, CFG 7.0 by default
    ref = reference(pipe, 5, **{**kw, **({"negative_prompt": ["blurry"] * 2} if name == "sd3"
                                         else {})})
    runs = {
        "srds": dict(tol=1e-4),
        "picard": dict(window=16, tol=1e-5),
        "quasi_newton": dict(window=16, tol=1e-5),
        "auto": dict(tol=1e-5, max_batch=64, cost=CostModel.knee(0.01, 10_000, 0.0)),
    }
    for sampler, opts in runs.items():
        out = srds_pipeline(pipe, sampler=sampler, generator=gen(5), output_type="latent",
                            **kw, **opts)
        assert out.sampling.converged, sampler
        assert out.stats.depth < N, (sampler, out.stats.depth)
        assert rel_err(out.latents, ref) < 1e-3, sampler
    # auto on a device far below its knee: a parallel plan of at most max_batch rows per call
    assert out.sampler != "serial" and out.sampling.plan.choice.max_rows <= 64
    exact = srds_pipeline(pipe, tol=0, max_iters=4, num_blocks=4, generator=gen(5),
                          output_type="latent", **kw)
    assert rel_err(exact.latents, ref) < 1e-4


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_decoded_images_of_serial_and_parallel_agree_with_the_pipeline(pipes, name):
    pipe = pipes[name]
    kw = dict(prompt="a photo of a cat", num_inference_steps=12,
              **(FLUX if name == "flux" else TOK))
    ref = pipe(**kw, generator=gen(6), output_type="np").images
    serial = srds_pipeline(pipe, sampler="serial", generator=gen(6), output_type="np", **kw)
    assert serial.images.shape == ref.shape == (1, 16, 16, 3)
    assert np.abs(serial.images - ref).max() < 1e-5
    qn = srds_pipeline(pipe, sampler="quasi_newton", window=12, tol=1e-5, generator=gen(6),
                       output_type="pil", **kw)
    assert qn.stats.depth < 12 and qn.images[0].size == (16, 16)
    assert np.abs(np.asarray(qn.images[0]) / 255.0 - ref[0]).max() <= 2 / 255


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_prompt_embeds_pass_through(pipes, name):
    pipe = pipes[name]
    kw = dict(num_inference_steps=6, **(FLUX if name == "flux" else TOK))
    direct = srds_pipeline(pipe, "a cat", sampler="serial", generator=gen(7),
                           output_type="latent", **kw)
    if name == "sd3":
        pe, npe, ppe, nppe = pipe.encode_prompt("a cat", None, None, device="cpu", **TOK)
        emb = dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                   negative_pooled_prompt_embeds=nppe)
    else:
        pe, ppe, _ = pipe.encode_prompt("a cat", None, device="cpu", **TOK)
        emb = dict(prompt_embeds=pe, pooled_prompt_embeds=ppe)
    out = srds_pipeline(pipe, sampler="serial", generator=gen(7), output_type="latent",
                        **emb, **kw)
    assert rel_err(out.latents, direct.latents) < 1e-6


def test_warm_start_from_a_neighbouring_prompt(pipes):
    pipe = pipes["flux"]
    kw = dict(num_inference_steps=28, window=28, tol=1e-5, output_type="latent", **FLUX)
    first = srds_pipeline(pipe, "a photo of a cat", sampler="quasi_newton", generator=gen(8),
                          return_trajectory=True, **kw)
    cold = srds_pipeline(pipe, "a photo of a dog", sampler="quasi_newton", generator=gen(8), **kw)
    warm = srds_pipeline(pipe, "a photo of a dog", sampler="quasi_newton", generator=gen(8),
                         initial=first, **kw)
    assert warm.sampling.converged and warm.stats.depth <= cold.stats.depth
    assert (warm.latents - cold.latents).abs().max() < 1e-3


@pytest.fixture
def no_model_calls(pipes):
    """Counts forward calls of every network of the pipelines; asserts there were none."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1))
             for p in pipes.values() for m in p.components.values()
             if isinstance(m, torch.nn.Module)]
    yield
    for h in hooks:
        h.remove()
    assert not calls, "a model ran before the input was refused"


class DDPMPipeline:  # an unsupported pipeline class
    pass


@pytest.mark.parametrize("name,kwargs,err,match", [
    ("schnell", dict(guidance_scale=3.5), ValueError,
     r"guidance_scale=3.5: this FluxPipeline's transformer has no guidance embedding"),
    ("flux", dict(negative_prompt="ugly"), ValueError,
     r"negative prompt needs classifier-free guidance, true_cfg_scale > 1"),
    ("flux", dict(true_cfg_scale=5.0), ValueError, "true_cfg_scale=5 needs a negative_prompt"),
    ("sd3", dict(true_cfg_scale=5.0), ValueError, "true_cfg_scale is FluxPipeline's"),
    ("sd3", dict(negative_prompt="ugly", guidance_scale=1.0), ValueError,
     "negative prompt needs classifier-free guidance, guidance_scale > 1"),
    ("sd3", dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32)), ValueError,
     "prompt_embeds needs pooled_prompt_embeds"),
    ("flux", dict(latents=torch.zeros(1, 4, 8, 8)), ValueError,
     r"latents must have shape \(1, 16, 16\)"),
    ("flux", dict(height=18), ValueError, "divisible by 4 for this FluxPipeline"),
    ("flux", dict(prompt_3="a cat"), ValueError, "prompt_3: not an argument of a FluxPipeline"),
    ("sd3", dict(sampler="srds", window=8), TypeError, "srds_sample takes no argument"),
    ("sd3", dict(sampler="picard", num_blocks=4), ValueError, "num_blocks: SRDS's"),
    ("sd3", dict(sampler="srds", max_batch=8), ValueError, "max_batch is only used with"),
    ("sd3", dict(sampler="serial", tol=1e-3), ValueError, "'serial' takes no tol"),
    ("sd3", dict(num_inference_steps=5000), ValueError, "num_steps must be between"),
])
def test_bad_input_is_refused_before_any_model_call(pipes, no_model_calls, name, kwargs, err,
                                                    match):
    kw = {"prompt": "a cat", **(FLUX if name != "sd3" else TOK), **kwargs}
    with pytest.raises(err, match=match):
        srds_pipeline(pipes[name], **kw)


def test_unsupported_pipelines_and_malformed_folders_are_refused(folders, tmp_path):
    with pytest.raises(TypeError, match="one of StableDiffusionPipeline, .*StableDiffusion3Pipeline,"
                                        " FluxPipeline, .*got DDPMPipeline.*register_family"):
        srds_pipeline(DDPMPipeline(), "a cat")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{not json")
    with pytest.raises(PretrainedNotFoundError, match=r"model_index.json \(the pipeline index\) "
                                                      "is not valid JSON"):
        load_text_to_image(bad)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folders["sd3"], broken)
    (broken / "scheduler" / "scheduler_config.json").write_text("[1, 2")
    with pytest.raises(PretrainedNotFoundError, match=r"scheduler_config.json \(the scheduler "
                                                      r"config\) is not valid JSON"):
        load_text_to_image(broken)
    with pytest.raises(ValueError, match="samples with its own flow-matching scheduler"):
        load_text_to_image(folders["flux"], scheduler="ddim")


def test_cli_samples_flux_with_quasi_newton(folders, pipes, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert main(["--model", str(folders["flux"]), "--prompt", PROMPTS[0], "--sampler",
                 "quasi_newton", "--num-samples", "2", "--seed", "7", "--compare-serial",
                 "--height", "16", "--width", "16",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "FluxPipeline" and report["steps"] == 28
    assert report["guidance_scale"] == 3.5 and report["sampler_run"] == "quasi_newton"
    assert report["converged"] and report["depth"] < 28 and report["window"] == 28
    assert report["max_abs_diff_vs_serial"] < 1e-3
    assert report["image_size"] == [16, 16]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000.png", "001.png"]
    ref = reference(pipes["flux"], 7, prompt=PROMPTS[0], num_images_per_prompt=2, height=16,
                    width=16)  # pint-sample encodes as the pipeline: 512 T5 tokens
    assert (load_file(str(out / "latents.safetensors"))["latents"] - ref).abs().max() < 1e-3
    assert "wrote" in capsys.readouterr().out


def test_cli_refuses_guidance_the_model_lacks(folders, tmp_path, capsys):
    o = str(tmp_path / "o")
    cases = [
        (["--model", str(folders["schnell"]), "--prompt", "a cat", "--guidance-scale", "3"],
         "--guidance-scale=3: this FluxPipeline's transformer has no guidance embedding"),
        (["--model", str(folders["flux"]), "--prompt", "a cat", "--negative-prompt", "ugly"],
         "--negative-prompt needs --true-cfg-scale > 1"),
        (["--model", str(folders["sd3"]), "--prompt", "a cat", "--true-cfg-scale", "4"],
         "--true-cfg-scale is FluxPipeline's"),
        (["--model", str(folders["sd3"]), "--prompt", "a cat", "--scheduler", "ddim"],
         "samples with its own flow-matching scheduler"),
    ]
    for args, msg in cases:
        assert main(args + ["--out", o]) == 2, args
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
