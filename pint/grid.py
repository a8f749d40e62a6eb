"""The block time grid: equal blocks or an explicit partition of ``t_span``, kept in float64.

Block and step times stay in float64 whatever the state's dtype (float32 on devices
without float64, such as Apple's MPS), so that a large time offset does not eat the step
size: with a float32 grid ``t_span = (1e8, 1e8 + 1)`` would be one point. ``f`` still
receives times in :attr:`ODEProblem.time_dtype`; when that dtype cannot resolve the blocks
(float32 far from ``t = 0`` for the span) a :class:`TimeResolutionWarning` says that ``f`` sees rounded
times.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_holds_data, check_int
from .problem import ODEProblem

#: more blocks than this are refused: the coarse sweep runs block after block and the
#: engine holds ``[num_blocks + 1, *y0.shape]`` states
MAX_BLOCKS = 1_000_000


class TimeResolutionWarning(RuntimeWarning):
    """``f`` receives times rounded to float32 more coarsely than the block length."""


def grid_dtype(device: torch.device) -> torch.dtype:
    """float64, or float32 on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def make_partition(
    problem: ODEProblem,
    num_blocks: int | None,
    partition: Sequence[float] | Tensor | None,
) -> Tensor:
    """Block boundary times ``[B + 1]`` on ``y0``'s device in :func:`grid_dtype`.

    Raises:
        TypeError, ValueError: ``num_blocks`` or ``partition`` malformed (the message
            names the argument), or ``t_span`` too far from 0 to be split into blocks.
    """
    dev = problem.y0.device
    if partition is None:
        if num_blocks is None:
            raise ValueError("num_blocks is required (an int >= 1) unless partition is given")
        num_blocks = _check_blocks("num_blocks", check_int("num_blocks", num_blocks, 1))
        times = torch.linspace(problem.t_start, problem.t_end, num_blocks + 1,
                               dtype=torch.float64)
        times[0], times[-1] = problem.t_start, problem.t_end
    else:
        times = _check_partition(problem, num_blocks, partition)
    out = times.to(device=dev, dtype=grid_dtype(dev))
    _check_resolution(problem, out, times.numel() - 1)
    return out


def _check_blocks(name: str, n: int) -> int:
    if n > MAX_BLOCKS:
        raise ValueError(
            f"{name} must be at most {MAX_BLOCKS:_} (got {n:_}): the coarse sweep runs "
            "block after block and every block holds its boundary states"
        )
    return n


def _check_partition(problem: ODEProblem, num_blocks: int | None,
                     partition: Sequence[float] | Tensor) -> Tensor:
    """``partition`` as a float64 CPU tensor, checked."""
    expected = "partition must be a 1-D sequence or tensor of real numbers (block times)"
    if isinstance(partition, (str, bytes)):
        raise TypeError(f"{expected}, got {type(partition).__name__}")
    if isinstance(partition, Tensor):
        check_holds_data("partition", partition, "Pass the block times on 'cpu' or on y0's "
                         "device")
        if partition.is_complex() or partition.dtype == torch.bool:
            raise TypeError(f"{expected}, got a tensor of dtype {partition.dtype}")
        times = partition.detach().to("cpu", torch.float64)
    else:
        try:
            times = torch.as_tensor(partition, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{expected}, got {_describe(partition)}") from None
    if times.dim() != 1:
        raise ValueError(f"{expected}, got shape {tuple(times.shape)}")
    if times.numel() < 2 or not bool(torch.isfinite(times).all()):
        raise ValueError("partition must hold at least two finite times")
    _check_blocks("partition", times.numel() - 1)
    if num_blocks is not None and check_int("num_blocks", num_blocks, 1) != times.numel() - 1:
        raise ValueError(
            f"num_blocks={num_blocks} disagrees with partition of {times.numel() - 1} blocks"
        )
    if not (math.isclose(times[0].item(), problem.t_start, rel_tol=1e-12, abs_tol=1e-12)
            and math.isclose(times[-1].item(), problem.t_end, rel_tol=1e-12, abs_tol=1e-12)):
        raise ValueError(
            f"partition must start at t_span[0]={problem.t_start} and end at "
            f"t_span[1]={problem.t_end}, got {times[0].item()} .. {times[-1].item()}"
        )
    d = torch.diff(times) * math.copysign(1.0, problem.t_end - problem.t_start)
    if not bool((d > 0).all()):
        raise ValueError("partition must be strictly monotone in the direction of t_span")
    return times


def _check_resolution(problem: ODEProblem, times: Tensor, blocks: int) -> None:
    """Refuse a grid whose blocks collapsed in its dtype; warn when ``f``'s time dtype
    rounds times by more than ``1e-4`` of the span."""
    host = times.detach().cpu().double()
    d = torch.diff(host) * math.copysign(1.0, problem.t_end - problem.t_start)
    span = abs(problem.t_end - problem.t_start)
    if not bool((d > 0).all()) or abs(abs(float(host[-1] - host[0])) - span) > 1e-6 * span:
        raise ValueError(
            f"t_span={problem.t_span} cannot be split into {blocks} blocks in {times.dtype}: "
            f"the times are too far from 0 for the length of the blocks. Shift t_span toward "
            "0 (and f's time argument with it)"
        )
    if problem.f is None or problem.time_dtype == torch.float64:
        return
    far = max(abs(problem.t_start), abs(problem.t_end))
    rounding = float(torch.finfo(problem.time_dtype).eps) * far
    if rounding > 1e-4 * span:
        warnings.warn(
            f"t_span={problem.t_span}: f receives times in {problem.time_dtype} (the time "
            f"dtype of {problem.y0.dtype} states), which near |t| = {far:.3g} are rounded to "
            f"about {rounding:.2g}, coarse against the span {span:.3g}. The steps are exact "
            "(the engine keeps times in float64), but an f that depends on t sees rounded "
            "times: use a float64 y0 or shift t_span toward 0",
            TimeResolutionWarning, stacklevel=4,
        )


def _describe(value: object) -> str:
    try:
        return f"{type(value).__name__} {value!r:.60}"
    except Exception:  # a repr that fails must not hide the real error
        return type(value).__name__
