"""Train the small pretrained rectified-flow (flow-matching) digits model bundled in ``digits-flow/``.

Trains a diffusers ``UNet2DModel`` of the same size as ``digits/`` (see
:mod:`.train_digits`) on scikit-learn's 1797 8x8 digits scaled to [-1, 1] with the
rectified-flow objective of SD3 / Flux and diffusers' ``FlowMatchEulerDiscreteScheduler``::

    x_s = (1 - s) x0 + s eps,     s ~ logit-normal(0, 1) (or uniform, ``--time-sampling``)
    loss = || unet(x_s, timestep=1000 s).sample - (eps - x0) ||^2

so the network predicts the flow velocity ``v = eps - x0 = dx_s/ds`` and is called with
**float** timesteps ``1000 s`` in (0, 1000) (what diffusers' flow-matching loop passes:
``scheduler.timesteps = sigmas * num_train_timesteps``). It keeps an EMA of the weights
and saves the EMA weights in diffusers layout::

    OUT/unet/config.json
    OUT/unet/diffusion_pytorch_model.safetensors
    OUT/scheduler/scheduler_config.json   (FlowMatchEulerDiscreteScheduler, 1000 steps, shift 1)
    OUT/README.md                         (how it was trained + sample quality)

Afterwards it samples with diffusers' own Euler loop (``FlowMatchEulerDiscreteScheduler``,
``N`` = ``--eval-steps``, ``--eval-samples`` each) and scores the samples with :mod:`.quality`.

Re-train (CPU, one thread, ~10 minutes on an idle 2-core machine, ~38 under heavy load,
+ ~3 minutes of evaluation)::

    python -m adapters.diffusion.pretrained.train_digits_flow --out adapters/diffusion/pretrained/digits-flow
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .quality import evaluate_samples, load_digits_images, real_reference, train_classifier
from .train_digits import _diffusers_version, _kw, build_unet, fit, save_grid

NUM_TRAIN_TIMESTEPS = 1000
TIME_SAMPLING = ("logit-normal", "uniform")


def make_flow_scheduler(shift: float = 1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def sample_times(n: int, how: str, g: torch.Generator) -> torch.Tensor:
    """``n`` flow times ``s`` in (0, 1): logit-normal(0, 1) as in SD3, or uniform."""
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=g))
    return torch.rand(n, generator=g).clamp(1e-5, 1 - 1e-5)


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x_all, _ = load_digits_images()  # [1797, 1, 8, 8] in [-1, 1]; no augmentation

    unet = build_unet()  # the digits/ architecture
    n_params = sum(p.numel() for p in unet.parameters())
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    print(
        f"UNet2DModel params={n_params:,} | rectified flow, s ~ {args.time_sampling} | "
        f"steps={args.steps} batch={args.batch_size} lr={args.lr} ema={args.ema_decay} "
        f"seed={args.seed} threads={args.threads}",
        flush=True,
    )

    def batch_loss(x0: torch.Tensor) -> torch.Tensor:  # velocity eps - x0 at float timesteps
        eps = torch.randn(x0.shape, generator=g)
        s = sample_times(x0.shape[0], args.time_sampling, g)
        sb = s.view(-1, 1, 1, 1)
        x_s = (1 - sb) * x0 + sb * eps
        return nn.functional.mse_loss(unet(x_s, s * NUM_TRAIN_TIMESTEPS).sample, eps - x0)

    losses, wall = fit(unet, ema, x_all, batch_loss, args, g, weight_decay=0.0)
    tail = max(1, args.steps // 20)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "unet", safe_serialization=True)
    make_flow_scheduler().save_pretrained(out / "scheduler")
    return dict(n_params=n_params, wall_s=wall, final_loss=sum(losses[-tail:]) / tail, final_loss_window=tail)


@torch.no_grad()
def sample_diffusers(folder: str | Path, n: int, num_steps: int, seed: int = 0) -> torch.Tensor:
    """``n`` samples ``[n, 1, 8, 8]`` with diffusers' own flow-matching Euler loop
    (``num_steps`` steps) from ``N(0, I)`` noise drawn with ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

    folder = Path(folder)
    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(num_steps)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:  # float32 timesteps 1000 * sigma, sigma from 1 to 1/1000
        v = unet(x, t.expand(n)).sample
        x = sched.step(v, t, x).prev_sample
    return x


