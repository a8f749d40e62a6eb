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


def save_convergence(history: list[float], iterates: torch.Tensor | np.ndarray | None,
                     tol: float, path: Path, show: int = 4,
                     ylabel: str = "max |change| of the final sample") -> None:
    """The change per iteration (left) and, for the first ``show`` samples, what each
    iteration still had to change (right): the final samples on top, then per iteration
    (the coarse sweep first) its difference to the final sample, all on one symmetric
    colour scale with a colourbar. ``iterates`` ``[rows, n, C, H, W]`` in [-1, 1] or numpy
    ``[rows, n, H, W, C]`` in [0, 1], the last row the final sample (``None``: the curve
    only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if iterates is None:
        iterates = np.zeros((0, 0, 1, 1, 1))
    window = iterates.shape[0] == 0
    if isinstance(iterates, np.ndarray):
        imgs = iterates
    elif not window:
        imgs = to_images(iterates.reshape(-1, *iterates.shape[2:]))
        imgs = imgs.reshape(iterates.shape[0], iterates.shape[1], *imgs.shape[1:])
    show = min(show, iterates.shape[1])
    K = iterates.shape[0] - 1  # iterations after the coarse sweep
    rows = K + 1 if show else 0  # the final samples, then coarse and iterations 1 .. K - 1
    cell, curve_w, label_w = 1.1, 5.0, 1.1  # inches
    fig_w = curve_w + (label_w + show * cell + 1.4 if show else 0)
    fig_h = max(3.6, rows * cell + 1.0)
    fig = plt.figure(figsize=(fig_w, fig_h))
    if show:
        outer = fig.add_gridspec(1, 2, width_ratios=[curve_w - 0.8, fig_w - curve_w],
                                 left=0.8 / fig_w, right=1 - 0.6 / fig_w, wspace=0,
                                 top=1 - 0.6 / fig_h, bottom=0.5 / fig_h)
        gs = outer[0, 1].subgridspec(rows, show + 3, wspace=0.1, hspace=0.1,
                                     width_ratios=[label_w / cell, *[1] * show, 0.1, 0.2])
        ax = fig.add_subplot(outer[0, 0])
    else:
        ax = fig.add_subplot(1, 1, 1)
    if history:
        ax.semilogy(range(1, len(history) + 1), history, "o-", label="change of the sample")
        ax.axhline(tol, color="gray", ls="--", label=f"tol = {tol:g}")
        ax.legend(fontsize=9)
    ax.set(xlabel="model call (window iteration)" if window else "Parareal iteration",
           ylabel="worst per-step change / noise scale" if window else ylabel,
           title="window sampler convergence" if window else "SRDS convergence")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if show:
        final = imgs[-1, :show]
        diff = (imgs[:-1, :show] - final[None]).mean(-1)  # [K, show, H, W], channels averaged
        vmax = (float(np.abs(diff).max()) if diff.size else 0.0) or 1.0
        im = None
        for r in range(rows):
            for c in range(show):
                a = fig.add_subplot(gs[r, 1 + c])
                if r == 0:
                    _show(a, final[c])
                else:
                    im = a.imshow(diff[r - 1, c], cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                                  interpolation="nearest")
                a.set_xticks([])
                a.set_yticks([])
                if c == 0:
                    label = "final" if r == 0 else "coarse" if r == 1 else f"iter {r - 1}"
                    if r:
                        label += f"\nmax {np.abs(diff[r - 1]).max():.1g}"
                    a.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        fig.text((gs[0, 1].get_position(fig).x0 + gs[0, show].get_position(fig).x1) / 2,
                 1 - 0.1 / fig_h,
                 "final samples; below: each iteration's\ndifference to them (pixels in [0, 1])",
                 ha="center", va="top", fontsize=10)
        if im is not None:
            fig.colorbar(im, cax=fig.add_subplot(gs[1:, show + 2]))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


