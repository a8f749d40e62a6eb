"""Today's schedulers and families: pint's serial sampler against diffusers' own loop, and
every parallel sampler converging to it (exactly, in float64, when run to the end)."""

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from adapters.diffusers import from_diffusers, schedule_from_scheduler  # noqa: E402
from adapters.diffusion import (  # noqa: E402
    GaussianMixtureDenoiser,
    SigmaSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
)

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD 1.x / SDXL


def diffusers_loop(unet, scheduler, x, N, generator=None, **set_timesteps_kwargs):
    """The loop of diffusers' pipelines, verbatim: scaled input, the scheduler's timesteps."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(N, **set_timesteps_kwargs)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    extra = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            out = unet(inp, t.expand(x.shape[0])).sample
            x = sched.step(out, t, x, **extra).prev_sample
    return x


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


SCHEDULERS = {
    "flow": (FlowMatchEulerDiscreteScheduler, {}, {}),
    "flow-shift3": (FlowMatchEulerDiscreteScheduler, dict(shift=3.0), {}),
    "flow-dynamic": (FlowMatchEulerDiscreteScheduler, dict(use_dynamic_shifting=True), dict(mu=0.8)),
    "flow-flux-sigmas": (FlowMatchEulerDiscreteScheduler, dict(use_dynamic_shifting=True),
                         dict(mu=1.1, sigmas=lambda n: np.linspace(1.0, 1 / n, n))),
    "euler": (EulerDiscreteScheduler, SD, {}),
    "euler-karras": (EulerDiscreteScheduler, dict(SD, use_karras_sigmas=True), {}),
    "euler-leading-v": (EulerDiscreteScheduler, dict(timestep_spacing="leading", steps_offset=1,
                                                     prediction_type="v_prediction"), {}),
    "euler-trailing-sample": (EulerDiscreteScheduler, dict(timestep_spacing="trailing",
                                                           prediction_type="sample"), {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, SD, {}),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, dict(SD, use_karras_sigmas=True), {}),
    "dpmpp-2m-heun-sigma-min": (DPMSolverMultistepScheduler,
                                dict(solver_type="heun", final_sigmas_type="sigma_min"), {}),
    "dpmpp-2m-no-lower-final": (DPMSolverMultistepScheduler,
                                dict(lower_order_final=False, final_sigmas_type="sigma_min"), {}),
    "dpmpp-1": (DPMSolverMultistepScheduler, dict(solver_order=1), {}),
    "dpmpp-2m-v": (DPMSolverMultistepScheduler, dict(prediction_type="v_prediction"), {}),
    "dpmpp-2m-flow": (DPMSolverMultistepScheduler, dict(use_flow_sigmas=True, flow_shift=3.0,
                                                        prediction_type="flow_prediction"), {}),
    "unipc": (UniPCMultistepScheduler, SD, {}),
    "unipc-karras": (UniPCMultistepScheduler, dict(SD, use_karras_sigmas=True), {}),
    # bh1 with a final level of 0 gives NaN in diffusers itself (-inf * 0): compare on sigma_min
    "unipc-bh1": (UniPCMultistepScheduler, dict(solver_type="bh1", final_sigmas_type="sigma_min"), {}),
    "unipc-order1": (UniPCMultistepScheduler, dict(solver_order=1), {}),
    "unipc-no-corrector-2": (UniPCMultistepScheduler, dict(disable_corrector=[2]), {}),
    "unipc-flow": (UniPCMultistepScheduler, dict(use_flow_sigmas=True, flow_shift=3.0,
                                                 prediction_type="flow_prediction"), {}),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("N", [7, 20])
def test_serial_reproduces_the_diffusers_loop(unet, name, N):
    cls, config, kwargs = SCHEDULERS[name]
    sched = cls(**config)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(unet, sched, x, N,
                         **{k: (v(N) if callable(v) else v) for k, v in kwargs.items()})
    model, schedule = from_diffusers(unet, sched, **kwargs)
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, N)
    assert rel_err(ours, ref) < 1e-5


def test_the_model_is_called_as_the_pipeline_calls_it(unet):
    """Scaled input and the scheduler's own (float) timesteps, as a tensor [rows]."""
    sched = EulerDiscreteScheduler(**SD, use_karras_sigmas=True)
    model, schedule = from_diffusers(unet, sched)
    seen = []

    def spy(x, t):
        seen.append((x.clone(), t.clone()))
        return model(x, t)

    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        serial_sample(spy, schedule, x, 5)
    ref = copy.deepcopy(sched)
    ref.set_timesteps(5)
    assert torch.equal(torch.stack([t[0] for _, t in seen]), ref.timesteps)
    assert all(t.shape == (3,) and t.is_floating_point() for _, t in seen)
    expect = ref.scale_model_input(x * ref.init_noise_sigma, ref.timesteps[0])
    assert torch.allclose(seen[0][0], expect, rtol=1e-6, atol=1e-6)


