"""Train the small pretrained digits diffusion model bundled in ``digits/``.

Trains a diffusers ``UNet2DModel`` (epsilon prediction, 1000 training timesteps, the
``--beta-schedule``: by default DDPM's linear betas 1e-4 .. 0.02) on scikit-learn's 1797
8x8 digits scaled to [-1, 1], keeps an EMA of the weights and saves the EMA weights in
diffusers layout::

    OUT/unet/config.json
    OUT/unet/diffusion_pytorch_model.safetensors
    OUT/scheduler/scheduler_config.json      (a DDIMScheduler with the same betas)
    OUT/README.md                            (how it was trained + sample quality)

The saved scheduler uses ``timestep_spacing="trailing"``, ``steps_offset=0``,
``set_alpha_to_one=False``: any ``N`` up to 1000 sampling steps starts at timestep 999 and
``N=1000`` visits every timestep 999 .. 0 (``"leading"`` with ``steps_offset=1`` would ask
for timestep 1000). The linear schedule keeps ``alpha_bar[999]`` at ~4e-5; the cosine one
("squaredcos_cap_v2") drives it to ~2e-9, where DDIM's ``x0 = (x - sqrt(1 - a) eps) /
sqrt(a)`` at t=999 blows up.

Afterwards it loads the folder back with :func:`adapters.diffusion.pretrained.load_pretrained`,
draws samples with pint's serial DDIM sampler (eta 0) at ``N=100`` (``--eval-samples``)
and ``N=1000`` (``--eval-samples-1000``) steps and scores them with :mod:`.quality`.

Re-train (CPU, one thread, ~10 minutes + ~3 minutes of evaluation)::

    python -m adapters.diffusion.pretrained.train_digits --out adapters/diffusion/pretrained/digits
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .quality import (
    evaluate_samples,
    load_digits_images,
    real_reference,
    train_classifier,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def scheduler_kwargs(beta_schedule: str = "linear") -> dict:
    """The noise-schedule arguments shared by the training and the saved scheduler."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    return dict(
        num_train_timesteps=1000,
        beta_schedule=beta_schedule,
        beta_start=0.0001,  # ignored by squaredcos_cap_v2
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=False,
    )


#: conventions of the saved DDIMScheduler (see the module docstring)
DDIM_CONVENTIONS = dict(timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=False)


def build_unet(
    block_out_channels: tuple[int, ...] = (48, 64),
    layers_per_block: int = 1,
    attn_levels: tuple[int, ...] = (1,),
    norm_num_groups: int = 8,
    attention_head_dim: int = 16,
):
    from diffusers import UNet2DModel

    levels = range(len(block_out_channels))
    down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
    )


def make_ddim_scheduler(beta_schedule: str = "linear"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_kwargs(beta_schedule), **DDIM_CONVENTIONS)


