"""A learned Parareal correction: a cheap model of the coarse-fine discrepancy ``F(U) - G(U)``
fitted online from the fine solves Parareal already makes (GParareal, nnGParareal,
RandNet-Parareal; see ``docs/learned_correction.md``).

Every Parareal iteration ``k`` yields one pair per fine-solved block: the start state
``U^{k-1}_i`` and its discrepancy ``D^{k-1}_i = F(U^{k-1}_i) - G(U^{k-1}_i)``. A model ``M``
fitted on all pairs seen so far enters the sequential correction as

    U^k_{i+1} = G(U^k_i) + D^{k-1}_i + M(U^k_i) - M(U^{k-1}_i),

i.e. the classic correction plus the model's estimate of how the discrepancy changed
between the old and the new start state (a model that interpolates its data gives exactly
GParareal's ``G(U^k_i) + M(U^k_i)``; a constant model gives classic Parareal). Exactness is
untouched: block ``k``'s boundary is still the fine solve from an exact state.

The models (``LearnedCorrection.model``), each fitted in closed form on flattened states:

* ``"auto"`` (default): ``"hybrid"``, ``"nearest"`` and ``"gp"`` are all fitted, and each
  iteration uses the one whose predictions of the newest fine solves were best (if it
  passes the fallback's check; otherwise the classic update);
* ``"hybrid"``: per block, a linear model on that block's own past iterates (a
  multi-secant estimate of the Jacobian of ``F - G`` along the block's past updates), and
  for the directions outside their span one linear model on every pair;
* ``"secant"``: the per-block part alone;
* ``"linear"``: one linear model on every pair (exact once it has seen enough pairs of a
  linear autonomous system);
* ``"nearest"``: a linear model on the ``neighbours`` pairs nearest to the old state
  ``U^{k-1}_i`` (as nnGParareal's local GP, but linear);
* ``"random_features"``: ``tanh`` random features of a low-dimensional projection of the
  state plus that projection, output weights by ridge least squares (RandNet-Parareal);
* ``"gp"``: the posterior mean of a Gaussian process with a squared-exponential kernel per
  state component, length scales by maximum marginal likelihood (GParareal);
* ``"local"``: for states on a grid, a translation-invariant local Jacobian on a stencil
  (per-component features, as RandNet-Parareal uses for large meshes).

Whether an iteration uses the model is decided by an out-of-sample check (see
:class:`LearnedCorrection` ``fallback``); the default was chosen by measurement
(``benchmarks/bench_learned_correction.py``, ``docs/learned_correction.md``).

Memory stays bounded for large states: at most ``max_pairs`` pairs are kept (the newest),
inputs of the nonlinear models are projected onto at most ``rank`` principal directions of
the data, and a fitted model holds ``O((max_pairs + rank) * state size)`` numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as Fn
from torch import Tensor

from ._checks import check_bool, check_int, check_number
from .result import Stats

__all__ = ["LearnedCorrection", "Learner", "resolve_correction", "MODELS"]

#: the model kinds ``LearnedCorrection.model`` accepts
MODELS = ("auto", "nearest", "linear", "random_features", "gp", "secant", "hybrid", "local")

#: the candidates of ``model="auto"``
AUTO = ("hybrid", "nearest", "gp")


@dataclass(frozen=True)
class LearnedCorrection:
    """Options of ``pint.parareal(..., correction=LearnedCorrection(...))``;
    ``correction="learned"`` means ``LearnedCorrection()``.

    Attributes:
        model: one of :data:`MODELS`: ``"auto"`` (the best checked of ``"hybrid"``,
            ``"nearest"`` and ``"gp"``, each iteration), ``"hybrid"``, ``"secant"``,
            ``"linear"``, ``"nearest"``, ``"random_features"``, ``"gp"`` or ``"local"``
            (see :mod:`pint.learned`).
        neighbours: pairs in the local model of ``"nearest"`` (>= 2).
        features: random features of ``"random_features"`` (>= 1).
        rank: at most this many principal directions of the data are the inputs of the
            nonlinear models (``"random_features"``, ``"gp"``) (>= 1).
        max_pairs: at most this many (state, discrepancy) pairs are kept, the newest
            (>= 2); ``None``: ``4 * num_blocks``.
        ridge: Tikhonov regularisation relative to the largest squared singular value (or
            kernel eigenvalue) of the data (>= 0).
        warmup: classic iterations before the learned update may be used (>= 0).
        fallback: use the model in an iteration only when it predicted the change of the
            discrepancy with at most ``accept`` times the error of the classic update
            (which predicts no change): judged on the newest fine solves against the
            model's prediction from the iteration before (which had not seen them), or, in
            the first iteration, leaving each pair out of the fit in turn. ``False`` always
            uses the model after ``warmup`` (with ``"auto"``, the best checked).
        accept: the error ratio the check against a model's past predictions must beat
            (> 0).
        accept_first: the same for the first iteration's leave-one-out check (> 0),
            stricter: it predicts other pairs, not the next iterates (at 0.9 a model that
            passed it only narrowly cost an iteration on the catalog's Brusselator, Lorenz
            and Allen-Cahn).
        seed: seed of the random features (a private generator; the global RNG is untouched).
        stencil: radius of the ``"local"`` model's stencil in grid points (>= 1).
        grid_dims: how many trailing state dimensions are the grid for ``"local"`` (1-3);
            the leading ones are channels (``[2, n, n]`` with ``grid_dims=2``: two species
            on an ``n x n`` grid).
        boundary: ``"periodic"`` or ``"zeros"`` (Dirichlet): how ``"local"`` pads the grid.
    """

    model: str = "auto"
    neighbours: int = 6
    features: int = 64
    rank: int = 16
    max_pairs: int | None = None
    ridge: float = 1e-12
    warmup: int = 0
    accept: float = 0.8
    accept_first: float = 0.7
    fallback: bool = True
    seed: int = 0
    stencil: int = 2
    grid_dims: int = 1
    boundary: str = "periodic"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise TypeError(f"LearnedCorrection.model must be a str, one of {MODELS}; got "
                            f"{type(self.model).__name__}")
        if self.model not in MODELS:
            raise ValueError(f"LearnedCorrection.model must be one of {MODELS}, got {self.model!r}")
        check_int("LearnedCorrection.neighbours", self.neighbours, 2)
        check_int("LearnedCorrection.features", self.features, 1)
        check_int("LearnedCorrection.rank", self.rank, 1)
        if self.max_pairs is not None:
            check_int("LearnedCorrection.max_pairs", self.max_pairs, 2)
        check_number("LearnedCorrection.ridge", self.ridge, positive=False)
        check_int("LearnedCorrection.warmup", self.warmup, 0)
        check_bool("LearnedCorrection.fallback", self.fallback)
        check_number("LearnedCorrection.accept", self.accept, positive=True)
        check_number("LearnedCorrection.accept_first", self.accept_first, positive=True)
        check_int("LearnedCorrection.seed", self.seed, 0)
        check_int("LearnedCorrection.stencil", self.stencil, 1)
        check_int("LearnedCorrection.grid_dims", self.grid_dims, 1)
        if self.grid_dims > 3:
            raise ValueError(f"LearnedCorrection.grid_dims must be 1, 2 or 3, got {self.grid_dims}")
        if self.boundary not in ("periodic", "zeros"):
            raise ValueError(f"LearnedCorrection.boundary must be 'periodic' or 'zeros', got "
                             f"{self.boundary!r}")


def resolve_correction(correction: object) -> LearnedCorrection | None:
    """``None`` for the classic update, the options for a learned one.

    Raises:
        ValueError: an unknown string.
        TypeError: neither a string nor a :class:`LearnedCorrection`.
    """
    if isinstance(correction, LearnedCorrection):
        return correction
    if isinstance(correction, str):
        if correction == "classic":
            return None
        if correction == "learned":
            return LearnedCorrection()
        raise ValueError(f"correction must be 'classic', 'learned' or a "
                         f"pint.LearnedCorrection, got {correction!r}")
    raise TypeError(f"correction must be 'classic', 'learned' or a pint.LearnedCorrection, "
                    f"got {type(correction).__name__}")


# --------------------------------------------------------------------------- models


def _ridge_pinv(A: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``A [n, m]`` with filtered inverse singular values: ``(U [n, r], w [r],
    Vh [r, m])`` so that ``Vh.T diag(w) U.T`` is the ridge pseudo-inverse of ``A``."""
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return U[:, :0], s[:0], Vh[:0]
    eps = torch.finfo(A.dtype).eps * max(A.shape)
    keep = s > eps * s[0]
    U, s, Vh = U[:, keep], s[keep], Vh[keep]
    return U, s / (s * s + ridge * s[0] * s[0]), Vh


