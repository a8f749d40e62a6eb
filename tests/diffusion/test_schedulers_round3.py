"""No silent wrong result, round 3: the schedulers and the bridge. Each test failed on the
code before it: a wrong step that parallel == serial cannot see, a starting scale taken
from the wrong solver, a bridged scheduler sampled with another solver, configurations
refused that diffusers samples, and errors that did not name the argument."""

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from adapters.diffusers import from_diffusers, schedule_from_scheduler  # noqa: E402
from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    SigmaSchedule,
    VPSchedule,
    picard_sample,
    serial_sample,
    srds_sample,
)

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def diffusers_loop(unet, scheduler, x, N, generator=None, **set_timesteps_kwargs):
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(N, **set_timesteps_kwargs)
    x = x * sched.init_noise_sigma
    extra = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t.expand(x.shape[0])).sample
            x = sched.step(out, t, x, **extra).prev_sample
    return x


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def gaussian(schedule, var=0.25, dim=64):
    """The exact denoiser of N(0, var I) in ``dim`` dimensions."""
    return GaussianMixtureDenoiser(torch.zeros(1, dim), var**0.5, schedule)


# ----------------------------------------------------------------- 1. ancestral Euler on flow
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_ancestral_on_flow_samples_the_right_variance(shift):
    """First order: the variance of N(0, 0.25) is reached as N grows (the VE step ignoring
    alpha gave 0.40 at N = 50 and 0.49 at N = 400)."""
    fm = SigmaSchedule.flow_matching(shift=shift, solver="euler_ancestral")
    den = gaussian(fm)
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gap = {}
    for N in (100, 800):
        out = serial_sample(den, fm, x, N, generator=torch.Generator().manual_seed(1))
        gap[N] = abs(out.var().item() - 0.25)
        assert abs(out.mean().item()) < 0.01
    assert gap[800] < 0.01, gap
    assert gap[800] < gap[100] / 3, gap  # the bias shrinks like 1/N


def test_euler_ancestral_on_a_bridged_flow_scheduler_and_parallel_equals_serial():
    fm = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0)).with_solver(
        "euler_ancestral")
    den = gaussian(SigmaSchedule.flow_matching(shift=3.0))
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = serial_sample(den, fm, x, 800, generator=torch.Generator().manual_seed(1))
    assert abs(ref.var().item() - 0.25) < 0.01
    ref = serial_sample(den, fm, x[:4], 40, generator=torch.Generator().manual_seed(1))
    par = picard_sample(den, fm, x[:4], 40, window=40, tol=0, max_iters=40,
                        generator=torch.Generator().manual_seed(1))
    assert (par.sample - ref).abs().max() < 1e-10


def test_euler_ancestral_on_vp_sigmas_still_equals_diffusers(unet):
    sched = EulerAncestralDiscreteScheduler(**SD)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = diffusers_loop(unet, sched, x, 12, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 12, generator=torch.Generator().manual_seed(7))
    assert rel_err(ours, ref) < 1e-5


# ----------------------------------------------------------------- 2. the solver's own start
def loop_on_grid(unet, target, source, x, N, generator=None):
    """diffusers' loop of the scheduler ``target`` on the grid (timesteps and sigmas) that
    ``source`` builds: another solver on the same grid."""
    src, sched = copy.deepcopy(source), copy.deepcopy(target)
    src.set_timesteps(N)
    sched.set_timesteps(N)
    sched.timesteps, sched.sigmas = src.timesteps.float(), src.sigmas.clone()  # Euler: floats
    x = x * sched.init_noise_sigma
    extra = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t.expand(x.shape[0])).sample
            x = sched.step(out, t, x, **extra).prev_sample
    return x


@pytest.mark.parametrize("source, target, solver, karras", [
    (EulerDiscreteScheduler, DPMSolverMultistepScheduler, "dpmpp_2m", True),
    (EulerDiscreteScheduler, UniPCMultistepScheduler, "unipc", True),
    (DPMSolverMultistepScheduler, EulerDiscreteScheduler, "euler", True),
    (DPMSolverMultistepScheduler, EulerDiscreteScheduler, "euler", False),
    (UniPCMultistepScheduler, EulerAncestralDiscreteScheduler, "euler_ancestral", False),
])
def test_another_solver_on_a_bridged_grid_equals_that_solvers_diffusers_loop(
        unet, source, target, solver, karras):
    """The starting scale (init_noise_sigma) and the input scaling belong to the solver:
    Euler's grid sampled with DPM-Solver++ is diffusers' DPM-Solver++ on that grid."""
    src = source(**SD, use_karras_sigmas=karras)
    model, schedule = from_diffusers(unet, src)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    gen = (lambda: torch.Generator().manual_seed(9)) if solver == "euler_ancestral" else (lambda: None)
    ref = loop_on_grid(unet, target(**SD), src, x, 9, generator=gen())
    with torch.no_grad():
        via_sampler = serial_sample(model, schedule, x, 9, sampler=solver, generator=gen())
        via_schedule = serial_sample(model, schedule.with_solver(solver), x, 9, generator=gen())
    assert rel_err(via_sampler, ref) < 1e-5  # was off by 143 (Euler -> DPM) and 1.0
    assert torch.equal(via_sampler, via_schedule)


