"""The Segment widget in a real viewer: scribbles -> labels, probability and uncertainty."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_aeseg._widgets.segment import FINE_TUNE, INSTANT, LIVE_DELAY_MS, output_names
from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.metrics import score_instances, score_semantic
from napari_aeseg.core.noise import add_noise
from napari_aeseg.core.postprocess import instances_from_probabilities
from napari_aeseg.core.segmenter import SegmenterModel
from napari_aeseg.core.synthetic import synthetic_nuclei
from napari_aeseg.core.training import train_denoiser
from napari_aeseg.demo import simulated_scribbles

from .conftest import wait_idle

SEG_NAME, PROB_NAME, UNC_NAME = output_names("noisy")
#: a segmenter of a few thousand parameters; 2 shared CPU cores
TINY_SEG = {
    "mode": FINE_TUNE,
    "steps": 60,
    "batch_size": 4,
    "patch_size": 32,
    # at 3e-3 the object probability barely passes 0.5 after 60 steps
    "learning_rate": 1e-2,
    "base_channels": 8,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def cells():
    """Synthetic nuclei (128 x 128), a noisy copy and simulated scribbles on 3% of pixels."""
    s = synthetic_nuclei((128, 128), seed=3)
    noisy = add_noise(s.clean, gaussian=0.15, seed=4, value_range=(0.0, 1.0))
    return noisy, s.labels, simulated_scribbles(s.labels, fraction=0.03, seed=0)


@pytest.fixture(scope="module")
def tiny_denoiser(cells):
    return train_denoiser(
        cells[0],
        mode="n2v",
        steps=30,
        depth=2,
        base_channels=8,
        patch_size=32,
        batch_size=4,
        learning_rate=3e-3,
        device="cpu",
    )


@pytest.fixture
def shown(monkeypatch):
    """Messages shown with napari's show_error by the Segment widget and the shared helpers."""
    messages: list[str] = []
    for module in ("_common", "segment"):
        monkeypatch.setattr(f"napari_aeseg._widgets.{module}.show_error", messages.append)
    return messages


