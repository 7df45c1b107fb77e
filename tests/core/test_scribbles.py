"""Simulated annotations: random-pixel scribbles and brush strokes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aeseg.core.synthetic import synthetic_nuclei
from napari_aeseg.demo import simulated_corrections, simulated_scribbles, simulated_strokes


@pytest.fixture(scope="module")
def truth():
    return synthetic_nuclei((192, 192), seed=3).labels


@pytest.mark.parametrize("fraction", [0.005, 0.02, 0.05])
def test_strokes_are_on_the_right_side_and_fill_the_budget(truth, fraction):
    s = simulated_strokes(truth, fraction=fraction, seed=0)
    assert s.dtype == np.uint8 and s.shape == truth.shape
    assert set(np.unique(s)) == {0, 1, 2}
    assert (truth[s == 2] > 0).all(), "object strokes stay inside objects"
    assert (truth[s == 1] == 0).all(), "background strokes stay off objects"
    got = (s > 0).mean()
    assert fraction <= got < 1.5 * fraction + 0.002
    assert 0.25 < (s == 2).sum() / (s > 0).sum() < 0.6


def test_strokes_touch_few_objects_unlike_random_pixels(truth):
    n_objects = len(np.unique(truth)) - 1
    strokes = simulated_strokes(truth, fraction=0.005, seed=0)
    pixels = simulated_scribbles(truth, fraction=0.005, seed=0)
    touched = len(np.unique(truth[strokes == 2]))
    assert 1 <= touched <= 8 < n_objects
    assert len(np.unique(truth[pixels == 2])) > 2 * touched
    # each object stroke is one connected piece, several pixels long
    from scipy import ndimage as ndi

    pieces, n = ndi.label(strokes == 2)
    assert n == touched and np.bincount(pieces.ravel())[1:].min() >= 6


def test_strokes_are_reproducible_and_seeded(truth):
    a = simulated_strokes(truth, fraction=0.01, seed=4)
    np.testing.assert_array_equal(a, simulated_strokes(truth, fraction=0.01, seed=4))
    assert (a != simulated_strokes(truth, fraction=0.01, seed=5)).any()


def test_strokes_in_3d_lie_in_single_planes():
    labels = synthetic_nuclei((12, 64, 64), seed=0).labels
    s = simulated_strokes(labels, fraction=0.01, seed=1)
    assert (labels[s == 2] > 0).all() and (labels[s == 1] == 0).all()
    for i in np.unique(labels[s == 2]):
        assert len(np.unique(np.nonzero((s == 2) & (labels == i))[0])) == 1
    binary = simulated_strokes(labels > 0, fraction=0.01, seed=1)
    assert ((labels > 0)[binary == 2]).all()


def test_strokes_refuse_other_dimensions():
    with pytest.raises(ValueError, match="2D or 3D"):
        simulated_strokes(np.zeros((2, 2, 8, 8), np.uint16), fraction=0.1)


def test_corrections_paint_the_true_class_where_the_prediction_is_wrong(truth):
    from scipy import ndimage as ndi

    # a prediction that merges neighbours (objects grown by 3 px) and misses a few objects
    grown = ndi.grey_dilation(truth, size=7) * (ndi.distance_transform_edt(truth == 0) <= 3)
    missed = np.isin(truth, np.unique(truth)[1:6])
    prediction = np.where(missed, 0, grown)
    fixes = simulated_corrections(truth, prediction, fraction=0.01, seed=0)
    assert set(np.unique(fixes)) == {0, 1, 2}
    assert (truth[fixes == 1] == 0).all() and (truth[fixes == 2] > 0).all()
    assert (prediction[fixes == 1] > 0).mean() > 0.3, "background dabs go where it overflowed"
    assert (prediction[fixes == 2] == 0).mean() > 0.3, "object dabs go on missed objects"
    n = (fixes > 0).sum()
    assert 0.01 * truth.size <= n < 0.01 * truth.size + 20
    assert 0.6 < (fixes == 1).sum() / n < 0.8
    perfect = simulated_corrections(truth, truth, fraction=0.01, seed=0)
    assert not perfect.any(), "nothing to correct"


def test_corrections_ignore_one_pixel_borders_and_fix_merges(truth):
    from scipy import ndimage as ndi

    from napari_aeseg.demo import _second_object_distance

    # every object one pixel wider, where that brings it no nearer to another object
    grown = ndi.grey_dilation(truth, size=3)
    rim = (truth == 0) & (grown > 0) & (_second_object_distance(truth) > 3)
    wider = np.where(rim, grown, truth)
    assert (wider != truth).sum() > 500
    border_only = simulated_corrections(truth, wider, fraction=0.01)
    assert not border_only.any(), "a one-pixel border difference is not worth a correction"

    # two touching objects predicted as one: the gap between them gets background dabs
    merged = np.where(ndi.binary_closing(truth > 0, iterations=3), 1, 0)
    fixes = simulated_corrections(truth, merged, fraction=0.002, seed=1)
    gaps = (truth == 0) & (_second_object_distance(truth) <= 3)
    assert (fixes == 1).any() and gaps[fixes == 1].mean() > 0.5
