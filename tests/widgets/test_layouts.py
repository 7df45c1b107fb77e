"""2D, 3D, time series, RGB and dask-backed layers through both widgets."""

from __future__ import annotations

import dask.array as da
import numpy as np
from napari.utils.colormaps import Colormap

from napari_aeseg._widgets.denoise import output_name
from napari_aeseg.core.noise import add_noise
from napari_aeseg.core.synthetic import synthetic_nuclei

from .conftest import layer_state, wait_idle

SMALL = {"steps": 8, "preview_every": 4, "patch_size": 16, "batch_size": 2}


def test_3d_stack_keeps_scale_and_translate(viewer_with_widgets):
    clean = synthetic_nuclei((16, 48, 48), seed=2).clean
    noisy = add_noise(clean, gaussian=0.2, seed=3, value_range=(0.0, 1.0))
    custom = Colormap(["black", "magenta"], name="custom magenta")
    viewer, train, denoise = viewer_with_widgets(
        noisy, name="stack", scale=(3.0, 0.5, 0.5), translate=(10.0, 5.0, -2.0), colormap=custom
    )
    assert train.axes_edit.text() == "ZYX" and train.patch_size_z.isEnabled()
    train.set_options(**SMALL, patch_size_z=8)
    train.start(sync=True)
    assert train.model.config.spatial_dims == 3
    preview = viewer.layers["stack preview"]
    assert preview.data.shape == (16, 48, 48)
    np.testing.assert_allclose(preview.scale, (3.0, 0.5, 0.5))
    np.testing.assert_allclose(preview.translate, (10.0, 5.0, -2.0))

    denoise.run(sync=True)
    out = viewer.layers[output_name("stack", train.model.name)]
    assert out.data.shape == noisy.shape
    np.testing.assert_allclose(out.scale, (3.0, 0.5, 0.5))
    np.testing.assert_allclose(out.translate, (10.0, 5.0, -2.0))
    assert out.colormap.name == preview.colormap.name == viewer.layers["stack"].colormap.name


def test_dask_time_series(viewer_with_widgets):
    frames = np.stack([synthetic_nuclei((64, 64), seed=s).clean for s in range(4)]).astype(
        np.float32
    )
    frames = add_noise(frames, gaussian=0.2, seed=4, value_range=(0.0, 1.0))
    lazy = da.from_array(frames, chunks=(1, 64, 64))
    viewer, train, denoise = viewer_with_widgets(lazy, name="movie")
    viewer.dims.set_current_step(0, 2)
    train.set_options(**SMALL, axes="TYX")
    train.start(sync=True)
    # the preview is the frame on screen, placed at its time point
    preview = viewer.layers["movie preview"]
    assert preview.data.shape == (1, 64, 64)
    np.testing.assert_allclose(preview.translate, (2.0, 0.0, 0.0))
    assert isinstance(viewer.layers["movie"].data, da.Array), "the input layer stays lazy"

    assert denoise.axes_edit.text() in ("TYX", "SYX")
    denoise.axes_edit.setText("TYX")
    denoise.run(sync=True)
    out = viewer.layers[output_name("movie", train.model.name)]
    assert isinstance(out.data, np.ndarray) and out.data.shape == (4, 64, 64)
    assert denoise.axes_edit.text() == "TYX", "a new layer in the list keeps the user's axes"
    assert denoise.layer_combo.currentText() == "movie"


def test_2d_model_on_a_stack_goes_slice_by_slice(viewer_with_widgets, nuclei, errors):
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(**SMALL)
    train.start(sync=True)
    stack = np.stack([nuclei[1]] * 3)
    viewer.add_image(stack, name="stack")
    denoise.layer_combo.setCurrentText("stack")
    assert denoise.axes_edit.text() == "SYX"

    denoise.axes_edit.setText("ZYX")
    before = layer_state(viewer)
    denoise.run(sync=True)
    assert len(errors) == 1 and "call its Z axis S" in errors[0]
    assert layer_state(viewer) == before

    denoise.axes_edit.setText("SYX")
    denoise.run(sync=True)
    out = viewer.layers[output_name("stack", train.model.name)].data
    single = viewer.layers[output_name("stack", train.model.name)]
    assert out.shape == stack.shape and single.ndim == 3
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)


def test_rgb_image(viewer_with_widgets):
    rgb = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    viewer, train, denoise = viewer_with_widgets(rgb, name="photo", rgb=True)
    train.set_options(**SMALL)
    train.start(sync=True)
    assert train.model.config.n_channels == 3
    assert viewer.layers["photo preview"].rgb
    denoise.run(sync=True)
    out = viewer.layers[output_name("photo", train.model.name)]
    assert out.rgb and out.data.shape == rgb.shape and out.data.dtype == np.uint8


def test_cancel_denoising_leaves_no_layer(qtbot, viewer_with_widgets):
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(**SMALL, preview=False)
    train.start(sync=True)
    viewer.add_image(np.random.default_rng(0).random((512, 512)).astype(np.float32), name="big")
    denoise.layer_combo.setCurrentText("big")
    denoise.tile_edit.setCurrentText("32")
    denoise.overlap_edit.setCurrentText("8")
    before = layer_state(viewer)
    denoise.run_button.click()
    assert denoise.cancel_button.isEnabled()
    denoise.cancel_button.click()
    wait_idle(qtbot, denoise)
    assert layer_state(viewer) == before
    assert "Cancelled" in denoise.status.text()
    assert denoise.run_button.isEnabled()