@pytest.fixture
def segment_viewer(make_napari_viewer, cells):
    """A viewer with the noisy image (scaled, shifted), its ground truth and the widget."""
    noisy, truth, _ = cells
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="noisy", scale=(0.5, 0.25), translate=(10.0, -4.0))
    viewer.add_labels(truth, name="truth", scale=(0.5, 0.25), translate=(10.0, -4.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="noisy", device="cpu")
    return viewer, widget


def paint(viewer, widget, scribbles) -> Labels:
    layer = widget.new_scribble_layer()
    layer.data = scribbles.copy()  # painting writes into the array: keep the fixture intact
    return layer


def test_new_scribble_layer_overlays_the_image(segment_viewer):
    viewer, widget = segment_viewer
    layer = widget.new_scribble_layer()
    assert isinstance(layer, Labels) and layer.name == "noisy scribbles"
    assert layer.data.shape == (128, 128) and not layer.data.any()
    np.testing.assert_allclose(layer.scale, (0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (10.0, -4.0))
    # the widget sees napari's public-only proxies of the layers: compare names
    assert viewer.layers.selection.active.name == layer.name
    assert layer.mode == "paint" and layer.selected_label == 2
    assert widget.labels_combo.currentText() == "noisy scribbles"
    assert "1 = background" in widget.hint.text() and "2 = foreground" in widget.hint.text()


def test_instant_classifier_then_more_scribbles_updates_the_same_layers(
    qtbot, segment_viewer, cells, monkeypatch
):
    viewer, widget = segment_viewer
    noisy, truth, scribbles = cells
    import napari_aeseg._widgets.segment as segment

    computed = []
    original = segment.classic_features
    monkeypatch.setattr(
        segment, "classic_features", lambda *a, **k: computed.append(1) or original(*a, **k)
    )
    scribble_layer = paint(viewer, widget, scribbles)
    widget.set_options(mode=INSTANT, ground_truth="truth")
    assert widget.run_button.text() == "Update"
    assert not widget.loss_plot.isVisibleTo(widget), "no loss curve for the instant classifier"
    assert widget.batch_size.isHidden() and widget.decoder_check.isHidden()
    assert not widget.seed.isHidden() and not widget.threshold.isHidden()

    widget.run_button.click()
    assert widget.running
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers[SEG_NAME]
    assert isinstance(seg, Labels) and seg.data.shape == truth.shape
    np.testing.assert_allclose(seg.scale, (0.5, 0.25))
    np.testing.assert_allclose(seg.translate, (10.0, -4.0))
    first = np.array(seg.data)
    iou = score_instances(truth, first).pixel_iou
    print(f"instant classifier: pixel IoU {iou:.3f}, {first.max()} objects")
    assert iou > 0.6
    sizes = np.bincount(first.ravel())[1:]
    sizes = sizes[sizes > 0]
    # the status gives the count and the median size, to set "Min object size" against
    assert f"{len(sizes)} objects (median {int(np.median(sizes))} pixels)" in widget.status.text()
    unc = viewer.layers[UNC_NAME]
    assert isinstance(unc, Image) and unc.data.shape == truth.shape
    assert 0.0 <= unc.data.min() and unc.data.max() <= 1.0 and unc.data.max() > 0.1
    prob = viewer.layers[PROB_NAME]
    assert prob.data.shape == truth.shape and prob.data.dtype == np.float32
    assert "AP@0.5" in widget.metrics.text() and "pixel IoU" in widget.metrics.text()
    assert len(widget._features) == 1, "features are cached for the next refit"
    names = [ly.name for ly in viewer.layers]
    assert names[-1] == scribble_layer.name, "the scribbles stay visible above the results"
    assert viewer.layers.selection.active.name == scribble_layer.name

    # more scribbles: the same three layers are updated, nothing is added
    n_layers = len(viewer.layers)
    more = simulated_scribbles(truth, fraction=0.03, seed=1)
    scribble_layer.data = np.maximum(scribbles, more)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(viewer.layers) == n_layers
    assert viewer.layers[SEG_NAME] is seg and viewer.layers[UNC_NAME] is unc
    assert not np.array_equal(seg.data, first)
    assert len(computed) == 1, "the refit reuses the features of the first run"
    assert [ly.name for ly in viewer.layers].count(SEG_NAME) == 1


def test_live_update_refits_after_a_paint_stroke(qtbot, segment_viewer, cells):
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    layer = paint(viewer, widget, scribbles)
    widget.set_options(mode=INSTANT, live=True)
    qtbot.waitUntil(lambda: SEG_NAME in viewer.layers, timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers[SEG_NAME]
    before = np.array(seg.data)

    # a brush stroke of background across objects, as the paint tool makes it
    ys, xs = np.nonzero(truth > 0)
    layer.selected_label = 1
    layer.brush_size = 9
    for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 12)]:
        layer.paint((y, x), 1)
    qtbot.waitUntil(lambda: not np.array_equal(seg.data, before), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    assert viewer.layers[SEG_NAME] is seg
    assert (seg.data > 0).sum() < (before > 0).sum(), "painted background shrinks the objects"


def test_fine_tune_with_session_encoder_and_ground_truth(
    qtbot, segment_viewer, cells, tiny_denoiser, empty_session, tmp_path, monkeypatch
):
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    empty_session.add_model(tiny_denoiser)
    assert widget.encoder_combo.currentText() == tiny_denoiser.name
    paint(viewer, widget, scribbles)
    widget.set_options(ground_truth="truth", **TINY_SEG)
    assert widget.run_button.text() == "Train && Segment"
    assert widget.decoder_check.isEnabled() and widget.decoder_check.isChecked()
    assert not widget.batch_size.isHidden() and not widget.decoder_check.isHidden()
    assert not widget.depth.isEnabled(), "the denoiser sets the network's depth"

    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    seg = viewer.layers[SEG_NAME]
    scores = score_instances(truth, np.asarray(seg.data))
    print(f"fine-tuned: {scores.summary()}")
    assert scores.ap > 0
    assert widget.metrics.text().startswith("AP@0.5")
    model = widget.model
    assert isinstance(model, SegmenterModel) and model.trained_steps == 60
    assert model.config.encoder.name == tiny_denoiser.name
    assert model.config.training.transfer == "encoder+decoder"
    assert "encoder and decoder from denoiser" in widget.model_info.text() + model.describe()
    assert empty_session.get(model.name) is model
    assert widget.encoder_combo.findText(model.name) < 0, "a segmenter is no encoder"
    assert widget.progress.text() == "60 / 60 steps"
    assert [s for s, _ in widget.loss_plot.train_points] == list(range(1, 61))
    assert widget.loss_plot.isVisibleTo(widget)

    path = tmp_path / "seg.aeseg"
    monkeypatch.setattr("napari_aeseg._widgets._common.ask_save_model_path", lambda *a: path)
    widget.save_button.click()
    assert path.is_file() and SegmenterModel.load(path).trained_steps == 60
    assert model.config.denoised_with == ""  # recorded: not denoised
    # trained on the image denoised first: the model says so (the CLI warns without it)
    widget.set_options(denoiser=tiny_denoiser.name)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget.model is not model and widget.model.config.denoised_with == tiny_denoiser.name
    assert widget.model.config.denoised_digest == tiny_denoiser.weights_digest()
    assert widget.model.config.encoder.digest == tiny_denoiser.weights_digest()


@pytest.mark.parametrize("problem", ["shape", "empty", "one class"])
def test_bad_labels_are_reported_and_add_no_layer(qtbot, segment_viewer, cells, shown, problem):
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    if problem == "shape":
        layer = viewer.add_labels(np.zeros((64, 64), np.uint8), name="small")
        layer.data[5:9, 5:9] = 1
        layer.data[20:24, 20:24] = 2
        widget.set_options(labels="small")
    else:
        layer = widget.new_scribble_layer()
        if problem == "one class":
            layer.data = np.where(scribbles == 2, 2, 0).astype(np.uint8)
    names = [ly.name for ly in viewer.layers]

    for mode in (INSTANT, FINE_TUNE):
        shown.clear()
        widget.set_options(**({"mode": mode} if mode == INSTANT else TINY_SEG))
        widget.run_button.click()
        wait_idle(qtbot, widget, timeout=60_000)
        assert len(shown) == 1, (mode, shown)
        message = shown[0]
        assert "\n" not in message
        expected = {"shape": "shape (64, 64)", "empty": "no pixel", "one class": "only label 2"}
        assert expected[problem] in message, message
        assert [ly.name for ly in viewer.layers] == names


def test_stop_ends_a_fine_tune_run_within_a_second(qtbot, segment_viewer, cells, empty_session):
    viewer, widget = segment_viewer
    paint(viewer, widget, cells[2])
    widget.set_options(**{**TINY_SEG, "steps": 100_000})
    assert widget.progress.maximum() == 100_000, "the bar shows the form's steps before a run"
    assert widget.status.text().endswith("then Train & Segment."), "the hint names the button"
    # without an encoder, what to take from one is greyed out and width / depth are free
    assert not widget.decoder_check.isEnabled() and widget.depth.isEnabled()
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() >= 3, timeout=60_000)
    assert not widget.image_combo.isEnabled() and not widget.steps.isEnabled()
    assert widget.stop_button.isEnabled()

    t0 = time.perf_counter()
    widget.stop_button.click()
    wait_idle(qtbot, widget, timeout=5_000)
    stop_s = time.perf_counter() - t0
    print(f"Stop took {stop_s * 1000:.0f} ms")
    assert stop_s < 1.0
    assert SEG_NAME not in viewer.layers
    assert widget.model is not None and 3 <= widget.model.trained_steps < 100_000
    assert widget.model.name in empty_session
    assert widget.run_button.isEnabled() and not widget.stop_button.isEnabled()
    assert widget.image_combo.isEnabled() and widget.steps.isEnabled()


def test_time_series_classifies_the_frame_shown(qtbot, make_napari_viewer, cells):
    noisy, truth, scribbles = cells
    movie = np.stack([np.roll(noisy, 7 * t, axis=1) for t in range(3)])[:, :64, :64]
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="movie")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="movie", axes="TYX", mode=INSTANT)
    layer = widget.new_scribble_layer()
    assert layer.data.shape == movie.shape
    data = np.zeros(movie.shape, np.uint8)
    data[1] = np.roll(scribbles, 7, axis=1)[:64, :64]
    data[2] = np.roll(scribbles, 14, axis=1)[:64, :64]
    layer.data = data
    viewer.dims.set_current_step(0, 1)

    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers["movie segmentation"]
    assert seg.data.shape == movie.shape
    assert seg.data[1].any() and not seg.data[0].any() and not seg.data[2].any()
    assert "frame 1" in widget.status.text()
    assert "frame shown" in widget.live_check.text()
    assert "every frame" in widget.run_button.toolTip()

    # the next frame's objects get ids of their own: an id names one object in the series
    first = np.array(seg.data[1])
    viewer.dims.set_current_step(0, 2)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers["movie segmentation"]
    np.testing.assert_array_equal(seg.data[1], first)
    ids1, ids2 = set(np.unique(seg.data[1])) - {0}, set(np.unique(seg.data[2])) - {0}
    assert ids1 and ids2 and not ids1 & ids2
    assert min(ids2) == max(ids1) + 1
    assert len(widget._features) == 2, "the features of both frames shown are kept"
    # with Live update on, scrolling back to a frame segmented before shows it again (its
    # features are at hand); a frame never segmented waits for a stroke or Segment
    widget.set_options(live=True)
    wait_idle(qtbot, widget, timeout=60_000)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: "frame 1" in widget.status.text(), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    viewer.dims.set_current_step(0, 0)
    qtbot.wait(3 * LIVE_DELAY_MS)
    wait_idle(qtbot, widget, timeout=60_000)
    assert "frame 1" in widget.status.text() and not seg.data[0].any()
    widget.set_options(live=False)
    viewer.dims.set_current_step(0, 2)
    # of a frame not shown, only the features at its scribbles are kept
    (samples, classes), _ = widget._samples.values()
    assert samples.shape[1] == classes.size == np.count_nonzero(data[2])
    layer = viewer.layers["movie"]
    layer.data = layer.data + 0.0  # new data: the features of the old are dropped
    assert widget._features == {} and widget._samples == {}
    layer = viewer.layers["movie scribbles"]

    # frame 0 has no scribbles: it is segmented from what frames 1 and 2 taught
    viewer.dims.set_current_step(0, 0)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = np.asarray(viewer.layers["movie segmentation"].data)
    want = truth[:64, :64]
    assert score_instances(want, seg[0]).pixel_iou > 0.6
    assert "frame 0" in widget.status.text()
    # with no scribble anywhere, nothing runs (the message says what to paint)
    layer.data = np.zeros(movie.shape, np.uint8)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.status.text().startswith("Not started")