class _Linear:
    """``M(x) = ybar + (x - xbar) A`` with ``A`` the min-norm ridge solution on every pair;
    stored as ``A = Vh.T C`` (``Vh [r, d]``, ``C [r, d]``, ``r <= pairs``)."""

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection) -> None:
        self.xbar = X.mean(0)
        U, w, self.Vh = _ridge_pinv(X - self.xbar, opts.ridge)
        self.C = (w[:, None] * U.T) @ (Y - Y.mean(0))

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        """``M(new) - M(old)`` for rows ``[n, d]``."""
        return ((new - old) @ self.Vh.T) @ self.C


class _Nearest:
    """Per query row: a linear model on the ``neighbours`` pairs nearest to ``old`` (its
    secant Jacobian of the discrepancy), applied to ``new - old``."""

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection) -> None:
        self.X, self.Y, self.opts = X, Y, opts

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        m = min(self.opts.neighbours, self.X.shape[0])
        idx = torch.cdist(old, self.X).topk(m, largest=False).indices  # [n, m]
        out = []
        for j in range(old.shape[0]):  # one small least-squares fit per block
            Xn, Yn = self.X[idx[j]], self.Y[idx[j]]
            local = _Linear.__new__(_Linear)
            local.xbar = Xn.mean(0)
            U, w, local.Vh = _ridge_pinv(Xn - local.xbar, self.opts.ridge)
            local.C = (w[:, None] * U.T) @ (Yn - Yn.mean(0))
            out.append(local.delta(new[j : j + 1], old[j : j + 1], ids))
        return torch.cat(out)