@torch.no_grad()
def sample_serial(folder: str | Path, n: int, num_steps: int, seed: int = 0) -> torch.Tensor:
    """``n`` samples ``[n, 1, 8, 8]`` from the folder with pint's serial DDIM sampler (eta 0,
    ``num_steps`` steps) from ``N(0, I)`` noise drawn with ``seed``."""
    from adapters.diffusion import serial_sample
    from adapters.diffusion.pretrained import load_pretrained

    model, schedule = load_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, *model.sample_shape, generator=g)
    return serial_sample(model, schedule, x_T, num_steps)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int = 16, title: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x[: nrow * nrow].clamp(-1, 1)
    n = x.shape[0]
    rows = math.ceil(n / nrow)
    canvas = torch.full((rows * 9 + 1, nrow * 9 + 1), -1.0)
    for k in range(n):
        r, c = divmod(k, nrow)
        canvas[1 + r * 9 : 9 + r * 9, 1 + c * 9 : 9 + c * 9] = x[k, 0]
    fig, ax = plt.subplots(figsize=(nrow * 0.5, rows * 0.5 + (0.4 if title else 0)))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fit(unet: nn.Module, ema: nn.Module, x_all: torch.Tensor,
        batch_loss: Callable[[torch.Tensor], torch.Tensor], args, g: torch.Generator,
        weight_decay: float) -> tuple[list[float], float]:
    """Train ``unet`` on shuffled batches of ``x_all`` with ``batch_loss(x0)`` (AdamW, linear
    warmup then cosine decay to 10%, gradient clipping), keeping an EMA of its weights in
    ``ema``; logs every ``args.log_every`` steps. Returns the per-step losses and the wall
    time in seconds. Shared by the DDPM and the rectified-flow digits models."""
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=weight_decay,
                            betas=(0.9, 0.999))
    warmup = min(args.warmup, args.steps // 10)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        p = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    n_data = x_all.shape[0]
    perm, pos = torch.randperm(n_data, generator=g), 0
    losses: list[float] = []
    t0 = time.perf_counter()
    unet.train()
    for step in range(args.steps):
        if pos + args.batch_size > n_data:
            perm, pos = torch.randperm(n_data, generator=g), 0
        x0 = x_all[perm[pos : pos + args.batch_size]]
        pos += args.batch_size
        loss = batch_loss(x0)

        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), args.grad_clip)
        opt.step()

        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())

        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.perf_counter() - t0
            recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
            eta = el / (step + 1) * (args.steps - step - 1)
            print(
                f"step {step + 1:5d}/{args.steps}  loss {recent:.4f}  lr {lr_at(step):.2e}  "
                f"{el:6.0f}s elapsed  eta {eta:4.0f}s",
                flush=True,
            )
    return losses, time.perf_counter() - t0


def train(args) -> dict:
    from diffusers import DDPMScheduler

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    x_all, _ = load_digits_images()  # [1797, 1, 8, 8] in [-1, 1]; no augmentation

    arch = dict(
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        attn_levels=tuple(args.attn_levels),
    )
    unet = build_unet(**arch)
    n_params = sum(p.numel() for p in unet.parameters())
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    noise_sched = DDPMScheduler(**scheduler_kwargs(args.beta_schedule))
    alphas_cumprod = noise_sched.alphas_cumprod

    print(
        f"UNet2DModel {arch} params={n_params:,} | steps={args.steps} batch={args.batch_size} "
        f"lr={args.lr} ema={args.ema_decay} seed={args.seed} threads={args.threads} "
        f"beta_schedule={args.beta_schedule} (alpha_bar[999]={float(alphas_cumprod[-1]):.2e})",
        flush=True,
    )

    def batch_loss(x0: torch.Tensor) -> torch.Tensor:  # epsilon prediction
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return nn.functional.mse_loss(unet(xt, t).sample, noise)

    losses, wall = fit(unet, ema, x_all, batch_loss, args, g, weight_decay=args.weight_decay)
    tail = max(1, args.steps // 20)
    final_loss = sum(losses[-tail:]) / tail

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "unet", safe_serialization=True)
    make_ddim_scheduler(args.beta_schedule).save_pretrained(out / "scheduler")
    return dict(
        arch=arch,
        n_params=n_params,
        wall_s=wall,
        final_loss=final_loss,
        final_loss_window=tail,
        alpha_bar_last=float(alphas_cumprod[-1]),
    )


