"""Train in the Train widget, denoise in the Denoise widget: the whole GUI path."""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_aeseg._widgets.denoise import output_name
from napari_aeseg._widgets.loss_plot import TRAIN_COLOR, VAL_COLOR
from napari_aeseg.core.config import Normalization
from napari_aeseg.core.denoiser import DenoiserModel
from napari_aeseg.core.models import build_network
from napari_aeseg.core.noise import psnr

from .conftest import TINY, layer_state, wait_idle


def test_train_from_start_button_then_denoise(qtbot, viewer_with_widgets, nuclei):
    clean, noisy = nuclei
    viewer, train, denoise = viewer_with_widgets()
    assert train.axes_edit.text() == "YX"

    train.start_button.click()
    assert train.running and train.stop_button.isEnabled()
    wait_idle(qtbot, train)

    model = train.model
    assert model is not None and model.trained_steps == 40
    steps = [s for s, _ in train.loss_plot.train_points]
    assert steps == list(range(1, 41))
    assert train.loss_plot.val_points, "validation losses are plotted too"
    assert _pixels_of(train.loss_plot, TRAIN_COLOR) > 50, "the train curve is drawn"
    assert _pixels_of(train.loss_plot, VAL_COLOR) > 10, "the validation curve is drawn"
    # the preview (every 20 steps) overlays the input
    preview = viewer.layers["noisy preview"]
    assert preview.data.shape == noisy.shape
    # hidden once training ends: it would cover the image and every result laid over it
    assert not preview.visible and "preview is hidden" in train.status.text()
    offered = [train.layer_list.item(i).text() for i in range(train.layer_list.count())]
    assert offered == ["noisy"], "the preview is never offered as a training image"
    # the model is offered in the Denoise widget, selected
    assert denoise.model_names() == [model.name] == ["noisy-n2v"]
    assert denoise.model_combo.currentText() == model.name

    denoise.run_button.click()
    assert denoise.progress.maximum() == 0, "busy until the tiles are counted, not 0 / 100"
    wait_idle(qtbot, denoise)
    assert denoise.progress.value() == denoise.progress.maximum() > 0
    out_layer = viewer.layers[output_name("noisy", model.name)]
    out = np.asarray(out_layer.data)
    assert out.shape == noisy.shape and out.dtype == np.float32
    before, after = psnr(clean, noisy, 1.0), psnr(clean, out, 1.0)
    print(f"PSNR vs clean: noisy {before:.2f} dB, denoised {after:.2f} dB")
    assert after > before + 1.0

    n_layers = len(viewer.layers)
    denoise.run_button.click()
    wait_idle(qtbot, denoise)
    assert len(viewer.layers) == n_layers
    assert viewer.layers[output_name("noisy", model.name)] is out_layer
    np.testing.assert_allclose(out_layer.data, out, atol=1e-5)


def test_stop_is_fast_and_continue_resumes(qtbot, viewer_with_widgets):
    viewer, train, _ = viewer_with_widgets()
    train.set_options(steps=100_000, preview=False)
    train.start_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.train_points) >= 5, timeout=60_000)

    t0 = time.perf_counter()
    train.stop_button.click()
    wait_idle(qtbot, train, timeout=5000)
    stop_s = time.perf_counter() - t0
    print(f"Stop took {stop_s * 1000:.0f} ms")
    assert stop_s < 1.0
    first = train.model
    stopped_at = first.trained_steps
    assert 5 <= stopped_at < 100_000
    assert train.continue_button.isEnabled()

    train.continue_button.click()
    qtbot.waitUntil(lambda: train.loss_plot.train_points[-1][0] >= stopped_at + 5, timeout=60_000)
    train.stop_button.click()
    wait_idle(qtbot, train, timeout=5000)
    steps = [s for s, _ in train.loss_plot.train_points]
    assert steps == list(range(1, len(steps) + 1)), "Continue carries on from the stop"
    assert train.model.trained_steps == steps[-1] > stopped_at
    assert train.trainer.step == train.model.trained_steps
    # the continued model replaces the first one under the same name
    assert train.model.name == first.name


