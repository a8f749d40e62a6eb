"""SRDS for text-to-image pipelines: a tiny StableDiffusionPipeline built from configs (CLIP
text encoder, a tokenizer from a vocabulary written here, UNet2DCondition, VAE), saved as a
local folder and loaded back. pint's serial path against the pipeline's own ``__call__``,
SRDS and Picard converging to it, pint-sample on the folder, and bad input refused before
any model call."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from adapters.diffusers import TextToImageOutput, load_text_to_image, srds_pipeline  # noqa: E402
from adapters.diffusion.cli import main  # noqa: E402
from adapters.diffusion.pretrained import PretrainedNotFoundError  # noqa: E402

PROMPTS = ["a photo of a cat", "red tree"]
_spec = importlib.util.spec_from_file_location(
    "bench_text_to_image", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_text_to_image.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
#: a CLIPTokenizer over a few words (vocab.json + merges.txt written into the folder)
write_tokenizer = bench.clip_tokenizer


def tiny_pipeline(tmp, scheduler):
    tok = write_tokenizer(tmp / "vocab")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    sched = DDIMScheduler(**SD_BETAS, set_alpha_to_one=False, steps_offset=1)
    tiny_pipeline(tmp, sched).save_pretrained(tmp / "pipe", safe_serialization=True)
    return tmp / "pipe"


@pytest.fixture(scope="module")
def pipe(folder):
    p = load_text_to_image(folder)
    p.set_progress_bar_config(disable=True)
    return p


def with_scheduler(pipe, scheduler):
    p = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
    p.set_progress_bar_config(disable=True)
    return p


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def reference(pipe, seed, **kw):
    return pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="latent").images


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_folder_loads_back_offline_with_its_components(folder, pipe):
    assert (folder / "model_index.json").exists() and (folder / "tokenizer").is_dir()
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    ids = pipe.tokenizer("a photo of a cat").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids)[1:6] == ["a</w>", "photo</w>", "of</w>",
                                                              "a</w>", "cat</w>"]


CASES = {
    "ddim_cfg_negative": dict(prompt=PROMPTS, negative_prompt=["ugly", "blurry"],
                              guidance_scale=7.5, num_images_per_prompt=2),
    "ddim_eta_no_guidance": dict(prompt="a photo of a dog", guidance_scale=1.0, eta=0.7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serial_matches_pipeline_call(pipe, case):
    kw = dict(CASES[case], num_inference_steps=20)
    ref = reference(pipe, 3, **kw)
    ours = srds_pipeline(pipe, sampler="serial", generator=gen(3), output_type="latent", **kw)
    assert isinstance(ours, TextToImageOutput)
    assert ours.latents.shape == ref.shape and ours.latents.dtype == torch.float32
    assert rel_err(ours.latents, ref) < 1e-4
    assert (ours.latents - ours.initial_latents).abs().max() > 0.1
    cfg = kw["guidance_scale"] > 1
    assert ours.stats.model_calls == ours.stats.depth == 20
    assert ours.stats.model_rows == 20 * ref.shape[0] * (2 if cfg else 1)


def test_ddpm_scheduler_matches_pipeline_and_srds_reproduces_it(pipe):
    ddpm = with_scheduler(pipe, DDPMScheduler(**SD_BETAS, steps_offset=1))
    kw = dict(prompt=PROMPTS, guidance_scale=5.0, num_inference_steps=16)
    ref = reference(ddpm, 4, **kw)
    ours = srds_pipeline(ddpm, sampler="serial", generator=gen(4), output_type="latent", **kw)
    assert rel_err(ours.latents, ref) < 1e-4
    par = srds_pipeline(ddpm, tol=0, max_iters=4, num_blocks=4, generator=gen(4),
                        output_type="latent", **kw)
    assert rel_err(par.latents, ref) < 1e-4


def test_srds_and_picard_converge_to_the_pipeline(pipe):
    kw = dict(prompt=PROMPTS, negative_prompt="blurry", guidance_scale=7.5,
              num_inference_steps=25)  # one negative prompt for all (the pipeline wants a list)
    ref = reference(pipe, 5, **{**kw, "negative_prompt": ["blurry"] * 2})
    out = srds_pipeline(pipe, tol=1e-3, generator=gen(5), return_iterates=True,
                        output_type="np", **kw)
    s = out.sampling
    assert s.converged and 1 <= s.iterations < s.num_blocks
    assert s.history[-1] <= 1e-3 < s.history[0]
    assert (out.latents - ref).abs().max() < 1e-3
    assert out.stats.depth < 25  # fewer sequential UNet calls than the serial 25
    # memory: the iterates are latents, never images; the output is decoded once
    assert s.iterates.shape == (s.iterations + 1, *ref.shape)
    assert isinstance(out.images, np.ndarray) and out.images.shape == (2, 16, 16, 3)
    exact = srds_pipeline(pipe, tol=0, max_iters=5, num_blocks=5, generator=gen(5),
                          output_type="latent", **kw)
    assert exact.sampling.num_blocks == 5 and rel_err(exact.latents, ref) < 1e-4
    pic = srds_pipeline(pipe, sampler="picard", tol=1e-4, window=8, generator=gen(5),
                        output_type="latent", **kw)
    assert pic.sampling.converged and pic.stats.depth < 25
    assert (pic.latents - ref).abs().max() < 1e-3


def test_decoded_images_and_prompt_embeds_match_the_pipeline(pipe):
    kw = dict(guidance_scale=6.0, num_inference_steps=10)
    ref = pipe(prompt=PROMPTS[0], generator=gen(6), output_type="np", **kw).images
    out = srds_pipeline(pipe, PROMPTS[0], sampler="serial", generator=gen(6), output_type="pil",
                        **kw)
    assert len(out.images) == 1 and out.images[0].size == (16, 16)
    assert np.abs(np.asarray(out.images[0]) / 255.0 - ref[0]).max() <= 1 / 255 + 1e-6
    cond, unc = pipe.encode_prompt(PROMPTS[0], "cpu", 1, True, None)
    emb = srds_pipeline(pipe, prompt_embeds=cond, negative_prompt_embeds=unc, sampler="serial",
                        generator=gen(6), output_type="latent", **kw)
    direct = srds_pipeline(pipe, PROMPTS[0], sampler="serial", generator=gen(6),
                           output_type="latent", **kw)
    assert torch.equal(emb.latents, direct.latents)


@pytest.fixture
def no_model_calls(pipe):
    """Counts forward calls of the UNet, text encoder and VAE; asserts there were none."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1))
             for m in (pipe.unet, pipe.text_encoder, pipe.vae)]
    yield
    for h in hooks:
        h.remove()
    assert not calls, "a model ran before the input was refused"


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(prompt=PROMPTS, negative_prompt=["ugly"]), ValueError,
     "negative_prompt has 1 entries but there are 2 prompts"),
    (dict(prompt=PROMPTS, num_images_per_prompt=2, latents=torch.zeros(2, 4, 8, 8)), ValueError,
     r"latents must have shape \(4, 4, 8, 8\) \(2 prompt\(s\) x num_images_per_prompt=2\)"),
    (dict(prompt=PROMPTS, generator=[gen(0)] * 3), ValueError, "generator is a list of 3"),
    (dict(prompt="a cat", negative_prompt="ugly", guidance_scale=0.5), ValueError,
     "negative prompt needs classifier-free guidance, guidance_scale > 1"),
    (dict(prompt=None), ValueError, "exactly one of prompt"),
    (dict(prompt=[1, 2]), TypeError, "prompt must be a str or a non-empty list"),
    (dict(prompt="a cat", sampler="magic"), ValueError, "sampler must be one of"),
    (dict(prompt="a cat", num_inference_steps=5000), ValueError, "num_steps must be between"),
    (dict(prompt="a cat", sampler="serial", tol=1e-3), ValueError, "'serial' takes no tol"),
    (dict(prompt="a cat", sampler="picard", pipelined=False, stopping="final"), TypeError,
     "picard_sample takes no argument"),
    (dict(prompt="a cat", height=20), ValueError, "divisible by 8"),
    (dict(prompt="a cat", eta=-1.0), ValueError, "eta must be a finite number >= 0"),
])
def test_bad_input_is_refused_before_any_model_call(pipe, no_model_calls, kwargs, err, match):
    with pytest.raises(err, match=match):
        srds_pipeline(pipe, **kwargs)