def test_semantic_classes_then_instances_reuse_the_output_layers(
    qtbot, segment_viewer, cells, shown
):
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    paint(viewer, widget, scribbles)
    classes = (truth > 0).astype(np.uint8) + 1  # a class map: 1 background, 2 nuclei
    viewer.add_labels(classes, name="classes", scale=(0.5, 0.25), translate=(10.0, -4.0))
    widget.set_options(mode=INSTANT, target="semantic", ground_truth="classes")
    assert "one value per class" in widget.hint.text()
    assert widget.class_names_edit.isVisibleTo(widget)
    widget.set_options(class_names=["background"])  # one name for two classes painted
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.status.text().startswith("Not started")
    assert len(shown) == 1 and "1 class name(s) for 2 classes" in shown[0]
    widget.set_options(class_names=["background", "nucleus"])
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg, prob = viewer.layers[SEG_NAME], viewer.layers[PROB_NAME]
    # the name of the class under the cursor, in napari's status bar
    y, x = np.argwhere(truth > 0)[len(np.argwhere(truth > 0)) // 2]
    world = seg.data_to_world((y, x))
    assert seg.data[y, x] == 2
    assert "class: nucleus" in seg.get_status(world, world=True)["coordinates"]
    # the scribbles too, while painting (the scribble layer is the active one)
    painted = viewer.layers["noisy scribbles"]
    yy, xx = np.argwhere(np.asarray(painted.data) == 2)[0]
    at = painted.data_to_world((yy, xx))
    assert "class: nucleus" in painted.get_status(at, world=True)["coordinates"]
    assert set(np.unique(seg.data)) == {1, 2}
    assert ((seg.data == 2) == (truth > 0)).mean() > 0.9
    # the results are not offered to the Train widget as training images
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    offered = [train.layer_list.item(i).text() for i in range(train.layer_list.count())]
    assert offered == ["noisy"]
    # scored as classes: IoU per class, not as objects
    want = score_semantic(classes, np.asarray(seg.data))
    assert want.mean_iou > 0.7
    assert widget.metrics.text().startswith(f"mean IoU {want.mean_iou:.3f} · accuracy")
    assert (
        f"IoU per class 1 background: {want.class_iou[1]:.2f}, 2 nucleus: "
        f"{want.class_iou[2]:.2f}" in widget.metrics.text()
    )
    # all classes as a stack, one plane per class in front of the image axes
    assert prob.data.shape == (2, *truth.shape)
    np.testing.assert_allclose(prob.scale, (1.0, 0.5, 0.25))
    np.testing.assert_allclose(prob.data.sum(axis=0), 1.0, atol=1e-5)
    # the slider reads the class values as painted (1, 2), and 2 shows the nuclei' plane
    assert prob.translate[0] == 1 and tuple(viewer.dims.range[0][:2]) == (1, 2)
    viewer.dims.set_point(0, 2)
    assert prob.world_to_data(viewer.dims.point)[0] == 1
    # classes in the scribble colours, the background (1) left clear to see the image
    np.testing.assert_allclose(
        seg.colormap.map(2)[:3], viewer.layers["noisy scribbles"].colormap.map(2)[:3]
    )
    assert seg.colormap.map(1)[3] == 0 and viewer.layers["noisy scribbles"].colormap.map(1)[3] > 0

    # a fine-tuned semantic segmenter keeps the names
    widget.set_options(**{**TINY_SEG, "steps": 3})
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.model.config.class_names == ["background", "nucleus"]
    assert viewer.layers[SEG_NAME].features["class"].tolist() == ["background", "nucleus"]
    # 3 steps: the nuclei's scribbles come out as background, and the status says so
    assert "of those painted 2 (nucleus) right" in widget.status.text()

    n_layers = len(viewer.layers)
    widget.set_options(mode=INSTANT, target="instances")
    assert not widget.class_names_edit.isVisibleTo(widget)
    assert widget.status.text() == "Target is now instances: press Update to see it."
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(viewer.layers) == n_layers
    assert viewer.layers[SEG_NAME] is seg and seg.data.max() > 2
    assert viewer.layers[PROB_NAME].data.shape == truth.shape


def test_instant_on_encoder_features_of_the_denoised_image(
    qtbot, segment_viewer, cells, tiny_denoiser, empty_session
):
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    empty_session.add_model(tiny_denoiser)
    paint(viewer, widget, scribbles)
    assert not widget.denoiser_combo.isEnabled()
    widget.set_options(mode=INSTANT, encoder=tiny_denoiser.name, denoiser=tiny_denoiser.name)
    assert widget.denoiser_combo.isEnabled()
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    iou = score_instances(truth, np.asarray(viewer.layers[SEG_NAME].data)).pixel_iou
    print(f"instant on encoder features: pixel IoU {iou:.3f}")
    assert iou > 0.6
    ((key, features),) = widget._features.items()
    # intensity + the encoder's feature maps at every level, full resolution
    assert features.shape == (1 + sum(tiny_denoiser.network.encoder.channels), *truth.shape)
    assert id(tiny_denoiser) in key


def test_live_update_with_one_class_says_so_quietly(
    qtbot, segment_viewer, cells, shown, monkeypatch
):
    """Strokes of one class wait for a second class without computing features (tens of
    seconds on a stack); features computed for a fit that failed are kept."""
    import napari_aeseg._widgets.segment as segment

    computed = []
    original = segment.classic_features
    monkeypatch.setattr(
        segment, "classic_features", lambda *a, **k: computed.append(1) or original(*a, **k)
    )
    viewer, widget = segment_viewer
    layer = widget.new_scribble_layer()
    widget.set_options(mode=INSTANT, live=True)
    ys, xs = np.nonzero(cells[1] > 0)
    layer.paint((ys[0], xs[0]), 2)
    qtbot.waitUntil(lambda: "Live update waits" in widget.status.text(), timeout=30_000)
    assert "only label 2" in widget.status.text()
    assert shown == [], "no notification for every stroke while the user paints"
    assert SEG_NAME not in viewer.layers
    assert computed == [], "no features for scribbles that cannot be fitted"
    # classes 2 and 4 (a gap) are refused by the fit itself, after the features
    widget.set_options(target="semantic")
    ys0, xs0 = np.nonzero(cells[1] == 0)
    widget.status.setText("")
    layer.paint((ys0[0], xs0[0]), 4)
    qtbot.waitUntil(lambda: "Live update waits" in widget.status.text(), timeout=30_000)
    assert computed == [1] and len(widget._features) == 1, "kept for the next stroke"
    layer.paint((ys0[-1], xs0[-1]), 1)
    layer.paint((ys0[len(ys0) // 2], xs0[len(xs0) // 2]), 3)
    qtbot.waitUntil(lambda: SEG_NAME in viewer.layers, timeout=30_000)
    assert computed == [1], "the kept features were used"


def test_closing_the_dock_stops_a_run(qtbot, segment_viewer, cells):
    viewer, widget = segment_viewer
    paint(viewer, widget, cells[2])
    widget.set_options(**{**TINY_SEG, "steps": 100_000})
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=60_000)
    job = widget._job
    viewer.window.remove_dock_widget(widget)
    assert job.idle.wait(5.0), "the worker ended when the dock was closed"
    assert job.trainer.step < 100_000


def test_instant_classifier_on_a_3d_stack(qtbot, make_napari_viewer):
    s = synthetic_nuclei((16, 64, 64), seed=5)
    noisy = add_noise(s.clean, gaussian=0.15, seed=6, value_range=(0.0, 1.0))
    viewer = make_napari_viewer()
    image = viewer.add_image(
        noisy, name="stack", scale=(2.0, 1.0, 1.0), units="µm", axis_labels=("z", "y", "x")
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", mode=INSTANT)
    assert widget.axes_edit.text() == "ZYX"
    assert widget.patch_size_z.isEnabled()
    layer = widget.new_scribble_layer()
    assert layer.data.shape == noisy.shape
    np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))
    layer.data = simulated_scribbles(s.labels, fraction=0.02)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers["stack segmentation"]
    assert seg.data.shape == noisy.shape
    # the image's units and axis labels too (other units make napari warn and drop them)
    for other in (layer, seg, viewer.layers["stack probability"]):
        assert other.units == image.units and other.axis_labels == image.axis_labels
    assert score_instances(s.labels, np.asarray(seg.data)).pixel_iou > 0.6
    # objects are split in space: the layer's Z step is twice its pixel
    assert widget.spacing_edit.placeholderText() == "layer scale: 2, 1, 1"
    fg = np.asarray(viewer.layers["stack probability"].data)
    probs = np.stack([1 - fg, fg])
    spaced = instances_from_probabilities(probs, spacing=(2, 1, 1))
    np.testing.assert_array_equal(seg.data, spaced)
    assert "split in space (voxel size Z 2, Y 1, X 1)" in widget.status.text()
    # a voxel size typed in the field wins over the layer's scale
    widget.spacing_edit.setText("1, 1, 1")
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    cubes = instances_from_probabilities(probs)
    assert not np.array_equal(cubes, spaced)
    np.testing.assert_array_equal(viewer.layers["stack segmentation"].data, cubes)
    assert "split in space" not in widget.status.text()


def test_live_update_of_a_stack_shows_the_plane_on_screen(qtbot, make_napari_viewer):
    """Live update in a 2D view of a stack predicts the plane on screen only (a fraction of
    a second, where the stack takes seconds); scrolling shows the next plane, the planes
    seen before stay; a 3D view or Segment does the whole stack. The plane is what the whole
    run gives for it, split in 2D."""
    s = synthetic_nuclei((12, 64, 64), seed=5)
    noisy = add_noise(s.clean, gaussian=0.15, seed=6, value_range=(0.0, 1.0))
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="stack", scale=(2.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", mode=INSTANT)
    layer = widget.new_scribble_layer()
    layer.data = simulated_scribbles(s.labels, fraction=0.02)
    seg_name, prob_name, _ = output_names("stack")
    viewer.dims.set_current_step(0, 5)
    widget.set_options(live=True)  # the stack is fitted, and plane 5 shown
    qtbot.waitUntil(lambda: "Z plane 5" in widget.status.text(), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    status = widget.status.text()
    assert "live preview" in status and "pixels" in status and "split in space" not in status
    shown = {}

    def planes(z, expected):
        seg = np.array(viewer.layers[seg_name].data)
        prob = np.array(viewer.layers[prob_name].data)
        assert set(np.unique(np.nonzero(seg)[0])) == expected
        assert set(np.unique(np.nonzero(prob)[0])) == expected
        shown[z] = seg[z], prob[z]

    planes(5, {5})
    viewer.dims.set_current_step(0, 9)  # scrolling shows the new plane, with no stroke
    qtbot.waitUntil(lambda: "Z plane 9" in widget.status.text(), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    planes(9, {5, 9})  # plane 5 as it was
    np.testing.assert_array_equal(viewer.layers[seg_name].data[5], shown[5][0])
    assert not set(np.unique(shown[9][0])[1:]) & set(np.unique(shown[5][0])[1:]), "ids unique"

    viewer.dims.order = (1, 0, 2)  # an XZ view: the Y plane on screen
    qtbot.waitUntil(lambda: "Y plane" in widget.status.text(), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    viewer.dims.order = (0, 1, 2)

    viewer.dims.ndisplay = 3  # a 3D view shows the whole stack again
    qtbot.waitUntil(lambda: "plane" not in widget.status.text(), timeout=60_000)
    wait_idle(qtbot, widget, timeout=60_000)
    assert "voxels" in widget.status.text()
    seg = np.asarray(viewer.layers[seg_name].data)
    assert np.all(seg.max(axis=(1, 2)) > 0)
    fg = np.asarray(viewer.layers[prob_name].data)
    min_size = round(widget.min_size.value() ** (2 / 3))  # a voxel count, for a plane
    for z, (labels, prob) in shown.items():  # the same forest: the same probabilities
        np.testing.assert_allclose(prob, fg[z], atol=1e-6)
        planar = instances_from_probabilities(
            np.stack([1 - fg[z], fg[z]]), spacing=(1.0, 1.0), min_size=min_size
        )
        assert planar.max() > 2
        low = int(labels[labels > 0].min())
        np.testing.assert_array_equal(np.where(labels > 0, labels - (low - 1), 0), planar)

    # Segment right after a scroll: the live update then due does not replace its result
    viewer.dims.ndisplay = 2
    wait_idle(qtbot, widget, timeout=60_000)
    viewer.dims.set_current_step(0, 3)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    qtbot.wait(2 * LIVE_DELAY_MS)
    wait_idle(qtbot, widget, timeout=60_000)
    assert "plane" not in widget.status.text()
    assert np.all(np.asarray(viewer.layers[seg_name].data).max(axis=(1, 2)) > 0)

    # the image removed: scrolling runs nothing on whatever the image list falls back to
    names = [ly.name for ly in viewer.layers if ly.name != "stack"]
    viewer.layers.remove("stack")
    viewer.dims.set_current_step(0, 6)
    qtbot.wait(3 * LIVE_DELAY_MS)
    wait_idle(qtbot, widget, timeout=60_000)
    assert [ly.name for ly in viewer.layers] == names


def test_plane_previews_keep_object_ids_unique_and_small():
    """Planes previewed in turn, many times: ids stay unique across planes and are
    numbered afresh before they would outgrow uint16 (the layer keeps its type)."""
    from napari_aeseg._widgets.segment import _with_slice

    shape = (4, 64, 64)
    full = None
    plane = np.zeros((64, 64), np.uint16)
    plane.reshape(-1)[:4000:4] = np.arange(1, 1001)  # 1000 objects
    for i in range(150):  # without renumbering, ids would pass 65535 after 65 previews
        z = (1, 3)[i % 2]
        full = _with_slice(full, plane, 0, z, shape, np.uint16, unique_ids=True, inplace=True)
    assert full.dtype == np.uint16
    ids1, ids3 = set(np.unique(full[1])) - {0}, set(np.unique(full[3])) - {0}
    assert len(ids1) == len(ids3) == 1000 and not ids1 & ids3


def test_semantic_classes_of_a_channel_image_share_its_channel_axis(qtbot, make_napari_viewer):
    """Classes in front of the spatial axes sit at 1..K (the slider reads the values
    painted), except where the image's channels hold that world axis: there they stay at
    0..K-1, level with the channels."""
    s = synthetic_nuclei((64, 64), seed=2)
    two = np.stack([s.clean, 1 - s.clean]).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(two, name="two")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="two", mode=INSTANT, target="semantic")
    widget.axes_edit.setText("CYX")
    layer = widget.new_scribble_layer()
    layer.data = simulated_scribbles(s.labels, fraction=0.05)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    prob = viewer.layers[output_names("two")[1]]
    assert prob.data.shape == (2, 64, 64) and prob.translate[0] == 0
    assert tuple(viewer.dims.range[0][:2]) == (0, 1)


def test_channels_behind_z_are_moved_to_the_front_for_labels_to_line_up(
    qtbot, make_napari_viewer, shown
):
    """A ZCYX stack (an ImageJ hyperstack's order): labels (ZYX) would line up with its last
    axes, C, Y and X. The widget says so instead of painting off the image, and 'Channels
    first' shows the layer as CZYX (a view of the same array), whose labels and results
    sit on its planes, and whose sliders are the view's only."""
    s = synthetic_nuclei((6, 40, 40), seed=4)
    zcyx = np.stack([s.clean, 1 - s.clean], axis=1).astype(np.float32)
    viewer = make_napari_viewer()
    image = viewer.add_image(zcyx, name="hyper", scale=(2.0, 1.0, 0.5, 0.5), units="µm")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="hyper", mode=INSTANT)
    assert widget.axes_edit.text() == "ZCYX", "2 behind 6: guessed as channels behind Z"
    assert widget.channels_first_button.isVisibleTo(widget)
    assert "come after its Z axis (ZCYX)" in widget.status.text(), "said on choosing it"
    assert "holds planes of a movie, type TZYX in Axes" in widget.status.text()
    assert widget.new_scribble_layer() is None
    assert len(shown) == 1 and "come after its Z axis (ZCYX)" in shown[0]

    viewer.dims.set_current_step(0, 3)  # plane 3
    viewer.dims.set_current_step(1, 1)  # channel 1
    widget.channels_first()
    # the sliders stay on the plane and channel that were on screen, by axis
    assert tuple(viewer.dims.current_step[:2]) == (1, 3)
    assert [ly.name for ly in viewer.layers] == ["hyper"], "the same layer, not a second"
    assert image.data.shape == (2, 6, 40, 40) and np.shares_memory(image.data, zcyx)
    np.testing.assert_allclose(image.scale, (1.0, 2.0, 0.5, 0.5))
    assert tuple(image.axis_labels) == ("c", "z", "y", "x")
    assert viewer.dims.nsteps[:2] == (2, 6), "sliders: 2 channels, 6 planes"
    assert widget.axes_edit.text() == "CZYX"
    assert not widget.channels_first_button.isVisibleTo(widget)
    assert widget.channels_first() is None, "nothing left to move"
    layer = widget.new_scribble_layer()
    assert layer.data.shape == (6, 40, 40)
    # a voxel of the labels is the same place in the world as that voxel of the image
    np.testing.assert_allclose(
        layer.data_to_world((3, 10, 20)), image.data_to_world((1, 3, 10, 20))[1:]
    )
    layer.data = simulated_scribbles(s.labels, fraction=0.03)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = viewer.layers[output_names("hyper")[0]]
    assert seg.data.shape == (6, 40, 40)
    assert score_instances(s.labels, np.asarray(seg.data)).pixel_iou > 0.6


def test_a_movie_of_few_planes_guessed_as_a_hyperstack_is_read_as_typed(make_napari_viewer):
    """6 frames of 2 planes look like an ImageJ hyperstack (ZCYX) to the guess; the note
    names the movie reading, and once TZYX is typed the labels have the movie's shape."""
    movie = np.zeros((6, 2, 40, 40), np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="movie")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="movie", mode=INSTANT)
    assert "type TZYX in Axes" in widget.status.text()
    widget.axes_edit.setText("TZYX")
    widget.axes_edit.textEdited.emit("TZYX")  # as typing does
    assert not widget.channels_first_button.isVisibleTo(widget)
    assert widget.new_scribble_layer().data.shape == (6, 2, 40, 40)
    # a 5D guess (TZCYX) gets no movie hint: its other reading (TCZYX) buries C too
    viewer.add_image(np.zeros((5, 6, 2, 40, 40), np.float32), name="five")
    widget.set_options(image="five")
    assert "TZCYX" in widget.status.text() and "type" not in widget.status.text()


def test_channels_split_into_layers_merge_to_one_image_with_channels_first(
    qtbot, make_napari_viewer
):
    """Readers that open each channel as its own layer: napari's own 'Merge to Stack' (the
    layer list's right-click menu) makes one image with the channels in front, which the
    widget reads as CZYX, and whose labels line up with its planes."""
    from napari.layers.utils.stack_utils import images_to_stack

    s = synthetic_nuclei((6, 40, 40), seed=4)
    viewer = make_napari_viewer()
    nuclei = viewer.add_image(s.clean, name="nuclei", scale=(2.0, 0.5, 0.5))
    other = viewer.add_image(1 - s.clean, name="membrane", scale=(2.0, 0.5, 0.5))
    merged = images_to_stack([nuclei, other])  # what Merge to Stack adds
    viewer.layers.remove(nuclei)
    viewer.layers.remove(other)
    viewer.add_layer(merged)
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image=merged.name, mode=INSTANT)
    assert merged.data.shape == (2, 6, 40, 40)
    assert widget.axes_edit.text() == "CZYX"
    assert not widget.channels_first_button.isVisibleTo(widget)
    layer = widget.new_scribble_layer()
    assert layer.data.shape == (6, 40, 40)
    np.testing.assert_allclose(
        layer.data_to_world((3, 10, 20)), merged.data_to_world((1, 3, 10, 20))[1:]
    )


def test_masks_in_marked_crops_leave_the_rest_unlabeled(qtbot, segment_viewer, cells, two_crops):
    """A few objects painted in two crops, the crops marked with rectangles: the objects
    elsewhere are found, not learned as background."""
    from napari_aeseg._widgets.segment import MASKS, WHOLE_LAYER, label_space, region_mask

    viewer, widget = segment_viewer
    _, truth, _ = cells
    crops = two_crops
    space = dict(scale=(0.5, 0.25), translate=(10.0, -4.0))
    viewer.add_labels(np.where(crops, truth, 0), name="crop masks", **space)
    assert widget.regions_row.isHidden(), "crops are for masks, not scribbles"
    widget.set_options(labels="crop masks", labels_kind=MASKS)
    assert not widget.regions_row.isHidden() and widget.regions_combo.currentText() == WHOLE_LAYER
    assert "own label" in widget.hint.text() and "Mark" in widget.hint.text()

    shapes = widget.mark_crops()
    assert shapes.name == "noisy labeled crops" and shapes.mode == "add_rectangle"
    assert widget.regions_combo.currentText() == shapes.name
    np.testing.assert_allclose(shapes.scale, (0.5, 0.25))
    # pixel corners in the image's grid (the layer shares its scale and translation)
    shapes.add_rectangles([[[7.5, 7.5], [55.5, 55.5]], [[71.5, 63.5], [119.5, 111.5]]])
    want = label_space(viewer.layers["noisy"], "YX")
    np.testing.assert_array_equal(region_mask(shapes, truth.shape, want), crops)
    # a layer in world units (scale 1) marks the same pixels
    world = viewer.add_shapes(
        [[[10 + 0.5 * 7.5, -4 + 0.25 * 7.5], [10 + 0.5 * 55.5, -4 + 0.25 * 55.5]]],
        shape_type="rectangle",
        name="world box",
    )
    first = np.zeros_like(crops)
    first[8:56, 8:56] = True
    np.testing.assert_array_equal(region_mask(world, truth.shape, want), first)

    outside = ~crops & (truth > 0)
    found = {}
    for regions in (WHOLE_LAYER, shapes.name):
        widget.set_options(mode=INSTANT, regions=regions)
        widget.run_button.click()
        wait_idle(qtbot, widget, timeout=60_000)
        found[regions] = (np.asarray(viewer.layers[SEG_NAME].data)[outside] > 0).mean()
    print(f"objects outside the crops found: {found}")
    assert found[shapes.name] > 0.8
    assert found[shapes.name] > found[WHOLE_LAYER] + 0.1

    widget.set_options(**TINY_SEG)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    seg = np.asarray(viewer.layers[SEG_NAME].data)
    assert widget.model is not None and widget.model.config.labels_kind == "instances"
    assert (seg[outside] > 0).mean() > 0.6, "fine-tuned on the crops only"


def test_a_pretrained_run_on_two_small_crops_ends_early(
    qtbot, segment_viewer, cells, two_crops, tiny_denoiser, empty_session
):
    from napari_aeseg._widgets.segment import MASKS

    viewer, widget = segment_viewer
    _, truth, _ = cells
    viewer.add_labels(np.where(two_crops, truth, 0), name="crop masks", scale=(0.5, 0.25))
    widget.set_options(labels="crop masks", labels_kind=MASKS)
    widget.mark_crops().add_rectangles([[[7.5, 7.5], [55.5, 55.5]], [[71.5, 63.5], [119.5, 111.5]]])
    assert not widget.step_limit_check.isEnabled(), "only for a denoiser's start"
    empty_session.add_model(tiny_denoiser)
    assert widget.step_limit_check.isEnabled() and widget.step_limit_check.isChecked()
    widget.set_options(**{**TINY_SEG, "steps": 200, "batch_size": 64})
    said, set_text = [], widget.status.setText
    widget.status.setText = lambda text: (said.append(text), set_text(text))
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    # 64 fully labeled patches of 32 x 32 a step inside 2 crops of 48 x 48: 1200 labeled
    # patches take 19 steps (each pixel is then in 270 patches, more than the 120 asked for)
    assert widget.model.trained_steps == 19 and widget.progress.text() == "19 / 19 steps"
    assert widget.loss_plot._planned_steps == 19
    assert any("loss" in t and "19 of 200 steps: small labeled area" in t for t in said), said
    assert widget.model.config.training.freeze_encoder_steps == 40 * 19 // 200


def test_noisy_crops_train_longer_and_the_status_says_why(
    qtbot, segment_viewer, cells, two_crops, tiny_denoiser, empty_session
):
    from napari_aeseg._widgets.segment import MASKS

    viewer, widget = segment_viewer
    _, truth, _ = cells
    # much noisier than the denoiser's images: noise several times the nuclei's contrast
    viewer.layers["noisy"].data = add_noise(
        np.asarray(viewer.layers["noisy"].data), gaussian=1.0, seed=9, value_range=(0.0, 1.0)
    )
    viewer.add_labels(np.where(two_crops, truth, 0), name="crop masks", scale=(0.5, 0.25))
    widget.set_options(labels="crop masks", labels_kind=MASKS)
    widget.mark_crops().add_rectangles([[[7.5, 7.5], [55.5, 55.5]], [[71.5, 63.5], [119.5, 111.5]]])
    empty_session.add_model(tiny_denoiser)
    widget.set_options(**{**TINY_SEG, "steps": 200, "batch_size": 64})
    said, set_text = [], widget.status.setText
    widget.status.setText = lambda text: (said.append(text), set_text(text))
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    # the clean crops of the test above stop at 19 steps (1200 labeled patches); noise this
    # strong moves the limit all the way to 1200 passes over each labeled pixel: 85 steps
    assert widget.model.trained_steps == math.ceil(1200 / (64 * 32 * 32 / (2 * 48 * 48)))
    assert any("85 of 200 steps: small labeled area (noisy: longer" in t for t in said), said


def test_marked_crops_that_hold_no_object_are_reported(qtbot, segment_viewer, cells, shown):
    from napari_aeseg._widgets.segment import MASKS

    viewer, widget = segment_viewer
    _, truth, _ = cells
    viewer.add_labels(np.where(truth == truth.max(), truth, 0), name="one object")
    widget.set_options(labels="one object", labels_kind=MASKS, mode=INSTANT)
    shapes = widget.mark_crops()
    y, x = np.argwhere(truth == truth.max()).mean(axis=0)
    corner = np.array([8 if y > 64 else 100, 8 if x > 64 else 100])  # away from the object
    shapes.add_rectangles([[corner - 0.5, corner + 19.5]])
    names = [ly.name for ly in viewer.layers]
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(shown) == 1 and "no object of 'one object' lies in the crops" in shown[0]
    assert [ly.name for ly in viewer.layers] == names


def test_region_mask_of_planes_and_2d_shapes_over_a_stack():
    from napari.layers import Shapes

    from napari_aeseg._widgets.segment import region_mask

    space = dict(scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0))
    in_plane = Shapes(ndim=3)
    in_plane.add_rectangles([[[2, 1.5, 1.5], [2, 1.5, 5.5], [2, 5.5, 5.5], [2, 5.5, 1.5]]])
    mask = region_mask(in_plane, (4, 8, 8), space)
    want = np.zeros((4, 8, 8), bool)
    want[2, 2:6, 2:6] = True
    np.testing.assert_array_equal(mask, want)
    flat = Shapes(ndim=2)
    flat.add_rectangles([[[1.5, 1.5], [5.5, 5.5]]])
    every_plane = np.broadcast_to(want[2], (4, 8, 8))  # a 2D layer over a stack
    np.testing.assert_array_equal(region_mask(flat, (4, 8, 8), space), every_plane)
    flat.add_lines([[0, 0], [5, 5]])
    with pytest.raises(InvalidInputError, match="holds a line"):
        region_mask(flat, (4, 8, 8), space)


def test_one_rectangle_marks_a_sub_volume_labeled_plane_by_plane():
    """Masks painted in planes 3-6 inside a box, one rectangle drawn in plane 4: the crop
    spans planes 3-6 (not 2, where the labels lie elsewhere, nor 8 past the gap); labels
    left outside are reported."""
    from napari.layers import Shapes

    from napari_aeseg._widgets.segment import crops_note, region_mask

    space = dict(scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0))
    labels = np.zeros((10, 16, 16), np.uint16)
    labels[3:7, 4:8, 4:8] = 1
    labels[2, 12:14, 12:14] = 2  # outside the rectangle's footprint
    labels[8, 5:7, 5:7] = 3  # inside it, but after an unlabeled plane
    shapes = Shapes(ndim=3)
    shapes.add_rectangles([[[4, 2, 2], [4, 2, 10], [4, 10, 10], [4, 10, 2]]])
    mask = region_mask(shapes, labels.shape, space, labels)
    assert np.flatnonzero(mask.any(axis=(1, 2))).tolist() == [3, 4, 5, 6]
    assert mask[3:7, 2:11, 2:11].all() and mask.sum() == 4 * 81
    # without the labels, the plane drawn in only
    assert np.flatnonzero(region_mask(shapes, labels.shape, space).any(axis=(1, 2))).tolist() == [4]
    note = crops_note(labels, mask, "ZYX")
    assert note == (
        "the crops span planes 3-6; labels in planes 2, 8 lie outside them and are not used "
        "(mark those crops too)"
    )
    assert crops_note(np.where(mask, labels, 0), mask, "ZYX") is None
    movie = crops_note(labels, mask, "TYX")
    assert movie.startswith("the crops span frames 3-6")
    # a rectangle in an unlabeled plane marks that plane only
    empty_plane = Shapes(ndim=3)
    empty_plane.add_rectangles([[[1, 2, 2], [1, 2, 10], [1, 10, 10], [1, 10, 2]]])
    assert np.flatnonzero(
        region_mask(empty_plane, labels.shape, space, labels).any(axis=(1, 2))
    ).tolist() == [1]
    # a crop stops at a plane where another crop is drawn: those labels are that crop's
    shapes.add_rectangles([[[6, 6, 6], [6, 6, 14], [6, 14, 14], [6, 14, 6]]])
    both = region_mask(shapes, labels.shape, space, labels)
    assert np.flatnonzero(both.any(axis=(1, 2))).tolist() == [3, 4, 5, 6]
    assert not both[6, 2:6, 2:6].any() and both[6, 6:15, 6:15].all()
    # a rectangle drawn across planes (an XZ view): along Y it spans the labeled rows
    xz = Shapes(ndim=3)
    xz.add_rectangles([[[3, 5, 2], [3, 5, 10], [6, 5, 10], [6, 5, 2]]])
    across = region_mask(xz, labels.shape, space, labels)
    assert np.flatnonzero(across.any(axis=(0, 2))).tolist() == [4, 5, 6, 7]
    assert across[3:7, 4:8, 2:11].all() and across.sum() == 4 * 4 * 9
    # time points of volumes: frames and planes are named
    four = np.zeros((3, 10, 16, 16), np.uint16)
    four[0, 4:7, 5:10, 5:10] = 1
    four[2, 4:7, 5:10, 5:10] = 1
    crop = np.zeros(four.shape, bool)
    crop[0, 4:7] = True
    assert crops_note(four, crop, "TZYX") == (
        "the crops span frame 0 (planes 4-6); labels in frame 2 (planes 4-6) lie outside them "
        "and are not used (mark those crops too)"
    )


