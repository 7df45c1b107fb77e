import os

# OpenMP threads that sleep between parallel regions: many tiny models, and CI machines
# shared with other jobs, make spinning threads very costly
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from napari_aeseg.core.noise import add_noise
from napari_aeseg.core.synthetic import synthetic_nuclei


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def two_crops():
    """Two 48 x 48 crops of the 128 x 128 nuclei images, as a mask (labeled crops)."""
    crops = np.zeros((128, 128), bool)
    crops[8:56, 8:56] = crops[72:120, 64:112] = True
    return crops


@pytest.fixture(scope="session")
def nuclei_2d():
    """Synthetic 2D nuclei (clean in [0, 1]) with Gaussian noise of 0.15 of the range."""
    s = synthetic_nuclei((128, 128), seed=3)
    noisy = add_noise(s.clean, gaussian=0.15, seed=4, value_range=(0.0, 1.0))
    return s.clean, noisy, s.labels


@pytest.fixture(scope="session")
def nuclei_3d():
    s = synthetic_nuclei((16, 64, 64), seed=5)
    noisy = add_noise(s.clean, gaussian=0.15, seed=6, value_range=(0.0, 1.0))
    return s.clean, noisy, s.labels


TINY = dict(depth=2, base_channels=8, patch_size=32, batch_size=4, learning_rate=3e-3)


@pytest.fixture
def tiny():
    return dict(TINY)


@pytest.fixture(autouse=True)
def _few_threads():
    # tests run many tiny models: thread start-up costs more than it gains
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def uint16_image(seed=0, shape=(96, 96)):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(np.uint16)
