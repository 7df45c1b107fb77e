"""The loss plot's log axis: regular ticks that never crowd, a bottom that ignores outliers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_aeseg._widgets.loss_plot import LossPlot, _y_ticks


@pytest.mark.parametrize(
    ("y0", "y1", "height"),
    [(-5, 0.3, 85), (-2, 0, 150), (-12, 1, 60), (-0.6, -0.2, 300), (-3.3, -0.1, 200)],
)
def test_ticks_are_regular_and_do_not_crowd(y0, y1, height):
    gap = 20
    ticks = _y_ticks(y0, y1, height, gap)
    assert ticks, "at least one label"
    logs = np.log10(ticks)
    assert ((logs >= y0 - 1e-9) & (logs <= y1 + 1e-9)).all()
    assert (np.diff(logs) * height / (y1 - y0) >= gap - 1e-6).all()
    mantissas = {round(t / 10 ** math.floor(math.log10(t) + 1e-12), 6) for t in ticks}
    assert mantissas <= set(range(1, 10)), "round values only"
    if len(ticks) > 2 and mantissas == {1}:
        assert len(set(np.round(np.diff(logs), 6))) == 1, "every k-th decade, evenly"


def test_one_tiny_loss_does_not_squeeze_the_curve(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    losses = np.full(200, 0.5) * np.linspace(1, 0.2, 200)
    losses[120] = 1e-6  # one lucky batch
    for step, loss in enumerate(losses, 1):
        plot.add_point(step, float(loss))
    plot.grab()  # paints
    assert plot.repaints >= 1
    assert plot._axis_range[0] > math.log10(1e-3), "the bottom follows the smoothed curve"
