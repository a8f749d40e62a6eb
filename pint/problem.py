"""The initial value problem ``y' = f(t, y), y(t0) = y0`` and its validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._checks import check_bool, check_holds_data

RHS = Callable[[Tensor, Tensor], Tensor]


class ODEProblem:
    """An initial value problem ``dy/dt = f(t, y)``, ``y(t_span[0]) = y0``.

    Args:
        f: the right-hand side. By default it is written for **one** state: it receives
            a 0-dim time tensor ``t`` and ``y`` of the shape of ``y0`` and returns
            ``dy/dt`` of the same shape and dtype; pint vectorises it over blocks with
            :func:`torch.func.vmap`. With ``batched=True`` it already accepts a leading
            block dimension: ``t`` of shape ``[n]`` and ``y`` of shape ``[n, *y0.shape]``.
            ``None`` is allowed for discrete-time problems whose propagators carry their
            own dynamics (the diffusion samplers of :mod:`adapters.diffusion`).
        y0: the initial state, a floating-point or complex tensor of any shape (a batch of
            states is one state), dense and holding data (not on the meta device). Its
            device and dtype are kept throughout.
        t_span: ``(t_start, t_end)``, two distinct finite numbers; ``t_end < t_start``
            integrates backwards in time.
        batched: whether ``f`` handles the leading block dimension itself (``True`` or
            ``False``).

    Raises:
        TypeError: ``f`` not callable, ``y0`` not a floating-point or complex tensor,
            ``batched`` not a bool.
        ValueError: ``y0`` not finite, sparse or without data (meta device), ``t_span``
            not two distinct finite numbers.
    """

    def __init__(
        self,
        f: RHS | None,
        y0: Tensor,
        t_span: tuple[float, float],
        *,
        batched: bool = False,
    ) -> None:
        if f is not None and not callable(f):
            raise TypeError(f"f must be callable f(t, y) -> dy/dt, got {type(f).__name__}")
        if not isinstance(y0, Tensor):
            raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
        if not (y0.is_floating_point() or y0.is_complex()):
            raise TypeError(f"y0 must have a floating-point or complex dtype, got {y0.dtype}")
        check_holds_data("y0", y0, "Create it on 'cpu' or 'cuda'")
        if y0.layout != torch.strided:
            raise ValueError(f"y0 must be a dense tensor, got layout {y0.layout}; use "
                             "y0.to_dense()")
        if y0.numel() == 0:
            raise ValueError("y0 must have at least one element")
        if not bool(torch.isfinite(y0).all()):
            raise ValueError("y0 must be finite (it contains NaN or Inf)")
        self.t_start, self.t_end = _check_span(t_span)
        self.f = f
        self.y0 = y0
        self.batched = check_bool("batched", batched)

    @property
    def t_span(self) -> tuple[float, float]:
        """``(t_start, t_end)`` as Python floats, in the time unit of ``f``."""
        return (self.t_start, self.t_end)

    @property
    def time_dtype(self) -> torch.dtype:
        """The dtype of time tensors handed to ``f``: float64 for float64 (and complex128)
        states, else float32 (half-precision times would round grid points). The engine
        keeps block and step times in float64 and rounds them to this dtype only for ``f``."""
        real = self.y0.real.dtype if self.y0.is_complex() else self.y0.dtype
        return torch.float64 if real == torch.float64 else torch.float32

    def batched_rhs(self) -> RHS:
        """``f`` as a function of ``t [n]`` and ``y [n, *y0.shape]``; checks every output.

        ``t`` may come in any real dtype (the engine's step times are float64); ``f``
        receives it in :attr:`time_dtype`."""
        if self.f is None:
            raise TypeError(
                "this ODEProblem has f=None; its propagators must carry their own dynamics"
            )
        user_f = self.f
        shape, dtype, batched = tuple(self.y0.shape), self.y0.dtype, self.batched
        time_dtype = self.time_dtype

        def one(t: Tensor, y: Tensor) -> Tensor:
            dy = user_f(t, y)
            if not isinstance(dy, Tensor):  # checked here: vmap's own message is obscure
                raise TypeError(_not_a_tensor(dy))
            return dy

        f = user_f if batched else torch.func.vmap(one, in_dims=(0, 0))

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            try:
                dy = f(t.to(time_dtype), y)
            except (RuntimeError, TypeError, ValueError) as err:
                hint = _vectorise_hint(err, batched)
                if hint is None:
                    raise
                raise TypeError(hint) from err
            if not isinstance(dy, Tensor):
                raise TypeError(_not_a_tensor(dy))
            if dy.device != y.device:
                check_holds_data("f's output", dy, "Compute dy/dt from y with torch operations")
                raise ValueError(f"f returned a tensor on {dy.device}, expected the device of "
                                 f"y0 ({y.device})")
            if tuple(dy.shape) != tuple(y.shape):
                if batched:
                    raise ValueError(
                        f"f (batched=True) returned shape {tuple(dy.shape)} for y of shape "
                        f"{tuple(y.shape)}; expected [n, *y0.shape] = {tuple(y.shape)}, one "
                        f"row of the shape of y0 {shape} per block (n = {y.shape[0]})")
                raise ValueError(f"f returned shape {tuple(dy.shape[1:])}, expected the shape "
                                 f"of y0 {shape}")
            if dy.dtype != dtype:
                raise TypeError(f"f returned dtype {dy.dtype}, expected the dtype of y0 {dtype}")
            return dy

        return rhs

    def __repr__(self) -> str:
        return (
            f"ODEProblem(y0 shape={tuple(self.y0.shape)}, dtype={self.y0.dtype}, "
            f"t_span={self.t_span})"
        )


def _check_span(t_span: Any) -> tuple[float, float]:
    try:
        a, b = t_span
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        raise ValueError(f"t_span must be two numbers (t_start, t_end), got {t_span!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"t_span must be finite, got {t_span!r}")
    if a == b:
        raise ValueError(f"t_span must be two distinct numbers, got {t_span!r}")
    return a, b


def _not_a_tensor(dy: object) -> str:
    return (f"f must return a torch.Tensor of the shape and dtype of y0, got "
            f"{type(dy).__name__}; build dy/dt with torch operations on y (for a constant, "
            "e.g. torch.full_like(y, c))")


_TO_NUMBER = ("calling .item()", "doesn't have storage", "cannot be converted to Scalar",
              "only one element tensors", "can't convert", "to numpy")


def _vectorise_hint(err: Exception, batched: bool) -> str | None:
    """A message saying what to do when ``f`` failed for a known vectorisation reason,
    else ``None`` (the error is ``f``'s own and passes through)."""
    msg = str(err)
    if any(s in msg for s in _TO_NUMBER):
        how = ("it receives t of shape [n] and y of shape [n, *y0.shape]" if batched else
               "pint evaluates it for all blocks at once with torch.func.vmap")
        return (f"f must compute with torch operations on t and y: it turned a tensor into a "
                f"Python number or numpy array (math.cos(t), float(t), t.item(), np.exp(y), "
                f"...), which fails because {how}. Use torch functions (torch.cos(t)), or "
                f"write f for a leading block dimension and pass batched=True ({err})")
    if not batched and isinstance(err, RuntimeError) and "vmap" in msg:
        return (f"f could not be vectorised over blocks with torch.func.vmap ({err}); use "
                "torch operations without data-dependent Python control flow (torch.where "
                "instead of if), or write f for a leading block dimension and pass "
                "batched=True")
    return None
