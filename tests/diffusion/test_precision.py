"""The precision policy (issue 29): the network runs in the user's dtype (bfloat16, float16),
the sampler's state, coefficients, rebuild and stopping test in float32; the default
tolerances follow the network's dtype and the output says which one was used and why."""

import copy

import pytest
import torch

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
    taa_sample,
)
from adapters.diffusion.precision import SRDS_TOL, WINDOW_TOL, network_dtype, state_dtype

SCHED = VPSchedule.linear(1000)
SAMPLERS = {"serial": serial_sample, "srds": srds_sample, "picard": picard_sample,
            "quasi_newton": quasi_newton_sample, "taa": taa_sample}


class Recording(torch.nn.Module):
    """An exact mixture denoiser evaluated in ``dtype``, recording the dtypes it is given."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = GaussianMixtureDenoiser(torch.tensor([[-0.5] * 8, [0.5] * 8]), 0.2, SCHED)
        self.sample_shape = (8,)
        self.weight = torch.nn.Parameter(torch.ones((), dtype=dtype))
        self.seen: set[torch.dtype] = set()

    def forward(self, x, t):
        self.seen.add(x.dtype)
        return (self.net(x.double(), t) * self.weight.double()).to(self.weight.dtype)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_network_sees_the_users_dtype_and_the_state_is_float32(name, dtype):
    net = Recording(dtype)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = SAMPLERS[name](net, SCHED, x, 20)
    sample = out if name == "serial" else out.sample
    assert net.seen == {dtype} and sample.dtype == dtype and sample.shape == x.shape
    if name != "serial":
        p = out.precision
        assert (p.network, p.state, p.tol) == (dtype, torch.float32, out.tol)
        table = SRDS_TOL if name == "srds" else WINDOW_TOL
        assert out.tol == table[dtype] and "default for a" in p.tol_source
        assert p.as_dict()["network"] == str(dtype).removeprefix("torch.")


def test_float32_noise_into_a_bfloat16_network_runs_the_network_in_bfloat16():
    """Weights in bfloat16, noise in float32 (it raised a dtype mismatch inside the model):
    the network gets bfloat16, the sample comes back in float32."""
    net = Recording(torch.bfloat16)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    out = picard_sample(net, SCHED, x, 20)
    assert net.seen == {torch.bfloat16} and out.sample.dtype == torch.float32
    assert out.precision.network == torch.bfloat16 and out.tol == WINDOW_TOL[torch.bfloat16]
    assert network_dtype(net, torch.float32) == torch.bfloat16
    assert network_dtype(Recording(torch.float32), torch.float64) == torch.float64
    assert state_dtype(torch.float16) == torch.float32 and state_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_defaults_and_exactness_are_unchanged(dtype):
    m = Recording(dtype)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    ref = serial_sample(m, SCHED, x, 30)
    for name in ("srds", "picard", "quasi_newton"):
        exact = SAMPLERS[name](m, SCHED, x, 30, tol=0, max_iters=30)
        assert exact.precision.state == dtype and exact.precision.tol_source == "given"
        assert torch.equal(exact.sample, ref) if name != "srds" else \
            (exact.sample - ref).abs().max() < 10 * torch.finfo(dtype).eps
    assert picard_sample(m, SCHED, x, 30).tol == 1e-3
    assert srds_sample(m, SCHED, x, 30).tol == {torch.float32: 2e-3, torch.float64: 1e-6}[dtype]


def test_a_given_tol_is_used_and_said_so():
    out = quasi_newton_sample(Recording(torch.bfloat16), SCHED,
                              torch.randn(2, 8).bfloat16(), 20, tol=0.2)
    assert out.tol == 0.2 and out.precision.tol_source == "given"


def _ddim_loop_in(unet, x_T, N):
    """diffusers' own DDIM loop with the latents in ``x_T``'s dtype (as its pipelines run)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False)
    sched.set_timesteps(N)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample.to(x_T.dtype)
    return x


def test_bfloat16_serial_is_closer_to_float32_than_a_bfloat16_state(unet):
    """The state in float32 between the network's bfloat16 calls: pint's bfloat16 serial
    sample is closer to the float32 one than diffusers' loop with bfloat16 latents is, and
    both loops agree in float32 (the same sampler)."""
    from diffusers import DDIMScheduler

    from adapters.diffusers import from_diffusers

    def ddim():
        return DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing",
                             clip_sample=False)

    model32, sched = from_diffusers(unet, ddim())
    model16, _ = from_diffusers(copy.deepcopy(unet).to(torch.bfloat16), ddim())
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = serial_sample(model32, sched, x, 25)
    assert (ref - _ddim_loop_in(unet, x, 25)).abs().max() < 1e-5 * ref.abs().max()
    ours = serial_sample(model16, sched, x.bfloat16(), 25)
    theirs = _ddim_loop_in(model16.unet, x.bfloat16(), 25)
    assert (ours.float() - ref).abs().max() < (theirs.float() - ref).abs().max()


@pytest.fixture(scope="module")
def flux_pipes(tmp_path_factory):
    """A tiny random FluxPipeline in float32 and its bfloat16 copy."""
    pytest.importorskip("transformers")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_text_to_image",
        Path(__file__).resolve().parents[2] / "benchmarks" / "bench_text_to_image.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    p32 = bench.tiny_flux(tmp_path_factory.mktemp("flux"))
    return p32, copy.deepcopy(p32).to(torch.bfloat16), bench.MAX_TOKENS


def test_bfloat16_flux_defaults_converge_within_the_networks_own_precision(flux_pipes,
                                                                         one_thread):
    """Issue 29's goal on a tiny random Flux in bfloat16, N = 28, every sampler at its
    defaults: Picard and quasi-Newton in at most 0.4 N sequential calls, SRDS in 0.6 N, each
    no further from the bfloat16 serial sample than that is from the float32 one (before:
    24 / 24 / 28 calls)."""
    from adapters.text_to_image import srds_pipeline

    p32, p16, tokens = flux_pipes
    kw = dict(height=16, width=16, max_sequence_length=tokens, output_type="latent")

    def run(pipe, sampler):
        return srds_pipeline(pipe, ["a photo of a cat", "red tree"], 28, sampler=sampler,
                             generator=torch.Generator().manual_seed(0), **kw)

    ref32 = run(p32, "serial").latents.double()
    serial = run(p16, "serial").latents.double()
    yardstick = (serial - ref32).abs().max()
    for sampler, share in (("picard", 0.4), ("quasi_newton", 0.4), ("srds", 0.6)):
        out = run(p16, sampler)
        assert out.stats.depth <= share * 28, (sampler, out.stats.depth)
        assert (out.latents.double() - serial).abs().max() <= yardstick, sampler
        assert out.sampling.precision.state == torch.float32


def test_auto_plans_and_samples_under_the_same_policy():
    """``sampler="auto"`` on a bfloat16 network: the plan's proxy runs and the chosen
    sampler work in float32 around the bfloat16 network, with the network's default tol."""
    from adapters.diffusion import sample

    net = Recording(torch.bfloat16)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(4)).bfloat16()
    out = sample(net, SCHED, x, 40)
    assert net.seen == {torch.bfloat16} and out.sample.dtype == torch.bfloat16
    if out.precision is not None:  # a parallel sampler ran (serial returns no SampleOutput)
        assert out.precision.network == torch.bfloat16
        assert out.precision.state == torch.float32
