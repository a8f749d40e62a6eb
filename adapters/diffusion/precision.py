"""The samplers' precision policy: the network runs in the user's dtype, everything else in
float32 or wider.

A diffusion network in bfloat16 or float16 (how Flux, SD3, Wan and SDXL are run) delivers
outputs with 3-4 significant digits. The sampler's own arithmetic need not share that
loss: its state, step coefficients, the window rebuild or Parareal correction and the
stopping test run in the *state dtype* (float32 for a half-precision network, the network's
dtype otherwise), and values are cast only at the network's input and output. diffusers'
schedulers do the same inside a step (they upcast to float32); pint keeps the state in
float32 between steps as well, so a parallel sampler's iterations do not pile up half
precision rounding.

What cannot be removed is the network's own noise: its output moves by about its dtype's
resolution when its input moves by one rounding (or its batch layout changes), so no
iteration can make two evaluations agree more closely than that. The default stopping
tolerances therefore follow the network's dtype (:func:`default_tol`): below that level a
parallel sampler would only chase rounding, call after call, without coming closer to
the serial sample than the serial sample itself is to its float32 counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

HALF = (torch.float16, torch.bfloat16)

#: default per-step tolerance of the window samplers (picard, quasi_newton, taa),
#: relative to each step's noise scale, by the network's dtype. float32/float64: the
#: value measured in ``benchmarks/bench_fastest.py`` (error to serial ~1e-4 of the data
#: range). Half precision: the network's relative resolution (2^-8 in bfloat16, 2^-11 in
#: float16) times the spread of its outputs over an iteration's inputs, calibrated on the
#: bundled digits models and tiny SD3/Flux pipelines (``benchmarks/bench_precision.py``):
#: the smallest value at which every run's distance to serial stays below serial's own
#: distance to float32 serial.
WINDOW_TOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 3e-3,
              torch.bfloat16: 1e-2}

#: default tolerance of SRDS's stopping rule (max-abs change of the final sample in one
#: iteration, data in [-1, 1]) by the network's dtype; see :data:`WINDOW_TOL`.
SRDS_TOL = {torch.float64: 1e-6, torch.float32: 2e-3, torch.float16: 2e-2,
            torch.bfloat16: 5e-2}


def state_dtype(network: torch.dtype) -> torch.dtype:
    """The dtype the sampler works in for a network of dtype ``network``: float32 for
    half precision, the network's own otherwise."""
    return torch.float32 if network in HALF else network


def network_dtype(model: Any, x_dtype: torch.dtype) -> torch.dtype:
    """The dtype the network runs in: ``x_T``'s when it is a half precision dtype, else a
    half precision dtype of the network's weights (a bfloat16 UNet given float32 noise),
    else ``x_T``'s. ``model`` is the network, or what wraps it as ``.model`` (a
    :class:`~adapters.diffusion.Denoiser`, and a wrapper inside it)."""
    if x_dtype in HALF:
        return x_dtype
    module = model
    for _ in range(2):  # a Denoiser's model, and that model's own .model
        if isinstance(module, torch.nn.Module):
            break
        module = getattr(module, "model", None)
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype if p.dtype in HALF else x_dtype
    return x_dtype


def default_tol(table: dict[torch.dtype, float], network: torch.dtype) -> float:
    """The default tolerance of ``table`` for a network of dtype ``network`` (its state
    dtype's where the table has none: float32's for other float types)."""
    return table.get(network, table.get(state_dtype(network), table[torch.float32]))


@dataclass(frozen=True)
class Precision:
    """The precision a run worked at (``SampleOutput.precision``).

    Attributes:
        network: the dtype the network ran in.
        state: the dtype of the sampler's state, coefficients, rebuild and test.
        tol: the stopping tolerance used.
        tol_source: why this tolerance: ``"given"`` or the default it came from.
    """

    network: torch.dtype
    state: torch.dtype
    tol: float
    tol_source: str

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON reports."""
        return {"network": str(self.network).removeprefix("torch."),
                "state": str(self.state).removeprefix("torch."), "tol": self.tol,
                "tol_source": self.tol_source}


def resolve_tol(tol: float | None, table: dict[torch.dtype, float], network: torch.dtype,
                what: str) -> Precision:
    """``tol`` as given, or the default of ``table`` for ``network`` (``what`` names the
    table in ``tol_source``)."""
    state = state_dtype(network)
    if tol is not None:
        return Precision(network, state, tol, "given")
    name = str(network).removeprefix("torch.")
    return Precision(network, state, default_tol(table, network),
                     f"default for a {name} network ({what})")


def serial_precision(model: Any, x_dtype: torch.dtype) -> Precision:
    """The precision of a serial run of ``model`` on noise of ``x_dtype`` (no stopping
    test: ``tol`` 0)."""
    network = network_dtype(model, x_dtype)
    return Precision(network, state_dtype(network), 0.0, "serial: no stopping test")
