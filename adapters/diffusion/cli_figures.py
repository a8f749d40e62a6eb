"""``pint-sample``'s figures: the sample grid (``samples.png``) and the convergence figure
(``convergence.png``)."""


from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` tensor in [-1, 1] -> float images in [0, 1], numpy ``[n, H, W, C]``;
    numpy images ``[..., H, W, C]`` in [0, 1] pass through."""
    if isinstance(x, np.ndarray):
        return x
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def _show(ax, img) -> None:
    """Draw one ``[H, W, C]`` image in [0, 1] (grey when ``C == 1``), pixels unsmoothed."""
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")


def _mosaic(imgs: np.ndarray, cols: int, scale: int, gap: int = 4) -> np.ndarray:
    """``[n, H, W, C]`` images in [0, 1] -> one ``[rows * (H s + gap) - gap, ..., C]`` image,
    every pixel repeated ``scale`` times in both directions (nearest neighbour), white gaps."""
    n, H, W, C = imgs.shape
    rows = math.ceil(n / cols)
    h, w = H * scale, W * scale
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, C), dtype=np.float32)
    big = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = big[k]
    return out


#: samples.png draws every sample at least this many pixels wide (integer upscaling)
GRID_MIN_PX = 160


def save_grid(x: torch.Tensor, path: Path, title: str | None = None) -> None:
    """The samples as one PNG, pixel for pixel: each sample upscaled by an integer factor to
    at least :data:`GRID_MIN_PX` pixels (nearest neighbour, no smoothing; larger images at
    their own size), in a square-ish grid, with ``title`` above it."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = to_images(x)
    n, H, W, _ = imgs.shape
    cols = math.ceil(math.sqrt(n))
    mosaic = _mosaic(imgs, cols, scale=max(1, math.ceil(GRID_MIN_PX / max(H, W))))
    mh, mw = mosaic.shape[:2]
    dpi, margin = 100, 8
    fig_w = max(mw + 2 * margin, 480)
    lines = textwrap.wrap(title, width=max(20, fig_w // 7)) if title else []
    title_px = 16 * len(lines) + (10 if lines else 0)
    fig_h = mh + 2 * margin + title_px
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes([(fig_w - mw) / 2 / fig_w, margin / fig_h, mw / fig_w, mh / fig_h])
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest", aspect="equal")
    ax.axis("off")
    if lines:
        fig.text(0.5, 1 - 6 / fig_h, "\n".join(lines), ha="center", va="top", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _changes(iterates: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, per_sample)``: each iteration's change of every sample (``[K, n, ...]``,
    iterate ``k`` minus iterate ``k - 1``; tensors in data units, numpy images in pixel
    units) and its max-abs per sample ``[K, n]``."""
    if isinstance(iterates, np.ndarray):
        x = iterates.astype(np.float64)
    else:
        x = iterates.detach().double().cpu().numpy()
    steps = x[1:] - x[:-1]
    per = np.abs(steps).reshape(steps.shape[0], steps.shape[1], -1).max(-1) if steps.size \
        else np.zeros((0, x.shape[1] if x.ndim > 1 else 0))
    return steps, per


def save_convergence(history: list[float], iterates: torch.Tensor | np.ndarray | None,
                     tol: float, path: Path, show: int = 4,
                     ylabel: str = "max |change| of the final sample",
                     converged: bool | None = None, accepted: list[int] | None = None,
                     num_steps: int | None = None, window: bool | None = None) -> None:
    """The quantity the stopping test compares with ``tol``, per iteration, with the
    tolerance line; for SRDS (``iterates`` given) also the samples that decided it.

    SRDS (``iterates`` ``[K + 1, n, C, H, W]`` in data units, or numpy decoded images
    ``[K + 1, n, H, W, C]`` in [0, 1], row 0 the coarse sweep's sample, the last row the
    final one): ``history`` is the max over samples of the final sample's max-abs change in
    each iteration. The left panel draws it with ``tol``, and the per-sample curve of the
    sample with the largest change in the last iteration (the one that decided when the
    run stopped). The right panel shows the ``show`` samples with the largest last change
    (that sample first): the final sample on top, then each iteration's change of it (the
    very quantity the test measured, same units, its max beside each row).

    Window samplers (``iterates`` ``None``): ``history`` is the worst normalised change
    (rms / sigma_j) over the whole window in each call; the test accepts the window's
    leading steps at or below ``tol`` (the first step is exact after one call and is
    always accepted), so the curve need not end below ``tol``; with ``accepted`` (the steps
    accepted after each call) and ``num_steps`` an upper panel shows the window's
    progress to ``num_steps``, which is what ``converged`` means.

    ``converged`` true with a last change above ``tol`` (SRDS run to ``max_iters = B``:
    every block exact) is said in the figure. ``window``: whether a window sampler ran
    (default: when ``iterates`` is ``None``; SRDS chosen by ``auto`` has no iterates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    no_iterates = iterates is None or iterates.shape[0] == 0
    window = no_iterates if window is None else window
    pixels = isinstance(iterates, np.ndarray)
    if no_iterates:
        steps, per = np.zeros((0, 0)), np.zeros((0, 0))
        order: list[int] = []
    else:
        steps, per = _changes(iterates)
        last = per[-1] if per.shape[0] else np.zeros(iterates.shape[1])
        order = [int(i) for i in np.argsort(-last, kind="stable")]
    show = min(show, len(order))
    K = steps.shape[0]  # iterations with a change
    rows = K + 1 if show else 0  # the final samples, then each iteration's change
    cell, curve_w, label_w = 1.1, 5.0, 1.1  # inches
    fig_w = curve_w + (label_w + show * cell + 1.4 if show else 0)
    progress = window and accepted is not None and num_steps is not None and len(accepted) > 0
    fig_h = max(3.6 if not progress else 5.4, rows * cell + 1.0)
    fig = plt.figure(figsize=(fig_w, fig_h))
    if show:
        outer = fig.add_gridspec(1, 2, width_ratios=[curve_w - 0.8, fig_w - curve_w],
                                 left=0.8 / fig_w, right=1 - 0.6 / fig_w, wspace=0,
                                 top=1 - 0.6 / fig_h, bottom=0.5 / fig_h)
        gs = outer[0, 1].subgridspec(rows, show + 3, wspace=0.1, hspace=0.1,
                                     width_ratios=[label_w / cell, *[1] * show, 0.1, 0.2])
        ax = fig.add_subplot(outer[0, 0])
    elif progress:
        ax_p, ax = fig.subplots(2, 1, sharex=True)
        calls = range(1, len(accepted) + 1)
        ax_p.step(calls, accepted, where="post", marker="o", ms=3,
                  label="steps accepted (window start)")
        ax_p.axhline(num_steps, color="gray", ls="--", label=f"N = {num_steps}: converged")
        ax_p.set(ylabel="steps accepted", title="window sampler: what the stopping test decided")
        ax_p.legend(fontsize=8)
    else:
        ax = fig.add_subplot(1, 1, 1)
    _draw_curve(ax, history, per, order, show, pixels, tol, converged, window, progress, ylabel)
    if show:
        _draw_samples(fig, gs, iterates, steps, order, show, rows, pixels, fig_h)
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw_curve(ax, history: list[float], per: np.ndarray, order: list[int], show: int,
                pixels: bool, tol: float, converged: bool | None, window: bool,
                progress: bool, ylabel: str) -> None:
    """:func:`save_convergence`'s curve panel: the test's quantity per iteration, the
    deciding sample's own curve (SRDS), the tolerance line and, where a converged run ends
    above it, why."""
    from matplotlib.ticker import MaxNLocator

    if history:
        x = range(1, len(history) + 1)
        if window:
            label = "worst change in the window (rms / sigma_j)"
        else:
            label = "max over samples (the stopping test)"
        ax.semilogy(x, history, "o-", label=label)
        if show and not pixels and per.shape[0] == len(history):
            ax.semilogy(x, np.maximum(per[:, order[0]], 1e-30), "s--", ms=3,
                        label=f"sample {order[0] + 1} (largest last change)")
        ax.axhline(tol, color="gray", ls="--", label=f"tol = {tol:g}")
        if converged and history[-1] > tol:
            why = ("converged: all steps accepted (upper panel); this curve is the\n"
                   "window's worst change, steps the test did not accept by it included"
                   if window else "converged: every block exact (max_iters = blocks),\n"
                   "the serial sample, with the last change above tol")
            ax.text(0.02, 0.98, why, transform=ax.transAxes, fontsize=7, va="top")
        ax.legend(fontsize=8)
    ax.set(xlabel="model call (window iteration)" if window else "Parareal iteration",
           ylabel="worst change / noise scale" if window else ylabel,
           title="" if progress else "window sampler convergence" if window
           else "SRDS convergence")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_samples(fig, gs, iterates, steps: np.ndarray, order: list[int], show: int,
                  rows: int, pixels: bool, fig_h: float) -> None:
    """:func:`save_convergence`'s sample panel (SRDS): the ``show`` samples with the
    largest last change, final sample on top, each iteration's change of it below."""
    imgs = iterates if pixels else to_images(
        iterates.reshape(-1, *iterates.shape[2:])).reshape(
            iterates.shape[0], iterates.shape[1], *iterates.shape[3:], iterates.shape[2])
    cols = order[:show]
    final = imgs[-1, cols]
    # [K, show, H, W]: channels reduced by their largest magnitude (the test's max-abs)
    ch = steps[:, cols] if pixels else np.moveaxis(steps[:, cols], 2, -1)
    idx = np.abs(ch).argmax(-1)[..., None]
    diff = np.take_along_axis(ch, idx, -1)[..., 0]
    vmax = (float(np.abs(diff).max()) if diff.size else 0.0) or 1.0
    im = None
    for r in range(rows):
        for c in range(show):
            a = fig.add_subplot(gs[r, 1 + c])
            if r == 0:
                _show(a, final[c])
                a.set_title(f"sample {cols[c] + 1}", fontsize=8)
            else:
                im = a.imshow(diff[r - 1, c], cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                              interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                label = "final" if r == 0 else f"iter {r}"
                if r:
                    label += f"\nmax {np.abs(diff[r - 1]).max():.2g}"
                a.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    units = ("decoded pixels in [0, 1]; the test measures the latents" if pixels
             else "data units, as the curve")
    fig.text((gs[0, 1].get_position(fig).x0 + gs[0, show].get_position(fig).x1) / 2,
             1 - 0.1 / fig_h,
             f"samples with the largest last change; below: each iteration's\n"
             f"change of them ({units})", ha="center", va="top", fontsize=9)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(gs[1:, show + 2]))