def test_crops_of_a_stack_are_read_in_the_worker_and_warn_there(
    qtbot, make_napari_viewer, monkeypatch, shown
):
    """Fine-tuning on masks in marked crops of a stack: the crops' mask, which reads every
    plane (seconds on a large stack), is built off the main thread; labels left outside are
    still named in a warning, and crops without an object still fail with a message."""
    import threading

    from napari_aeseg._widgets import segment
    from napari_aeseg._widgets.segment import MASKS

    s = synthetic_nuclei((10, 48, 48), seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(s.clean, name="stack")
    masks = np.zeros_like(s.labels)
    masks[2:6, 6:14, 6:14] = 1  # two objects painted in planes 2-5
    masks[2:6, 16:26, 16:26] = 2
    masks[8, 30:40, 30:40] = 1  # left outside the crops
    viewer.add_labels(masks, name="masks")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", labels="masks", labels_kind=MASKS, **{**TINY_SEG, "steps": 4})
    threads, warned = [], []
    build, Trainer = segment.crops_mask, segment.SegmenterTrainer

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return build(*args, **kwargs)

    monkeypatch.setattr(segment, "crops_mask", recorded)
    monkeypatch.setattr(segment, "show_warning", warned.append)
    crops = widget.mark_crops()
    crops.add_rectangles([[[3, 4, 4], [3, 4, 27], [3, 27, 27], [3, 27, 4]]])
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert threads == [False], "built once, in the worker"
    assert [w for w in warned if "crops span" in w] == [
        "Segment: the crops span planes 2-5; labels in planes 8 lie outside them and are not "
        "used (mark those crops too)"
    ]
    assert "stack segmentation" in viewer.layers and not shown
    names = [ly.name for ly in viewer.layers]
    crops.data = [np.array([[8, 2, 2], [8, 2, 12], [8, 12, 12], [8, 12, 2]], float)]
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(shown) == 1 and "no object of 'masks' lies in the crops" in shown[0]
    assert [ly.name for ly in viewer.layers] == names
    # Stop pressed while the mask is built: the run ends there, before any training
    crops.data = [np.array([[3, 4, 4], [3, 4, 27], [3, 27, 27], [3, 27, 4]], float)]

    def stopped_meanwhile(*args, **kwargs):
        widget._job.stop_requested.set()  # what Stop does, from the worker's side
        return build(*args, **kwargs)

    monkeypatch.setattr(segment, "crops_mask", stopped_meanwhile)
    trainers = []
    monkeypatch.setattr(
        segment, "SegmenterTrainer", lambda *a, **k: trainers.append(1) or Trainer(*a, **k)
    )
    model = widget.model
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert widget.status.text().startswith("Stopped; no layer was changed")
    assert widget.model is model and not widget.loss_plot.train_points
    assert trainers == [], "nothing prepared for training"


def test_a_sheared_stack_keeps_its_placement_in_scribbles_crops_and_results(
    qtbot, make_napari_viewer
):
    """A deskewed light-sheet stack is sheared: the scribble layer, the marked crops and
    every result sit where the image is shown, not where an unsheared grid would be."""
    from napari_aeseg._widgets.segment import label_space, region_mask

    s = synthetic_nuclei((8, 48, 48), n_nuclei=6, radius=(5.0, 7.0), seed=3)
    labels = s.labels
    noisy = add_noise(s.clean, gaussian=0.05, seed=0, value_range=(0.0, 1.0))
    viewer = make_napari_viewer()
    place = dict(scale=(3.0, 1.0, 1.0), shear=(0.5, 0.0, 0.0), translate=(0.0, 5.0, 0.0))
    image = viewer.add_image(noisy, name="stack", **place)
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", device="cpu", mode=INSTANT)
    scribbles = widget.new_scribble_layer()
    scribbles.data = simulated_scribbles(labels, fraction=0.05, seed=0)
    for layer in (scribbles, widget.mark_crops()):
        np.testing.assert_allclose(layer.shear, image.shear)
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    # a rectangle drawn in plane 4 of the sheared crops layer marks plane 4's pixels
    crops = viewer.layers["stack labeled crops"]
    crops.add_rectangles(np.array([[4, 10, 10], [4, 10, 30], [4, 30, 30], [4, 30, 10]]))
    mask = region_mask(crops, labels.shape, label_space(image, "ZYX"))
    want = np.zeros(labels.shape, bool)
    want[4, 10:31, 10:31] = True
    np.testing.assert_array_equal(mask, want)
    viewer.layers.remove(crops)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=120_000)
    for name in output_names("stack"):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.shear, image.shear)
        np.testing.assert_allclose(layer.data_to_world((2, 7, 9)), image.data_to_world((2, 7, 9)))


