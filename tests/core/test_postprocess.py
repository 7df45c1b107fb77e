import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.metrics import score_instances
from napari_aeseg.core.postprocess import (
    default_seed_window,
    entropy,
    instances_from_probabilities,
    instances_to_classes,
    parse_voxel_size,
    relabel_sequential,
    relative_spacing,
    semantic_labels,
    spatial_spacing,
)
from napari_aeseg.core.synthetic import synthetic_nuclei


def _probs_from_classes(classes, k):
    p = np.stack([(classes == i).astype(np.float32) for i in range(k)])
    return 0.9 * p + 0.1 / k


def test_three_class_round_trip_separates_touching_nuclei():
    s = synthetic_nuclei((128, 128), seed=1)
    classes = instances_to_classes(s.labels)
    assert set(np.unique(classes)) == {0, 1, 2}
    labels = instances_from_probabilities(_probs_from_classes(classes, 3), min_size=5)
    assert score_instances(s.labels, labels).ap > 0.9


def test_two_class_distance_watershed_3d():
    s = synthetic_nuclei((24, 64, 64), seed=2)
    fg = (s.labels > 0).astype(np.int64)
    labels = instances_from_probabilities(_probs_from_classes(fg, 2), min_size=10)
    assert labels.dtype == np.uint16 and labels.shape == s.labels.shape
    assert score_instances(s.labels, labels).ap > 0.5


def test_small_objects_removed_and_ids_sequential():
    p = np.zeros((2, 32, 32), np.float32)
    p[0] = 1
    p[:, 2:4, 2:4] = [[[0]], [[1]]]  # 4 pixels
    p[:, 10:20, 10:20] = [[[0]], [[1]]]
    labels = instances_from_probabilities(p, min_size=10)
    assert set(np.unique(labels)) == {0, 1}


def test_semantic_and_entropy():
    p = np.array([[[0.7, 0.2]], [[0.2, 0.2]], [[0.1, 0.6]]], np.float32)
    assert semantic_labels(p).tolist() == [[1, 3]]
    flat = np.full((4, 1, 1), 0.25, np.float32)
    assert np.isclose(entropy(flat)[0, 0], 1.0)
    sure = np.array([[[1.0]], [[0.0]]], np.float32)
    assert entropy(sure)[0, 0] < 0.01


def test_touching_discs_split_despite_a_gap_in_the_boundary():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    b = (yy - 20) ** 2 + (xx - 42) ** 2 < 12**2
    truth = np.zeros((40, 60), np.uint16)
    truth[a] = 1
    truth[b & ~a] = 2
    classes = instances_to_classes(truth)
    classes[18:21][classes[18:21] == 2] = 1  # the boundary between them is missing over 3 rows
    labels = instances_from_probabilities(_probs_from_classes(classes, 3), min_size=5)
    assert labels.max() == 2
    assert score_instances(truth, labels).ap == 1.0


@pytest.mark.parametrize("shape", [(96, 128), (12, 40, 48)])
def test_h_maxima_object_by_object_equals_the_whole_image(shape):
    from skimage.morphology import h_maxima

    from napari_aeseg.core.postprocess import h_maxima_above

    rng = np.random.default_rng(0)
    blobs = ndi.gaussian_filter(rng.random(shape), 2) > 0.5
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(blobs), 1.0)
    noisy = dist + rng.random(shape) * 0.3  # many maxima, near-ties
    flat = np.round(dist * 4) / 4  # plateaus: at the top, and shoulders below it
    for image in (noisy, flat):
        for h, level in ((1.0, 1.5), (0.5, 1.5), (2.0, 1.5)):
            want = h_maxima(image, h).astype(bool) & (image > level)
            got = h_maxima_above(image, h, level)
            assert want.any()
            np.testing.assert_array_equal(got, want)


def test_h_maxima_of_small_and_diagonally_touching_objects():
    from skimage.morphology import h_maxima

    from napari_aeseg.core.postprocess import h_maxima_above

    image = np.zeros((12, 12))
    image[2, 2] = 3.0  # one pixel: its box holds nothing lower
    image[3:5, 3:5] = [[2.0, 1.0], [1.0, 1.5]]
    image[5, 5] = 2.9  # touches the square above only at a corner
    image[8:10, 8:11] = [[2.6, 2.0, 2.6], [2.2, 2.2, 2.2]]  # two peaks, a shallow dip
    for h, level in ((1.0, 1.5), (0.3, 1.5), (0.5, 2.0)):
        want = h_maxima(image, h).astype(bool) & (image > level)
        np.testing.assert_array_equal(h_maxima_above(image, h, level), want)


