"""One entry point that picks the sampler: ``sample(..., sampler="auto", max_batch=...)``.

The choice follows the measured table of ``benchmarks/bench_samplers.py``
(``benchmarks/results/samplers_table.md``, sequential model calls at equal error against
the serial sample, digits UNet and Gaussian-mixture denoiser, N in {25, 100, 1000}):

* the sliding-window samplers need fewer sequential calls than SRDS (sweep or pipelined,
  DDIM or DPM-Solver++(2S) coarse) wherever both reach the error target, and fewer rows;
  at the float32 floor itself (digits model, N = 1000, 3.2e-6) the quasi-Newton window
  gets there (102 calls) and so does the SRDS sweep (337), while Picard's float32 sums stop
  near 4e-6;
* :func:`~adapters.diffusion.quasi_newton_sample` needs no more calls or rows than
  :func:`~adapters.diffusion.picard_sample` at the same window and error;
* a wider window cuts calls nearly in proportion (quasi-Newton, Gaussian mixture,
  N = 1000, error <= 6e-6: 43 calls with window 64, 72 with window 32), so ``auto`` takes
  the widest window the budget allows;
* below two steps per call nothing parallel pays: ``auto`` runs the serial sampler.

``max_batch`` is the number of network rows one call may hold (what fits in memory or
keeps a GPU efficient); a window of ``w`` steps needs ``w * batch`` rows (twice that with
classifier-free guidance).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .model import Denoiser, Model
from .picard import picard_sample, quasi_newton_sample
from .samplers import SampleOutput, SamplerStats, Schedule, _check_x, serial_sample, srds_sample
from .schedule import check_num_steps

SAMPLERS = ("auto", "serial", "srds", "picard", "quasi_newton")
#: the window ``auto`` uses when no ``max_batch`` is given (the benchmarks' default width)
DEFAULT_WINDOW = 32


def choose_sampler(num_steps: int, batch: int, max_batch: int | None = None,
                   guidance: bool = False) -> tuple[str, dict[str, Any]]:
    """The sampler ``auto`` runs and its arguments.

    Args:
        num_steps: the serial sampler's steps ``N``.
        batch: samples per run (``x_T.shape[0]``).
        max_batch: network rows one call may hold; ``None``: a window of
            :data:`DEFAULT_WINDOW` steps.
        guidance: classifier-free guidance doubles the rows of every step.

    Returns:
        ``(name, kwargs)``: ``("serial", {})`` or ``("quasi_newton", {"window": w})``.
    """
    rows_per_step = batch * (2 if guidance else 1)
    if max_batch is None:
        window = DEFAULT_WINDOW
    else:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(
                f"max_batch must be an int >= 1 (network rows per call), got {max_batch!r}")
        window = max_batch // rows_per_step
    window = min(window, num_steps)
    if window < 2:
        return "serial", {}
    return "quasi_newton", {"window": window}


def sample(model: Model, schedule: Schedule, x_T: Tensor, num_steps: int,
           sampler: str = "auto", max_batch: int | None = None, tol: float | None = None,
           **kwargs: Any) -> SampleOutput:
    """Sample with the named sampler, or the fastest one for the width budget (``"auto"``).

    Args:
        model, schedule, x_T, num_steps: as in :func:`~adapters.diffusion.srds_sample`.
        sampler: ``"auto"``, ``"serial"``, ``"srds"``, ``"picard"`` or ``"quasi_newton"``.
        max_batch: network rows per call for ``"auto"`` (see :func:`choose_sampler`).
        tol: the sampler's tolerance (``None``: its default).
        **kwargs: passed to the sampler (e.g. ``window``, ``num_blocks``, ``pipelined``,
            ``guidance_scale``, ``model_kwargs``).

    Returns:
        A :class:`~adapters.diffusion.SampleOutput`; for ``"serial"``, ``iterations`` is 0
        and ``stats`` counts ``num_steps`` calls.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if sampler == "auto":
        x = _check_x(x_T, model)
        N = check_num_steps(num_steps, schedule.max_steps)
        sampler, chosen = choose_sampler(N, x.shape[0], max_batch,
                                         _guided(model, kwargs))
        kwargs = {**chosen, **kwargs}
    elif max_batch is not None:
        raise ValueError("max_batch is only used with sampler='auto'")
    if tol is not None:
        kwargs["tol"] = tol
    if sampler == "serial":
        kwargs.pop("tol", None)
        x0 = serial_sample(model, schedule, x_T, num_steps, **kwargs)
        rows = x_T.shape[0] * (2 if _guided(model, kwargs) else 1)
        stats = SamplerStats(num_steps, num_steps * rows, num_steps)
        return SampleOutput(x0, 0, True, [], stats, 0.0, 1)
    run = {"srds": srds_sample, "picard": picard_sample, "quasi_newton": quasi_newton_sample}
    return run[sampler](model, schedule, x_T, num_steps, **kwargs)


__all__ = ["sample", "choose_sampler", "SAMPLERS", "DEFAULT_WINDOW"]


def _guided(model: Model, kwargs: dict[str, Any]) -> bool:
    """Whether a run uses classifier-free guidance (two rows per sample per call)."""
    own = getattr(model, "guidance_scale", None) if isinstance(model, Denoiser) else None
    return own is not None or kwargs.get("guidance_scale") is not None