# ----------------------------------------------------------------- 3. a scheduler's own sampler
def test_a_bridged_ddpm_scheduler_samples_ddpm_by_default(unet):
    sched = DDPMScheduler(beta_schedule="linear")
    model, schedule = from_diffusers(unet, sched)
    assert schedule.solver == "ddpm"
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = diffusers_loop(unet, sched, x, 10, generator=torch.Generator().manual_seed(6))
    # diffusers draws each step's noise as the loop goes: pint draws them all up front
    # from the same generator, in the same order and shape
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 10, generator=torch.Generator().manual_seed(6))
    assert rel_err(ours, ref) < 1e-5  # was 2.0 (DDIM)
    with pytest.raises(ValueError, match="eta"):
        serial_sample(model, schedule, x, 10, eta=0.5)
    ddim = serial_sample(model, schedule, x, 10, sampler="ddim")
    assert rel_err(ddim, ref) > 0.1


def test_vp_schedule_solver_is_validated_and_replaceable():
    with pytest.raises(ValueError, match="solver must be one of"):
        VPSchedule.linear(solver="euler")
    assert VPSchedule.linear().with_conventions(solver="ddpm").solver == "ddpm"


# ----------------------------------------------------------------- 4. dpm2 coarse at alpha = 0
@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_dpm2_coarse_on_a_flow_schedule_that_starts_at_pure_noise(solver):
    fm = SigmaSchedule.flow_matching(shift=3.0, solver=solver)
    den = GaussianMixtureDenoiser(torch.tensor([[1.0, -1.0], [-1.0, 0.5]]).double(), 0.3, fm)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = serial_sample(den, fm, x, 30)
    if solver == "dpmpp_2m":  # a multistep solver has no one-step coarse of order 2
        with pytest.raises(ValueError, match="coarse"):
            srds_sample(den, fm, x, 30, coarse="dpm2")
        return
    out = srds_sample(den, fm, x, 30, coarse="dpm2", tol=0, max_iters=5, num_blocks=5)
    assert (out.sample - ref).abs().max() < 1e-10  # the first block starts at alpha = 0
    conv = srds_sample(den, fm, x, 30, coarse="dpm2", tol=1e-6, num_blocks=5)
    assert conv.converged and (conv.sample - ref).abs().max() < 1e-4


# ----------------------------------------------------------------- zero terminal SNR
def test_ddim_with_zero_terminal_snr_equals_diffusers(unet):
    sched = DDIMScheduler(**SD, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                          prediction_type="v_prediction")
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    ref = diffusers_loop(unet, sched, x, 10)
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 10)
        par = picard_sample(model, schedule, x, 10, window=10, tol=0, max_iters=10)
        srds = srds_sample(model, schedule, x, 10, tol=0, max_iters=4, num_blocks=4)
    assert rel_err(ours, ref) < 1e-5
    assert rel_err(par.sample, ours) < 1e-5 and rel_err(srds.sample, ours) < 1e-5


def test_zero_terminal_snr_with_an_epsilon_network_names_the_prediction_type():
    sched = DDIMScheduler(**SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    schedule = schedule_from_scheduler(sched)
    with pytest.raises(ValueError, match="prediction_type"):
        serial_sample(lambda x, t: x, schedule, torch.randn(1, 4), 10)


# ----------------------------------------------------------------- refused or named
def test_euler_log_linear_interpolation_equals_diffusers(unet):
    sched = EulerDiscreteScheduler(**SD, interpolation_type="log_linear")
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    ref = diffusers_loop(unet, sched, x, 12)
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 12)
    assert rel_err(ours, ref) < 1e-5


