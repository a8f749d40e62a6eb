"""The learned Parareal correction (pint.learned): exactness, no future data, bad options,
dtypes, cost accounting, the catalog's 2-D reaction-diffusion problem."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pint
import pint.learned as L
import pint.problems as P
from pint.problems import anchors


def random_system(rng: np.random.Generator, d: int, nonlinear: bool, dtype) -> pint.ODEProblem:
    M = rng.standard_normal((d, d))
    A = torch.tensor(M - M.T - 0.5 * np.eye(d) + 0.3 * rng.standard_normal((d, d)), dtype=dtype)
    c = torch.tensor(rng.standard_normal(d), dtype=dtype)
    y0 = torch.tensor(rng.standard_normal(d), dtype=dtype)
    if nonlinear:
        return pint.ODEProblem(lambda t, y: A @ y + c * torch.sin(y), y0, (0.0, 2.0))
    return pint.ODEProblem(lambda t, y: A @ y, y0, (0.0, 2.0))


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 4), B=st.integers(1, 7), k=st.integers(0, 7), nonlinear=st.booleans(),
       model=st.sampled_from(L.MODELS), fallback=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_exact_after_k_iterations_and_serial_at_B(d, B, k, nonlinear, model, fallback, dtype, seed):
    # fallback=False uses the model in every iteration: exactness must not depend on it
    prob = random_system(np.random.default_rng(seed), d, nonlinear, dtype)
    fine = pint.RK4(steps=6)
    ref = pint.serial(prob, fine, num_blocks=B)
    opts = pint.LearnedCorrection(model=model, fallback=fallback, neighbours=3, features=8)
    res = pint.parareal(prob, pint.Euler(1), fine, num_blocks=B, tol=0.0, max_iters=k,
                        correction=opts)
    k_eff = res.iterations
    assert k_eff == min(k, B) or (k_eff < min(k, B) and res.history[-1] == 0)
    eps = 1e-12 if dtype == torch.float64 else 1e-4
    scale = 1.0 + ref.boundaries.abs().max().item()
    assert res.boundaries.dtype == dtype
    assert (res.boundaries[: k_eff + 1] - ref.boundaries[: k_eff + 1]).abs().max() <= eps * scale
    full = pint.parareal(prob, pint.Euler(1), fine, num_blocks=B, tol=0.0, correction=opts)
    assert full.converged
    assert (full.boundaries - ref.boundaries).abs().max() <= eps * scale
    assert full.stats.fits == full.iterations * (len(L.AUTO) if model == "auto" else 1)


def test_fit_sees_only_pairs_of_past_fine_solves(monkeypatch):
    # at iteration k the model is fitted on exactly the pairs (U^j_i, F(U^j_i) - G(U^j_i)),
    # j < k, i >= j: states of earlier iterations, as the callback saw them
    prob = random_system(np.random.default_rng(3), 3, True, torch.float64)
    coarse, fine, B = pint.Euler(1), pint.RK4(steps=6), 6
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    observe = L.Learner.observe

    def spy(self, k, first_block, states, discrepancy):
        observe(self, k, first_block, states, discrepancy)
        seen[k] = (self.X.clone(), self.Y.clone())

    monkeypatch.setattr(L.Learner, "observe", spy)
    bounds: list[torch.Tensor] = []
    opts = pint.LearnedCorrection(model="linear", fallback=False)
    res = pint.parareal(prob, coarse, fine, num_blocks=B, tol=0.0, correction=opts,
                        callback=lambda info: bounds.append(info.boundaries.clone()))
    times = res.times
    rhs = prob.batched_rhs()
    assert sorted(seen) == list(range(1, res.iterations + 1))
    for k, (X, Y) in seen.items():
        states = torch.cat([bounds[j][j:B] for j in range(k)])  # U^j_i, i = j..B-1
        t0 = torch.cat([times[j:B] for j in range(k)])
        t1 = torch.cat([times[j + 1 : B + 1] for j in range(k)])
        D = fine(rhs, states, t0, t1) - coarse(rhs, states, t0, t1)
        assert torch.equal(X, states.reshape(len(states), -1))
        assert torch.allclose(Y, D, rtol=0, atol=1e-13)


def test_bad_options_are_clear_errors():
    case = P.get("dahlquist")
    args = (case.problem, case.coarse, case.fine, 4)
    with pytest.raises(ValueError, match="correction"):
        pint.parareal(*args, correction="smart")
    with pytest.raises(TypeError, match="correction"):
        pint.parareal(*args, correction=1)
    with pytest.raises(ValueError, match="pipelined"):
        pint.parareal(*args, correction="learned", pipelined=True)
    with pytest.raises(ValueError, match="executor"):
        pint.parareal(*args, correction="learned", executor=object())
    for kw, err, name in [({"model": "svm"}, ValueError, "model"), ({"model": 3}, TypeError, "model"),
                          ({"neighbours": 1}, ValueError, "neighbours"),
                          ({"features": 2.5}, TypeError, "features"),
                          ({"rank": 0}, ValueError, "rank"), ({"max_pairs": 1}, ValueError, "max_pairs"),
                          ({"ridge": -1.0}, ValueError, "ridge"), ({"accept": 0.0}, ValueError, "accept"),
                          ({"accept_first": -1.0}, ValueError, "accept_first"),
                          ({"warmup": -1}, ValueError, "warmup"), ({"fallback": "no"}, TypeError, "fallback"),
                          ({"seed": None}, TypeError, "seed")]:
        with pytest.raises(err, match=f"LearnedCorrection.{name}"):
            pint.LearnedCorrection(**kw)


def test_unused_model_gives_classic_numbers_and_counts_its_fits():
    # warmup past the last iteration: the classic update throughout, plus one fit (one step
    # of depth) per iteration
    case = P.get("van_der_pol")
    args = (case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    a = pint.parareal(*args)
    b = pint.parareal(*args, correction=pint.LearnedCorrection(warmup=case.num_blocks))
    assert torch.equal(a.boundaries, b.boundaries) and a.iterations == b.iterations
    assert b.stats.fits == len(L.AUTO) * b.iterations          # "auto" fits three models
    assert b.iterations == b.stats.fit_depth                   # in parallel: one step each
    assert b.stats.depth == a.stats.depth + b.stats.fit_depth
    assert a.stats.fits == a.stats.model_evals == a.stats.fit_depth == 0


def test_linear_heat_needs_at_least_2x_fewer_iterations():
    case = P.get("heat", points=15)
    args = (case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    a = pint.parareal(*args)
    b = pint.parareal(*args, correction="learned")
    assert b.converged and 2 * b.iterations <= a.iterations
    assert b.stats.depth < a.stats.depth
    assert (b.y - pint.serial(case.problem, case.fine, case.num_blocks).y).abs().max() <= 10 * case.tol


@pytest.mark.parametrize("name", ["brusselator", "van_der_pol", "lorenz", "burgers"])
def test_never_more_iterations_than_classic_on_quick_catalog_problems(name):
    case = P.get(name)
    args = (case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    a = pint.parareal(*args)
    b = pint.parareal(*args, correction="learned")
    assert b.converged and b.iterations <= a.iterations


def test_published_diffusion_reaction_setup_needs_4x_fewer_iterations():
    # RandNet-Parareal's 2-D diffusion-reaction setup (722 states, 64 slices) with a fine
    # solver of 10 RK4 steps per slice: classic Parareal needs the published 53 iterations
    # (theirs: RK45 at H / 180000), the learned correction the published 12 (RandNet)
    anchor = anchors.diffusion_reaction_randnet(fine_steps=10)
    case = anchor.case
    args = (case.problem, case.coarse, case.fine, case.num_blocks, case.tol)
    a = pint.parareal(*args)
    b = pint.parareal(*args, correction="learned")
    assert abs(a.iterations - anchor.published["parareal"]) <= 2
    assert b.converged and 4 * b.iterations <= a.iterations
    assert b.iterations <= anchor.published["randnet"] + 2
    assert b.stats.depth < a.stats.depth / 2        # fits and model calls counted in
    ref = pint.serial(case.problem, case.fine, case.num_blocks)
    assert (b.y - ref.y).abs().max() <= 10 * case.tol


def test_anchors_are_batched_and_named():
    for name, build in anchors.ANCHORS.items():
        case = build().case
        assert case.name == name and case.problem.batched
        y = torch.stack([case.problem.y0, 0.9 * case.problem.y0])
        t = torch.zeros(2, dtype=torch.float64)
        rows = torch.cat([case.problem.f(t[:1], y[i : i + 1]) for i in range(2)])
        assert torch.allclose(case.problem.f(t, y), rows, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cells"):
        anchors.diffusion_reaction_randnet(cells=1)
    with pytest.raises(ValueError, match="viscosity"):
        anchors.burgers_randnet(viscosity=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
def test_other_dtypes(dtype):
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=dtype)
    if dtype.is_complex:
        A = A * (1 + 0.5j)
    prob = pint.ODEProblem(lambda t, y: A @ y, torch.ones(2, dtype=dtype), (0.0, 4.0))
    opts = pint.LearnedCorrection(model="linear", fallback=False)
    res = pint.parareal(prob, pint.Euler(2), pint.RK4(20), num_blocks=8, tol=0.0, correction=opts)
    ref = pint.serial(prob, pint.RK4(20), num_blocks=8)
    assert res.y.dtype == dtype
    assert torch.allclose(res.boundaries, ref.boundaries, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_stays_on_device():
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], device="cuda")
    prob = pint.ODEProblem(lambda t, y: A @ y, torch.ones(2, device="cuda"), (0.0, 4.0))
    res = pint.parareal(prob, pint.Euler(2), pint.RK4(20), num_blocks=8, tol=0.0,
                        correction=pint.LearnedCorrection(model="gp", fallback=False))
    assert res.y.device.type == "cuda" and res.converged


@pytest.mark.parametrize("model", L.MODELS)
def test_memory_is_bounded_by_max_pairs(model, monkeypatch):
    kept: list[int] = []
    observe = L.Learner.observe

    def spy(self, *args):
        observe(self, *args)
        kept.append(self.X.shape[0])

    monkeypatch.setattr(L.Learner, "observe", spy)
    case = P.get("burgers", points=32)
    opts = pint.LearnedCorrection(model=model, max_pairs=7, rank=4, features=16)
    pint.parareal(case.problem, case.coarse, case.fine, 6, tol=0.0, max_iters=4, correction=opts)
    assert kept == [6, 7, 7, 7]


def test_brusselator_2d_is_batched_checked_and_matches_its_reference():
    case = P.get("brusselator_2d", points=8, t_end=2.0)
    prob = case.problem
    assert prob.batched and prob.y0.shape == (2, 8, 8)
    Y = torch.randn(3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(3, dtype=torch.float64)
    rows = torch.cat([prob.f(t[:1], Y[i : i + 1]) for i in range(3)])
    assert torch.allclose(prob.f(t, Y), rows, rtol=0, atol=1e-12)
    ser = pint.serial(prob, case.fine, case.num_blocks)
    assert (ser.y - case.reference()).abs().max() <= 1e-8
    with pytest.raises(ValueError, match="diffusion"):
        P.get("brusselator_2d", diffusion=(-1.0, 0.0))
    with pytest.raises(TypeError, match="diffusion"):
        P.get("brusselator_2d", diffusion="fast")
    with pytest.raises(ValueError, match="points"):
        P.get("brusselator_2d", points=2)


def test_local_model_on_a_2d_grid_is_exact_at_B():
    case = P.get("brusselator_2d", points=6, t_end=1.0)
    opts = pint.LearnedCorrection(model="local", grid_dims=2, stencil=1, fallback=False)
    res = pint.parareal(case.problem, case.coarse, case.fine, 4, tol=0.0, correction=opts)
    ref = pint.serial(case.problem, case.fine, 4)
    assert torch.allclose(res.boundaries, ref.boundaries, rtol=0, atol=1e-12)
    assert res.stats.model_evals > 0
    with pytest.raises(ValueError, match="grid_dims"):
        pint.parareal(P.get("dahlquist").problem, pint.Euler(1), pint.RK4(4), 3, tol=0.0,
                      correction=pint.LearnedCorrection(model="local", grid_dims=2, fallback=False))
    for kw, name in [({"grid_dims": 4}, "grid_dims"), ({"boundary": "open"}, "boundary"),
                     ({"stencil": 0}, "stencil")]:
        with pytest.raises(ValueError, match=name):
            pint.LearnedCorrection(**kw)


def test_benchmark_quick(load_script, tmp_path):
    rep = load_script("benchmarks", "bench_learned_correction").main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "learned_correction.json").exists()
    for row in rep["catalog"] + rep["harder"]:
        assert row["learned"]["iterations"] <= row["classic"]["iterations"]
        assert row["learned"]["fits"] == len(L.AUTO) * row["learned"]["iterations"]
    assert all(r["learned"] <= r["classic"] for r in rep["all_catalog"])
    heat = rep["harder"][0]
    assert 2 * heat["learned"]["iterations"] <= heat["classic"]["iterations"]