def test_continue_after_a_finished_run_adds_steps(qtbot, viewer_with_widgets):
    _, train, _ = viewer_with_widgets()
    train.set_options(steps=10, preview=False)
    train.start(sync=True)
    assert train.model.trained_steps == 10
    optimiser = train.trainer.optimizer
    train.resume(sync=True)
    assert train.model.trained_steps == 20
    assert train.trainer.optimizer is optimiser


def test_rgb_declared_as_yx_is_refused(viewer_with_widgets, errors):
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    viewer, train, _ = viewer_with_widgets(rgb, name="rgb", rgb=True)
    assert train.axes_edit.text() == "YXC"
    before = layer_state(viewer)
    train.set_options(axes="YX")
    train.start_button.click()
    assert not train.running
    assert len(errors) == 1 and "RGB" in errors[0]
    assert layer_state(viewer) == before


def test_image_smaller_than_patch_is_refused(qtbot, viewer_with_widgets, errors):
    small = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    viewer, train, _ = viewer_with_widgets(small, name="small")
    before = layer_state(viewer)
    train.start_button.click()
    wait_idle(qtbot, train)
    assert len(errors) == 1 and "smaller than the patch size" in errors[0]
    assert layer_state(viewer) == before
    assert train.model is None and train.start_button.isEnabled()


def test_deleting_the_input_layer_while_training(qtbot, viewer_with_widgets, errors):
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(steps=60, preview_every=10)
    train.start_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.train_points) >= 3, timeout=60_000)
    viewer.layers.remove("noisy")
    wait_idle(qtbot, train)
    assert errors == []
    assert train.model.trained_steps == 60
    assert len(viewer.layers) == 1, "only the preview layer is left"
    assert denoise.layer_combo.count() == 0, "and it is no input to denoise"


def test_closing_the_viewer_stops_training(qtbot, make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[1], name="noisy")
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    train.set_options(
        mode="n2v", steps=100_000, patch_size=32, batch_size=4, depth=1, base_channels=8
    )
    train.start_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.train_points) >= 2, timeout=60_000)
    holder = train._holder
    viewer.close()
    qtbot.waitUntil(lambda: holder.job.idle.is_set(), timeout=5000)
    assert holder.job.trainer.step < 100_000


def test_gui_stays_responsive_while_training(qtbot, viewer_with_widgets):
    _, train, _ = viewer_with_widgets()
    train.set_options(steps=100_000, preview_every=25)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    train.start_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.train_points) >= 1, timeout=60_000)
    last[0] = time.perf_counter()
    timer.start()
    qtbot.wait(3000)
    timer.stop()
    train.stop_button.click()
    wait_idle(qtbot, train, timeout=5000)
    n_steps = len(train.loss_plot.train_points)
    print(
        f"main-thread timer: {len(gaps)} ticks, max gap {max(gaps) * 1000:.0f} ms, "
        f"median {np.median(gaps) * 1000:.1f} ms, {n_steps} steps trained"
    )
    assert n_steps > 10, "training made progress while the timer ran"
    assert max(gaps) < 0.5


def test_save_then_load_in_a_new_viewer(
    qtbot, make_napari_viewer, viewer_with_widgets, nuclei, tmp_path, monkeypatch, empty_session
):
    from qtpy.QtWidgets import QFileDialog

    _, noisy = nuclei
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(steps=20, preview=False)
    train.start(sync=True)
    denoise.run(sync=True)
    first = np.asarray(viewer.layers[output_name("noisy", train.model.name)].data)

    target = tmp_path / "tiny"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    train.save_button.click()
    saved = target.with_suffix(".aeseg")
    assert saved.is_file()

    empty_session.clear()
    viewer2 = make_napari_viewer()
    viewer2.add_image(noisy, name="noisy")
    _, denoise2 = viewer2.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    assert denoise2.model_names() == []
    assert not denoise2.run_button.isEnabled()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(saved), ""))
    denoise2.load_button.click()
    assert denoise2.model_names() == ["noisy-n2v"]
    denoise2.load_button.click()  # the same file again: the model already loaded is used
    assert denoise2.model_names() == ["noisy-n2v"]
    denoise2.run_button.click()
    wait_idle(qtbot, denoise2)
    second = np.asarray(viewer2.layers[output_name("noisy", "noisy-n2v")].data)
    np.testing.assert_array_equal(first, second)

    # the Train widget's Load puts the model in the session too, ready to Continue
    empty_session.clear()
    _, train2 = viewer2.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    train2.load_button.click()
    assert train2.continue_button.isEnabled()
    assert train2.loss_plot.train_points[-1][0] == 20
    train2.set_options(steps=5, preview=False)
    train2.resume(sync=True)
    assert train2.model.trained_steps == 25