def test_euler_ancestral_with_the_same_noise(unet):
    sched = EulerAncestralDiscreteScheduler(**SD)
    model, schedule = from_diffusers(unet, sched)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = diffusers_loop(unet, sched, x, 15, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = serial_sample(model, schedule, x, 15, generator=torch.Generator().manual_seed(7))
        par = srds_sample(model, schedule, x, 15, tol=1e-6, generator=torch.Generator().manual_seed(7))
    assert rel_err(ours, ref) < 1e-5
    assert rel_err(par.sample, ref) < 1e-4


PARALLEL = ["flow-shift3", "euler-karras", "dpmpp-2m-karras", "unipc", "dpmpp-2m-flow"]


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_samplers_are_exact_when_run_to_the_end(unet, name):
    """In float64 Parareal after B iterations and the windows after N calls reproduce the
    serial sampler to round-off: the history of multistep solvers travels in the state."""
    cls, config, kwargs = SCHEDULERS[name]
    model, schedule = from_diffusers(unet.double(), cls(**config), **kwargs)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    N = 12
    try:
        with torch.no_grad():
            ref = serial_sample(model, schedule, x, N)
            runs = [srds_sample(model, schedule, x, N, num_blocks=4, tol=0, max_iters=4),
                    srds_sample(model, schedule, x, N, num_blocks=4, tol=0, max_iters=4,
                                pipelined=True),
                    picard_sample(model, schedule, x, N, window=5, tol=0),
                    quasi_newton_sample(model, schedule, x, N, window=5, tol=0)]
    finally:
        unet.float()
    for out in runs:
        assert (out.sample - ref).abs().max() < 1e-10


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_samplers_converge_in_fewer_sequential_calls(unet, name):
    cls, config, kwargs = SCHEDULERS[name]
    model, schedule = from_diffusers(unet, cls(**config), **kwargs)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    N = 50
    with torch.no_grad():
        ref = serial_sample(model, schedule, x, N)
        srds = srds_sample(model, schedule, x, N, tol=1e-4, pipelined=True)
        qn = quasi_newton_sample(model, schedule, x, N, window=16, tol=1e-4)
    for out in (srds, qn):
        assert out.converged
        assert out.stats.depth < N
        assert (out.sample - ref).abs().max() < 1e-3


# ---------------------------------------------------------------- analytic families
def mixture(schedule):
    return GaussianMixtureDenoiser.random(schedule, dim=6, components=4, std=0.1, seed=1)


@pytest.mark.parametrize("family", ["flow", "edm"])
def test_analytic_mixture_is_the_exact_denoiser(family):
    """The output makes ``x = alpha x0 + sigma eps`` hold with ``x0`` the posterior mean,
    and near the data the posterior mean is the nearest component's."""
    schedule = SigmaSchedule.flow_matching() if family == "flow" else SigmaSchedule.edm()
    den = mixture(schedule)
    x0 = den.means[[0, 1, 2]] + 1e-3 * torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([5.0, 5.0, 5.0]) if family == "flow" else torch.tensor([0.005] * 3)
    al, sg = den.levels(t)
    x = al[:, None] * x0 + sg[:, None] * torch.randn(3, 6, dtype=torch.float64)
    post = den.posterior_mean(x, t)
    assert (post - den.means[[0, 1, 2]]).abs().max() < 0.02
    out = den(x, t)
    eps = (x - al[:, None] * post) / sg[:, None]
    expect = eps - post if family == "flow" else post
    assert torch.allclose(out, expect)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("dpmpp_2m", 2), ("unipc", 2)])