def evaluate(folder: Path, runs: list[tuple[int, int]], seed: int,
             grid: str | None) -> dict:
    """Sample ``n`` digits with ``N`` serial DDIM steps for each ``(N, n)`` of ``runs`` and
    score them; the grid (if asked) shows the first 64 samples of the largest ``N``."""
    train_classifier(verbose=True)
    ref = real_reference()
    print(f"real held-out reference: {ref}", flush=True)
    results = []
    grid_x, grid_title = None, ""
    for num_steps, n in runs:
        if n <= 0:
            continue
        t0 = time.perf_counter()
        x = sample_serial(folder, n, num_steps, seed=seed)
        t_sample = time.perf_counter() - t0
        q = evaluate_samples(x)
        lo, hi = float(x.min()), float(x.max())
        print(f"samples ({n}, serial DDIM N={num_steps}, {t_sample:.1f}s, range "
              f"[{lo:.3f}, {hi:.3f}]): {q}", flush=True)
        results.append(dict(samples=q, num_steps=num_steps, n=n, sample_s=t_sample,
                            min=lo, max=hi))
        grid_x = x[:64]
        grid_title = f"serial DDIM N={num_steps}, mean max-prob {q['mean_max_prob']:.3f}"
    if grid and grid_x is not None:
        save_grid(grid_x, grid, nrow=8, title=grid_title)
        print(f"grid -> {grid}")
    return dict(runs=results, reference=ref, seed=seed)