def evaluate(folder: Path, steps: list[int], n: int, seed: int, grid: str | None) -> dict:
    train_classifier(verbose=True)
    ref = real_reference()
    print(f"real held-out reference: {ref}", flush=True)
    runs = []
    for num_steps in steps:
        t0 = time.perf_counter()
        x = sample_diffusers(folder, n, num_steps, seed=seed)
        t_sample = time.perf_counter() - t0
        q = evaluate_samples(x)
        run = dict(
            samples=q,
            num_steps=num_steps,
            n=n,
            sample_s=t_sample,
            min=float(x.min()),
            max=float(x.max()),
            first120=evaluate_samples(x[:120]),
        )
        print(
            f"samples ({n}, diffusers flow Euler N={num_steps}, {t_sample:.1f}s, range "
            f"[{run['min']:.3f}, {run['max']:.3f}]): {q}; first 120: "
            f"{run['first120']['mean_max_prob']:.3f}",
            flush=True,
        )
        runs.append(run)
        if grid and num_steps == steps[-1]:
            save_grid(
                x[:64],
                grid,
                nrow=8,
                title=f"flow Euler N={num_steps}, mean max-prob {q['mean_max_prob']:.3f}",
            )
    return dict(runs=runs, reference=ref, seed=seed)


def write_readme(folder: Path, args, info: dict, ev: dict | None) -> None:
    """The model folder's README.md (what the model is, how it was trained and evaluated).

    Kept in one piece: it is the README's text, one line per list entry, read top to
    bottom as the page it writes."""
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "README.md")
    flags = "".join(
        f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("out", "grid", "log_every") and v != _parser().get_default(k)
    )
    law = (
        "logit-normal: `s = sigmoid(z)`, `z ~ N(0, 1)` (SD3's default)"
        if args.time_sampling == "logit-normal"
        else "uniform on (0, 1)"
    )
    lines = [
        "# digits-flow: small pretrained rectified-flow model for scikit-learn's 8x8 digits",
        "",
        "A diffusers `UNet2DModel` (same architecture as `../digits/`) trained with the",
        "rectified-flow / flow-matching objective of SD3 and Flux on all 1797 images of",
        "`sklearn.datasets.load_digits()` (pixel `v` in 0..16 scaled to `v / 8 - 1`, shape",
        "`[N, 1, 8, 8]`, no augmentation). The weights are an EMA of the training weights,",
        "stored in float32.",
        "",
        "Convention: `x_s = (1 - s) x0 + s eps` for `s` in [0, 1] (`s = 1` is pure noise),",
        "and `unet(x_s, timestep=1000 * s).sample` predicts the velocity `v = eps - x0`",
        "(`dx_s/ds`). Timesteps are **float** (a float32 tensor of shape `[batch]` or a",
        "scalar), in (0, 1000]: exactly `FlowMatchEulerDiscreteScheduler.timesteps`,",
        "`sigmas * num_train_timesteps`. The clean estimate is `x0 = x_s - s v`.",
        "",
        "```python",
        "import torch",
        "from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel",
        'unet = UNet2DModel.from_pretrained("adapters/diffusion/pretrained/digits-flow/unet")',
        "sched = FlowMatchEulerDiscreteScheduler.from_pretrained(",
        '    "adapters/diffusion/pretrained/digits-flow/scheduler")',
        "sched.set_timesteps(50)",
        "x = torch.randn(16, 1, 8, 8)",
        "with torch.no_grad():",
        "    for t in sched.timesteps:",
        "        x = sched.step(unet(x, t.expand(16)).sample, t, x).prev_sample",
        "```",
        "",
        "## Training",
        "",
        "```",
        "python -m adapters.diffusion.pretrained.train_digits_flow "
        "--out adapters/diffusion/pretrained/digits-flow" + flags,
        "```",
        "",
        "- architecture: `train_digits.build_unet()`, i.e. `UNet2DModel(sample_size=8, "
        "in_channels=1, out_channels=1, block_out_channels=(48, 64), layers_per_block=1, "
        "down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', "
        "'UpBlock2D'), norm_num_groups=8, attention_head_dim=16)`",
        f"- parameters: {info['n_params']:,}",
        f"- objective: MSE between `unet(x_s, 1000 s)` and `eps - x0`, `eps ~ N(0, I)`, "
        f"training times `s` {law}",
        f"- the saved `scheduler/` is `FlowMatchEulerDiscreteScheduler("
        f"{_kw(dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0))})`: `set_timesteps(N)` "
        "gives `N` sigmas evenly spaced from 1 to 1/1000 (timesteps 1000 .. 1), then a last "
        "Euler step to sigma 0",
        f"- optimiser: AdamW lr {args.lr} (linear warmup {min(args.warmup, args.steps // 10)} "
        f"steps, cosine decay to 10%), weight decay 0, grad clip {args.grad_clip}; batch "
        f"{args.batch_size}; {args.steps} steps; EMA decay {args.ema_decay} (with warmup)",
        f"- seed: {args.seed} (`torch.manual_seed`), {args.threads} CPU "
        f"thread{'s' if args.threads != 1 else ''}, torch {torch.__version__}, diffusers "
        f"{_diffusers_version()}, Python {platform.python_version()}",
        f"- wall time: {info['wall_s'] / 60:.1f} min ({info['wall_s']:.0f} s) on a 2-core CPU machine",
        f"- final loss (velocity MSE, mean of the last {info['final_loss_window']} steps): "
        f"{info['final_loss']:.4f}",
        f"- folder size (without this README): {size / 1e6:.2f} MB",
    ]
    if ev and ev["runs"]:
        r = ev["reference"]
        lines += [
            "",
            "## Sample quality",
            "",
            "Samples from `N(0, I)` noise (`torch.Generator().manual_seed("
            f"{ev['seed']})`) with diffusers' own loop above (`FlowMatchEulerDiscreteScheduler`, "
            "Euler, float32, CPU), scored by `adapters.diffusion.pretrained.quality` (CNN "
            f"classifier, held-out accuracy {r['test_accuracy']:.3f}; samples are clamped to "
            "[-1, 1] before scoring). The Frechet distance is biased upwards for smaller sets, so "
            "compare rows of the same size. The last column scores the first 120 of the samples "
            "(the size of the repository's quality gate: mean max-prob >= 0.85, all ten digits).",
            "",
            "| | samples | mean max-prob | distinct digits | Frechet (classifier features) "
            "| sample range | sampling time | first 120: max-prob / digits |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in ev["runs"]:
            s, f = run["samples"], run["first120"]
            lines.append(
                f"| flow Euler, N={run['num_steps']} | {run['n']} | {s['mean_max_prob']:.3f} "
                f"| {s['n_distinct']} | {s['frechet']:.2f} | [{run['min']:.2f}, "
                f"{run['max']:.2f}] | {run['sample_s']:.0f} s | {f['mean_max_prob']:.3f} / "
                f"{f['n_distinct']} |"
            )
        lines += [
            f"| real held-out digits | 500 | {r['mean_max_prob']:.3f} | {r['n_distinct']} | "
            f"{r['frechet']:.2f} | [-1, 1] | | |",
            "",
            "For comparison, `../digits/` (DDPM, serial DDIM) scores 0.960 / 10 digits / "
            "Frechet 5.21 on 500 samples at N=100.",
            "",
        ]
        for run in ev["runs"]:
            lines.append(f"Predicted-class histogram, N={run['num_steps']}: {run['samples']['class_hist']}.")
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="adapters/diffusion/pretrained/digits-flow")
    p.add_argument("--time-sampling", default="logit-normal", choices=TIME_SAMPLING)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    # one thread, as train_digits (two OpenMP threads slow down badly under contention)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=500, help="samples per N (0: skip)")
    p.add_argument("--eval-steps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--grid", default=None, help="optional PNG of 64 samples at the last N")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    info = train(args)
    out = Path(args.out)
    ev = None
    if args.eval_samples > 0:
        ev = evaluate(out, args.eval_steps, args.eval_samples, args.seed, args.grid)
    write_readme(out, args, info, ev)
    print(json.dumps(dict(info, quality=ev), indent=1, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
