"""The benchmark scripts run (quick mode) and write what README and docs read."""

import json

import pytest


def test_partition_benchmark_quick(load_script, tmp_path):
    res = load_script("benchmarks", "bench_partition").main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "partition.json").read_text())
    assert data["N"] == 100 and data["runs"] == res["runs"]
    for r in data["runs"]:
        assert r["depth"] <= 100 * 2 + 40 and r["error"] < 1e-2
    # with one method for coarse and fine (one batched call per tick), pipelining never
    # lengthens the critical path; a second-order coarse needs its own calls and can
    by = {(r["blocks"], r["p"], r["coarse"], r["pipelined"]): r["depth"] for r in data["runs"]}
    for (B, p, c, pip), d in by.items():
        if pip and c == "ddim":
            assert d < by[(B, p, c, False)]


def test_sampler_benchmark_quick(load_script, tmp_path):
    pytest.importorskip("matplotlib")
    report = load_script("benchmarks", "bench_samplers").main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "samplers.json").exists()
    assert json.loads((tmp_path / "samplers.json").read_text()).keys() == report.keys()


def test_convergence_benchmark_quick(load_script, tmp_path):
    res = load_script("benchmarks", "bench_convergence").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "convergence.json").read_text())["vs_blocks"].keys() == {
        "dahlquist", "heat", "van_der_pol"}
    # the linear Parareal error bound holds at every iteration, and shrinks superlinearly
    for d in res["dahlquist_bound"].values():
        for r in d["rows"]:
            assert r["error"] <= r["bound"] * (1 + 1e-9) + 1e-15
        assert d["rows"][4]["error"] < 1e-3 * d["rows"][0]["error"]
    # an explicit coarse step far beyond the heat equation's stability limit gains nothing
    # (k = B, or a blow-up); the implicit recommended one converges in fewer iterations
    heat = res["vs_coarse"]["heat"]
    B = 20
    assert heat["Euler(1)"] == B or "blow-up" in str(heat["Euler(1)"])
    rec = [v for k, v in heat.items() if k.startswith("recommended")][0]
    assert rec < B
    # the coarse level on 15 of the 31 points converges as fast (pint.Coarsened)
    assert heat["recommended on a 2x coarser grid (15 points)"] <= rec + 1


def test_burgers_low_viscosity_failure_mode(load_script):
    # the textbook hyperbolic failure: with a dissipative one-step coarse solver, the sharper
    # the front, the more iterations; at nu = 0.01 Parareal needs (nearly) all B iterations
    rows = load_script("benchmarks", "bench_convergence").burgers_viscosity(quick=True)
    viscous, sharp = rows
    assert viscous["viscosity"] > sharp["viscosity"]
    assert viscous["iterations"] <= viscous["blocks"] // 2 + 1
    assert sharp["iterations"] >= sharp["blocks"] - 2
    assert max(sharp["history"][:3]) > 10 * max(viscous["history"][:3])


def test_window_variants_quick(load_script, tmp_path):
    # the variants tried for the faster-than-Picard sampler; the kept one (quasi-Newton) is
    # ahead of Picard and of every variant that was not kept, at both tolerances
    rep = load_script("benchmarks", "bench_window_variants").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "window_variants.json").read_text())["runs"] == rep["runs"]
    for tol in (1e-3, 1e-4):
        runs = {r["method"]: r for r in rep["runs"] if r["tol"] == tol}
        qn = runs.pop("quasi_newton")
        assert all(qn["calls"] < r["calls"] and qn["rows"] < r["rows"] for r in runs.values())


def test_warm_start_benchmark_quick(load_script, tmp_path):
    rep = load_script("benchmarks", "bench_warm_start").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "warm_start.json").read_text())["runs"] == rep["runs"]
    by = {(r["sampler"], r["theta"]): r for r in rep["runs"]}
    # a close neighbour's trajectory saves window iterations and SRDS's coarse sweep
    assert by[("picard_w32", 0.01)]["warm_calls"] < by[("picard_w32", 0.01)]["cold_calls"]
    assert by[("srds_sweep", 0.01)]["warm_calls"] < by[("srds_sweep", 0.01)]["cold_calls"]
    assert all(max(r["cold_error"], r["warm_error"]) < 1e-3 for r in rep["runs"])


