"""The demo's viewer: result layers, the scribbles, and both widgets ready to use."""

from __future__ import annotations

import numpy as np

from napari_aeseg.core.synthetic import synthetic_nuclei
from napari_aeseg.core.training import train_denoiser
from napari_aeseg.demo import _show, simulated_strokes

from .conftest import TINY


def test_demo_opens_the_layers_and_a_ready_segment_widget(monkeypatch, qtbot):
    import napari

    sample = synthetic_nuclei((64, 64), seed=0)
    options = {k: v for k, v in TINY.items() if k != "preview_every"}
    model = train_denoiser(sample.clean, **{**options, "steps": 2})
    scribbles = simulated_strokes(sample.labels, fraction=0.02, seed=0)
    result = type(
        "Result",
        (),
        {"labels": sample.labels, "probabilities": np.stack([1 - sample.clean, sample.clean])},
    )()
    monkeypatch.setattr("napari_aeseg.demo.display_available", lambda: True)
    shown = []
    monkeypatch.setattr(napari, "run", lambda: shown.append(napari.current_viewer()))
    _show(sample.clean, sample.clean, model, result, sample.labels, scribbles, quiet=True)
    (viewer,) = shown
    try:
        names = [layer.name for layer in viewer.layers]
        assert names[-1] == "scribbles" and "nuclei (segmented)" in names
        np.testing.assert_array_equal(viewer.layers["scribbles"].data, scribbles)
        from napari_aeseg._widgets.segment import CLASS_COLORS

        colors = viewer.layers["scribbles"].colormap.color_dict
        from napari.utils.colormaps.standardize_color import transform_color

        np.testing.assert_allclose(colors[2], transform_color(CLASS_COLORS[2])[0])
        segment = viewer.window.dock_widgets["Segment (napari-aeseg)"]
        assert segment.image_combo.currentText() == "nuclei (noisy)"
        assert segment.labels_combo.currentText() == "scribbles"
        assert segment.truth_combo.currentText() == "ground truth"
        assert segment.encoder_combo.currentText() == model.name
    finally:
        viewer.close()