class _Projected:
    """Inputs projected onto at most ``rank`` principal directions of the data, scaled to
    unit spread: ``z(x) = (x - xbar) P [r]``."""

    def _project(self, X: Tensor, opts: LearnedCorrection) -> Tensor:
        self.xbar = X.mean(0)
        _, s, Vh = torch.linalg.svd(X - self.xbar, full_matrices=False)
        r = min(opts.rank, int((s > torch.finfo(X.dtype).eps * max(X.shape) * s[0]).sum()) or 1)
        scale = (s[:r].square().sum() / X.shape[0]).sqrt().clamp_min(torch.finfo(X.dtype).tiny)
        self.P = Vh[:r].T / scale  # [d, r]
        return self.z(X)

    def z(self, x: Tensor) -> Tensor:
        return (x - self.xbar) @ self.P


class _RandomFeatures(_Projected):
    """``M(x) = [tanh(z W + b), z, 1] beta`` (RandNet-Parareal's random network with a
    linear skip), ``beta`` by ridge least squares."""

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection) -> None:
        Z = self._project(X, opts)
        g = torch.Generator(device="cpu").manual_seed(opts.seed)
        r = Z.shape[1]
        self.W = torch.randn(r, opts.features, generator=g, dtype=torch.float64).to(Z) / math.sqrt(r)
        self.b = (torch.rand(opts.features, generator=g, dtype=torch.float64).to(Z) - 0.5) * 2
        U, w, Vh = _ridge_pinv(self.phi(Z), opts.ridge)
        self.beta = Vh.T @ ((w[:, None] * U.T) @ Y)  # [features + r + 1, d]

    def phi(self, Z: Tensor) -> Tensor:
        return torch.cat([torch.tanh(Z @ self.W + self.b), Z, torch.ones_like(Z[:, :1])], 1)

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        return (self.phi(self.z(new)) - self.phi(self.z(old))) @ self.beta


