"""Fixtures shared by the diffusion tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def unet():
    """A tiny random ``UNet2DModel`` on ``[b, 1, 8, 8]`` (seeded; one per test module)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): tiny models gain nothing from threads, and on a
    busy machine OpenMP threads that spin-wait for each other make them up to 30x slower;
    restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
