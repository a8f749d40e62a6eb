"""Parallel samplers on today's text-to-image pipelines: SD3 and Flux (tiny, random weights).

    python benchmarks/bench_text_to_image.py [--quick] [--out DIR]

Builds a tiny ``StableDiffusion3Pipeline`` (SD3Transformer2DModel, two CLIP text encoders
with projection, a T5 encoder) and a tiny ``FluxPipeline`` (FluxTransformer2DModel with
guidance embedding, CLIP + T5, dynamic shifting) from configs, and samples one prompt
through :func:`adapters.text_to_image.srds_pipeline` with every pint sampler: SD3 at
N = 28 (CFG 7.0, both halves in one call), Flux at N = 28 and 50 (embedded guidance 3.5).
For each sampler and tolerance it records the **sequential transformer calls** (the
critical path, what wall-clock follows on a GPU where one call of the whole window costs
about one call), the rows evaluated, and the max-abs error of the final latents against
the serial sampler's; then it reads off the calls each sampler needs to reach a common
error target. Writes ``text_to_image.json``. ``--quick``: SD3 only, fewer tolerances.

The tiny pipelines are also what ``tests/diffusion/test_sd3_flux.py`` tests on
(:func:`tiny_sd3`, :func:`tiny_flux`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "tree", "ugly", "blurry"]
#: token budget of the tiny tokenizers (CLIP's model_max_length, the T5 sequence length)
MAX_TOKENS = 12


def clip_tokenizer(folder: Path, max_length: int = MAX_TOKENS):
    """A byte-level BPE vocabulary over WORDS (every character, then merges up to each
    whole word) written as vocab.json + merges.txt and loaded as a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = ["#version: 0.2"]
    for w in WORDS:
        for c in w:
            vocab.setdefault(c, len(vocab))
            vocab.setdefault(c + "</w>", len(vocab))
    for w in WORDS:
        cur = w[0]
        for i, c in enumerate(w[1:], 2):
            right = c + ("</w>" if i == len(w) else "")
            if f"{cur} {right}" not in merges:
                merges.append(f"{cur} {right}")
            cur += right
            vocab.setdefault(cur, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


def t5_tokenizer(folder: Path):
    """A unigram T5 tokenizer over WORDS (whole words, then single letters), saved as
    tokenizer.json and loaded back (no sentencepiece needed)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS).save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def _text_encoders(tmp: Path, clip_classes: tuple[type, ...], hidden: int, t5_dim: int,
                   projection: int | None = None) -> dict[str, Any]:
    from transformers import CLIPTextConfig

    tok, t5 = clip_tokenizer(tmp / "clip_vocab"), t5_tokenizer(tmp / "t5_vocab")
    extra = {"projection_dim": projection} if projection else {}
    parts: dict[str, Any] = {}
    for i, cls in enumerate(clip_classes):
        sfx = "" if i == 0 else f"_{i + 1}"
        parts["text_encoder" + sfx] = cls(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, **extra))
        parts["tokenizer" + sfx] = tok
    sfx = f"_{len(clip_classes) + 1}"
    parts["text_encoder" + sfx] = t5_encoder(t5, t5_dim)
    parts["tokenizer" + sfx] = t5
    return parts


def t5_encoder(tok: Any, dim: int = 32, umt5: bool = False):
    """A one-layer random T5 (``umt5``: UMT5, as Wan ships) encoder of width ``dim`` for the
    vocabulary of ``tok`` (:func:`t5_tokenizer`)."""
    import transformers

    kind = "UMT5" if umt5 else "T5"
    config = getattr(transformers, f"{kind}Config")(
        vocab_size=len(tok), d_model=dim, d_kv=8, d_ff=2 * dim, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1)
    return getattr(transformers, f"{kind}EncoderModel")(config)


def _vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16,
        shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
        use_post_quant_conv=False)


def ready(pipe):
    """Inference mode as from_pretrained leaves it (T5's dropout off) and no progress bars."""
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(tmp: Path, seed: int = 0):
    """A StableDiffusion3Pipeline with random weights: 16 x 16 images, 8 x 8 x 4 latents,
    a one-layer SD3 transformer, CLIP-L/G-like encoders with projection and a T5 encoder,
    FlowMatchEulerDiscreteScheduler(shift=3) as SD3 ships."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    enc = _text_encoders(tmp, (CLIPTextModelWithProjection,) * 2, 16, 32, projection=16)
    net = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
        joint_attention_dim=32, pooled_projection_dim=32)
    pipe = StableDiffusion3Pipeline(
        transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4),
        **enc)
    return ready(pipe)


def tiny_flux(tmp: Path, seed: int = 0, guidance_embeds: bool = True):
    """A FluxPipeline with random weights (16 x 16 images: 8 x 8 x 4 latents packed into
    16 tokens of 16 channels), a one-layer Flux transformer (with ``guidance_embeds`` as
    FLUX.1-dev, without as schnell), CLIP + T5 encoders, and Flux's dynamically shifted
    FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    enc = _text_encoders(tmp, (CLIPTextModel,), 16, 32)
    net = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=[4, 4, 8])
    sched = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=net, scheduler=sched, vae=_vae(4), **enc)
    return ready(pipe)


