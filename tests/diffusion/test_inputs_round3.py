"""Issue 27 (round 3) on the sampling side: model conditioning and sampler inputs that
used to fail deep inside torch or the engine now broadcast as pipelines do, or raise an
error that names the argument."""

import pytest
import torch

from adapters.diffusion import (
    Denoiser,
    GaussianMixtureDenoiser,
    VPSchedule,
    picard_sample,
    quasi_newton_sample,
    serial_sample,
    srds_sample,
    taa_sample,
)

SCHED = VPSchedule.linear(1000)
X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
COND = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
EMPTY = torch.randn(1, 4, generator=torch.Generator().manual_seed(2))  # one "empty prompt"


class Strict(torch.nn.Module):
    """Conditioned on ``c`` [rows, 4] and, as a UNet's attention, refusing a ``c`` whose
    rows are not the batch's."""

    def forward(self, x, t, c):
        if c.shape[0] != x.shape[0]:
            raise RuntimeError(f"batch {x.shape[0]} != conditioning rows {c.shape[0]}")
        return 0.5 * x + c * (t.float() / 1000).view(-1, 1)


def _runs(**options):
    """Every way rows reach the model: one step of every sample (serial), many steps of
    every sample (a picard window, SRDS blocks)."""
    return [serial_sample(Strict(), SCHED, X, 10, **options),
            picard_sample(Strict(), SCHED, X, 10, window=4, tol=0.0, **options).sample,
            srds_sample(Strict(), SCHED, X, 10, num_blocks=3, **options).sample]


def test_uncond_kwargs_with_one_row_are_broadcast_to_the_batch():
    one = _runs(model_kwargs={"c": COND}, guidance_scale=3.0, uncond_kwargs={"c": EMPTY})
    repeated = _runs(model_kwargs={"c": COND}, guidance_scale=3.0,
                     uncond_kwargs={"c": EMPTY.repeat(3, 1)})
    for a, b in zip(one, repeated, strict=True):
        assert torch.equal(a, b)
    # and the guidance does act
    assert (one[0] - serial_sample(Strict(), SCHED, X, 10, model_kwargs={"c": COND})).abs().max() > 1e-2


def test_model_kwargs_with_one_row_are_broadcast_to_the_batch():
    one = _runs(model_kwargs={"c": COND[:1]})
    repeated = _runs(model_kwargs={"c": COND[:1].repeat(3, 1)})
    for a, b in zip(one, repeated, strict=True):
        assert torch.equal(a, b)
    # a Denoiser built once does the same
    den = Denoiser(Strict(), model_kwargs={"c": COND[:1]}, guidance_scale=2.0,
                   uncond_kwargs={"c": EMPTY})
    assert torch.equal(serial_sample(den, SCHED, X, 10), serial_sample(
        Strict(), SCHED, X, 10, model_kwargs={"c": COND[:1].repeat(3, 1)}, guidance_scale=2.0,
        uncond_kwargs={"c": EMPTY.repeat(3, 1)}))


@pytest.mark.parametrize("which, guided", [("model_kwargs", False), ("model_kwargs", True),
                                           ("uncond_kwargs", True)])
def test_kwargs_with_a_wrong_leading_dimension_name_the_key_and_the_batch(which, guided):
    bad = torch.zeros(2, 4)  # two rows for three samples
    kw = {"c": bad if which == "model_kwargs" else COND}
    options = dict(model_kwargs=kw)
    if guided:
        options.update(guidance_scale=3.0,
                       uncond_kwargs={"c": bad if which == "uncond_kwargs" else EMPTY})
    for run in (lambda: serial_sample(Strict(), SCHED, X, 5, **options),
                lambda: picard_sample(Strict(), SCHED, X, 5, window=3, **options)):
        with pytest.raises(ValueError, match=rf"{which}\['c'\] has no per-sample leading "
                                             r"dimension: 2 rows .*expected the batch size 3"):
            run()


def test_conditional_and_unconditional_values_of_different_shapes_are_named():
    with pytest.raises(ValueError, match=r"model_kwargs\['c'\] and uncond_kwargs\['c'\]"):
        serial_sample(Strict(), SCHED, X, 5, model_kwargs={"c": COND}, guidance_scale=3.0,
                      uncond_kwargs={"c": torch.zeros(3, 5)})


def test_flux_position_ids_pass_unchanged():
    seen = []

    class Ids(torch.nn.Module):
        def forward(self, x, t, txt_ids, img_ids, c):
            seen.append((tuple(txt_ids.shape), tuple(img_ids.shape)))
            return 0.1 * x + 0 * c

    ids = dict(txt_ids=torch.zeros(7, 3), img_ids=torch.zeros(16, 3))
    serial_sample(Ids(), SCHED, X, 3, model_kwargs={**ids, "c": COND}, guidance_scale=2.0,
                  uncond_kwargs={**ids, "c": EMPTY})
    assert seen == [((7, 3), (16, 3))] * 3