def _pixels_of(widget, color) -> int:
    """How many pixels of ``widget`` (rendered off-screen) have about this colour."""
    image = widget.grab().toImage()
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    rgb = bgra[..., [2, 1, 0]].astype(int)
    target = np.array([color.red(), color.green(), color.blue()])
    return int((np.abs(rgb - target).sum(axis=-1) < 40).sum())


def test_an_unexpected_error_is_one_line_and_the_widget_recovers(
    viewer_with_widgets, monkeypatch, errors
):
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(steps=5, preview=False)
    train.start(sync=True)
    before = layer_state(viewer)

    def broken(*args, **kwargs):
        raise RuntimeError("graphics card on fire\nlong traceback text")

    monkeypatch.setattr("napari_aeseg._widgets.denoise.show_result_layer", broken)
    denoise.run(sync=True)
    assert errors == [
        "Showing the result failed unexpectedly (RuntimeError: graphics card on fire); "
        "the layers are unchanged."
    ]
    assert layer_state(viewer) == before
    assert denoise.run_button.isEnabled() and not denoise.running


def test_closing_the_dock_widget_stops_training(qtbot, viewer_with_widgets):
    viewer, train, _ = viewer_with_widgets()
    train.set_options(steps=100_000, preview=False)
    train.start_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.train_points) >= 2, timeout=60_000)
    holder = train._holder
    viewer.window.remove_dock_widget(train)  # what the dock's close button does
    assert holder.job.idle.is_set(), "the worker ended before the widget went away"
    assert holder.job.trainer.step < 100_000


def test_gui_options_reach_the_config(viewer_with_widgets):
    _, train, _ = viewer_with_widgets()
    assert train.advanced.isExpanded() is False, "rarely changed options start collapsed"
    assert not train.noise_row.isVisibleTo(train)
    assert train.progress.text() == f"0 / {train.steps.value()} steps", "the steps asked for"
    train.set_options(
        mode="dae",
        noise="poisson:20",
        steps=3,
        depth=2,
        base_channels=8,
        optimizer="adamw",
        loss="l1",
        scheduler="constant",
        val_fraction=0.2,
        seed=7,
        name="my model",
        preview=False,
    )
    assert train.noise_row.isVisibleTo(train)
    train.start(sync=True)
    config = train.model.config
    assert train.model.name == "my model"
    assert config.mode == "dae" and [str(n) for n in config.noise] == ["poisson:20"]
    assert config.architecture.depth == 2 and config.architecture.base_channels == 8
    t = config.training
    assert (t.optimizer, t.loss, t.scheduler, t.val_fraction, t.seed) == (
        "adamw",
        "l1",
        "constant",
        0.2,
        7,
    )
    assert (t.steps, t.patch_size, t.batch_size) == (3, 32, 4)


def test_flip_averaging_checkbox_reaches_the_engine(viewer_with_widgets, nuclei):
    _, noisy = nuclei
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(steps=10, preview=False)
    train.start(sync=True)
    model = train.model
    name = output_name("noisy", model.name)

    denoise.run(sync=True)
    plain = np.array(viewer.layers[name].data)
    denoise.tta_check.setChecked(True)
    denoise.run(sync=True)
    averaged = np.array(viewer.layers[name].data)

    np.testing.assert_allclose(plain, model.denoise(noisy, device="cpu"), atol=1e-5)
    np.testing.assert_allclose(averaged, model.denoise(noisy, device="cpu", tta=True), atol=1e-5)
    assert np.abs(averaged - plain).max() > 1e-4, "flip averaging changes the result"