def write_readme(folder: Path, args, info: dict, ev: dict | None) -> None:
    """The model folder's README.md (what the model is, how it was trained and evaluated).

    Kept in one piece: it is the README's text, one line per list entry, read top to
    bottom as the page it writes."""
    arch = info["arch"]
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "README.md")
    lines = [
        "# digits: small pretrained DDPM/DDIM model for scikit-learn's 8x8 digits",
        "",
        "A diffusers `UNet2DModel` (epsilon prediction) trained on all 1797 images of",
        "`sklearn.datasets.load_digits()` (pixel `v` in 0..16 scaled to `v / 8 - 1`,",
        "shape `[N, 1, 8, 8]`, no augmentation). The weights are an EMA of the training",
        "weights, stored in float32.",
        "",
        "```python",
        "import torch",
        "from adapters.diffusion import serial_sample, srds_sample",
        "from adapters.diffusion.pretrained import load_pretrained",
        'model, schedule = load_pretrained("digits")  # (pint model, VPSchedule)',
        "x = serial_sample(model, schedule, torch.randn(16, 1, 8, 8), 100)",
        "",
        "# or with diffusers itself",
        "from diffusers import DDIMScheduler, UNet2DModel",
        'unet = UNet2DModel.from_pretrained("adapters/diffusion/pretrained/digits/unet")',
        "scheduler = DDIMScheduler.from_pretrained(",
        '    "adapters/diffusion/pretrained/digits/scheduler")',
        "```",
        "",
        "## Training",
        "",
        "```",
        "python -m adapters.diffusion.pretrained.train_digits "
        "--out adapters/diffusion/pretrained/digits" + _nondefault_args(args),
        "```",
        "",
        f"- architecture: `UNet2DModel(sample_size=8, in_channels=1, out_channels=1, "
        f"block_out_channels={arch['block_out_channels']}, layers_per_block="
        f"{arch['layers_per_block']}, down_block_types={tuple(_down(arch))}, "
        f"up_block_types={tuple(_up(arch))}, norm_num_groups=8, attention_head_dim=16)`",
        f"- parameters: {info['n_params']:,}",
        f"- noise schedule (training): `DDPMScheduler({_kw(scheduler_kwargs(args.beta_schedule))})`"
        f"; alpha_bar at t=999: {info['alpha_bar_last']:.2e}; training timesteps drawn "
        "uniformly from 0..999",
        "- the saved `scheduler/` is a `DDIMScheduler` with the same betas and "
        f"`{_kw(DDIM_CONVENTIONS)}`: `N` sampling steps (1 <= N <= 1000) start at timestep "
        "999 and step by 1000 // N, so N=1000 visits every timestep 999 .. 0; the last step "
        "lands on alpha_bar[0] (not 1)",
        f"- optimiser: AdamW lr {args.lr} (linear warmup {min(args.warmup, args.steps // 10)} "
        f"steps, cosine decay to 10%), weight decay {args.weight_decay}, grad clip "
        f"{args.grad_clip}; batch {args.batch_size}; {args.steps} steps; EMA decay "
        f"{args.ema_decay} (with warmup)",
        f"- seed: {args.seed} (`torch.manual_seed`), {args.threads} CPU "
        f"thread{'s' if args.threads != 1 else ''}, "
        f"torch {torch.__version__}, diffusers {_diffusers_version()}, Python "
        f"{platform.python_version()}",
        f"- wall time: {info['wall_s'] / 60:.1f} min ({info['wall_s']:.0f} s) "
        "on a 2-core CPU machine",
        f"- final loss (epsilon MSE, mean of the last {info['final_loss_window']} steps): "
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
            f"{ev['seed']})`) with pint's serial DDIM sampler, eta 0 "
            "(`adapters.diffusion.serial_sample` on `load_pretrained`'s model and schedule, "
            "float32, CPU), scored by `adapters.diffusion.pretrained.quality` (CNN classifier, "
            f"held-out accuracy {r['test_accuracy']:.3f}; samples are clamped to [-1, 1] "
            "before scoring). The Frechet distance is biased upwards for smaller sets, so "
            "compare rows of the same size.",
            "",
            "| | samples | mean max-prob | distinct digits | Frechet (classifier features) "
            "| sample range | sampling time |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in ev["runs"]:
            s = run["samples"]
            lines.append(
                f"| serial DDIM, N={run['num_steps']} | {run['n']} | {s['mean_max_prob']:.3f} "
                f"| {s['n_distinct']} | {s['frechet']:.2f} | [{run['min']:.2f}, "
                f"{run['max']:.2f}] | {run['sample_s']:.0f} s |"
            )
        lines += [
            f"| real held-out digits | 500 | {r['mean_max_prob']:.3f} | {r['n_distinct']} | "
            f"{r['frechet']:.2f} | [-1, 1] | |",
            "",
        ]
        for run in ev["runs"]:
            lines.append(f"Predicted-class histogram, N={run['num_steps']}: "
                         f"{run['samples']['class_hist']}.")
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


def _nondefault_args(args) -> str:
    """Command-line flags for the training arguments that differ from the defaults."""
    defaults = vars(_parser().parse_args([]))
    skip = {"out", "grid", "log_every", "eval_samples", "eval_samples_1000"}
    flags = []
    for k, v in vars(args).items():
        if k in skip or v == defaults[k]:
            continue
        vals = " ".join(map(str, v)) if isinstance(v, list) else str(v)
        flags.append(f" --{k.replace('_', '-')} {vals}")
    return "".join(flags)


def _down(arch):
    n = len(arch["block_out_channels"])
    return ["AttnDownBlock2D" if i in arch["attn_levels"] else "DownBlock2D" for i in range(n)]


def _up(arch):
    n = len(arch["block_out_channels"])
    return [
        "AttnUpBlock2D" if i in arch["attn_levels"] else "UpBlock2D" for i in reversed(range(n))
    ]


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="adapters/diffusion/pretrained/digits")
    p.add_argument("--beta-schedule", default="linear", choices=BETA_SCHEDULES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--block-out-channels", type=int, nargs="+", default=[48, 64])
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--attn-levels", type=int, nargs="*", default=[1])
    # One thread on purpose: this model is too small for intra-op parallelism to pay off
    # much, and with two OpenMP threads a run slows down ~10x whenever any other process
    # competes for the two cores (busy-waiting barriers).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=500,
                   help="samples for the N=100 evaluation (0 to skip it)")
    p.add_argument("--eval-samples-1000", type=int, default=200,
                   help="samples for the N=1000 evaluation (0 to skip it)")
    p.add_argument("--grid", default=None,
                   help="optional PNG path for a grid of 64 samples (N=1000 if evaluated)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    info = train(args)
    out = Path(args.out)
    ev = None
    runs = [(100, args.eval_samples), (1000, args.eval_samples_1000)]
    if any(n > 0 for _, n in runs):
        ev = evaluate(out, runs, args.seed, args.grid)
    write_readme(out, args, info, ev)
    summary = dict(info)
    if ev:
        summary["quality"] = ev
    print(json.dumps(summary, indent=1, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
