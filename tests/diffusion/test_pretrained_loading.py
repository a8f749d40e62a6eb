"""load_pretrained: the folder's own scheduler class, clear errors for broken folders, quiet
loads, and the bundled-model table."""

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

from adapters.diffusion import pretrained  # noqa: E402
from adapters.diffusion.pretrained import (  # noqa: E402
    PretrainedNotFoundError,
    inspect_pretrained,
    load_pretrained,
)


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet") / "unet"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                ).save_pretrained(folder, safe_serialization=True)
    return folder


def make_folder(tmp_path, unet_dir, scheduler_name: str):
    folder = tmp_path / scheduler_name
    shutil.copytree(unet_dir, folder / "unet")
    getattr(diffusers, scheduler_name)().save_pretrained(folder / "scheduler")
    return folder


@pytest.mark.parametrize("name", ["LMSDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_unsupported_scheduler_is_refused_not_turned_into_ddim(tiny_unet, tmp_path, name):
    folder = make_folder(tmp_path, tiny_unet, name)
    with pytest.raises(PretrainedNotFoundError, match=name):
        load_pretrained(folder)


@pytest.mark.parametrize("name", ["FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler",
                                  "DDPMScheduler"])
def test_the_folders_own_scheduler_goes_to_the_bridge(tiny_unet, tmp_path, monkeypatch, name):
    import adapters.diffusers as bridge

    seen = []
    monkeypatch.setattr(bridge, "from_diffusers", lambda unet, sched: seen.append(sched) or 1)
    assert load_pretrained(make_folder(tmp_path, tiny_unet, name)) == 1
    assert type(seen[0]).__name__ == name


@pytest.mark.parametrize("name", ["NoSuchScheduler", "UNet2DModel"])
def test_scheduler_class_diffusers_lacks(tiny_unet, tmp_path, name):
    folder = make_folder(tmp_path, tiny_unet, "DDIMScheduler")
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": name}))
    with pytest.raises(PretrainedNotFoundError, match=f"{name}.*not a scheduler"):
        inspect_pretrained(folder)
    with pytest.raises(PretrainedNotFoundError, match=name):
        load_pretrained(folder)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, file", [
    (_truncate, "unet/diffusion_pytorch_model.safetensors"),
    (lambda p: p.write_bytes(b"garbage" * 20), "unet/diffusion_pytorch_model.safetensors"),
    (lambda p: p.write_text('{"_class_name": "UNet2DModel", '), "unet/config.json"),
    (lambda p: p.write_text("[1, 2]"), "unet/config.json"),
    (lambda p: p.write_text("{not json"), "scheduler/scheduler_config.json"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00"), "scheduler/scheduler_config.json"),
])
def test_broken_files_are_named(tiny_unet, tmp_path, damage, file):
    folder = make_folder(tmp_path, tiny_unet, "DDIMScheduler")
    damage(folder / file)
    with pytest.raises(PretrainedNotFoundError) as exc:
        load_pretrained(folder)
    assert str(folder / file) in str(exc.value)


def test_bad_config_values_are_named(tiny_unet, tmp_path):
    folder = make_folder(tmp_path, tiny_unet, "DDIMScheduler")
    cfg = folder / "scheduler" / "scheduler_config.json"
    good = cfg.read_text()
    cfg.write_text(json.dumps({**json.loads(good), "beta_schedule": "wavy"}))
    with pytest.raises(PretrainedNotFoundError, match="scheduler_config.json: cannot build"):
        load_pretrained(folder)
    cfg.write_text(good)
    cfg = folder / "unet" / "config.json"  # weights no longer fit the config
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "block_out_channels": [4, 8]}))
    with pytest.raises(PretrainedNotFoundError, match="cannot load the UNet2DModel"):
        load_pretrained(folder)


def test_bundled_table_and_missing_bundled_messages(tmp_path, monkeypatch):
    assert pretrained.BUNDLED["digits-flow"] == pretrained.BUNDLED_DIR / "digits-flow"
    assert "digits" in pretrained.available()
    for name, script in (("digits", "train_digits"), ("digits-flow", "train_digits_flow")):
        monkeypatch.setitem(pretrained.BUNDLED, name, tmp_path / "absent")
        assert name not in pretrained.available()
        with pytest.raises(PretrainedNotFoundError,
                           match=rf"re-create it with python -m adapters\.diffusion\.pretrained\."
                                 rf"{script}$"):
            load_pretrained(name)


def test_loading_the_bundled_model_is_quiet(capfd, caplog):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, schedule = load_pretrained("digits", dtype=torch.float64)
    assert model.dtype == torch.float64
    noise = capfd.readouterr()
    text = noise.out + noise.err + caplog.text + " ".join(str(w.message) for w in caught)
    assert "accelerate" not in text and "kept in float32" not in text, text