def test_gpu_wallclock_script_runs_tiny_on_cpu(load_script, tmp_path):
    # the script prepared for a GPU session, on a tiny UNet in eager mode
    pytest.importorskip("diffusers")
    rep = load_script("benchmarks", "bench_gpu_wallclock").main(
        ["--tiny", "--device", "cpu", "--steps", "20", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gpu_wallclock.json").read_text())["modes"]["eager"]
    assert rows == rep["modes"]["eager"] and rows["serial"]["depth"] == 20
    for name in ("srds_pipelined", "picard_w32", "qn_w32"):
        assert rows[name]["depth"] < 20 and rows[name]["error_vs_serial"] < 1e-2


def test_overhead_benchmark_quick(load_script, tmp_path):
    """No host sync per model call where none is needed, and the pipelined schedule drops
    what it no longer needs (everything alive at a call was 14.5 batches per block at
    B = 63 before values were freed on last use, 5.9 after)."""
    rows = load_script("benchmarks", "bench_overhead").main(
        ["--quick", "--out", str(tmp_path)])["results"]
    assert json.loads((tmp_path / "overhead.json").read_text())["results"].keys() == rows.keys()
    for name, r in rows.items():
        if name.startswith(("serial", "srds")):  # reads only at iteration ends
            assert r["host_reads_per_call"] < 0.5, name
        else:  # the window's slide is data-dependent: one read per call, no more
            assert r["host_reads_per_call"] < 1.3, name
        if name.startswith("srds_pipelined"):
            assert r["held_per_block"] <= 5, name
            assert r["width_rows"] <= 2 * r["blocks"], name
    assert rows["serial"]["held_states"] <= 3


def test_planner_benchmark_quick(load_script, tmp_path):
    """Every candidate of each plan is run and priced; on a device whose cost grows with the
    rows (a CPU) auto keeps the serial sampler, below a knee it runs a parallel one."""
    rep = load_script("benchmarks", "bench_planner").main(["--quick", "--out", str(tmp_path)])
    assert set(rep["devices"]) == {"knee-16", "proportional"}
    for dev in rep["devices"].values():
        labels = [c["label"] for c in dev["candidates"]]
        assert labels[0] == "serial" and len(labels) > 8 and dev["best"] in labels
        for c in dev["candidates"]:
            assert c["measured_s"] > 0 and c["calls"] >= 1 and c["recorded_s"] > 0
    assert rep["devices"]["proportional"]["choice"] == "serial"
    assert rep["devices"]["knee-16"]["choice"] != "serial"
    assert (tmp_path / "planner.json").is_file() and (tmp_path / "planner.png").is_file()


def test_fastest_merge_replaces_only_the_cases_run(load_script):
    # bench_fastest --cases digits merges into fastest.json: the (case, N) run replaces its
    # old rows, every other case and N is kept, in case order
    bf = load_script("benchmarks", "bench_fastest")

    def rows(case, N, calls):
        runs = [{"method": "serial", "family": "serial", "tol": None, "calls": N,
                 "rows_per_sample": N, "error": 0.0},
                {"method": "picard_w25", "family": "picard", "settings": {"window": 25},
                 "tol": 1e-3, "calls": calls, "rows_per_sample": 50.0, "error": 1e-4}]
        return runs, bf.table_rows(case, N, runs, (1e-3,))

    vp, vp_t = rows("vp", 25, 8)
    old_d, old_dt = rows("digits", 25, 12)
    old = {"runs": {"vp": {"25": vp}, "digits": {"25": old_d}}, "table": vp_t + old_dt,
           "runtime_s": 100.0, "model": "mixture"}
    new_d, new_dt = rows("digits", 25, 10)
    sd, sd_t = rows("sd_unet", 100, 9)
    new = {"runs": {"sd_unet": {"100": sd}, "digits": {"25": new_d}}, "table": sd_t + new_dt,
           "runtime_s": {"digits": {"25": 5.0}, "sd_unet": {"100": 3.0}},
           "targets": {"digits": {"25": [1e-3]}}}
    out = bf.merge(old, new)
    assert list(out["runs"]) == ["vp", "digits", "sd_unet"]
    assert out["runs"]["digits"]["25"] is new_d and out["runs"]["vp"]["25"] is vp
    assert [(r["schedule"], r["picard_calls"]) for r in out["table"] if r["family"] == "picard"] \
        == [("vp", 8), ("digits", 10), ("sd_unet", 9)]
    assert out["runtime_s"] == {"vp+flow": 100.0, "digits": {"25": 5.0}, "sd_unet": {"100": 3.0}}
    assert out["model"] == "mixture" and len(out["verdict"]) == len(out["table"])
    # parataa_w{N} is the same run as parataa_full_m2: left out of the networks' grid
    names = [m[0] for m in bf.methods(25, bf.NET_WINDOWS, dedup=True)]
    assert "parataa_w25" not in names and "parataa_full_m2" in names and "picard_w25" in names


def test_diffusers_match_benchmark_quick(load_script, tmp_path):
    pytest.importorskip("diffusers")
    rep = load_script("benchmarks", "bench_diffusers_match").main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "diffusers_match.json").read_text())
    assert len(data["results"]) == len(rep["results"]) >= 25
    # every configuration but clip_sample equals diffusers' loop to float32 round-off
    assert data["worst_without_clip_sample"]["rel_err"] < 1e-5
