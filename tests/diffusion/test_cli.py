"""pint-sample end to end: outputs, report, and clear failures."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402

from adapters.diffusion import cli  # noqa: E402
from adapters.diffusion.cli import main  # noqa: E402

# the tiny folder keeps diffusers' DDIMScheduler stride (t - T // N) on a trailing grid, which
# pint reproduces and warns about when N does not divide T (tests/diffusion/test_schedulers
# checks that warning); here it is expected, not news
pytestmark = pytest.mark.filterwarnings("ignore:DDIM with prev_timestep='stride':UserWarning")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny DDIM UNet folder with diffusers' trailing spacing."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                ).save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(beta_schedule="linear", clip_sample=False, timestep_spacing="trailing"
                  ).save_pretrained(folder / "scheduler")
    return folder


def test_srds_run_writes_grid_convergence_and_report(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--model", str(tiny_folder), "--steps", "64", "--num-samples", "4",
               "--tol", "1e-4", "--compare-serial", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] >= 1 and report["depth"] < 64
    assert report["depth"] == report["model_calls"]
    assert len(report["history"]) == report["iterations"]
    assert report["max_abs_diff_vs_serial"] < 1e-3
    assert report["sequential_model_calls_ratio_vs_serial"] == pytest.approx(64 / report["depth"])
    assert report["wall_clock_ratio_vs_serial_measured"] == pytest.approx(
        report["serial_wall_s"] / report["wall_s"])
    assert not {"speedup_in_sequential_calls", "wall_clock_speedup"} & set(report)
    for png in ("samples.png", "convergence.png"):
        assert (out / png).stat().st_size > 2000
    captured = capsys.readouterr()
    closing = captured.out.strip().splitlines()[-1]
    assert closing.startswith("wrote") and "wall clock (measured)" in closing
    assert closing.endswith(report["wall_clock_vs_serial"])
    assert report["wall_clock_vs_serial"].endswith(("faster than serial", "slower than serial"))
    # the samplers' bars on stderr: SRDS by model calls (done: n/n), then the serial runs
    assert f"{report['model_calls']}/{report['model_calls']}" in captured.err
    assert "srds" in captured.err and "serial" in captured.err and "64/64" in captured.err


def test_serial_sampler_and_bundled_model(tmp_path):
    rc = main(["--model", "digits", "--sampler", "serial", "--steps", "10",
               "--num-samples", "2", "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "report.json").read_text())["depth"] == 10


@pytest.mark.parametrize("extra", [["--sampler", "quasi_newton", "--window", "16"],
                                   ["--sampler", "picard"], ["--sampler", "taa"]])
def test_window_samplers(tiny_folder, tmp_path, extra):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_folder), "--steps", "64", "--num-samples", "4",
                 "--compare-serial", "--out", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["window"] == {"--window": 16}.get(extra[-2], 32)
    assert report["depth"] == report["iterations"] == len(report["history"]) < 64
    assert report["max_abs_diff_vs_serial"] < 1e-3
    assert (out / "convergence.png").stat().st_size > 2000
    # what the stopping test decided: the steps accepted after each call, up to N
    acc = report["accepted_steps"]
    assert len(acc) == report["iterations"] and acc[-1] == 64 and acc == sorted(acc)
    assert report["sequential_model_calls_vs_serial"].endswith(
        "fewer sequential model calls than serial")


@pytest.mark.parametrize("scheduler", ["ddpm", "dpmpp_2m", "unipc", "euler", "euler_ancestral"])
def test_every_scheduler_on_a_vp_model(tiny_folder, tmp_path, scheduler):
    """--scheduler takes every solver of the API; stochastic ones draw the same noise for
    SRDS and the serial comparison, so SRDS still reproduces the serial sample."""
    out = tmp_path / "out"
    assert main(["--model", str(tiny_folder), "--steps", "16", "--num-samples", "2",
                 "--scheduler", scheduler, "--tol", "1e-5", "--compare-serial",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scheduler"] == scheduler
    assert report["max_abs_diff_vs_serial"] < 1e-3


def test_flow_model_schedulers(tmp_path, capsys):
    assert main(["--model", "digits-flow", "--scheduler", "ddim", "--out",
                 str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler ddim needs a VP" in err and "unipc" in err
    assert main(["--model", "digits-flow", "--scheduler", "unipc", "--sampler", "serial",
                 "--steps", "8", "--num-samples", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["scheduler"] == "unipc"


def test_taa_needs_a_one_step_solver(tmp_path, capsys):
    assert main(["--sampler", "taa", "--scheduler", "dpmpp_2m", "--steps", "8",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sampler taa needs a one-step solver" in err
    assert not (tmp_path / "o").exists()


def test_help_names_every_sampler_scheduler_and_bundled_model(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("srds", "serial", "picard", "quasi_newton", "taa", "auto", "ddim", "ddpm",
                 "euler_ancestral", "dpmpp_2m", "unipc", "digits-flow", "usage:"):
        assert word in text, word


def test_ratios_in_words():
    from adapters.diffusion.cli_output import versus_serial

    assert versus_serial(0.31) == "3.2x slower than serial"
    assert versus_serial(1.8) == "1.8x faster than serial"


def test_auto_prints_its_plan_and_predicted_vs_measured(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_folder), "--steps", "64", "--num-samples", "4",
                 "--sampler", "auto", "--max-batch", "40", "--compare-serial",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    plan = report["plan"]
    assert "candidate" in err and f"choice: {plan['choice']['label']}" in err
    assert "auto: predicted" in err and "serial predicted" in err
    # the plan prices serial and the candidates its budget reaches (issue 30: lower bounds
    # prune the rest), and says how long planning took
    assert plan["candidates"][0]["label"] == "serial"
    assert "planning:" in err and plan["planning_s"] >= 0
    assert all(c["max_rows"] <= 40 for c in plan["candidates"])
    assert report["predicted_s"] == plan["choice"]["predicted_s"] > 0
    assert report["serial_predicted_s"] > 0 and report["serial_wall_s"] > 0
    assert report["max_abs_diff_vs_serial"] < 1e-3


def test_unknown_model_lists_what_exists(tmp_path, capsys):
    rc = main(["--model", "nosuchmodel", "--out", str(tmp_path / "o")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and "digits" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["--steps", "0"], ["--tol", "-1"], ["--num-samples", "x"],
                                  ["--sampler", "magic"], ["--max-iters", "-2"]])
def test_bad_numbers_are_argparse_errors(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err  # one line, no usage (that is --help's)
    assert err.startswith("pint-sample: error: ") and err.count("\n") == 1, err
    assert "usage" not in err


def test_too_many_steps(tmp_path, capsys):
    assert main(["--steps", "5000", "--out", str(tmp_path)]) == 2
    assert "--steps must be <= 1000" in capsys.readouterr().err


def test_latent_folder_is_decoded(tmp_path):
    from diffusers import AutoencoderKL

    folder = tmp_path / "latent"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                ).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16,
                  ).save_pretrained(folder / "vae", safe_serialization=True)
    DDIMScheduler(clip_sample=False).save_pretrained(folder / "scheduler")
    out = tmp_path / "o"
    assert main(["--model", str(folder), "--steps", "12", "--num-samples", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["decoded_with_vae"].endswith("vae")
    assert (out / "convergence.png").exists()


def _run_tiny(folder, out, *extra):
    return main(["--model", str(folder), "--steps", "16", "--out", str(out), *extra])


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("decoy", ["vae", "model_index"])
def test_bundled_name_never_means_a_folder_in_the_working_directory(tmp_path, monkeypatch,
                                                                     decoy):
    """--model digits is the bundled model even beside ./digits/vae or ./digits/model_index.json."""
    decoy_dir = tmp_path / "digits"
    if decoy == "vae":
        (decoy_dir / "vae").mkdir(parents=True)
        (decoy_dir / "vae" / "config.json").write_text("{not a vae")
    else:
        decoy_dir.mkdir()
        (decoy_dir / "model_index.json").write_text(
            json.dumps({"_class_name": "StableDiffusionPipeline"}))
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "digits", "--sampler", "serial", "--steps", "10", "--num-samples", "2",
                 "--out", "out"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "decoded_with_vae" not in report and "pipeline" not in report


def test_a_rerun_replaces_the_previous_runs_files(tiny_folder, tmp_path):
    out = tmp_path / "out"
    assert _run_tiny(tiny_folder, out, "--num-samples", "4") == 0
    assert (out / "convergence.png").exists()
    # what a 4-image pipeline run leaves, and a temporary of a killed run
    (out / "images").mkdir()
    for k in range(4):
        (out / "images" / f"{k:03d}.png").write_bytes(b"old")
    (out / "latents.safetensors").write_bytes(b"old")
    (out / ".pint-tmp-dead-samples.png").write_bytes(b"old")
    (out / ".DS_Store").write_bytes(b"finder")
    assert _run_tiny(tiny_folder, out, "--num-samples", "2", "--sampler", "serial") == 0
    assert sorted(_tree(out)) == [".DS_Store", "report.json", "samples.png"]
    assert json.loads((out / "report.json").read_text())["num_samples"] == 2


def _refuse_to_load(monkeypatch):
    import adapters.diffusion.pretrained as pretrained
    import adapters.text_to_image as t2i

    def fail(*a, **k):
        raise AssertionError("loaded a model before checking the arguments")

    monkeypatch.setattr(pretrained, "load_pretrained", fail)
    monkeypatch.setattr(t2i, "load_text_to_image", fail)


def test_foreign_files_in_out_are_refused_and_kept(tmp_path, monkeypatch, capsys):
    _refuse_to_load(monkeypatch)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "images" / "cat.jpg").write_bytes(b"mine")
    assert main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds files pint-sample did not write (images/cat.jpg, notes.txt)" in err
    assert _tree(out) == {"images/cat.jpg": b"mine", "notes.txt": b"mine", "report.json": b"{}"}


BAD_ARGS = [
    (["--out", "/proc/pint-x"], "--out /proc/pint-x cannot be created: no new folder can be made in /proc"),
    (["--out", "FILE"], "is an existing file"),
    (["--out", "FILE/sub"], "is a file, so the folder cannot be created"),
    (["--num-blocks", "50", "--steps", "10"], "--num-blocks must be <= --steps"),
    (["--blocks", "50", "--steps", "10"], "--num-blocks must be <= --steps"),  # former name
    (["--sampler", "picard", "--max-iters", "0"], "--max-iters must be >= 1 with --sampler picard"),
    (["--sampler", "quasi_newton", "--max-iters", "0"], "--max-iters must be >= 1"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--device", "bogus"], "--device: expected cpu, cuda, cuda:N, mps or xpu, got 'bogus'"),
    (["--window", "8"], "--window is for --sampler picard, quasi_newton or taa, not --sampler srds"),
    (["--sampler", "auto", "--window", "8"], "--window is for"),
    (["--sampler", "picard", "--num-blocks", "4"],
     "--num-blocks (Parareal blocks) is for --sampler srds"),
    (["--sampler", "serial", "--num-blocks", "4"], "--num-blocks"),
    (["--sampler", "quasi_newton", "--no-pipelined"], "--no-pipelined is for --sampler srds"),
    (["--max-batch", "40"], "--max-batch is for --sampler auto"),
    (["--sampler", "taa", "--scheduler", "unipc"], "--sampler taa needs a one-step solver"),
    (["--sampler", "serial", "--tol", "1e-3"], "--tol: --sampler serial does not iterate"),
    (["--steps", "5000"], "--steps must be <= 1000"),
    (["--prompt", "a cat"], "not a text-to-image pipeline folder"),
    (["--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
]


@pytest.mark.parametrize("args, msg", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_in_one_line_before_loading(args, msg, tmp_path, monkeypatch, capsys):
    if "/proc/pint-x" in args and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _refuse_to_load(monkeypatch)
    (tmp_path / "FILE").write_text("a file")
    monkeypatch.chdir(tmp_path)
    argv = args if "--out" in args else [*args, "--out", "o"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pint-sample: error: ") and err.count("\n") == 1, err
    assert msg in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # created nothing


def test_num_blocks_is_the_listed_name_and_blocks_still_works():
    parser = cli.build_parser()
    help_text = parser.format_help()
    assert "--num-blocks" in help_text and "--blocks " not in help_text
    assert parser.parse_args(["--num-blocks", "4", "--out", "o"]).blocks == 4
    assert parser.parse_args(["--blocks", "5", "--out", "o"]).blocks == 5  # the former name


def test_figures_are_readable_sizes(tmp_path):
    """samples.png shows each 8x8 digit >= 160 px (integer nearest-neighbour upscaling, so
    every digit pixel is a flat 20 x 20 block); convergence.png holds the curve, the
    final samples and one difference row per iteration."""
    from matplotlib.image import imread

    torch.manual_seed(0)
    x = torch.rand(9, 1, 8, 8) * 2 - 1
    cli.save_grid(x, tmp_path / "samples.png", "SRDS, N = 1000: 4 iterations")
    img = imread(tmp_path / "samples.png")
    assert img.shape[0] >= 3 * cli.GRID_MIN_PX and img.shape[1] >= 3 * cli.GRID_MIN_PX
    grey = img[..., 0]
    blocks = grey[grey.shape[0] - 8 - 160 : grey.shape[0] - 8].reshape(-1, 20, grey.shape[1])
    assert (blocks.std(axis=1) < 1e-6).mean() > 0.9  # the bottom row's pixels are flat blocks

    iterates = torch.rand(4, 9, 1, 8, 8) * 2 - 1  # coarse, iterations 1-2, final (iteration 3)
    cli.save_convergence([1e-1, 1e-2, 1e-4], iterates, 1e-3, tmp_path / "convergence.png")
    h, w = imread(tmp_path / "convergence.png").shape[:2]
    assert h >= 400 and w >= 900
    cli.save_convergence([1.0, 3.0, 2e-3], None, 1e-4, tmp_path / "window.png",
                         converged=True, accepted=[1, 5, 16], num_steps=16)
    assert imread(tmp_path / "window.png").shape[0] >= 500  # two panels


def test_convergence_figure_shows_the_sample_that_decided(monkeypatch, tmp_path):
    """The curve is the stopping test's max over samples; the panels start with the sample
    whose last change is largest (sample 7 here, beyond the first four), and each row's
    max is that iteration's change in the same units as the curve."""
    from adapters.diffusion import cli_figures

    torch.manual_seed(0)
    it = torch.zeros(4, 8, 1, 8, 8)
    for k in range(1, 4):
        it[k] = it[k - 1] + 1e-4 * torch.randn(8, 1, 8, 8)
        it[k, 6] = it[k - 1, 6] + 10.0 ** (-k)  # sample 7 moves most, every iteration
    history = (it[1:] - it[:-1]).abs().flatten(2).amax(-1).amax(-1).tolist()
    labels = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, t, *a, **k: (labels.append(t), orig(self, t, *a, **k))[1])
    cli_figures.save_convergence(history, it, 2e-3, tmp_path / "c.png")
    samples = [t for t in labels if t.startswith("sample ")]
    assert samples[0] == "sample 7" and len(samples) == 4
    steps, per = cli_figures._changes(it)
    assert per.max(1).tolist() == pytest.approx(history)