def test_a_tensor_the_same_in_both_halves_is_shared_whatever_its_rows():
    """[4, 3] ids with 2 samples in windows of 2 steps: 4 rows per half, yet shared (they
    were concatenated into [8, 3] when the rows happened to match)."""
    seen = []

    def model(x, t, c, ids):
        seen.append(tuple(ids.shape))
        return 0.5 * x + c * ids.sum() / 100

    ids = torch.arange(12.0).view(4, 3)
    picard_sample(model, SCHED, X[:2], 6, window=2, model_kwargs={"c": COND[:2], "ids": ids},
                  guidance_scale=2.0, uncond_kwargs={"c": EMPTY, "ids": ids.clone()})
    assert seen and set(seen) == {(4, 3)}


MEANS = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])


@pytest.mark.parametrize("weights", [
    [1.0, -0.5], [1.0, float("nan")], [1.0, float("inf")], [0.0, 0.0], [1.0, 1.0, 1.0], [1.0],
    [[1.0, 1.0]], [1e308, 1e308]])
def test_gaussian_mixture_weights_are_checked(weights):
    with pytest.raises(ValueError, match=r"weights must be \[K\] = \[2\] .*>= 0, not all zero"):
        GaussianMixtureDenoiser(MEANS, 0.2, SCHED, weights=weights)


def test_gaussian_mixture_zero_weights_drop_a_component():
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full([5], 500)
    one = GaussianMixtureDenoiser(MEANS[:1], 0.2, SCHED)(x, t)
    assert torch.allclose(GaussianMixtureDenoiser(MEANS, 0.2, SCHED, weights=[3.0, 0.0])(x, t), one)


@pytest.mark.parametrize("stds", [[0.2, 0.2, 0.2], [[0.2], [0.2]], 0.0, -0.1, float("inf"),
                                  float("nan"), [0.2, 0.0]])
def test_gaussian_mixture_stds_are_checked(stds):
    with pytest.raises(ValueError, match="stds must be"):
        GaussianMixtureDenoiser(MEANS, stds, SCHED)


@pytest.mark.parametrize("means", [torch.zeros(3), torch.tensor(1.0), torch.zeros(0, 2),
                                   torch.tensor([[0.0, float("nan")]])])
def test_gaussian_mixture_means_are_checked(means):
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixtureDenoiser(means, 0.2, SCHED)


MODEL = GaussianMixtureDenoiser.random(SCHED, dim=4, components=2)
SAMPLERS = [serial_sample, srds_sample, picard_sample, quasi_newton_sample, taa_sample]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_a_meta_x_T_is_named(sampler):
    with pytest.raises(ValueError, match="x_T is a meta tensor, which holds no values"):
        sampler(MODEL, SCHED, torch.empty(3, 4, device="meta"), 8)


def test_meta_initial_and_noise_are_named():
    with pytest.raises(ValueError, match="initial is a meta tensor"):
        picard_sample(MODEL, SCHED, X, 8, initial=torch.empty(9, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="noise is a meta tensor"):
        serial_sample(MODEL, SCHED, X, 8, eta=1.0, noise=torch.empty(8, 3, 4, device="meta"))


def _warm(kind, N=16):
    if kind == "boundaries":
        return srds_sample(MODEL, SCHED, X, N, num_blocks=4).boundaries
    return picard_sample(MODEL, SCHED, X, N, return_trajectory=True).trajectory


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("case", ["srds trajectory", "srds boundaries", "picard",
                                  "quasi_newton"])
def test_an_initial_that_overflows_x_T_dtype_is_named(case, check_finite):
    """A float32 warm start for a float16 run: finite where it was made, Inf once converted
    (it was reported as a non-finite state in block 0 of the coarse sweep, or as the
    model's NaN output)."""
    init = _warm("boundaries" if case == "srds boundaries" else "trajectory").clone()
    init[1:] = 1e5  # beyond float16's 65504
    x = X.half()
    match = r"initial must be finite in x_T's dtype torch.float16"
    with pytest.raises(ValueError, match=match):
        if case.startswith("srds"):
            srds_sample(MODEL, SCHED, x, 16, num_blocks=4, initial=init,
                        check_finite=check_finite)
        else:
            sampler = picard_sample if case == "picard" else quasi_newton_sample
            sampler(MODEL, SCHED, x, 16, initial=init, check_finite=check_finite)


@pytest.mark.parametrize("kind", ["trajectory", "boundaries"])
def test_an_initial_holding_nan_is_named(kind):
    init = _warm(kind).clone()
    init[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="initial must be finite"):
        srds_sample(MODEL, SCHED, X, 16, num_blocks=4, initial=init, check_finite=False)
    if kind == "trajectory":
        for sampler in (picard_sample, quasi_newton_sample):
            with pytest.raises(ValueError, match="initial must be finite"):
                sampler(MODEL, SCHED, X, 16, initial=init, check_finite=False)
