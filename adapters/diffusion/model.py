"""Denoiser wrappers: a network's output turned into ``(x0, eps)`` predictions for a batch
of blocks, with conditioning, classifier-free guidance and cost counting."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .schedule import PREDICTION_TYPES

Model = Callable[..., Any]


class ModelOutputError(FloatingPointError):
    """The model returned NaN/Inf; the message names the timestep."""


class Denoiser:
    """Evaluates ``model(x, t, **model_kwargs)`` for many blocks in **one** call.

    Args:
        model: ``model(x [R, *sample], t [R], **kwargs) -> [R, *sample]`` (a tensor or an
            object with a ``.sample`` tensor, as diffusers' UNets return); ``t`` holds the
            scheduler's timestep values (int64 for DDIM/DDPM grids, floats for flow
            matching and Karras grids).
        prediction_type: ``"epsilon"``, ``"sample"``, ``"v_prediction"`` or
            ``"flow_prediction"`` (velocity ``eps - x0``); ``None``: the schedule's (a
            sampler binds it, see :meth:`bind`; used alone it means ``"epsilon"``).
        clip_sample: clamp x0 to ``[-clip_range, clip_range]`` (eps is left as predicted,
            as diffusers does).
        model_kwargs: conditioning for the samples of one state (``encoder_hidden_states``,
            ``class_labels``, ...): a tensor with a leading dimension is per sample, with
            ``b`` rows (the number of samples) or one (broadcast to every sample, as
            diffusers pipelines repeat one prompt's embedding), and is repeated for every
            block; any other leading dimension is a ``ValueError``. Values shared by every
            sample pass through unchanged: Flux's position ids (``txt_ids``, ``img_ids``:
            :data:`SHARED_KWARGS`), 0-d tensors, non-tensors and, with guidance, a value
            that is the same in ``uncond_kwargs`` (other shared tensors: bind them to the
            model, e.g. ``functools.partial(net, mask=mask)``).
        guidance_scale: classifier-free guidance ``w``: the conditional and unconditional
            halves go into one model call and ``out = uncond + w (cond - uncond)``; a value
            without a sample dimension must then be the same in both.
        uncond_kwargs: the unconditional counterpart of ``model_kwargs`` (required with
            ``guidance_scale``), of the same form (one row, e.g. one empty-prompt embedding
            for the whole batch, is broadcast).
        check_finite: raise :class:`ModelOutputError` naming the timestep when the model
            returns NaN/Inf (costs one device synchronisation per call, unless deferred).
        defer_check: with ``check_finite``, keep each call's per-row finiteness on the
            device and raise at the next :meth:`check` instead (no synchronisation per
            call; the samplers check once per iteration or window call and at the end).
        input_dtype: the dtype the network is given its input in (``None``: the state's);
            the samplers set it to the network's dtype and keep their state in float32
            when that is a half precision dtype (:mod:`.precision`).

    Attributes:
        calls: model invocations so far. rows: samples evaluated so far (guidance counts 2).
    """

    def __init__(
        self,
        model: Model,
        prediction_type: str | None = None,
        clip_sample: bool = False,
        clip_range: float = 1.0,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        uncond_kwargs: Mapping[str, Any] | None = None,
        check_finite: bool = True,
        defer_check: bool = False,
        input_dtype: torch.dtype | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable model(x, t), got {type(model).__name__}")
        if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError("model_kwargs must be a mapping of keyword arguments")
        if uncond_kwargs is not None and not isinstance(uncond_kwargs, Mapping):
            raise TypeError("uncond_kwargs must be a mapping of keyword arguments")
        if guidance_scale is not None:
            if uncond_kwargs is None:
                raise ValueError("guidance_scale needs uncond_kwargs (the unconditional inputs)")
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                    or not math.isfinite(guidance_scale):
                raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
            cond, unc = set(model_kwargs or {}), set(uncond_kwargs)
            if cond != unc:
                missing, extra = sorted(cond - unc), sorted(unc - cond)
                raise ValueError(
                    "uncond_kwargs must give an unconditional value for every key of "
                    f"model_kwargs and no other: missing {missing}, unknown {extra} (with "
                    "guidance_scale, a missing key would silently reuse the conditional value)")
        elif uncond_kwargs is not None and uncond_kwargs:
            raise ValueError("uncond_kwargs is given without guidance_scale; pass "
                             "guidance_scale for classifier-free guidance")
        if clip_sample and not (isinstance(clip_range, (int, float)) and math.isfinite(clip_range)
                                and clip_range > 0):
            raise ValueError(f"clip_range must be a finite number > 0, got {clip_range!r}")
        self.model = model
        self.prediction_type = prediction_type
        self.clip_sample, self.clip_range = bool(clip_sample), float(clip_range)
        self.model_kwargs = dict(model_kwargs or {})
        self.guidance_scale = guidance_scale
        self.uncond_kwargs = dict(uncond_kwargs or {})
        self.check_finite = check_finite
        self.defer_check = defer_check
        self.input_dtype = input_dtype
        self._unchecked: list[tuple[Tensor, Tensor, int]] = []  # (row finite [R], t [n], b)
        # keys whose value is the same in both halves (may be shared by every sample)
        self._same = {k for k, v in self.model_kwargs.items()
                      if k in self.uncond_kwargs and _same(v, self.uncond_kwargs[k])}
        self.calls = 0
        self.rows = 0

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The wrapped model's ``sample_shape`` (``None`` where it fixes none)."""
        return getattr(self.model, "sample_shape", None)

    def bind(self, schedule: Any, input_dtype: torch.dtype | None = None) -> Denoiser:
        """A fresh copy for one sampling run on ``schedule``: its prediction type and
        clipping where this denoiser leaves them open, counters at zero, the NaN/Inf
        check deferred to the sampler's check points, and the network's ``input_dtype``
        (where this denoiser leaves it open)."""
        clip = self.clip_sample or bool(getattr(schedule, "clip_sample", False))
        clip_range = self.clip_range if self.clip_sample else float(
            getattr(schedule, "clip_sample_range", 1.0))
        return Denoiser(self.model, self.prediction_type or schedule.prediction_type, clip,
                        clip_range, self.model_kwargs, self.guidance_scale,
                        self.uncond_kwargs if self.guidance_scale is not None else None,
                        self.check_finite, defer_check=True,
                        input_dtype=self.input_dtype or input_dtype)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The (guided) network output for ``x [n, b, *sample]`` at timesteps ``t [n]``."""
        n, b = x.shape[0], x.shape[1]
        xf = x.reshape(n * b, *x.shape[2:])
        if self.input_dtype is not None:
            xf = xf.to(self.input_dtype)
        tf = t.to(x.device).repeat_interleave(b)
        kwargs, tiled = _tile("model_kwargs", self.model_kwargs, n, b, self._same)
        if self.guidance_scale is not None:
            unc, unc_tiled = _tile("uncond_kwargs", self.uncond_kwargs, n, b, self._same)
            kwargs = {k: _cat(k, v, unc[k], (k in tiled) + (k in unc_tiled), k in self._same)
                      for k, v in kwargs.items()}
            xf, tf = torch.cat([xf, xf]), torch.cat([tf, tf])
        out = self.model(xf, tf, **kwargs)
        out = getattr(out, "sample", out)
        self.calls += 1
        self.rows += xf.shape[0]
        if not isinstance(out, Tensor) or out.shape != xf.shape:
            raise ValueError(
                f"model returned {getattr(out, 'shape', type(out).__name__)} at timestep "
                f"{float(t[0]):g}, expected the input's shape {tuple(xf.shape)}"
            )
        if self.check_finite:
            finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
            self._unchecked.append((finite, t, b))
            if not self.defer_check:
                self.check()
        out = out.to(x.dtype)  # the guidance combination in the state's precision
        if self.guidance_scale is not None:
            cond, unc = out.chunk(2)
            out = unc + self.guidance_scale * (cond - unc)
        return out.reshape(x.shape)

    def check(self) -> None:
        """Raise :class:`ModelOutputError` for the first model output since the last check
        that held NaN/Inf (one host read of all pending flags)."""
        if not self._unchecked:
            return
        pending, self._unchecked = self._unchecked, []
        if bool(torch.cat([f for f, _, _ in pending]).all()):
            return
        for finite, t, b in pending:
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0]) % (t.shape[0] * b)
                raise ModelOutputError(f"model returned NaN/Inf at timestep {float(t[row // b]):g} "
                                       f"(block row {row // b})")

    def predict(self, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor | None = None,
                c_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x0, eps)`` for ``x [n, b, *sample]`` at timesteps ``t [n]``: the one place
        where a network's output (epsilon, sample, v or flow velocity) becomes a
        prediction.

        ``x = alpha x0 + sigma eps`` with ``alpha [n]``, ``sigma [n]`` (float64); without
        ``sigma``, ``alpha`` is a variance-preserving ``alpha_bar`` (``sqrt`` of it and of
        ``1 - alpha_bar``). The network sees ``c_in * x`` (default 1: the scheduler's
        ``scale_model_input``)."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        a = alpha.to(device=x.device, dtype=torch.float64)
        if sigma is None:
            a, s = a.sqrt(), (1 - a).sqrt()
        else:
            s = sigma.to(device=x.device, dtype=torch.float64)
        if c_in is not None:
            c = c_in.to(device=x.device, dtype=torch.float64)
            a, s = a * c, s * c
            x = c.to(x.dtype).view(shape) * x
        out = self.raw(x, t)
        sa, ss = a.to(x.dtype).view(shape), s.to(x.dtype).view(shape)
        if self.prediction_type in ("epsilon", None):
            eps = out
            x0 = (x - ss * eps) / sa
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - sa * x0) / ss
        elif self.prediction_type == "v_prediction":  # v = alpha eps - sigma x0
            n = (1 / (a**2 + s**2)).to(x.dtype).view(shape)
            x0 = (sa * x - ss * out) * n
            eps = (ss * x + sa * out) * n
        else:  # flow_prediction: v = eps - x0
            n = (1 / (a + s)).to(x.dtype).view(shape)
            x0 = (x - ss * out) * n
            eps = (x + sa * out) * n
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps


#: keyword arguments shared by every sample rather than given per sample (Flux's position
#: ids ``[tokens, 3]``): passed to the model unchanged whatever their leading dimension
SHARED_KWARGS = frozenset({"txt_ids", "img_ids"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b or (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
                          and a.device == b.device and bool(torch.equal(a, b)))
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # e.g. mappings of tensors
        return False


def _tile(name: str, kwargs: Mapping[str, Any], n: int, b: int,
          same: set[str]) -> tuple[dict[str, Any], set[str]]:
    """``kwargs`` for ``n`` blocks of ``b`` samples, and the keys of its per-sample tensors
    (``b`` rows, or one broadcast to every sample), repeated to ``n b`` rows; shared values
    are unchanged."""
    out, tiled = {}, set()
    for k, v in kwargs.items():
        if not isinstance(v, Tensor) or v.dim() == 0 or k in SHARED_KWARGS:
            out[k] = v
        elif v.shape[0] in (1, b):
            out[k] = v.repeat(n * b // v.shape[0], *([1] * (v.dim() - 1)))
            tiled.add(k)
        elif k in same:  # the same in both halves of the guidance: shared by every sample
            out[k] = v
        else:
            raise ValueError(
                f"{name}[{k!r}] has no per-sample leading dimension: {v.shape[0]} rows (shape "
                f"{tuple(v.shape)}), expected the batch size {b} (one row per sample of x_T) or "
                "1 (one row for every sample). A tensor shared by every sample goes to the "
                "model itself (functools.partial) or, with guidance, the same in uncond_kwargs")
    return out, tiled


def _cat(key: str, a: Any, b: Any, tiled: int, same: bool) -> Any:
    """The conditional and unconditional values of ``key`` for one batched call: per-sample
    tensors (``tiled``: in how many halves) are concatenated; a value without a sample
    dimension (Flux's ``txt_ids``, a scalar) must be the same in both halves."""
    if tiled == 2:
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"model_kwargs[{key!r}] and uncond_kwargs[{key!r}] must have the same shape per "
                f"sample, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
        return torch.cat([a, b])
    if tiled or not same:
        raise ValueError(
            f"model_kwargs[{key!r}] has no per-sample leading dimension in both halves, so its "
            "conditional and unconditional values cannot share one batched call: give it per "
            "sample in both model_kwargs and uncond_kwargs, or the same value in both")
    return a
