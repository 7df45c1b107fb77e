"""Tests of the synthetic nuclei generator (napari_aeseg.core.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.synthetic import SyntheticNuclei, synthetic_nuclei


@pytest.fixture(scope="module")
def sample_2d() -> SyntheticNuclei:
    return synthetic_nuclei((256, 256), seed=0)


@pytest.fixture(scope="module")
def sample_3d() -> SyntheticNuclei:
    return synthetic_nuclei((32, 96, 96), radius=(5.0, 9.0), seed=0)


def _check_labels(labels: np.ndarray) -> int:
    """Ids are 1..N without gaps, each id one face-connected region; returns N."""
    ids = np.unique(labels)
    assert ids[0] == 0
    n = int(labels.max())
    np.testing.assert_array_equal(ids[1:], np.arange(1, n + 1))
    objects = ndi.find_objects(labels)
    for i, box in enumerate(objects, start=1):
        _, parts = ndi.label(labels[box] == i)
        assert parts == 1, f"label {i} has {parts} parts"
    return n


def test_2d_shape_dtype_and_range(sample_2d: SyntheticNuclei) -> None:
    assert sample_2d.clean.shape == (256, 256)
    assert sample_2d.labels.shape == (256, 256)
    assert sample_2d.clean.dtype == np.float32
    assert sample_2d.labels.dtype == np.uint16
    assert 0.0 <= float(sample_2d.clean.min())
    assert float(sample_2d.clean.max()) <= 1.0


def test_2d_label_ids_are_contiguous_and_connected(sample_2d: SyntheticNuclei) -> None:
    n = _check_labels(sample_2d.labels)
    assert n == sample_2d.n_nuclei
    assert n == len(np.unique(sample_2d.labels)) - 1
    # default density: 256*256 px at radius 6..12 gives several dozen nuclei
    assert 40 <= n <= 120


def test_2d_default_density_fills_a_quarter_to_a_third(sample_2d: SyntheticNuclei) -> None:
    fill = float((sample_2d.labels > 0).mean())
    assert 0.22 <= fill <= 0.38


def test_some_nuclei_touch(sample_2d: SyntheticNuclei) -> None:
    labels = sample_2d.labels
    n_objects = int(labels.max())
    _, n_blobs = ndi.label(labels > 0)
    # touching nuclei merge into one blob of the binary mask
    assert n_blobs < 0.9 * n_objects


def test_nuclei_do_not_overlap_heavily_and_are_not_tiny(sample_2d: SyntheticNuclei) -> None:
    sizes = np.bincount(sample_2d.labels.ravel())[1:]
    # radius >= 6 -> area >= ~113 px; at least half of it must remain after clipping/overlap
    assert sizes.min() >= 0.5 * np.pi * 6.0**2 / 1.3
    assert sizes.max() <= np.pi * 12.0**2 * 1.1


def test_foreground_brighter_than_background(sample_2d: SyntheticNuclei) -> None:
    clean, labels = sample_2d.clean, sample_2d.labels
    inner = ndi.binary_erosion(labels > 0, iterations=2)
    outer = ~ndi.binary_dilation(labels > 0, iterations=3)
    fg, bg = float(clean[inner].mean()), float(clean[outer].mean())
    assert fg > 0.35
    assert 0.02 < bg < 0.12  # dim but not zero
    assert fg > 4 * bg
    # every nucleus individually stands out from the background
    means = ndi.mean(clean, labels, index=np.arange(1, labels.max() + 1))
    assert means.min() > 2 * bg


def test_brightness_differs_between_nuclei(sample_2d: SyntheticNuclei) -> None:
    means = ndi.mean(sample_2d.clean, sample_2d.labels, index=np.arange(1, sample_2d.n_nuclei + 1))
    assert means.max() - means.min() > 0.2


def test_interior_is_textured_and_background_varies(sample_2d: SyntheticNuclei) -> None:
    clean, labels = sample_2d.clean, sample_2d.labels
    inner = ndi.binary_erosion(labels > 0, iterations=3)
    detail = clean - ndi.gaussian_filter(clean, 3.0)  # fine structure only
    assert float(detail[inner].std()) > 0.01
    outer = ~ndi.binary_dilation(labels > 0, iterations=3)
    assert float(clean[outer].std()) > 0.002


def test_deterministic_for_a_seed() -> None:
    a = synthetic_nuclei((96, 128), seed=7)
    b = synthetic_nuclei((96, 128), seed=7)
    c = synthetic_nuclei((96, 128), seed=8)
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_explicit_count_and_radius() -> None:
    s = synthetic_nuclei((128, 128), n_nuclei=10, radius=(5.0, 5.0), seed=3)
    assert _check_labels(s.labels) == 10
    sizes = np.bincount(s.labels.ravel())[1:]
    # equal-volume radius 5 -> area ~78.5 px; clipping and overlap only remove pixels
    assert sizes.max() <= 95
    assert sizes.min() >= 0.5 * np.pi * 25 - 5


def test_zero_nuclei_gives_background_only() -> None:
    s = synthetic_nuclei((64, 64), n_nuclei=0, seed=0)
    assert s.labels.max() == 0
    assert s.n_nuclei == 0
    assert 0.0 < float(s.clean.min()) and float(s.clean.max()) < 0.15


def test_crowded_request_places_fewer_without_error() -> None:
    s = synthetic_nuclei((48, 48), n_nuclei=500, radius=(6.0, 8.0), seed=0)
    n = _check_labels(s.labels)
    assert 1 <= n < 500


def test_3d_stack(sample_3d: SyntheticNuclei) -> None:
    clean, labels = sample_3d.clean, sample_3d.labels
    assert clean.shape == labels.shape == (32, 96, 96)
    assert clean.dtype == np.float32 and labels.dtype == np.uint16
    n = _check_labels(labels)
    assert n >= 10
    fg = float(clean[ndi.binary_erosion(labels > 0)].mean())
    bg = float(clean[~ndi.binary_dilation(labels > 0, iterations=2)].mean())
    assert fg > 4 * bg
    # nuclei are genuinely 3D: they span several z planes
    spans = [box[0].stop - box[0].start for box in ndi.find_objects(labels)]
    assert np.median(spans) >= 6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (64,)},
        {"shape": (2, 8, 8, 8)},
        {"shape": (0, 64)},
        {"shape": (64, 64), "radius": (8.0, 4.0)},
        {"shape": (64, 64), "radius": (0.0, 4.0)},
        {"shape": (64, 64), "n_nuclei": -1},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    shape = kwargs.pop("shape")
    with pytest.raises(InvalidInputError):
        synthetic_nuclei(shape, **kwargs)