def test_a_short_dock_scrolls_and_keeps_whole_lines(qtbot, segment_viewer):
    """Squeezed below its contents, the widget scrolls; the wrapped hint keeps both lines."""
    from qtpy.QtWidgets import QScrollArea

    from napari_aeseg._widgets.segment import MASKS

    viewer, widget = segment_viewer
    viewer.add_labels(np.zeros((128, 128), np.uint16), name="masks")
    widget.set_options(labels="masks", labels_kind=MASKS)  # a two-line hint
    widget.advanced.expand(animate=False)
    scroll = widget.findChild(QScrollArea)
    viewer.window._qt_window.resize(900, 500)
    qtbot.waitUntil(lambda: scroll.verticalScrollBar().maximum() > 0, timeout=5_000)
    hint = widget.hint
    assert hint.height() >= hint.heightForWidth(hint.width()) > 0
    assert scroll.horizontalScrollBar().maximum() == 0, "no sideways scrolling"
    assert scroll.viewport().width() >= widget.form_box.minimumSizeHint().width()


def test_a_users_layer_named_like_an_output_is_never_touched(qtbot, segment_viewer, cells):
    """Outputs are found by the mark the widget leaves on its own layers, not by name: a
    user's layer called "noisy segmentation" stays as it is, and stays pickable."""
    viewer, widget = segment_viewer
    _, truth, scribbles = cells
    mine = viewer.add_labels(truth.copy(), name=SEG_NAME)
    assert SEG_NAME in [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())]
    paint(viewer, widget, scribbles)
    widget.set_options(mode=INSTANT)
    for _ in range(2):  # the second run updates the widget's own layer, adds nothing
        widget.run_button.click()
        wait_idle(qtbot, widget, timeout=60_000)
    np.testing.assert_array_equal(mine.data, truth)
    outputs = [ly for ly in viewer.layers if ly.metadata.get("napari_aeseg_output") == SEG_NAME]
    assert len(outputs) == 1 and outputs[0] is not mine and outputs[0].name != SEG_NAME
    # a copy of the output (napari's Duplicate copies the metadata) is the user's: offered
    # as labels, and kept when the output itself is gone and the widget runs again
    out = outputs[0]
    copy = viewer.add_labels(np.array(out.data), name="corrected", metadata=dict(out.metadata))
    offered = [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())]
    assert "corrected" in offered and out.name not in offered
    viewer.layers.remove(out)
    before = np.array(copy.data)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    np.testing.assert_array_equal(copy.data, before)
    from napari_aeseg._widgets._common import output_layer

    new = output_layer(viewer, SEG_NAME)
    assert new is not None and new.name != "corrected" and new.data.shape == truth.shape


