import numpy as np
import pytest

from napari_aeseg.core.data import (
    Layout,
    check_axes_match,
    check_image,
    fit_normalization,
    guess_axes,
)
from napari_aeseg.core.errors import InvalidInputError


@pytest.mark.parametrize(
    ("axes", "shape", "internal"),
    [
        ("YX", (5, 7), (1, 1, 5, 7)),
        ("ZYX", (3, 5, 7), (1, 1, 3, 5, 7)),
        ("TYX", (4, 5, 7), (4, 1, 5, 7)),
        ("YXC", (5, 7, 3), (1, 3, 5, 7)),
        ("CYX", (2, 5, 7), (1, 2, 5, 7)),
        ("TCZYX", (2, 3, 4, 5, 7), (2, 3, 4, 5, 7)),
        ("XY", (7, 5), (1, 1, 5, 7)),
    ],
)
def test_layout_round_trip(axes, shape, internal):
    img = np.arange(np.prod(shape)).reshape(shape)
    lay = Layout(axes, shape)
    x = lay.to_internal(img)
    assert x.shape == internal
    assert np.array_equal(lay.from_internal(x), img)


def test_layout_adds_channel_axis_for_more_outputs():
    lay = Layout("TYX", (2, 5, 7))
    out = lay.from_internal(np.zeros((2, 3, 5, 7)))
    assert out.shape == (3, 2, 5, 7)  # axes CTYX


def test_guess_axes():
    assert guess_axes((64, 64)) == "YX"
    assert guess_axes((64, 64, 3)) == "YXC"
    assert guess_axes((10, 64, 64)) == "ZYX"
    assert guess_axes((2, 64, 64)) == "CYX" and guess_axes((4, 64, 64)) == "CYX"
    assert guess_axes((64, 64, 2)) == "YXC"  # two channels last, as tifffile writes them
    assert guess_axes((2, 10, 64, 64)) == "CZYX"
    assert guess_axes((10, 8, 64, 64)) == "TZYX"
    # an ImageJ hyperstack's order: channels behind Z (and T)
    assert guess_axes((10, 2, 64, 64)) == "ZCYX"
    assert guess_axes((5, 10, 3, 64, 64)) == "TZCYX"
    assert guess_axes((5, 2, 10, 64, 64)) == "TCZYX"


def test_rgb_without_channel_axis_gets_advice():
    with pytest.raises(InvalidInputError, match="RGB.*YXC"):
        check_axes_match((64, 64, 3), "YX")


def test_nan_and_non_numeric_refused():
    img = np.ones((8, 8), np.float32)
    img[2, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        check_image(img)
    # one NaN in a large stack, where a sample of every 3rd value would not see it, and in
    # a transposed (not contiguous) view of it
    big = np.ones((3000, 3001), np.float32)
    big[1500, 1501] = np.inf
    assert (1500 * 3001 + 1501) % 3
    for arr in (big, big.T):
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            check_image(arr)
    big[1500, 1501] = 0
    assert check_image(big.T) is not None
    # a channels-first view (not contiguous) is read a block at a time, without a copy
    from napari_aeseg.core.data import _all_finite

    stack = np.ones((10, 2, 30, 40), np.float32)
    view = np.moveaxis(stack, 1, 0)
    assert _all_finite(view, block=100) and _all_finite(view, block=5000)
    stack[7, 1, 29, 39] = np.nan
    assert not _all_finite(view, block=100) and not _all_finite(view, block=5000)
    with pytest.raises(InvalidInputError, match="numeric"):
        check_image(np.array([["a"]]))


def test_constant_image_refused():
    with pytest.raises(InvalidInputError, match="constant"):
        fit_normalization([np.full((1, 1, 8, 8), 7.0)])


def test_normalization_percentiles_per_channel():
    x = np.stack([np.linspace(0, 1, 1000), np.linspace(10, 30, 1000)]).reshape(1, 2, 10, 100)
    n = fit_normalization([x], (0, 100))
    assert n.low == pytest.approx([0, 10]) and n.high == pytest.approx([1, 30])
