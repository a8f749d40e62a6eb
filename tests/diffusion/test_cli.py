"""pint-sample end to end: outputs, report, and clear failures."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402

from adapters.diffusion.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
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
    assert report["speedup_in_sequential_calls"] == pytest.approx(64 / report["depth"])
    assert "wall_clock_speedup" in report
    for png in ("samples.png", "convergence.png"):
        assert (out / png).stat().st_size > 2000
    assert "wrote" in capsys.readouterr().out


def test_serial_sampler_and_bundled_model(tmp_path):
    rc = main(["--model", "digits", "--sampler", "serial", "--steps", "10",
               "--num-samples", "2", "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "report.json").read_text())["depth"] == 10


@pytest.mark.parametrize("extra", [["--sampler", "quasi_newton", "--window", "16"],
                                   ["--sampler", "picard"],
                                   ["--sampler", "auto", "--max-batch", "40"]])
def test_window_samplers(tiny_folder, tmp_path, extra):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_folder), "--steps", "64", "--num-samples", "4",
                 "--compare-serial", "--out", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["window"] == {"--window": 16, "--max-batch": 10}.get(extra[-2], 32)
    assert report["depth"] == report["iterations"] == len(report["history"]) < 64
    assert report["max_abs_diff_vs_serial"] < 1e-3
    assert (out / "convergence.png").stat().st_size > 2000


def test_unknown_model_lists_what_exists(tmp_path, capsys):
    rc = main(["--model", "nosuchmodel", "--out", str(tmp_path / "o")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and "digits" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["--steps", "0"], ["--tol", "-1"], ["--num-samples", "x"],
                                  ["--sampler", "magic"], ["--max-iters", "-2"]])
def test_bad_numbers_are_argparse_errors(args, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path)])
    assert exc.value.code == 2


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