def test_denoise_widget_shows_the_axes_before_any_model(viewer_with_widgets):
    volume = np.zeros((6, 32, 32), np.float32)
    viewer, _, denoise = viewer_with_widgets(volume, name="stack")
    assert denoise.model() is None
    assert denoise.axes_edit.text() == "ZYX"  # the guess for the layer already there


def test_users_layers_named_like_outputs_stay_untouched(viewer_with_widgets, nuclei):
    """The preview and the denoised layer update only layers the widgets made themselves."""
    _, noisy = nuclei
    viewer, train, denoise = viewer_with_widgets()
    mine_preview = viewer.add_image(np.zeros_like(noisy), name="noisy preview")
    train.set_options(steps=10, preview_every=5)
    train.start(sync=True)
    model = train.model
    mine_out = viewer.add_image(np.ones_like(noisy), name=output_name("noisy", model.name))
    denoise.layer_combo.setCurrentText("noisy")
    denoise.run(sync=True)
    denoise.run(sync=True)
    assert not np.asarray(mine_preview.data).any() and np.all(np.asarray(mine_out.data) == 1)
    outputs = [ly for ly in viewer.layers if "napari_aeseg_output" in ly.metadata]
    assert sorted(ly.metadata["napari_aeseg_output"] for ly in outputs) == sorted(
        ["noisy preview", output_name("noisy", model.name)]
    )
    made = next(ly for ly in outputs if ly.metadata["napari_aeseg_output"] != "noisy preview")
    np.testing.assert_allclose(made.data, model.denoise(noisy, device="cpu"), atol=1e-5)


def test_results_for_a_closed_widget_are_dropped_quietly(qtbot, errors):
    """A job that ends after its viewer closed has nowhere to show its result: no error
    notification about deleted Qt objects."""
    from qtpy import sip
    from qtpy.QtWidgets import QProgressBar

    from napari_aeseg._widgets._common import _reporting

    class Owner(QProgressBar):
        def show_it(self, value):
            self.setValue(value)

    owner = Owner()
    handler = _reporting(owner.show_it)
    handler(3)
    assert owner.value() == 3
    sip.delete(owner)
    handler(4)
    assert errors == []


def test_3d_gets_smaller_batches_and_long_runs_a_hint(make_napari_viewer):
    """Batches of 16 3D patches took 9-13 s a step on a CPU: the form offers 4 for a stack
    (a batch the user set stays), and a run that would last over an hour says what helps."""
    from napari_aeseg.core.training import TrainingProgress

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 64, 64), np.float32), name="stack")
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    assert train.axes_edit.text() == "ZYX" and train.batch_size.value() == 4
    train.set_options(axes="YX")
    assert train.batch_size.value() == 16
    train.set_options(batch_size=6, axes="ZYX")
    assert train.batch_size.value() == 6
    # a batch chosen by the user stays when layers come and go or the axes are re-entered
    train.set_options(axes="YX", batch_size=4)
    viewer.add_image(np.zeros((64, 64), np.float32), name="other")
    train.set_options(axes="YX")
    assert train.batch_size.value() == 4
    train._running, train._latest = (
        True,
        TrainingProgress(
            step=10,
            total_steps=2000,
            epoch=0,
            train_loss=0.1,
            val_loss=None,
            best_val_loss=None,
            learning_rate=1e-3,
            steps_per_second=0.1,
            eta_seconds=19_900.0,
        ),
    )
    train._flush_progress()
    assert "over an hour: a smaller patch or batch" in train.status.text()
    train._running = False


def test_a_result_layer_follows_the_inputs_units(make_napari_viewer):
    """Rerun after the input got units: the output layer gets them too (napari warns and
    drops units when layers disagree)."""
    from napari_aeseg._widgets._common import spatial_metadata
    from napari_aeseg._widgets.train import show_result_layer

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    display = {"rgb": False, "colormap": None, "contrast_limits": (0.0, 1.0), "dtype": "float32"}
    out = show_result_layer(viewer, "out", image.data, spatial_metadata(image), display)
    image.units, image.axis_labels = ("µm", "µm"), ("y", "x")
    again = show_result_layer(viewer, "out", image.data, spatial_metadata(image), display)
    assert again is out
    assert out.units == image.units and out.axis_labels == ("y", "x")