class _GP(_Projected):
    """GParareal's model: per output component, the posterior mean ``ybar + k(z, Z) alpha``
    of a GP with kernel ``s^2 exp(-|z - z'|^2 / (2 l^2))``, the length scale ``l`` of each
    component chosen by maximum marginal likelihood (type-II ML, the signal variance ``s^2``
    profiled out) over a log grid; one Cholesky factorisation per grid point serves every
    component. Jitter ``ridge`` (at least 1e-10) relative to the kernel's diagonal, raised
    tenfold where the factorisation fails."""

    #: the length scales tried, in units of the projected data's spread
    SCALES = torch.logspace(-2, 1.5, 22, dtype=torch.float64)

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection) -> None:
        self.Z = self._project(X, opts)
        n = self.Z.shape[0]
        self.ybar = Y.mean(0)
        Yc = Y - self.ybar
        d2 = torch.cdist(self.Z, self.Z).square()
        eye = torch.eye(n, dtype=X.dtype, device=X.device)
        best = torch.full((Y.shape[1],), math.inf, dtype=X.dtype, device=X.device)
        self.ell = torch.ones(Y.shape[1], dtype=X.dtype, device=X.device)
        self.alpha = torch.zeros_like(Yc)
        for ell in self.SCALES.tolist():
            K = torch.exp(-d2 / (2 * ell * ell))
            jitter = max(opts.ridge, 1e-10)
            L, info = torch.linalg.cholesky_ex(K + jitter * eye)
            while int(info) and jitter < 1e-2:
                jitter *= 10
                L, info = torch.linalg.cholesky_ex(K + jitter * eye)
            if int(info):
                continue
            alpha = torch.cholesky_solve(Yc, L)  # [n, d]
            quad = (Yc * alpha).sum(0).clamp_min(torch.finfo(X.dtype).tiny)
            nll = 0.5 * n * torch.log(quad / n) + torch.log(torch.diagonal(L)).sum()
            better = nll < best
            best = torch.where(better, nll, best)
            self.ell = torch.where(better, torch.full_like(self.ell, ell), self.ell)
            self.alpha = torch.where(better[None], alpha, self.alpha)

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        zn, zo = self.z(new), self.z(old)
        dn, do = torch.cdist(zn, self.Z).square(), torch.cdist(zo, self.Z).square()
        out = torch.zeros(new.shape[0], self.alpha.shape[1], dtype=new.dtype, device=new.device)
        for ell in torch.unique(self.ell).tolist():  # components sharing a length scale
            cols = self.ell == ell
            k = torch.exp(-dn / (2 * ell * ell)) - torch.exp(-do / (2 * ell * ell))
            out[:, cols] = k @ self.alpha[:, cols]
        return out


class _Secant:
    """Per block: the min-norm linear model of that block's own pairs (a multi-secant
    estimate of the Jacobian of ``F - G`` along the block's past updates); ``"hybrid"``
    adds the every-pair linear model for the directions outside that span."""

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection,
                 hybrid: bool = False) -> None:
        self.X, self.Y, self.ids, self.opts = X, Y, ids, opts
        self.glob = _Linear(X, Y, ids, opts) if hybrid else None

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        out = []
        for j in range(new.shape[0]):
            step = new[j : j + 1] - old[j : j + 1]
            mine = self.ids == ids[j]
            res = torch.zeros_like(step)
            if int(mine.sum()) >= 2:
                Xn, Yn = self.X[mine], self.Y[mine]
                xbar = Xn.mean(0)
                U, w, Vh = _ridge_pinv(Xn - xbar, self.opts.ridge)
                coef = step @ Vh.T
                res = (coef * w) @ (U.T @ (Yn - Yn.mean(0)))
                step = step - coef @ Vh
            if self.glob is not None:
                res = res + self.glob.delta(step, torch.zeros_like(step), ids)
            out.append(res)
        return torch.cat(out)


def _hybrid(X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection) -> _Secant:
    return _Secant(X, Y, ids, opts, hybrid=True)


