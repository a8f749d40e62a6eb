"""Every script in examples/ runs and reaches what its docstring promises."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_van_der_pol_example(tmp_path):
    s = load("van_der_pol").main(["--out", str(tmp_path)])
    assert s["converged"] and s["iterations"] < 20
    assert s["error_vs_serial"] < 1e-7 and s["error_vs_scipy"] < 1e-6
    assert s["depth_parareal"] < s["depth_serial"]
    assert (tmp_path / "van_der_pol.png").stat().st_size > 10_000