def test_denoise_keeps_labelled_axes_and_fits_guesses_to_the_model(viewer_with_widgets):
    from napari_aeseg._widgets.denoise import axes_for_model
    from napari_aeseg.core.training import make_denoiser_config

    rng = np.random.default_rng(0)
    viewer, _, _ = viewer_with_widgets()
    labelled = viewer.add_image(rng.random((32, 32, 2)), name="yxc", axis_labels=("y", "x", "c"))
    plain = viewer.add_image(rng.random((2, 32, 32)), name="plain")
    movie = viewer.add_image(rng.random((4, 32, 32)), name="movie")

    def model(axes, shape):
        cfg = make_denoiser_config(shape, axes=axes, depth=2, base_channels=4)
        cfg.normalization = Normalization(low=[0.0] * cfg.n_channels, high=[1.0] * cfg.n_channels)
        return DenoiserModel(config=cfg, network=build_network(cfg.architecture))

    cyx = model("CYX", (2, 32, 32))
    # the layer's own labels win over the model's order of the same letters
    assert axes_for_model(labelled, cyx) == "YXC"
    assert axes_for_model(plain, cyx) == "CYX"
    # a guess (2-4 planes: channels) gives way to what fits a one-channel 2D model
    assert axes_for_model(movie, model("TYX", (4, 32, 32))) == "TYX"
    assert axes_for_model(movie, model("YX", (32, 32))) == "SYX"
    # a movie of 6 frames of 3 planes is guessed as an ImageJ hyperstack (ZCYX); for a
    # one-channel 2D model it is read as frames of planes, slice by slice
    frames = viewer.add_image(rng.random((6, 3, 32, 32)), name="frames")
    assert axes_for_model(frames, None) == "ZCYX"
    assert axes_for_model(frames, model("YX", (32, 32))) == "TSYX"
    # a layer that spaces that axis out (a Z step) is a movie of planes in the first place
    spaced = viewer.add_image(rng.random((6, 3, 32, 32)), name="spaced", scale=(1, 2, 1, 1))
    assert axes_for_model(spaced, None) == "TZYX"


def test_denoise_warns_on_intensities_far_from_the_training_data(
    viewer_with_widgets, nuclei, monkeypatch
):
    warned: list[str] = []
    monkeypatch.setattr("napari_aeseg._widgets.denoise.show_warning", warned.append)
    viewer, train, denoise = viewer_with_widgets()
    train.set_options(steps=2, preview=False)
    train.start(sync=True)
    denoise.run(sync=True)
    assert warned == []
    viewer.add_image((nuclei[1] * 3000 - 1000).astype(np.int16), name="ct")
    denoise.layer_combo.setCurrentText("ct")
    denoise.run(sync=True)
    assert len(warned) == 1 and "far from those" in warned[0]
    assert viewer.layers[output_name("ct", train.model.name)].data.shape == nuclei[1].shape


def test_starting_training_scrolls_its_status_into_view(qtbot, make_napari_viewer, nuclei):
    """With Advanced open in a small window, the status is below the fold: Start scrolls
    it into view."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1100, 600)
    viewer.add_image(nuclei[1], name="noisy")
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    train.set_options(**{**TINY, "steps": 4})
    train.advanced.expand(animate=False)
    scroll = train.findChild(QScrollArea)
    qtbot.wait(200)
    assert scroll.verticalScrollBar().value() == 0
    train.start_button.click()
    qtbot.waitUntil(lambda: scroll.verticalScrollBar().value() > 0, timeout=5_000)
    top = train.status.mapTo(scroll.viewport(), train.status.rect().topLeft()).y()
    assert 0 <= top < scroll.viewport().height(), "the status line is on screen"
    wait_idle(qtbot, train)