class _Local:
    """A local, translation-invariant Jacobian of the discrepancy on a grid (states
    ``[*channels, *grid]``, the last ``grid_dims`` dimensions the grid), learned from
    secants: the change of the discrepancy at grid point ``j`` between two iterates of one
    block is ``sum_s K_s(u_j) du_{j+s}`` over the ``(2 stencil + 1)^grid_dims`` neighbours,
    with coefficients ``K_s`` quadratic in the channels at ``j`` (per-component features:
    the model has ``O(channels^3 (2 stencil + 1)^grid_dims)`` numbers whatever the grid size),
    fitted by least squares on every (secant, grid point) sample."""

    def __init__(self, X: Tensor, Y: Tensor, ids: Tensor, opts: LearnedCorrection,
                 shape: tuple[int, ...] = ()) -> None:
        g = opts.grid_dims
        if len(shape) < g:
            raise ValueError(f"LearnedCorrection.grid_dims={g} needs states of at least {g} "
                             f"dimensions, got shape {shape}")
        self.opts, self.grid = opts, shape[-g:]
        self.C = math.prod(shape[:-g])
        base, dX, dY = [], [], []
        for block in torch.unique(ids).tolist():  # consecutive iterates of each block
            rows = (ids == block).nonzero().flatten()
            base.append(X[rows[:-1]])
            dX.append(X[rows[1:]] - X[rows[:-1]])
            dY.append(Y[rows[1:]] - Y[rows[:-1]])
        self.beta: Tensor | None = None
        if sum(len(b) for b in base) == 0:
            return  # no secant yet: no change predicted (the classic update)
        Phi = self.features(torch.cat(dX), torch.cat(base))
        U, w, Vh = _ridge_pinv(Phi, opts.ridge)
        self.beta = Vh.T @ ((w[:, None] * U.T) @ self.per_point(torch.cat(dY)))  # [q, C]

    def per_point(self, X: Tensor) -> Tensor:
        """``[n, d]`` -> ``[n * points, C]``."""
        return X.reshape(X.shape[0], self.C, -1).transpose(1, 2).reshape(-1, self.C)

    def stencils(self, X: Tensor) -> Tensor:
        """``[n, d]`` -> ``[n * points, C * (2 r + 1)^g]``: each grid point's neighbourhood."""
        r, g, n = self.opts.stencil, self.opts.grid_dims, X.shape[0]
        u = X.reshape(n, self.C, *self.grid)
        periodic = self.opts.boundary == "periodic" and all(r <= m for m in self.grid)
        up = Fn.pad(u, [r] * (2 * g), mode="circular" if periodic else "constant")
        cols = [up[(..., *(slice(r + o, r + o + m) for o, m in zip(off, self.grid, strict=True)))]
                for off in itertools.product(range(-r, r + 1), repeat=g)]
        S = torch.stack(cols, 2).reshape(n, -1, math.prod(self.grid))  # [n, C * K, points]
        return S.transpose(1, 2).reshape(-1, S.shape[1])

    def features(self, step: Tensor, base: Tensor) -> Tensor:
        """``stencil(step) x [1, base_j, base_j^2]`` per grid point: ``[n * points, q]``."""
        u = self.per_point(base)
        poly = torch.cat([torch.ones_like(u[:, :1]), u, (u[:, :, None] * u[:, None, :]).flatten(1)], 1)
        return (self.stencils(step)[:, :, None] * poly[:, None, :]).flatten(1)

    def delta(self, new: Tensor, old: Tensor, ids: Tensor) -> Tensor:
        if self.beta is None:
            return torch.zeros_like(new)
        out = self.features(new - old, old) @ self.beta
        return out.reshape(new.shape[0], -1, self.C).transpose(1, 2).reshape(new.shape[0], -1)


#: pairs left out in turn by the check without a past prediction (one refit each)
_CHECKED = 6

_BUILD = {"local": _Local, "secant": _Secant, "hybrid": _hybrid, "nearest": _Nearest,
          "linear": _Linear, "random_features": _RandomFeatures, "gp": _GP}


# --------------------------------------------------------------------------- the learner