def test_instant_mode_refuses_instance_masks_as_scribbles(qtbot, segment_viewer, cells, shown):
    viewer, widget = segment_viewer
    _, truth, _ = cells
    layer = widget.new_scribble_layer()
    layer.data = truth.astype(np.uint16)
    widget.set_options(mode=INSTANT)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(shown) == 1 and "instance masks" in shown[0], shown
    # as semantic classes, values in the thousands would make a plane each: refused too
    layer.data = np.where(truth > 0, 20_000, 1).astype(np.uint16)
    widget.set_options(target="semantic")
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert len(shown) == 2 and "at most 32 classes" in shown[1], shown
    assert SEG_NAME not in viewer.layers


def test_instant_classifier_on_a_stack_of_slices(qtbot, make_napari_viewer):
    """A stack processed slice by slice (axes 'SYX', the hint for a 2D model on a stack) is
    classified one slice at a time, the one shown, like a time series."""
    slices = [synthetic_nuclei((64, 64), seed=i) for i in range(4)]
    clean, labels = np.stack([s.clean for s in slices]), np.stack([s.labels for s in slices])
    noisy = add_noise(clean, gaussian=0.15, seed=6, value_range=(0.0, 1.0))
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", mode=INSTANT, axes="SYX")
    layer = widget.new_scribble_layer()
    layer.data = np.stack([simulated_scribbles(lab, fraction=0.05, seed=1) for lab in labels])
    viewer.dims.set_current_step(0, 2)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    seg = np.asarray(viewer.layers["stack segmentation"].data)
    assert seg.shape == noisy.shape and not seg[0].any() and seg[2].any()
    assert score_instances(labels[2], seg[2]).pixel_iou > 0.6


