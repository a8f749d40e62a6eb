"""Progress bars for the samplers (``progress=True``): one tqdm bar on stderr per run.

The bar moves with the work done: by model calls (serial, SRDS) or by steps made exact
(the window samplers, one call per iteration), against a total that is known or an upper
bound, and it is closed however the run ends (also when the model raises).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm


def check_progress(progress: object) -> bool:
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    return progress


@contextmanager
def progress_bar(progress: bool, total: int, desc: str, unit: str = "call",
                 denoiser: Any = None) -> Iterator[Any]:
    """A tqdm bar of ``total`` (``None`` when ``progress`` is false). With ``denoiser``,
    the bar advances by one on every model call it makes; a count past ``total`` (which
    an upper bound should never see) raises the total rather than overflowing the bar.
    (``denoiser``: a :class:`~adapters.diffusion.Denoiser`, whose ``raw`` is wrapped.)"""
    if not check_progress(progress):
        yield None
        return
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    try:
        if denoiser is not None:
            raw = denoiser.raw

            def counted(x, t):
                out = raw(x, t)
                if bar.total is not None and bar.n + 1 > bar.total:
                    bar.total = bar.n + 1
                bar.update(1)
                return out

            denoiser.raw = counted  # the run's own bound copy (see Denoiser.bind)
        yield bar
    finally:
        bar.close()
