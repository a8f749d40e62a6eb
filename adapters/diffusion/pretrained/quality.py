"""Sample-quality metrics for diffusion models trained on scikit-learn's 8x8 digits.

A small CNN classifier is trained on :func:`sklearn.datasets.load_digits` (once per
process and seed, then cached) and used to score generated samples:

* ``mean_max_prob`` -- mean over samples of the classifier's top softmax probability
  (how "digit-like" / unambiguous the samples are),
* ``class_hist`` -- histogram of predicted classes (10 counts) and ``n_distinct``,
  the number of digits predicted at least once (mode coverage),
* ``frechet`` -- Frechet distance between Gaussian fits of the classifier's
  penultimate-layer features (64-d) of the samples and of the real reference digits
  (an "FID" for digits).

:func:`real_reference` gives the same figures for real, held-out digits, which is the
yardstick to read sample numbers against. The real data are split once (stratified,
``test_size=500``): the classifier is trained on the remaining 1297 digits, and those
1297 digits are also the Frechet reference set for both samples and held-out digits.
Compare sample sets of about 500 (the Frechet distance is biased upwards for small
sets).

Images are tensors ``[n, 1, 8, 8]`` in ``[-1, 1]`` (pixel value ``v`` in 0..16 maps to
``v / 8 - 1``). Only torch, numpy, scipy and scikit-learn are needed.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DigitClassifier",
    "evaluate_samples",
    "frechet_distance",
    "load_digits_images",
    "real_reference",
    "train_classifier",
]

N_HELD_OUT = 500
FEATURE_DIM = 64

_CLASSIFIERS: dict[int, DigitClassifier] = {}
_SPLITS: dict[int, dict[str, torch.Tensor]] = {}
_REF_STATS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 sklearn digits as ``([1797, 1, 8, 8] float32 in [-1, 1], [1797] labels)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    y = torch.as_tensor(d.target, dtype=torch.long)
    return x, y


def _split(seed: int) -> dict[str, torch.Tensor]:
    if seed not in _SPLITS:
        from sklearn.model_selection import train_test_split

        x, y = load_digits_images()
        idx = np.arange(len(y))
        tr, te = train_test_split(idx, test_size=N_HELD_OUT, random_state=seed, stratify=y.numpy())
        tr, te = torch.as_tensor(np.sort(tr)), torch.as_tensor(np.sort(te))
        _SPLITS[seed] = {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}
    return _SPLITS[seed]


class DigitClassifier(nn.Module):
    """Small CNN for 8x8 digits in [-1, 1]; ``features`` gives the 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, 10)
        self.test_accuracy: float = float("nan")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (zero = background value -1 padding)."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            if m.any():
                out[m] = padded[m, :, i : i + 8, j : j + 8]
    return out


def _fit(seed: int, s: dict[str, torch.Tensor], g: torch.Generator, epochs: int) -> DigitClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        xtr, ytr = s["x_train"], s["y_train"]
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(ytr), generator=g)
            for b in range(0, len(ytr), 64):
                i = perm[b : b + 64]
                loss = nn.functional.cross_entropy(model(_shift(xtr[i], g)), ytr[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    return model


def train_classifier(seed: int = 0, *, epochs: int = 40, verbose: bool = False) -> DigitClassifier:
    """Train (or return the cached) digit classifier for ``seed``; eval mode, CPU.

    Trained on 1297 digits with random one-pixel shifts, tested on 500 held-out digits;
    the test accuracy is stored in ``model.test_accuracy`` (typically ~0.99).
    Takes about 8 s (one CPU thread).
    """
    if seed in _CLASSIFIERS:
        return _CLASSIFIERS[seed]
    t0 = time.perf_counter()
    s = _split(seed)
    g = torch.Generator().manual_seed(seed)
    # One intra-op thread: the same weights whatever the caller's thread setting, and no
    # OpenMP busy-wait slowdown when other processes compete for the cores.
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            model = _fit(seed, s, g, epochs)
    finally:
        torch.set_num_threads(n_threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        acc = (model(s["x_test"]).argmax(1) == s["y_test"]).float().mean().item()
    model.test_accuracy = acc
    if verbose:
        print(f"digit classifier: test accuracy {acc:.4f} ({time.perf_counter() - t0:.1f} s)")
    _CLASSIFIERS[seed] = model
    return model


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (as in FID)."""
    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # dead ReLU units make the covariances singular; sqrtm still does fine here
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            off = np.eye(sigma1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((sigma1 + off) @ (sigma2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _stats(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _reference_stats(seed: int) -> tuple[np.ndarray, np.ndarray]:
    if seed not in _REF_STATS:
        model = train_classifier(seed)
        with torch.no_grad():
            _REF_STATS[seed] = _stats(model.features(_split(seed)["x_train"]))
    return _REF_STATS[seed]


def evaluate_samples(samples: torch.Tensor, *, seed: int = 0) -> dict[str, Any]:
    """Quality figures for ``samples`` ``[n, 1, 8, 8]`` in ``[-1, 1]`` (clamped first).

    Returns ``{"n", "mean_max_prob", "class_hist" (10 ints), "n_distinct",
    "frechet"}``; ``frechet`` is against the classifier's training digits (see module
    docstring) and needs ``n >= 2``.
    """
    x = torch.as_tensor(samples).detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.shape[1:] != (1, 8, 8):
        raise ValueError(f"expected samples of shape [n, 1, 8, 8], got {tuple(x.shape)}")
    x = x.clamp(-1.0, 1.0)
    model = train_classifier(seed)
    with torch.no_grad():
        feats = model.features(x)
        probs = model.head(feats).softmax(-1)
    pred = probs.argmax(-1)
    hist = torch.bincount(pred, minlength=10)
    mu_r, sig_r = _reference_stats(seed)
    mu_s, sig_s = _stats(feats)
    return {
        "n": int(x.shape[0]),
        "mean_max_prob": float(probs.max(-1).values.mean()),
        "class_hist": [int(c) for c in hist],
        "n_distinct": int((hist > 0).sum()),
        "frechet": frechet_distance(mu_s, sig_s, mu_r, sig_r),
    }


def real_reference(seed: int = 0) -> dict[str, Any]:
    """:func:`evaluate_samples` on the 500 held-out real digits, plus the classifier's
    ``test_accuracy``: the real-vs-real baseline for sample figures."""
    out = evaluate_samples(_split(seed)["x_test"], seed=seed)
    out["test_accuracy"] = train_classifier(seed).test_accuracy
    return out


if __name__ == "__main__":  # pragma: no cover
    train_classifier(verbose=True)
    print(real_reference())
    noise = torch.rand(500, 1, 8, 8) * 2 - 1
    print("uniform noise:", evaluate_samples(noise))
