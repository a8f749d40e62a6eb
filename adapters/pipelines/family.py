"""What a pipeline family is: the description a family module (or a user) registers, the
context of one call that its hooks read, and the registry.

A family says how a diffusers pipeline class encodes its inputs, draws its initial latents,
calls its network and decodes, as a few hooks over :class:`Call`; the shared core
(:mod:`adapters.pipelines.core`) does everything else: checking the arguments, building the
schedule (with an img2img ``strength``'s truncated grid), running any pint sampler and
decoding once. ``register_family("MyPipeline", PipelineFamily(...))`` makes
:func:`~adapters.pipelines.srds_pipeline` sample a class pint does not ship.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Conditioning:
    """What a family's ``encode`` hook returns.

    Attributes:
        cond: per-sample network inputs ``[n, ...]`` (or one row for all), e.g.
            ``encoder_hidden_states``; the samplers repeat them for every block.
        uncond: the unconditional counterparts for classifier-free guidance (same keys), or
            ``None`` without guidance.
        constants: inputs shared by every row (position ids, attention kwargs): bound to the
            network, never tiled.
    """

    cond: dict[str, Any]
    uncond: dict[str, Any] | None = None
    constants: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    """One :func:`~adapters.pipelines.srds_pipeline` call, as the family hooks see it.

    Attributes:
        pipe: the pipeline; name: its family's class name; family: the description.
        inputs: the ``pipe(...)`` arguments given (``prompt``, ``negative_prompt``,
            ``prompt_embeds``, ..., and the family's own, e.g. ``image``, ``strength``);
            read them with :meth:`get`.
        b, n_img, n: prompts, images per prompt, samples (``b * n_img``).
        height, width, channels, shape: the image size, the latent channels the pipeline's
            ``prepare_latents`` takes and the sampler's state shape ``[n, ...]``.
        cfg_scale: the classifier-free guidance scale (``None``: none); embedded: an
            embedded guidance value (Flux-type), or ``None``.
        device, generator, num_steps: as for ``pipe(...)``; begin: the first step of the
            scheduler's grid that runs (img2img: ``N - int(N * strength)``), steps: those
            that run (``N - begin``).
        timestep_kwargs: what the pipeline passes to ``scheduler.set_timesteps``.
        dtype: the conditioning's dtype (set after ``encode``).
        more: per-sample network inputs the ``latents`` hook adds to both guidance halves
            (inpainting's mask and masked-image latents, ControlNet's image).
        constants: inputs shared by every row that the ``latents`` hook adds (Flux's
            ``img_ids``).
        state: anything a family keeps between its hooks (preprocessed images, ...).
    """

    pipe: Any
    name: str
    family: PipelineFamily
    inputs: dict[str, Any]
    b: int = 1
    n_img: int = 1
    n: int = 1
    height: int = 0
    width: int = 0
    channels: int = 0
    shape: tuple[int, ...] = ()
    cfg_scale: float | None = None
    embedded: float | None = None
    device: Any = None
    generator: Any = None
    num_steps: int = 0
    begin: int = 0
    steps: int = 0
    timestep_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: Any = None
    more: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """``inputs[key]``, or ``default`` where it was not given (or is ``None``)."""
        v = self.inputs.get(key)
        return default if v is None else v

    @property
    def cfg(self) -> bool:
        """Whether classifier-free guidance runs."""
        return self.cfg_scale is not None


Hook = Callable[[Any, Call], Any]


@dataclass(frozen=True)
class PipelineFamily:
    """A pipeline family: what differs between the pipelines pint samples.

    The first five fields are the description; the hooks (each ``hook(pipe, call)``) say
    how. Only ``encode`` is required for a new family; the defaults fit a
    StableDiffusion-type pipeline (``prepare_latents(n, C, h, w, dtype, device, generator,
    latents)``, the network called as its class's convention, the VAE decode of
    :func:`~adapters.pipelines.latents_to_images`).

    Attributes:
        net: the denoising network's component name (``"unet"``, ``"transformer"``).
        components: the components the family needs (checked on the pipe and in a folder).
        steps, guidance: the pipeline's default ``num_inference_steps`` and guidance.
        cfg_arg: the argument that turns classifier-free guidance on (``"guidance_scale"``,
            or ``"true_cfg_scale"`` where ``guidance_scale`` is embedded guidance).
        cfg_default: ``true_cfg_scale``'s default where a negative prompt is given
            (Qwen-Image: 4.0; ``None``: no CFG unless asked, as Flux).
        inputs: further ``pipe(...)`` arguments the family handles (passed to
            ``srds_pipeline`` as keywords, read with ``call.get``); any other argument of
            the pipeline's ``__call__`` is refused by name before any model call.
        pooled: whether the family takes ``pooled_prompt_embeds``.
        strength: the default ``strength`` where it truncates the grid (img2img,
            inpainting: the sampler starts from the pipeline's latents at
            ``timesteps[begin]``); ``None``: the family has no ``strength``.
        begin: ``begin(N, strength) -> int``, the first step that runs (default: diffusers'
            ``get_timesteps``, ``N - min(int(N * strength), N)``).
        check: validation of the family's own inputs (before any model call).
        geometry: ``-> (height, width, channels, shape)`` (default: from ``height`` /
            ``width`` and the network's config).
        timesteps: ``-> dict``: ``set_timesteps`` keyword arguments (``mu``, ``sigmas``).
        encode: ``-> Conditioning`` (runs the text encoders).
        latents: ``-> x_T`` in the pipeline's layout; may add to ``call.state``.
        network: ``-> callable(x, t, **kwargs)``: the raw network output (default: the
            network component called as diffusers pipelines call its class).
        guide: ``-> callable(cond_out, uncond_out, t) | None``: a guidance other than
            ``uncond + w (cond - uncond)`` (SDXL's ``guidance_rescale``, Wan 2.2's second
            scale below its boundary; ``t``: the rows' timesteps); both halves still run in
            one network call.
        decode: ``(pipe, latents, output_type, call) -> (images, nsfw)``.
    """

    net: str
    components: tuple[str, ...]
    steps: int
    guidance: float | None
    cfg_arg: str = "guidance_scale"
    cfg_default: float | None = None
    inputs: tuple[str, ...] = ()
    pooled: bool = False
    strength: float | None = None
    begin: Callable[[int, float], int] | None = None
    check: Hook | None = None
    geometry: Hook | None = None
    timesteps: Hook | None = None
    encode: Hook | None = None
    latents: Hook | None = None
    network: Hook | None = None
    guide: Hook | None = None
    decode: Callable[[Any, Tensor, str, Call], tuple[Any, Any]] | None = None


#: the registry: pipeline class name -> family (the built-in families register on import
#: of :mod:`adapters.pipelines`; :func:`register_family` adds more)
FAMILIES: dict[str, PipelineFamily] = {}


def register_family(name: str, family: PipelineFamily, *, replace: bool = False) -> None:
    """Make :func:`~adapters.pipelines.srds_pipeline` (and ``load_text_to_image``,
    ``pint-sample --prompt``) sample the diffusers pipeline class ``name`` (or a subclass)
    as ``family`` describes.

    Raises:
        TypeError: ``family`` is not a :class:`PipelineFamily` or has no ``encode`` hook.
        ValueError: ``name`` is registered already (give ``replace=True``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"name must be a pipeline class name, got {name!r}")
    if not isinstance(family, PipelineFamily):
        raise TypeError(f"family must be a PipelineFamily, got {type(family).__name__}")
    if family.encode is None:
        raise TypeError("family.encode is required: encode(pipe, call) -> Conditioning")
    if name in FAMILIES and not replace:
        raise ValueError(f"{name} is registered already; pass replace=True to replace it")
    FAMILIES[name] = family


def supported_pipelines() -> tuple[str, ...]:
    """The pipeline class names pint samples now (built in and registered)."""
    return tuple(FAMILIES)


HOW_TO_ADD = ("a pipeline pint lacks can be registered without editing pint: "
              "adapters.pipelines.register_family('MyPipeline', PipelineFamily(...)) "
              "(see the docs page 'Pipelines')")


def find_family(pipe: Any) -> tuple[str, PipelineFamily]:
    """``(class name, family)`` of a registered pipeline class or a subclass of one.

    Raises:
        TypeError: another class, naming the supported ones and how to add one.
    """
    name = next((c.__name__ for c in type(pipe).__mro__ if c.__name__ in FAMILIES), None)
    if name is None:
        raise TypeError(f"pipe must be a text-to-image pipeline: one of "
                        f"{', '.join(FAMILIES)} (or a subclass), got {type(pipe).__name__}; "
                        f"{HOW_TO_ADD}")
    return name, FAMILIES[name]
