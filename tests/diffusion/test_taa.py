"""taa_sample (ParaTAA, ParaSolver and SRDS initialisations, secant coupling) and
coarse_trajectory: exact when run to the end, close when stopped early, NaN named."""

import pytest
import torch

from adapters.diffusion import (
    GaussianMixtureDenoiser,
    ModelOutputError,
    SigmaSchedule,
    VPSchedule,
    coarse_trajectory,
    picard_sample,
    serial_sample,
    taa_sample,
)

SCHEDULES = {"vp": lambda: VPSchedule.linear(1000),
             "flow": lambda: SigmaSchedule.flow_matching(shift=3.0)}
CONFIGS = [
    {},  # ParaTAA: window = order = all steps, memory 2, copy init, residual test
    {"memory": 3, "order": 5},
    {"window": 8, "memory": 2},
    {"linear": "identity", "memory": 1, "test": "change", "window": 10},  # ParaDiGMS
    {"linear": "identity", "memory": 1, "test": "change", "init": "extrapolate",
     "preconditioning": 3, "window": 10},  # ParaSolver
    {"init": "coarse", "num_blocks": 5, "window": 12},  # SRDS-initialised
    {"linear": "secant", "memory": 1, "test": "change", "init": "extrapolate", "window": 16},
    {"linear": "secant", "memory": 2, "test": "change", "window": 16},
]


def _setup(kind, N=40, batch=4):
    schedule = SCHEDULES[kind]()
    model = GaussianMixtureDenoiser.random(schedule, dim=6, components=4, seed=1)
    x = torch.randn(batch, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, schedule, x, serial_sample(model, schedule, x, N)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
                         or "paper")
def test_exact_when_run_to_the_end(kind, cfg):
    model, schedule, x, ref = _setup(kind)
    out = taa_sample(model, schedule, x, 40, tol=0.0, **cfg)
    assert out.converged
    assert (out.sample - ref).abs().max() < 1e-10
    assert out.stats.depth <= 40 + cfg.get("num_blocks", 0) + cfg.get("preconditioning", 0)


@pytest.mark.parametrize("cfg,tol", [
    ({}, 1e-6),  # ParaTAA's absolute part needs a small tolerance
    ({"linear": "secant", "memory": 1, "test": "change", "init": "extrapolate",
      "window": 20}, 1e-3),
    ({"linear": "identity", "memory": 1, "test": "change", "init": "extrapolate",
      "window": 20}, 1e-3),
])
def test_stopped_early_is_close_and_cheaper(cfg, tol):
    model, schedule, x, ref = _setup("vp", N=100)
    out = taa_sample(model, schedule, x, 100, tol=tol, **cfg)
    assert out.converged
    assert out.stats.depth < 40
    assert (out.sample - ref).abs().max() < 1e-3
    tight = taa_sample(model, schedule, x, 100, tol=tol / 100, **cfg)
    assert (tight.sample - ref).abs().max() < (out.sample - ref).abs().max()


def test_max_iters_stops_unconverged():
    model, schedule, x, _ = _setup("vp")
    out = taa_sample(model, schedule, x, 40, tol=0.0, max_iters=3)
    assert not out.converged and out.iterations == 3 and len(out.history) == 3


def test_coarse_trajectory_is_a_warm_start():
    model, schedule, x, ref = _setup("vp")
    g = coarse_trajectory(model, schedule, x, 40, num_blocks=5)
    assert g.shape == (41, *x.shape)
    assert torch.equal(g[0], x)
    assert torch.isfinite(g).all()
    # the coarse sweep's end is a rough sample, exact runs from it stay exact
    assert (g[-1] - ref).abs().max() < 1.0
    out = picard_sample(model, schedule, x, 40, window=10, tol=0.0, initial=g)
    assert (out.sample - ref).abs().max() < 1e-10
    # the guess makes a loose run start closer than x_T copies do
    cold = picard_sample(model, schedule, x, 40, window=40, tol=1e-2, max_iters=1)
    warm = picard_sample(model, schedule, x, 40, window=40, tol=1e-2, max_iters=1, initial=g)
    assert (warm.sample - ref).abs().max() < (cold.sample - ref).abs().max()


class _NaNAt(torch.nn.Module):
    def __init__(self, model, t_bad):
        super().__init__()
        self.model, self.t_bad = model, t_bad
        self.sample_shape = model.sample_shape

    def forward(self, x, t):
        out = self.model(x, t)
        return torch.where((t == self.t_bad).view(-1, 1), torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("cfg", [{}, {"linear": "secant", "test": "change", "window": 8,
                                      "init": "extrapolate"}])
def test_nan_from_the_model_names_its_timestep(cfg):
    model, schedule, x, _ = _setup("vp")
    t_bad = int(VPSchedule.linear(1000).timesteps(40)[7])
    with pytest.raises(ModelOutputError, match=f"timestep {t_bad}"):
        taa_sample(_NaNAt(model, t_bad), schedule, x, 40, tol=0.0, **cfg)


def test_bad_arguments():
    model, schedule, x, _ = _setup("vp")
    for kw in ({"init": "zeros"}, {"linear": "newton"}, {"test": "x"}, {"window": 0},
               {"window": 41}, {"memory": 0}, {"order": 0}, {"tol": -1.0},
               {"tol": float("nan")}, {"max_iters": 0},
               {"linear": "secant", "order": 3, "window": 10}):
        with pytest.raises((ValueError, TypeError)):
            taa_sample(model, schedule, x, 40, **kw)
    with pytest.raises(ValueError, match="initial"):
        taa_sample(model, schedule, x, 40, initial=torch.zeros(3, 4, 6, dtype=torch.float64))
    fm = SigmaSchedule.flow_matching(shift=3.0).with_solver("dpmpp_2m")
    fmodel = GaussianMixtureDenoiser.random(fm, dim=6, components=4, seed=1)
    with pytest.raises(ValueError, match="one-step"):
        taa_sample(fmodel, fm, x, 40)


def test_coarse_start_gives_the_model_its_own_shape_and_dtype():
    """init="coarse" calls the model on x_T's shape and dtype (an image-shaped float32
    model), like the window calls."""
    seen = []

    class Image(torch.nn.Module):
        sample_shape = (1, 2, 4)

        def __init__(self):
            super().__init__()
            self.net = GaussianMixtureDenoiser.random(VPSchedule.linear(1000), dim=8, seed=2)

        def forward(self, x, t):
            seen.append((tuple(x.shape[1:]), x.dtype))
            return self.net(x.reshape(x.shape[0], 8), t).reshape(x.shape)

    x = torch.randn(3, 1, 2, 4, generator=torch.Generator().manual_seed(0))
    out = taa_sample(Image(), VPSchedule.linear(1000), x, 40, window=8, init="coarse",
                     num_blocks=5, test="change", tol=1e-4)
    assert out.sample.shape == x.shape and out.sample.dtype == torch.float32
    assert set(seen) == {((1, 2, 4), torch.float32)}