# ---- the benchmark ----------------------------------------------------------------------------

#: the error target of the table (max-abs latent error vs the serial sampler; latents have
#: about unit spread, so 1e-3 is far below what a decoded 8-bit image shows)
TARGET = 1e-3
CASES = (("sd3", 28), ("flux", 28), ("flux", 50))


def _sweeps(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Per sampler the settings swept (tolerances; window = N for the window samplers)."""
    tols = [1e-2, 1e-3, 1e-4] if quick else [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5]
    srds_tols = [1e-2, 1e-3] if quick else [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4]
    return {
        "srds_pipelined": [dict(sampler="srds", tol=t) for t in srds_tols],
        "srds_sweep": [dict(sampler="srds", tol=t, pipelined=False) for t in srds_tols],
        "picard": [dict(sampler="picard", tol=t) for t in tols],
        "quasi_newton": [dict(sampler="quasi_newton", tol=t) for t in tols],
        "auto": [dict(sampler="auto", tol=t) for t in tols],
    }


def run_case(pipe, kind: str, N: int, quick: bool = False) -> dict[str, Any]:
    """Every sampler on one pipeline at ``N`` steps: calls, rows and error per setting, and
    the fewest sequential calls that reach :data:`TARGET`."""
    from adapters.text_to_image import srds_pipeline

    kw: dict[str, Any] = dict(prompt=["a photo of a cat", "red tree"], num_inference_steps=N,
                              max_sequence_length=MAX_TOKENS, output_type="latent")
    if kind == "sd3":
        kw.update(negative_prompt="blurry", guidance_scale=7.0)  # CFG in one batched call
    else:
        kw.update(height=16, width=16, guidance_scale=3.5)  # embedded guidance

    def gen():
        return torch.Generator().manual_seed(0)

    ref = srds_pipeline(pipe, sampler="serial", generator=gen(), **kw).latents
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, settings in _sweeps(quick).items():
        rows[name] = []
        for s in settings:
            opts = dict(s)
            if s["sampler"] in ("picard", "quasi_newton"):
                opts["window"] = N
            out = srds_pipeline(pipe, generator=gen(), **kw, **opts)
            rows[name].append(dict(
                tol=s["tol"], ran=out.sampler, window_or_blocks=out.sampling.num_blocks,
                iterations=out.sampling.iterations, calls=out.stats.depth,
                rows=out.stats.model_rows, error=float((out.latents - ref).abs().max())))
    best = {}
    for name, rs in rows.items():
        ok = [r for r in rs if r["error"] <= TARGET]
        best[name] = min(ok, key=lambda r: (r["calls"], r["rows"])) if ok else None
    serial_rows = N * ref.shape[0] * (2 if kind == "sd3" else 1)
    return dict(pipeline=kind, N=N, batch=ref.shape[0], serial_calls=N, serial_rows=serial_rows,
                target=TARGET, runs=rows, at_target=best)


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: sequential transformer calls (rows) to reach the target."""
    names = list(results[0]["at_target"])
    head = "| pipeline | N | serial | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for r in results:
        cells = []
        for n in names:
            b = r["at_target"][n]
            cells.append("-" if b is None else f"{b['calls']} ({b['rows']})")
        lines.append(f"| {r['pipeline']} | {r['N']} | {r['N']} ({r['serial_rows']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {"sd3": tiny_sd3(Path(tmp) / "sd3"), "flux": tiny_flux(Path(tmp) / "flux")}
        for kind, N in CASES[:1] if args.quick else CASES:
            with torch.inference_mode():
                results.append(run_case(pipes[kind], kind, N, args.quick))
    md = table(results)
    print(f"sequential transformer calls (rows) to max-abs latent error <= {TARGET:g} vs serial, "
          "2 prompts; window samplers: window = N")
    print(md)
    report = dict(results=results, table=md, target=TARGET, quick=args.quick,
                  machine=platform.platform(), torch=torch.__version__,
                  command="python benchmarks/bench_text_to_image.py")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_to_image.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