def _rough_ellipse_and_touching_discs(scale: float, seed: int = 0):
    """A slightly rough ellipse (as a network's mask of one nucleus) and two touching discs."""
    yy, xx = np.mgrid[: int(160 * scale), : int(360 * scale)] / scale
    rough = ndi.gaussian_filter(np.random.default_rng(seed).normal(0, 1, yy.shape), 4 * scale)
    rough /= rough.std()
    ellipse = ((yy - 80) / 30) ** 2 + ((xx - 100) / 45) ** 2 + 0.05 * rough < 1
    discs = [(yy - 80) ** 2 + (xx - x0) ** 2 < 30**2 for x0 in (230, 286)]
    return ellipse, discs


def test_two_class_seeds_scale_with_the_objects():
    from napari_aeseg.core.postprocess import default_seed_window, piece_depths

    ellipse, discs = _rough_ellipse_and_touching_discs(1.0)
    mask = ellipse | discs[0] | discs[1]
    probs = np.stack([~mask, mask]).astype(np.float32)
    edt = ndi.distance_transform_edt(mask)
    _, depths = piece_depths(mask, edt)
    assert all(29 <= d <= 31 for d in depths[1:])
    assert default_seed_window(30, 2) == 15
    labels = instances_from_probabilities(probs)
    assert len(np.unique(labels[ellipse])) == 1  # one nucleus, one label
    assert len(np.unique(labels[discs[0] | discs[1]])) == 2  # the touching pair stays split
    # a fixed 5 x 5 box (the rule before) splits the rough nucleus at this size
    assert len(np.unique(instances_from_probabilities(probs, seed_window=5)[ellipse])) == 2
    # small objects keep the 5 x 5 box, and touching small discs stay split
    small = _rough_ellipse_and_touching_discs(0.2)[1]
    small_mask = small[0] | small[1]
    _, small_depths = piece_depths(small_mask, ndi.distance_transform_edt(small_mask))
    assert default_seed_window(small_depths[1], 2) == 5
    small_labels = instances_from_probabilities(
        np.stack([~small_mask, small_mask]).astype(np.float32)
    )
    assert small_labels.max() == 2
    assert default_seed_window(7.0, 3) == 3 and default_seed_window(0.0, 2) == 5
    assert default_seed_window(16.0, 3) == 9  # a quarter of the radius in 3D too


def test_small_touching_cells_beside_large_ones_keep_their_own_seed_box():
    """One box for the whole image cannot fit both 50 touching pairs of small cells and
    three large discs that hold most of the pixels: each piece gets a box of its own."""
    from napari_aeseg.core.synthetic import small_pairs_and_large_discs

    truth, pairs, big = small_pairs_and_large_discs()
    rng = np.random.default_rng(0)
    for i in big:  # a rough edge
        disc = truth == i
        rim = disc & ~ndi.binary_erosion(disc, iterations=3)
        truth[rim & (rng.random(disc.shape) < 0.4)] = 0
    mask = truth > 0
    labels = instances_from_probabilities(np.stack([~mask, mask]).astype(np.float32))
    first = {i: np.bincount(labels[truth == i]).argmax() for i in np.unique(truth)[1:]}
    assert all(first[a] != first[b] for a, b in pairs)
    for i in big:
        ids = np.unique(labels[truth == i])
        assert len(ids[ids > 0]) == 1