def test_broken_model_folder_is_one_line(tiny_folder, tmp_path, capsys):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert _run_tiny(folder, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(weights) in err and "Traceback" not in err


def test_ctrl_c_while_writing_leaves_the_previous_outputs(tiny_folder, tmp_path, monkeypatch,
                                                         capsys):
    out = tmp_path / "out"
    assert _run_tiny(tiny_folder, out, "--num-samples", "2") == 0
    before = _tree(out)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "save_convergence", interrupted)  # after samples.png is staged
    capsys.readouterr()
    assert _run_tiny(tiny_folder, out, "--num-samples", "3", "--seed", "1") == 130
    err = capsys.readouterr().err  # the SRDS progress bar, then one line
    assert err.splitlines()[-1] == f"pint-sample: interrupted; {out} was left as it was"
    assert "Traceback" not in err
    assert _tree(out) == before  # no temporaries, no new files


def test_ctrl_c_while_sampling_is_one_line(tiny_folder, tmp_path, monkeypatch, capsys):
    import adapters.diffusion as diffusion

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffusion, "serial_sample", interrupted)
    assert _run_tiny(tiny_folder, tmp_path / "o", "--sampler", "serial") == 130
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_ctrl_c_while_moving_outputs_into_place_is_held_back(tiny_folder, tmp_path,
                                                            monkeypatch, capsys):
    """SIGINT during the final renames waits until every file is in place."""
    out = tmp_path / "out"
    assert _run_tiny(tiny_folder, out, "--num-samples", "4") == 0
    real_replace = os.replace

    def replace(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(cli.os, "replace", replace)
    assert _run_tiny(tiny_folder, out, "--num-samples", "2", "--sampler", "serial") == 130
    assert "the outputs were written" in capsys.readouterr().err
    assert sorted(_tree(out)) == ["report.json", "samples.png"]
    assert json.loads((out / "report.json").read_text())["num_samples"] == 2
