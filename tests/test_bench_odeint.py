"""Smoke test of benchmarks/bench_odeint.py (quick mode: the neural ODE example's training
step on [0, 1.2], 8 blocks, four variants and a max_iters sweep)."""

import json

import pytest

VARIANTS = {"serial_backprop", "serial_adjoint", "parareal_backprop", "parareal_adjoint"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_odeint",
                                                  root / "benchmarks" / "bench_odeint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("bench_odeint")
    return mod.main(["--quick", "--out", str(out)]), out


def test_variants_and_fields(quick):
    report, out = quick
    data = json.loads((out / "odeint.json").read_text())
    assert data.keys() == report.keys()
    assert set(data["variants"]) == VARIANTS
    assert data["fastest_in_depth"] in VARIANTS
    for name, row in data["variants"].items():
        assert row["forward_calls"] == row["forward_f_calls_stats"], name
        assert row["forward_calls"] == 4 * row["forward_depth"], name  # rk4: 4 calls a step
        assert row["backward_vjps"] > 0 and row["saved_mb"] > 0 and row["wall_ratio"] > 0
        assert row["grad_diff"] < 1e-8, name
    serial = data["variants"]["serial_backprop"]
    assert serial["backward_vjps"] == serial["forward_calls"] and serial["backward_calls"] == 0
    assert data["variants"]["serial_adjoint"]["backward_calls"] > 0  # it re-runs blocks


def test_gradients_exact_at_max_iters_equal_blocks(quick):
    report, _ = quick
    B = report["config"]["num_blocks"]
    last = [s for s in report["max_iters_sweep"] if s["max_iters"] == B]
    assert {s["variant"] for s in last} == {"parareal_backprop", "parareal_adjoint"}
    for s in last:
        assert s["iterations"] == B
        assert s["grad_diff"] < 1e-8, s


def test_memory_against_iterations(quick):
    report, _ = quick
    sweep = report["max_iters_sweep"]
    for name in ("parareal_backprop", "parareal_adjoint"):
        rows = sorted((s for s in sweep if s["variant"] == name), key=lambda s: s["max_iters"])
        assert len(rows) >= 3
        mb = [s["saved_mb"] for s in rows]
        if name == "parareal_adjoint":  # independent of the iteration count
            assert max(mb) <= min(mb) * (1 + 1e-9), mb
        else:  # backprop through iterations stores every one of them
            assert all(b > a for a, b in zip(mb, mb[1:], strict=False)), mb