def test_voxel_size_follows_the_image_layer(qtbot, make_napari_viewer, cells, shown):
    """The greyed voxel size follows the layer's scale; a size typed for one image is not
    used for the next; a flipped layer (negative scale) segments as before."""
    noisy, _, scribbles = cells
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="flipped", scale=(-1.0, 1.0))
    stack = viewer.add_image(np.stack([noisy] * 4), name="stack", scale=(3.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack", mode=INSTANT, device="cpu")
    assert widget.spacing_edit.placeholderText() == "layer scale: 3, 1, 1"
    stack.scale = (2.0, 1.0, 1.0)
    assert widget.spacing_edit.placeholderText() == "layer scale: 2, 1, 1"
    widget.spacing_edit.setText("5, 1, 1")
    widget.set_options(image="flipped")
    assert widget.spacing_edit.text() == ""
    assert widget.spacing_edit.placeholderText() == "layer scale: 1, 1"
    assert not widget.patch_size_z.isEnabled()
    paint(viewer, widget, scribbles)
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert not shown
    assert widget.status.text().startswith("Done:") and "split in space" not in widget.status.text()
    # the bar of the instant run is not shown as steps of the other mode
    widget.set_options(mode=FINE_TUNE)
    assert widget.progress.text() == f"0 / {widget.steps.value()} steps"
    widget.set_options(mode=INSTANT)
    for text, message in (("1,,2", "is not sizes"), ("1, 2, 3", "needs 2 values")):
        widget.spacing_edit.setText(text)
        widget.run_button.click()
        wait_idle(qtbot, widget, timeout=60_000)
        assert message in shown[-1] and shown[-1].startswith("Voxel size:")


def test_a_movie_learns_from_masks_of_some_frames_and_is_scored_frame_by_frame(
    qtbot, make_napari_viewer, cells
):
    from napari_aeseg._widgets.segment import MASKS

    noisy, truth, _ = cells
    movie = np.stack([np.roll(noisy, 9 * t, axis=1) for t in range(3)])[:, :96, :96]
    # tracked ids, as a tracker writes them; only frames 0 and 2 are labeled
    tracks = np.stack([np.roll(truth, 9 * t, axis=1) for t in range(3)])[:, :96, :96]
    masks = tracks.copy()
    masks[1] = 0
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="movie", axis_labels=("t", "y", "x"))
    viewer.add_labels(masks, name="masks", axis_labels=("t", "y", "x"))
    viewer.add_labels(tracks, name="tracks", axis_labels=("t", "y", "x"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="movie", labels="masks", labels_kind=MASKS, ground_truth="tracks")
    widget.set_options(**{**TINY_SEG, "steps": 80})
    assert widget.axes_edit.text() == "TYX"
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=180_000)
    seg = np.asarray(viewer.layers["movie segmentation"].data)
    assert seg.shape == movie.shape
    by_frame = score_instances(tracks, seg, frame_axes=1)
    print(f"movie: {by_frame.summary()}")
    # frame by frame, and frame 1 (not labeled) is segmented like the others
    assert by_frame.ap > 0.5, by_frame.summary()
    assert score_instances(tracks[1], seg[1]).ap > 0.4
    assert "in 3 frames" in widget.metrics.text()
    assert f"AP@0.5 {by_frame.ap:.3f}" in widget.metrics.text()


def test_a_fine_tune_that_learnt_nothing_says_so(qtbot, segment_viewer, cells, monkeypatch):
    viewer, widget = segment_viewer
    warned: list[str] = []
    monkeypatch.setattr("napari_aeseg._widgets.segment.show_warning", warned.append)
    paint(viewer, widget, cells[2])
    widget.set_options(**{**TINY_SEG, "steps": 3, "learning_rate": 1e-6})
    widget.run_button.click()
    wait_idle(qtbot, widget, timeout=60_000)
    assert "near the 0.69 of guessing" in widget.status.text()
    assert len(warned) == 1 and "train for more steps" in warned[0]


def test_a_2d_encoder_takes_a_stack_slice_by_slice(
    make_napari_viewer, cells, tiny_denoiser, empty_session
):
    noisy = cells[0]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([noisy[:64, :64]] * 6), name="stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.set_options(image="stack")
    assert widget.axes_edit.text() == "ZYX"
    empty_session.add_model(tiny_denoiser)
    widget.encoder_combo.setCurrentText(tiny_denoiser.name)
    assert widget.axes_edit.text() == "SYX"


def test_guesses_and_scores_of_unusual_layers():
    from napari_aeseg._widgets._common import guess_layer_axes
    from napari_aeseg._widgets.segment import _score

    # a few volumes over time, spaced out in time: never "ZZYX"
    assert guess_layer_axes(Image(np.zeros((3, 10, 32, 32)), scale=(5, 1, 1, 1))) == "CZYX"
    assert guess_layer_axes(Image(np.zeros((3, 32, 32)), scale=(2, 1, 1))) == "ZYX"
    assert guess_layer_axes(Image(np.zeros((3, 32, 32)))) == "CYX"
    # a semantic result against an instance ground truth is scored as objects
    truth = np.zeros((2, 42, 42), np.uint16)  # 36 nuclei a frame: an instance map
    for k in range(36):
        y, x = divmod(k, 6)
        truth[:, 7 * y + 1 : 7 * y + 5, 7 * x + 1 : 7 * x + 5] = k + 1
    classes = (truth > 0).astype(np.uint8) + 1
    scores = _score(truth, classes, "semantic", frame_axes=1, n_classes=2)
    assert (scores.ap, scores.n_true, scores.frames) == (1.0, 72, 2)
    assert _score(classes, classes, "semantic", n_classes=2).mean_iou == 1.0
    # a class map with more classes than the segmenter learnt: said, not scored as objects
    three = classes + (truth > 18)
    assert "3 but there are 2 classes" in str(_score(three, classes, "semantic", n_classes=2))


def test_class_colours_leave_only_a_background_clear():
    """Class 1 is shown clear when it is the background (unnamed, or named so); classes
    named otherwise keep their colour."""
    from napari_aeseg._widgets.segment import _class_or_object_colors

    layer = Labels(np.array([[1, 2]], np.uint8))
    _class_or_object_colors(layer, semantic=True)
    assert layer.colormap.map(1)[3] == 0 and layer.colormap.map(2)[3] > 0
    _class_or_object_colors(layer, semantic=True, clear_first=False)  # 'nucleus, cytoplasm'
    assert layer.colormap.map(1)[3] > 0
    _class_or_object_colors(layer, semantic=False)
    assert layer.colormap.map(1)[3] > 0 and layer.colormap.map(5)[3] > 0


def test_a_run_scrolls_its_status_into_view(qtbot, make_napari_viewer, cells):
    """With Advanced open in a small window, the status and progress are below the fold:
    starting a run scrolls them into view."""
    from qtpy.QtWidgets import QScrollArea

    noisy, _, scribbles = cells
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1100, 650)
    viewer.add_image(noisy, name="noisy")
    _, widget = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    widget.advanced.expand(animate=False)
    paint(viewer, widget, scribbles)
    widget.set_options(**{**TINY_SEG, "steps": 3})
    scroll = widget.findChild(QScrollArea)
    qtbot.wait(200)
    assert scroll.verticalScrollBar().value() == 0
    widget.run_button.click()
    qtbot.waitUntil(lambda: scroll.verticalScrollBar().value() > 0, timeout=5_000)
    top = widget.status.mapTo(scroll.viewport(), widget.status.rect().topLeft()).y()
    assert 0 <= top < scroll.viewport().height(), "the status line is on screen"
    wait_idle(qtbot, widget, timeout=60_000)
