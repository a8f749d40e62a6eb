"""Smoke test of benchmarks/bench_schedulers.py (quick mode: three float64 mixture cases,
flow-matching Euler, EDM DPM-Solver++ 2M and VP UniPC, at N = 25)."""

import json

import pytest

RUN_KEYS = {"method", "family", "tol", "window", "max_iters", "iterations", "converged",
            "depth", "model_calls", "rows", "width", "error", "wall_s", "speedup"}
CASE_KEYS = {"model", "solver", "scheduler", "schedule", "N", "dtype", "batch", "serial",
             "floor", "targets", "runs"}
COLUMNS = ("serial", "srds_sweep", "srds_pipelined", "picard", "qn")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    pytest.importorskip("matplotlib")
    pytest.importorskip("diffusers")  # the VP mixture's UniPC grid comes from diffusers
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "bench_schedulers", root / "benchmarks" / "bench_schedulers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("bench_schedulers")
    report = mod.main(["--quick", "--out", str(out)])
    return report, out


def test_outputs_and_fields(quick):
    report, out = quick
    data = json.loads((out / "schedulers.json").read_text())
    assert data.keys() == report.keys()
    assert {"machine", "note", "config", "runtime_s", "models", "results", "replay_check",
            "table"} <= data.keys()
    assert (out / "schedulers.png").stat().st_size > 0
    assert set(data["results"]) == {"gmm-flow/euler/25", "gmm-edm/dpmpp_2m/25",
                                    "gmm-vp/unipc/25"}
    for key, e in data["results"].items():
        assert CASE_KEYS <= e.keys(), key
        assert e["dtype"] == "float64" and e["N"] == 25
        assert e["serial"]["depth"] == 25 and e["serial"]["rows"] == 25 * e["batch"]
        assert sorted(e["targets"].values()) == [1e-5, 1e-3]
        assert {r["method"] for r in e["runs"]} == set(COLUMNS[1:])
        for r in e["runs"]:
            assert RUN_KEYS <= r.keys()
            assert r["depth"] == r["model_calls"]  # one device: every call is sequential
            if r["family"] == "srds":
                assert r["num_blocks"] >= 2
    # the replayed SRDS tolerance grid agrees with direct runs
    assert data["replay_check"] and all(c["match"] for c in data["replay_check"])
    assert len(data["table"]) == 2 * len(data["results"])
    for row in data["table"]:
        assert set(row["cells"]) == set(COLUMNS)
        found = {c: v["depth"] for c, v in row["cells"].items() if v["depth"] is not None}
        assert row["best_depth"] == min(found.values()) == found[row["best"]]
        assert row["best_vs_picard"] == pytest.approx(found["picard"] / row["best_depth"])
        for v in row["cells"].values():  # every entry meets the target it is listed for
            assert v["depth"] is None or v["error"] <= row["target_value"]


def test_parallel_samplers_reach_serial(quick):
    report, _ = quick
    for row in report["table"]:
        cells = row["cells"]
        # every parallel sampler converges to the serial sample of the same solver (every
        # family: flow, VE/EDM, VP; one-step and multistep solvers), down to 1e-5
        for col in COLUMNS[1:]:
            assert cells[col]["depth"] is not None, (row["case"], row["target"], col)
        # ... and the best of them needs fewer sequential model calls than serial
        assert row["best"] != "serial" and row["best_depth"] < row["N"], row["case"]
        # SRDS pipelined beats serial on every solver (its DDIM-jump coarse step fits
        # multistep solvers too)
        assert cells["srds_pipelined"]["depth"] < row["N"], row["case"]
    # on the one-step solver (flow-matching Euler), the pipelined SRDS and both window
    # samplers need fewer sequential calls than serial at both targets
    for row in report["table"]:
        if row["case"] == "gmm-flow/euler/25":
            for col in ("srds_pipelined", "picard", "qn"):
                assert row["cells"][col]["depth"] < row["N"], (row["target"], col)