class Learner:
    """The online model of ``F - G`` that :func:`pint.parareal` drives, one call per
    iteration stage (states ``[n, *state]`` in the caller's dtype and device; the fit runs
    in float64 for float64 states, float32 otherwise).

    * :meth:`observe` (iteration ``k``, after the fine solves): take the new pairs, check
      the model's last predictions against them (fallback), refit; counts one fit in
      ``stats`` (``fits``, ``depth`` +1).
    * :meth:`delta` (in the sequential correction): ``M(new) - M(old)`` for one block, or
      ``None`` while the classic update is in use; counts a model evaluation (``depth`` +1).
      A trust region scales it down to at most the norm of the block's last discrepancy
      ``D^{k-1}_i`` (a wild extrapolation cannot throw the state far off).
    * :meth:`record` (after the correction): the model's batched prediction of the change
      from ``U^{k-1}`` to ``U^k``, kept for the next :meth:`observe`'s check.
    """

    def __init__(self, opts: LearnedCorrection, num_blocks: int, like: Tensor, stats: Stats) -> None:
        self.opts, self.stats = opts, stats
        real = like.real.dtype if like.is_complex() else like.dtype  # complex: (re, im) pairs
        self.dtype = torch.float64 if real == torch.float64 else torch.float32
        self.out_dtype, self.device = like.dtype, like.device
        self.max_pairs = opts.max_pairs if opts.max_pairs is not None else max(4 * num_blocks, 8)
        self.X: Tensor | None = None  # [pairs, d] kept states (oldest first)
        self.Y: Tensor | None = None  # [pairs, d] their discrepancies
        self.ids: Tensor | None = None  # [pairs] their blocks
        self.D_prev: dict[int, Tensor] = {}  # block -> last discrepancy seen
        self.iteration = 0
        self.log: list[dict[str, object]] = []
        shape = ((2,) if like.is_complex() else ()) + tuple(like.shape)  # (re, im) channels
        if opts.model == "local" and len(shape) < opts.grid_dims:
            raise ValueError(f"LearnedCorrection.grid_dims={opts.grid_dims} needs states of at "
                             f"least {opts.grid_dims} dimensions, got y0 of shape {tuple(like.shape)}")
        names = AUTO if opts.model == "auto" else (opts.model,)
        #: the candidate models: name -> builder; every one is fitted, the best checked is used
        self.builds = {n: partial(_Local, shape=shape) if n == "local" else _BUILD[n]
                       for n in names}
        self.models: dict[str, object] = {}
        #: name -> block -> its predicted change of the block's discrepancy
        self.predicted: dict[str, dict[int, Tensor]] = {n: {} for n in names}
        self.active: str | None = None  # the model this iteration's correction uses

    @property
    def use_model(self) -> bool:
        """Whether this iteration's correction uses a model (else the classic update)."""
        return self.active is not None

    def _flat(self, x: Tensor) -> Tensor:
        """``[n, *state]`` as ``[n, d]`` rows in the fit's dtype."""
        x = x.detach()
        if x.is_complex():  # [n, 2, *state]: real and imaginary parts as channels
            x = torch.view_as_real(x.contiguous()).movedim(-1, 1)
        return x.reshape(x.shape[0], -1).to(self.dtype)

    def _unflat(self, row: Tensor, like: Tensor) -> Tensor:
        """One flat row back to ``like``'s shape and dtype."""
        if like.is_complex():
            parts = row.reshape(2, *like.shape).movedim(0, -1).contiguous()
            return torch.view_as_complex(parts).to(like.dtype)
        return row.reshape(like.shape).to(like.dtype)

    def observe(self, k: int, first_block: int, states: Tensor, discrepancy: Tensor) -> None:
        """Pairs of iteration ``k``: ``states[j] = U^{k-1}_{first_block + j}`` and
        ``discrepancy[j] = F - G`` there. Decides whether iteration ``k``'s correction uses
        a model, and which (the candidate whose last predictions of the new discrepancies
        were best, if at most ``accept`` times the classic update's error), then refits
        every candidate on every pair kept (in parallel: one step of depth)."""
        X, D = self._flat(states), self._flat(discrepancy)
        err = dict.fromkeys(self.builds, 0.0)
        err_classic, compared = 0.0, 0
        for j in range(X.shape[0]):  # the out-of-sample check of the last predictions
            i = first_block + j
            if i in self.D_prev and any(i in p for p in self.predicted.values()):
                change = D[j] - self.D_prev[i]
                err_classic += float(change.norm())
                for name, p in self.predicted.items():  # no prediction: no change predicted
                    err[name] += float((change - p[i]).norm() if i in p else change.norm())
                compared += 1
        for j in range(X.shape[0]):
            self.D_prev[first_block + j] = D[j]
        self.X = X if self.X is None else torch.cat([self.X, X])[-self.max_pairs :]
        self.Y = D if self.Y is None else torch.cat([self.Y, D])[-self.max_pairs :]
        ids = torch.arange(first_block, first_block + X.shape[0], device=X.device)
        self.ids = ids if self.ids is None else torch.cat([self.ids, ids])[-self.max_pairs :]
        if compared == 0 and self.opts.fallback and k > self.opts.warmup:
            for name, build in self.builds.items():
                err[name], err_classic = self._leave_one_out(X.shape[0], build)
        best = min(err, key=err.__getitem__)
        if k <= self.opts.warmup:
            self.active = None
        elif not self.opts.fallback:
            self.active = best
        else:
            accept = self.opts.accept if compared else self.opts.accept_first
            self.active = best if err[best] < accept * err_classic else None
        self.log.append({"iteration": k, "model_error": err[best], "classic_error": err_classic,
                         "errors": err, "used_model": self.use_model, "model": self.active})
        self.models = {n: build(self.X, self.Y, self.ids, self.opts)
                       for n, build in self.builds.items()}
        self.iteration = k
        self.stats.fits += len(self.builds)
        self.stats.depth += 1
        self.stats.fit_depth += 1

    def _leave_one_out(self, new: int, build) -> tuple[float, float]:
        """The check without a past prediction (the model had nothing to predict with in
        the iteration before): each of the ``new`` newest pairs ``j`` is left out in turn,
        and the model ``build`` fits without it predicts ``D_j`` from ``D_l`` (``D_l +
        M(X_j) - M(X_l)``), ``l`` the same block's previous pair (a secant, as in the
        correction) or, for a block's first pair, the nearest other pair; the classic
        update predicts ``D_l``. At most ``_CHECKED`` pairs, evenly spread over the blocks,
        are left out (one refit each). Summed errors ``(model, classic)``."""
        X, Y, ids = self.X, self.Y, self.ids
        assert X is not None and Y is not None and ids is not None
        n = X.shape[0]
        if n < 3:
            return math.inf, 0.0
        dist = torch.cdist(X, X) + torch.diag(torch.full((n,), math.inf, dtype=X.dtype, device=X.device))
        err_model = err_classic = 0.0
        first = n - min(new, n)
        picks = torch.linspace(first, n - 1, min(n - first, _CHECKED)).round().long().unique()
        for j in picks.tolist():
            keep = torch.arange(n, device=X.device) != j
            same = (ids[:j] == ids[j]).nonzero().flatten()
            l = int(same[-1]) if same.numel() else int(dist[j].argmin())
            change = Y[j] - Y[l]
            model = build(X[keep], Y[keep], ids[keep], self.opts)
            pred = model.delta(X[j : j + 1], X[l : l + 1], ids[l : l + 1])[0]
            err_classic += float(change.norm())
            err_model += float((change - pred).norm())
        return err_model, err_classic

    def delta(self, block: int, new: Tensor, old: Tensor) -> Tensor | None:
        """``M(new) - M(old)`` for one block's start states (``[*state]`` each), or
        ``None`` when this iteration uses the classic update."""
        if self.active is None:
            return None
        self.stats.model_evals += 1
        self.stats.depth += 1
        self.stats.fit_depth += 1
        ids = torch.tensor([block], device=self.device)
        model = self.models[self.active]
        out = model.delta(self._flat(new[None]), self._flat(old[None]), ids)  # type: ignore[attr-defined]
        bound = self.D_prev[block].norm() if block in self.D_prev else out.new_zeros(())
        size = out.norm()
        if size > bound:  # trust region: the change is never larger than the discrepancy
            out = out * (bound / size)
        return self._unflat(out, new)

    def record(self, first_block: int, new: Tensor, old: Tensor) -> None:
        """Each candidate's predicted discrepancy changes of blocks ``first_block..`` from
        ``old`` to ``new`` start states (``[n, *state]``), one batched call per model off
        the critical path, kept for the next :meth:`observe`'s check."""
        self.predicted = {n: {} for n in self.builds}
        if not self.models or new.shape[0] == 0:
            return
        ids = torch.arange(first_block, first_block + new.shape[0], device=self.device)
        for name, model in self.models.items():
            self.stats.model_evals += new.shape[0]
            P = model.delta(self._flat(new), self._flat(old), ids)  # type: ignore[attr-defined]
            for j in range(P.shape[0]):
                if bool(P[j].any()):  # a model with nothing to go on predicts no change
                    self.predicted[name][first_block + j] = P[j]