def test_crumbs_of_a_rough_3d_mask_do_not_shrink_a_nucleus_seed_box():
    """A large rough nucleus among crumbs of a rough mask (the instant classifier's in a
    real stack): the nucleus gets one seed. A box from the median depth of all pieces (the
    crumbs', 3 voxels wide) cut it apart."""
    zz, yy, xx = np.mgrid[:44, :72, :72].astype(float)
    rough = ndi.gaussian_filter(np.random.default_rng(0).normal(0, 1, zz.shape), 3)
    rough /= rough.std()
    nucleus = ((zz - 22) / 18) ** 2 + ((yy - 36) / 28) ** 2 + ((xx - 36) / 28) ** 2
    nucleus = nucleus + 0.12 * rough < 1
    mask = nucleus.copy()
    for i in range(20):  # crumbs of 3 x 3 x 3 voxels in two corners' rows, apart
        z, y, x = 4 + 3 * (i % 10), (3, 68)[i // 10], 4 + 6 * (i % 10)
        mask[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = True
    assert ndi.label(mask)[1] == 21
    probs = np.stack([~mask, mask]).astype(np.float32)
    labels = instances_from_probabilities(probs)
    ids = np.unique(labels[nucleus])
    assert len(ids[ids > 0]) == 1
    cut = instances_from_probabilities(probs, seed_window=3)
    assert len(np.unique(cut[nucleus])) > 2


def _subsampled_probabilities(step: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic synthetic nuclei seen with a Z step of ``step`` voxels: truth, probabilities
    (from the truth, blurred in plane, with noise)."""
    s = synthetic_nuclei((72, 96, 96), radius=(8, 12), seed=seed)
    truth = relabel_sequential(s.labels[::step])
    if kind == "3class":
        cls = instances_to_classes(truth)
        planes = [cls == k for k in range(3)]
    else:
        planes = [truth == 0, truth > 0]
    rng = np.random.default_rng(seed)
    prob = np.stack([ndi.gaussian_filter(p.astype(np.float32), (0.2, 0.7, 0.7)) for p in planes])
    prob = np.clip(prob + rng.normal(0, 0.1, prob.shape).astype(np.float32), 0, None)
    return truth, prob / prob.sum(axis=0, keepdims=True)


@pytest.mark.parametrize("kind", ["3class", "2class"])
def test_spacing_splits_nuclei_of_an_anisotropic_stack(kind):
    """With a Z step 3x the pixel, distances in voxels merge or split nuclei along Z; in
    space they do not."""
    aps = {"voxels": [], "space": []}
    for seed in (1, 2):
        truth, prob = _subsampled_probabilities(3, kind, seed)
        aps["voxels"].append(score_instances(truth, instances_from_probabilities(prob)).ap)
        labels = instances_from_probabilities(prob, spacing=(0.9, 0.3, 0.3))
        aps["space"].append(score_instances(truth, labels).ap)
    voxels, space = np.mean(aps["voxels"]), np.mean(aps["space"])
    assert space >= 0.85, aps
    assert space >= voxels + 0.08, aps


def test_equal_voxel_sizes_change_nothing():
    truth, prob = _subsampled_probabilities(1, "2class", 1)
    plain = instances_from_probabilities(prob[:, :24])
    np.testing.assert_array_equal(
        plain, instances_from_probabilities(prob[:, :24], spacing=(2, 2, 2))
    )
    assert relative_spacing((0.5, 0.5), 2) is None


def test_seed_box_spans_the_same_length_along_each_axis():
    assert default_seed_window(30.0, 3) == 15  # half-width 7 voxels
    assert default_seed_window(30.0, 3, spacing=np.array([2.5, 1.0, 1.0])) == (5, 15, 15)
    # never less than one voxel each side, however coarse the axis
    assert default_seed_window(6.0, 3, spacing=np.array([10.0, 1.0, 1.0])) == (3, 3, 3)
    assert default_seed_window(8.0, 2, spacing=np.array([1.0, 3.0])) == (5, 3)


@pytest.mark.parametrize(
    ("spacing", "message"),
    [
        ((1.0, 1.0), "needs 3 values"),
        ((1.0, -1.0, 1.0), "positive"),
        ((np.nan, 1.0, 1.0), "positive"),
        ("abc", "3 numbers"),
        ({"Y": 1.0, "X": 1.0}, "no value for axis Z"),
        ((1e-320, 1.0, 1.0), "differ by more than 1000x"),
        ((0.001, 1.0, 2.0), "differ by more than 1000x"),
    ],
)
def test_bad_voxel_sizes_are_refused(spacing, message):
    with pytest.raises(InvalidInputError, match=message):
        spatial_spacing(spacing, "ZYX")


def test_voxel_size_by_axis_letter():
    assert spatial_spacing({"Z": 2, "Y": 0.5, "X": 0.4, "T": 9}, "ZYX") == (2.0, 0.5, 0.4)
    assert spatial_spacing({"z": 2, "y": 0.5, "x": 0.4}, "ZYX") == (2.0, 0.5, 0.4)
    assert spatial_spacing({"Z": 2, "Y": 0.5, "X": 0.4}, "YX") == (0.5, 0.4)
    assert spatial_spacing(None, "YX") is None


@pytest.mark.parametrize(
    ("text", "sizes"),
    [("2, 0.5, 0.5", (2.0, 0.5, 0.5)), ("2 0.5 0.5", (2.0, 0.5, 0.5)), ("1e-3,1", (1e-3, 1.0))],
)
def test_voxel_size_typed_with_commas_or_spaces(text, sizes):
    assert parse_voxel_size(text) == sizes


@pytest.mark.parametrize("text", ["1,,2", "1,2,", "", "a,b", "1;2"])
def test_voxel_size_text_that_is_not_sizes(text):
    with pytest.raises(InvalidInputError, match="is not sizes"):
        parse_voxel_size(text)