def test_sigmas_or_timesteps_fix_the_step_count(unet):
    sigmas = [14.6, 8.0, 4.0, 2.0, 1.0, 0.3, 0.0]
    sched = EulerDiscreteScheduler(**SD)
    model, schedule = from_diffusers(unet, sched, sigmas=sigmas)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    ref = copy.deepcopy(sched)
    ref.set_timesteps(sigmas=sigmas)
    y = x * ref.init_noise_sigma
    with torch.no_grad():
        for t in ref.timesteps:
            y = ref.step(unet(ref.scale_model_input(y, t), t.expand(2)).sample, t, y).prev_sample
        ours = serial_sample(model, schedule, x, 6)
    assert rel_err(ours, y) < 1e-5
    with pytest.raises(ValueError, match="num_steps=5.*fix 6 steps"):
        serial_sample(model, schedule, x, 5)
    with pytest.raises(ValueError, match="different step counts"):
        schedule_from_scheduler(sched, sigmas=sigmas, timesteps=[900, 500])
    # diffusers' own refusal (timesteps with Karras sigmas) surfaces when the schedule is built
    with pytest.raises(ValueError, match="set_timesteps"):
        schedule_from_scheduler(EulerDiscreteScheduler(**SD, use_karras_sigmas=True),
                                timesteps=[900, 600, 300])


def test_flow_sigmas_must_match_the_step_count():
    sched = FlowMatchEulerDiscreteScheduler()
    schedule = schedule_from_scheduler(sched, sigmas=np.linspace(1.0, 0.1, 8))
    assert schedule.levels(8)[1].numel() == 9
    with pytest.raises(ValueError, match="fix 8 steps"):
        schedule.levels(7)


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                                 FlowMatchEulerDiscreteScheduler])
def test_mu_without_dynamic_shifting_names_mu(cls):
    with pytest.raises(ValueError, match="mu=0.8.*use_dynamic_shifting"):
        schedule_from_scheduler(cls(), mu=0.8)


@pytest.mark.parametrize("solver, options, match", [
    ("dpmpp_2m", dict(solver_type="midpiont"), "solver_type must be one of"),
    ("unipc", dict(solver_type="bh3"), "solver_type must be one of"),
    ("unipc", dict(solver_ordr=2), "unknown option 'solver_ordr'.*solver_order"),
    ("dpmpp_2m", dict(disable_corrector=[1]), "unknown option 'disable_corrector'"),
    ("dpmpp_2m", dict(solver_order=True), "solver_order must be one of"),
    ("euler", dict(solver_order=2), "options are none"),
    ("unipc", dict(disable_corrector=[-1]), "disable_corrector must be"),
    ("heun", {}, "solver must be one of"),
])
def test_with_solver_refuses_unknown_options_and_values(solver, options, match):
    with pytest.raises(ValueError, match=match):
        SigmaSchedule.flow_matching().with_solver(solver, **options)


def test_with_solver_keeps_the_shared_options_and_drops_the_others():
    uni = schedule_from_scheduler(UniPCMultistepScheduler(solver_type="bh1", solver_order=1,
                                                          disable_corrector=[2]))
    dpm = uni.with_solver("dpmpp_2m")
    assert dpm.solver_options == {"solver_order": 1, "lower_order_final": True}
    with pytest.raises(ValueError, match="solver_type"):
        SigmaSchedule.flow_matching(solver="unipc", solver_type="midpoint")


@pytest.mark.parametrize("offset", [0.5, -1, True, "1"])
def test_steps_offset_must_be_a_non_negative_int(offset):
    with pytest.raises(ValueError, match="steps_offset"):
        VPSchedule.linear(steps_offset=offset, timestep_spacing="leading")


# ----------------------------------------------------------------- DDIM's stride (diffusers 12633)
def test_ddim_stride_off_the_grid_warns_and_next_samples_right():
    """diffusers' DDIMScheduler steps to t - T // N: on a trailing grid of 400 steps that is
    beside the next timestep and the variance of N(0, 0.25) comes out 0.38. pint's own
    VPSchedule steps to the next timestep; a bridged DDIMScheduler keeps diffusers' loop and
    warns."""
    bridged = schedule_from_scheduler(DDIMScheduler(timestep_spacing="trailing", clip_sample=False))
    assert bridged.prev_timestep == "stride"
    den = gaussian(bridged, dim=16)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(UserWarning, match="12633"):
        off = serial_sample(den, bridged, x, 400)
    right = serial_sample(den, bridged.with_conventions(prev_timestep="next"), x, 400)
    assert abs(right.var().item() - 0.25) < 0.01
    assert abs(off.var().item() - 0.25) > 0.05
    native = VPSchedule.linear(timestep_spacing="trailing")
    assert torch.allclose(serial_sample(den, native, x, 400), right, atol=1e-5)  # float32 betas
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        serial_sample(den, bridged, x, 100)  # 100 divides 1000: the stride is the next timestep
