"""Shared test helpers."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load_script():
    """``load_script("examples", "lorenz")``: import a repository script as a module."""

    def load(folder: str, name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