@pytest.mark.parametrize("family", ["flow", "ve"])
def test_convergence_order_on_the_exact_denoiser(solver, order, family):
    """Error against a fine reference falls like N^-order on the same ODE (the solvers are
    what they say; UniPC's corrector adds an order)."""
    if family == "flow":  # uniform levels in [0.95, 0.05]
        def levels(n):
            s = torch.linspace(0.95, 0.05, n + 1, dtype=torch.float64)
            return s[:-1] * 1000, s, 1.0
        schedule = SigmaSchedule(levels, "flow", "flow_prediction", solver, timestep_scale=1000.0,
                                 max_steps=10**6)
    else:  # Karras-spaced levels in [4, 0.05]
        def levels(n):
            s = torch.linspace(4.0 ** (1 / 7), 0.05 ** (1 / 7), n + 1, dtype=torch.float64) ** 7
            return s[:-1], s, 1.0
        schedule = SigmaSchedule(levels, "ve", "sample", solver, timestep_scale=1.0, max_steps=10**6)
    den = GaussianMixtureDenoiser.random(schedule, dim=6, components=4, std=0.3, seed=1)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = serial_sample(den, schedule.with_solver("dpmpp_2m"), x, 4000)
    errs = [float((serial_sample(den, schedule, x, n) - ref).abs().max()) for n in (20, 40, 80)]
    rate = np.log2(errs[0] / errs[2]) / 2
    assert rate > order - 0.4, (errs, rate)


def test_flow_matching_matches_its_diffusers_scheduler():
    ours = SigmaSchedule.flow_matching(shift=3.0)
    theirs = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0))
    for n in (1, 7, 28):
        (t1, s1, _), (t2, s2, _) = ours.levels(n), theirs.levels(n)
        assert torch.allclose(t1.double(), t2.double()) and torch.allclose(s1, s2)


# ---------------------------------------------------------------- refused, never remapped
@pytest.mark.parametrize("scheduler,match", [
    (DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
    (DPMSolverMultistepScheduler(thresholding=True), "thresholding"),
    (DPMSolverMultistepScheduler(solver_order=3), "solver_order"),
    (UniPCMultistepScheduler(solver_order=3), "solver_order"),
    (UniPCMultistepScheduler(predict_x0=False), "predict_x0"),
    (FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling"),
    (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "mu"),
    (DDIMScheduler(thresholding=True), "thresholding"),
])
def test_unsupported_options_are_refused(scheduler, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_scheduler(scheduler)


def test_unsupported_scheduler_names_the_supported_ones():
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler"):
        schedule_from_scheduler(LMSDiscreteScheduler())


def test_solver_and_schedule_mismatches_are_errors(unet):
    _, flow = from_diffusers(unet, FlowMatchEulerDiscreteScheduler())
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="sampler must be one of"):
        serial_sample(unet, flow, x, 5, sampler="ddpm")
    with pytest.raises(ValueError, match="eta"):
        serial_sample(unet, flow, x, 5, eta=0.5)
    with pytest.raises(ValueError, match="coarse='dpm2' needs a one-step solver"):
        srds_sample(unet, flow.with_solver("dpmpp_2m"), x, 5, coarse="dpm2")


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("run", [picard_sample, quasi_newton_sample])
def test_windows_gain_on_multistep_solvers(solver, run):
    """The window's rebuild moves the sample slots together and lets predicted x0 slots
    take their fresh values, so a multistep solver converges in well under N calls."""
    schedule = SigmaSchedule.flow_matching(shift=3.0).with_solver(solver)
    den = GaussianMixtureDenoiser.random(schedule, dim=16, components=8, seed=0)
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = serial_sample(den, schedule, x, 50)
    out = run(den, schedule, x, 50, window=50, tol=1e-4)
    assert out.converged and out.iterations <= 30
    assert (out.sample - ref).abs().max() < 1e-4
