"""pint's samplers against diffusers' own loops on tiny random UNets built from configs."""

import itertools

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from adapters.diffusers import from_diffusers  # noqa: E402
from adapters.diffusion import serial_sample, srds_sample  # noqa: E402
from adapters.diffusion.pretrained import PretrainedNotFoundError, load_pretrained  # noqa: E402


def diffusers_loop(unet, scheduler, x, K, generator=None, **unet_kwargs):
    scheduler.set_timesteps(K)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, **unet_kwargs).sample
            x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = list(itertools.product(["leading", "trailing", "linspace"],
                               ["epsilon", "sample", "v_prediction"], [True, False]))


@pytest.mark.parametrize("spacing,prediction_type,set_alpha_to_one", CASES)
def test_serial_reproduces_ddim_scheduler(unet, spacing, prediction_type, set_alpha_to_one):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0,
                          prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one,
                          clip_sample=False)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(unet, sched, x, 20)
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 20)
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_clip_sample_and_cosine_betas(unet, beta_schedule):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                          timestep_spacing="trailing", clip_sample=True, clip_sample_range=0.5)
    model, schedule = from_diffusers(unet, sched)
    assert schedule.clip_sample and schedule.clip_sample_range == 0.5
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    # few steps: clipping is discontinuous, so over long runs float32 round-off flips values
    # at the clip bound (float64 and float32 runs of the same sampler differ by ~5e-4 at 25
    # steps); step for step the formulas agree to round-off
    with torch.no_grad():
        for K in (1, 2, 3):
            ours, ref = serial_sample(model, schedule, x, K), diffusers_loop(unet, sched, x, K)
            assert rel_err(ours, ref) < 1e-5
            assert (ours - x).abs().max() > 0.1


def test_srds_converged_equals_diffusers_within_tol(unet):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = diffusers_loop(unet, sched, x, 64)
    with torch.no_grad():
        out = srds_sample(model, schedule, x, 64, tol=1e-4, pipelined=False)  # 8 blocks
        exact = srds_sample(model, schedule, x, 64, tol=0, max_iters=8, pipelined=False)
    assert out.converged and out.iterations < 8
    assert (out.sample - ref).abs().max() < 10 * 1e-4
    assert rel_err(exact.sample, ref) < 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_ancestral_with_shared_noise(unet, spacing):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                          timestep_spacing=spacing, clip_sample=True)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    ref = diffusers_loop(unet, sched, x, 30, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 30, sampler="ddpm",
                             generator=torch.Generator().manual_seed(9))
        par = srds_sample(model, schedule, x, 30, sampler="ddpm", tol=1e-6,
                          generator=torch.Generator().manual_seed(9))
    assert rel_err(ours, ref) < 1e-5
    assert (par.sample - ref).abs().max() < 1e-4


def test_ddim_eta_with_shared_noise(unet):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    sched.set_timesteps(15)
    g = torch.Generator().manual_seed(6)
    y = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y, eta=0.8, generator=g).prev_sample
        ours = serial_sample(model, schedule, x, 15, eta=0.8,
                             generator=torch.Generator().manual_seed(6))
    assert rel_err(ours, y) < 1e-5


def test_conditional_unet_with_guidance():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model, schedule = from_diffusers(unet, sched)
    b, w = 2, 5.0
    cond = torch.randn(b, 3, 12)
    unc = torch.zeros(b, 3, 12)
    x = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    # diffusers' pipeline convention: one call on [uncond, cond], then guidance
    sched.set_timesteps(12)
    y = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(torch.cat([y, y]), t, encoder_hidden_states=torch.cat([unc, cond])).sample
            e_u, e_c = out.chunk(2)
            y = sched.step(e_u + w * (e_c - e_u), t, y).prev_sample
        kw = dict(model_kwargs={"encoder_hidden_states": cond}, guidance_scale=w,
                  uncond_kwargs={"encoder_hidden_states": unc})
        ours = serial_sample(model, schedule, x, 12, **kw)
        par = srds_sample(model, schedule, x, 12, num_blocks=3, tol=0, max_iters=3, **kw)
    assert rel_err(ours, y) < 1e-5
    assert rel_err(par.sample, y) < 1e-5


def test_unsupported_scheduler_is_refused(unet):
    with pytest.raises(TypeError, match="scheduler must be one of"):
        from_diffusers(unet, PNDMScheduler())
    with pytest.raises(ValueError, match="thresholding"):
        from_diffusers(unet, DDIMScheduler(thresholding=True))
    with pytest.raises(TypeError, match="unet must be a diffusers model"):
        from_diffusers(lambda x, t: x, DDIMScheduler())


def test_wrong_rank_x_for_the_unet(unet):
    model, schedule = from_diffusers(unet, DDIMScheduler())
    with pytest.raises(ValueError, match=r"x_T must have shape \[batch, 1, 8, 8\]"):
        srds_sample(model, schedule, torch.randn(2, 64), 10)


def test_load_local_folder_and_refuse_pickles(unet, tmp_path):
    folder = tmp_path / "pipe"
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(beta_schedule="linear", clip_sample=False).save_pretrained(folder / "scheduler")
    model, schedule = load_pretrained(folder)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        a = serial_sample(model, schedule, x, 10)
        b = diffusers_loop(unet, DDIMScheduler(beta_schedule="linear", clip_sample=False), x, 10)
    assert rel_err(a, b) < 1e-5
    # flat layout: config.json + weights + scheduler_config.json side by side
    flat = tmp_path / "flat"
    unet.save_pretrained(flat, safe_serialization=True)
    DDPMScheduler(beta_schedule="linear").save_pretrained(flat)
    load_pretrained(flat)

    pickled = tmp_path / "pickled"
    unet.save_pretrained(pickled / "unet", safe_serialization=False)
    DDIMScheduler().save_pretrained(pickled / "scheduler")
    with pytest.raises(PretrainedNotFoundError, match="safetensors only.*Convert"):
        load_pretrained(pickled)
    with pytest.raises(PretrainedNotFoundError, match="unknown model 'nope'"):
        load_pretrained("nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedNotFoundError, match="holds no UNet"):
        load_pretrained(empty)


def test_latent_model_with_vae_decode():
    from diffusers import AutoencoderKL

    from adapters.diffusers import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        sample_size=16).eval()
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    model, schedule = from_diffusers(unet, DDIMScheduler(clip_sample=False))
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        lat = srds_sample(model, schedule, z, 16, tol=1e-4).sample
        img = decode_latents(vae, lat)
        ref = vae.decode(lat / vae.config.scaling_factor).sample
    assert img.shape == (2, 3, 16, 16) and torch.equal(img, ref)
    with pytest.raises(TypeError, match="vae must be"):
        decode_latents(unet.config, lat)
