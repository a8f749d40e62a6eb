"""Every script in examples/ runs and reaches what its docstring promises."""


def test_van_der_pol_example(load_script, tmp_path):
    s = load_script("examples", "van_der_pol").main(["--out", str(tmp_path)])
    assert s["converged"] and s["iterations"] < 20
    assert s["error_vs_serial"] < 1e-7 and s["error_vs_scipy"] < 1e-6
    assert s["depth_parareal"] < s["depth_serial"]
    assert (tmp_path / "van_der_pol.png").stat().st_size > 10_000


def test_lorenz_example(load_script):
    s = load_script("examples", "lorenz").main([])
    assert s["converged"] and s["iterations"] < s["num_blocks"]
    assert s["error_vs_serial"] < 1e-8 and s["error_vs_reference"] < 1e-7
    assert s["depth_parareal"] < s["depth_serial"]


def test_heat_example(load_script):
    s = load_script("examples", "heat").main([])
    assert s["converged"] and s["iterations"] < s["num_blocks"]
    assert s["coarse_step_over_explicit_limit"] > 20
    assert s["error_vs_serial"] < 1e-8 and s["error_vs_exact"] < 1e-8


def test_kepler_example(load_script):
    s = load_script("examples", "kepler").main(["--periods", "1"])
    assert s["converged"] and s["iterations"] < s["num_blocks"]
    assert s["energy_drift"] < 1e-7 and s["angular_momentum_drift"] < 1e-7
    assert s["error_vs_exact"] < 1e-6
