"""Fixtures for the widget tests: real viewers, tiny models, synthetic data, captured errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aeseg._widgets.session import SESSION
from napari_aeseg.core.noise import add_noise
from napari_aeseg.core.synthetic import synthetic_nuclei

#: a network of a few thousand parameters: fast enough for 2 shared CPU cores
TINY = {
    "mode": "n2v",
    "steps": 40,
    "patch_size": 32,
    "batch_size": 4,
    "depth": 1,
    "base_channels": 8,
    "learning_rate": 3e-3,
    "preview_every": 20,
    "device": "cpu",
}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Train on one CPU thread: on a shared 2-core machine, two OpenMP threads competing with
    other processes make a tiny step 50x slower (spinning threads), and the GUI thread needs
    a core to stay responsive."""
    import torch

    from napari_aeseg.core import devices

    patch = pytest.MonkeyPatch()
    patch.setattr(devices, "_configure_cpu_threads", lambda: None)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    patch.undo()


@pytest.fixture(autouse=True)
def empty_session():
    SESSION.clear()
    yield SESSION
    SESSION.clear()


@pytest.fixture(scope="session")
def nuclei():
    """Clean synthetic nuclei and a noisy copy (Gaussian sigma 0.2 of the range)."""
    sample = synthetic_nuclei((96, 96), seed=0)
    noisy = add_noise(sample.clean, gaussian=0.2, seed=1, value_range=(0.0, 1.0))
    return sample.clean, noisy


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets show with napari's show_error."""
    shown: list[str] = []
    for module in ("_common", "train", "denoise"):
        monkeypatch.setattr(f"napari_aeseg._widgets.{module}.show_error", shown.append)
    return shown


@pytest.fixture
def viewer_with_widgets(make_napari_viewer, nuclei):
    """A viewer with the noisy image and both widgets docked through the manifest."""

    def make(image=None, name="noisy", **layer_kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(nuclei[1] if image is None else image, name=name, **layer_kwargs)
        _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
        _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
        train.set_options(**TINY)
        return viewer, train, denoise

    return make


def layer_state(viewer) -> list[tuple[str, int]]:
    return [(layer.name, id(layer.data)) for layer in viewer.layers]


def wait_idle(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def as_float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)