def test_unmappable_scheduler_and_non_pipelines_are_refused(pipe, folder, tmp_path,
                                                            no_model_calls):
    with pytest.raises(TypeError, match="scheduler must be one of.*got PNDMScheduler"):
        srds_pipeline(with_scheduler(pipe, PNDMScheduler.from_config(pipe.scheduler.config)), "a cat")
    with pytest.raises(TypeError, match="pipe must be a text-to-image pipeline"):
        srds_pipeline(pipe.unet, "a cat")
    # folders: PNDM scheduler (refused unless replaced), not a pipeline, another pipeline
    pndm = tmp_path / "pndm"
    with_scheduler(pipe, PNDMScheduler.from_config(pipe.scheduler.config)).save_pretrained(pndm)
    with pytest.raises(PretrainedNotFoundError, match="holds a PNDMScheduler.*scheduler='ddim'"):
        load_text_to_image(pndm)
    assert type(load_text_to_image(pndm, scheduler="ddim").scheduler).__name__ == "DDIMScheduler"
    pipe.unet.save_pretrained(tmp_path / "unet_only")
    with pytest.raises(PretrainedNotFoundError, match="not a text-to-image pipeline folder"):
        load_text_to_image(tmp_path / "unet_only")
    (tmp_path / "ddpm_pipe").mkdir()
    (tmp_path / "ddpm_pipe" / "model_index.json").write_text(
        json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(PretrainedNotFoundError, match="holds a DDPMPipeline"):
        load_text_to_image(tmp_path / "ddpm_pipe")


def test_cli_samples_the_pipeline_latents(folder, pipe, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    rc = main(["--model", str(folder), "--prompt", PROMPTS[0], "--negative-prompt", "ugly",
               "--guidance-scale", "7.5", "--steps", "25", "--num-samples", "3", "--tol", "1e-4",
               "--seed", "7", "--compare-serial", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "StableDiffusionPipeline" and report["prompt"] == PROMPTS[0]
    assert report["converged"] and report["depth"] < 25
    assert len(report["history"]) == report["iterations"]
    assert report["max_abs_diff_vs_serial"] < 1e-3
    assert report["latent_shape"] == [4, 8, 8] and report["image_size"] == [16, 16]
    for png in ("samples.png", "convergence.png"):
        assert (out / png).stat().st_size > 2000
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000.png", "001.png", "002.png"]
    ref = reference(pipe, 7, prompt=PROMPTS[0], negative_prompt="ugly", guidance_scale=7.5,
                    num_inference_steps=25, num_images_per_prompt=3)
    lat = load_file(str(out / "latents.safetensors"))
    assert (lat["latents"] - ref).abs().max() < 1e-3
    assert "wrote" in capsys.readouterr().out
    # the serial path from the command line gives the pipeline's latents
    assert main(["--model", str(folder), "--prompt", PROMPTS[0], "--negative-prompt", "ugly",
                 "--sampler", "serial", "--steps", "25", "--num-samples", "3", "--seed", "7",
                 "--out", str(tmp_path / "serial")]) == 0
    assert rel_err(load_file(str(tmp_path / "serial" / "latents.safetensors"))["latents"], ref) < 1e-4


def test_cli_refuses_bad_text_to_image_input(folder, pipe, tmp_path, capsys):
    o = str(tmp_path / "o")
    cases = [
        (["--model", "digits", "--prompt", "a cat"], "not a text-to-image pipeline folder"),
        (["--model", str(folder)], "is a text-to-image pipeline: give --prompt"),
        (["--model", str(folder), "--prompt", "a cat", "--negative-prompt", "ugly",
          "--guidance-scale", "0.5"], "--negative-prompt needs --guidance-scale > 1"),
        (["--model", "digits", "--guidance-scale", "3"], "--guidance-scale need(s) --prompt"),
        (["--model", str(folder), "--prompt", "a cat", "--steps", "5000"], "--steps must be <= 1000"),
    ]
    pndm = tmp_path / "pndm"
    with_scheduler(pipe, PNDMScheduler.from_config(pipe.scheduler.config)).save_pretrained(pndm)
    cases.append((["--model", str(pndm), "--prompt", "a cat"], "holds a PNDMScheduler"))
    for args, msg in cases:
        assert main(args + ["--out", o]) == 2, args
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["--model", str(pndm), "--prompt", "a cat", "--scheduler", "ddim", "--steps", "4",
                 "--sampler", "serial", "--num-samples", "1", "--out", o]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["scheduler"] == "DDIMScheduler"
