"""From class probabilities to label images: semantic argmax and seeded-watershed instances."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .errors import InvalidInputError

#: class indices of the instance target
BACKGROUND, FOREGROUND, BOUNDARY = 0, 1, 2


def label_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint16) if n < 65535 else np.dtype(np.uint32)


def semantic_labels(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over the class axis (axis 0): class ``k`` becomes label ``k + 1``, as in scribbles."""
    lab = np.argmax(probabilities, axis=0) + 1
    return lab.astype(label_dtype(probabilities.shape[0] + 1))


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of the class probabilities, scaled to [0, 1] by ``log(K)``."""
    p = np.clip(probabilities, 1e-7, 1.0)
    h = -(p * np.log(p)).sum(axis=0)
    return (h / np.log(probabilities.shape[0])).astype(np.float32)


#: seeds lie deeper than this (pixels) inside an object
MIN_SEED_DISTANCE = 1.5


def instances_from_probabilities(
    probabilities: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 15,
    fill_holes: bool = True,
    seed_h: float = 1.0,
    seed_window: int | None = None,
    spacing=None,
) -> np.ndarray:
    """Instance labels from background / foreground (/ boundary) probabilities, 2D or 3D.

    Seeds are maxima of the smoothed distance to the object's edge, and the watershed floods
    the object mask from them along that distance, so touching nuclei are split even where
    the predicted boundary between them has gaps. With a boundary class, the distance is
    measured inside the confident interior (foreground minus boundary) and a seed must rise
    ``seed_h`` pixels above the saddle to its neighbour (h-maxima); with two classes only,
    the distance is measured in the foreground mask and a seed is the highest point of a
    ``seed_window``-wide box, by default one that grows with the objects (see
    :func:`default_seed_window`).

    ``spacing`` is the voxel size along each spatial axis (``(Z, Y, X)`` or ``(Y, X)``, any
    unit). On anisotropic stacks, where a Z step is longer than a pixel, distances, smoothing
    and the seed box are then measured in the units of the finest axis, not in voxels;
    ``min_size`` stays in voxels. ``None`` (or equal sizes) takes voxels as cubes.
    """
    fg = probabilities[FOREGROUND]
    rel = relative_spacing(spacing, fg.ndim)
    sigma = 1.0 if rel is None else tuple(1.0 / rel)
    if probabilities.shape[0] > 2:
        bd = probabilities[BOUNDARY]
        mask = (fg + bd) > threshold
        interior = (fg - bd) > threshold * 0.5
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(interior, sampling=rel), sigma)
        peaks = h_maxima_above(dist, seed_h, MIN_SEED_DISTANCE)
    else:
        mask = fg > threshold
        edt = ndi.distance_transform_edt(mask, sampling=rel)
        dist = ndi.gaussian_filter(edt, sigma)
        if seed_window is None:
            peaks = _seeds_by_piece_depth(dist, mask, edt, rel)
        else:
            peaks = dist == ndi.maximum_filter(dist, size=seed_window)
        peaks &= dist > MIN_SEED_DISTANCE
    markers, _ = ndi.label(peaks)
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    labels = watershed(-dist, markers, mask=mask)
    # objects the seeds missed (too small or thin) still count as instances
    missed, n_missed = ndi.label(mask & (labels == 0))
    if n_missed:
        labels = np.where(missed > 0, missed + labels.max(), labels)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)


def piece_depths(mask: np.ndarray, edt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connected pieces of ``mask`` (labels) and the depth of each, from 1: its largest
    distance to the edge (``edt``), about one object's radius even for a clump of touching
    objects (in the units of ``edt``)."""
    pieces, n = ndi.label(mask)
    deepest = np.zeros(n + 1)
    inside = pieces > 0
    np.maximum.at(deepest, pieces[inside], edt[inside])  # (ndi.maximum is 15x slower)
    return pieces, deepest


def _seeds_by_piece_depth(dist, mask, edt, rel) -> np.ndarray:
    """Highest points of ``dist`` within a box that follows the depth of the piece of the
    mask they lie in (:func:`default_seed_window`): large nuclei get a box large enough
    not to be cut apart at the bumps of a rough mask, small touching cells next to them a
    box small enough to keep them apart, and a rough 3D mask's many crumbs do not shrink
    the others' boxes (one box for all, from the median depth, cut the real 3D sample's
    nuclei apart)."""
    pieces, deepest = piece_depths(mask, edt)
    peaks = np.zeros(mask.shape, bool)
    if len(deepest) == 1:
        return peaks
    windows: dict = {}
    group = np.zeros(len(deepest), np.int32)
    for i in range(1, len(deepest)):
        w = default_seed_window(deepest[i], mask.ndim, spacing=rel)
        group[i] = windows.setdefault(w, len(windows) + 1)
    by_piece = group[pieces]
    for w, g in windows.items():
        peaks |= (by_piece == g) & (dist == ndi.maximum_filter(dist, size=w))
    return peaks


#: the largest ratio of two voxel sizes (beyond it, sizes in mixed units are the likelier cause)
MAX_SPACING_RATIO = 1000.0


def spatial_spacing(spacing, spatial_axes: str) -> tuple[float, ...] | None:
    """The voxel size along ``spatial_axes`` (``"ZYX"`` or ``"YX"``) from a sequence in that
    order or a mapping by axis letter (as :class:`~.image_io.ImageFile` gives it); checked."""
    if spacing is None:
        return None
    if isinstance(spacing, Mapping):
        spacing = {str(k).upper(): v for k, v in spacing.items()}
        missing = [a for a in spatial_axes if a not in spacing]
        if missing:
            raise InvalidInputError(
                f"the voxel size gives no value for axis {', '.join(missing)} (needs "
                f"{', '.join(spatial_axes)})"
            )
        spacing = [spacing[a] for a in spatial_axes]
    relative_spacing(spacing, len(spatial_axes))
    return tuple(float(v) for v in spacing)


def relative_spacing(spacing, ndim: int) -> np.ndarray | None:
    """Voxel size per spatial axis divided by the finest one; ``None`` when all are equal."""
    if spacing is None:
        return None
    names = "ZYX"[-ndim:] if ndim <= 3 else f"{ndim} axes"
    try:
        sp = np.asarray(spacing, dtype=float)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"the voxel size must be {ndim} numbers ({names}), got {spacing!r}"
        ) from None
    if sp.shape != (ndim,):
        raise InvalidInputError(
            f"the voxel size needs {ndim} values, one per spatial axis ({names}), got "
            f"{sp.size}: {spacing!r}"
        )
    if not np.isfinite(sp).all() or (sp <= 0).any():
        raise InvalidInputError(f"the voxel size must be positive numbers, got {spacing!r}")
    with np.errstate(over="ignore"):
        rel = sp / sp.min()
    if not np.isfinite(rel).all() or rel.max() > MAX_SPACING_RATIO:
        raise InvalidInputError(
            f"the voxel sizes {spacing!r} differ by more than {MAX_SPACING_RATIO:g}x: give "
            "them in one unit"
        )
    return None if np.allclose(rel, 1.0) else rel


def parse_voxel_size(text: str) -> tuple[float, ...]:
    """Sizes as a user types them: numbers separated by commas, spaces or both."""
    parts = [p.strip() for p in text.strip().split(",")]
    try:
        if any(not p for p in parts):
            raise ValueError
        return tuple(float(v) for p in parts for v in p.split())
    except ValueError:
        raise InvalidInputError(
            f"'{text}' is not sizes like 2, 0.5, 0.5 (numbers separated by commas or spaces)"
        ) from None


def default_seed_window(radius: float, ndim: int, spacing=None) -> int | tuple[int, ...]:
    """Side of the box in which a two-class seed must be the highest distance, for objects
    of ``radius`` (the depth of their piece of the mask).

    Its half-width is a quarter of the radius, and at least 2 pixels in 2D (1 voxel in 3D):
    the fixed 5 x 5 box of before for objects up to a radius of 12. With that fixed box,
    nuclei seen at 2-3x the magnification had rough masks split in pieces: AP@0.5 on the
    real sample's two-class probabilities scaled up 2x / 3x went from 0.62 / 0.55 to
    0.70 / 0.73, and 0.704 -> 0.710 at the original size (``benchmarks/bench_seed_window.py``,
    with one box from the median depth of the pieces). In 3D a sixth of the radius split
    large nuclei (``benchmarks/bench_seed_window_3d.py``).

    With a ``spacing`` relative to the finest axis (:func:`relative_spacing`; ``radius``
    then in units of that axis) the box spans the same length along every axis, so it is
    fewer voxels deep along a coarse Z, but always at least one voxel each side.
    """
    half = max(2 if ndim == 2 else 1, int(radius / 4))
    if spacing is None:
        return 2 * half + 1
    return tuple(2 * max(1, int(half / s)) + 1 for s in spacing)


def h_maxima_above(image: np.ndarray, h: float, level: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(image, h) & (image > level)``, computed object by object.

    A pixel ``p`` above ``level`` is an h-maximum unless a path from a higher pixel reaches
    it without dropping to ``image[p] - h`` or below, so paths through pixels at or below
    ``level - h`` never matter. Each connected region above ``level - h`` (neighbours as in
    ``h_maxima``: diagonals too) is therefore processed alone, with the rest set to 0: the
    same result as the whole image at once. Most regions (one nucleus each) hold a single
    local maximum above ``level``; there every pixel above ``level`` rises to it, so the
    result is that maximum, found without ``h_maxima`` (with its own floating-point margin).
    The other regions go through ``h_maxima`` one by one. On 4 MPix of nuclei this takes
    a fraction of the whole-image call.
    """
    from skimage.morphology import h_maxima

    floor = level - h
    if floor <= 0 or not np.issubdtype(image.dtype, np.floating):
        return h_maxima(image, h).astype(bool) & (image > level)
    full = np.ones((3,) * image.ndim, bool)
    regions, n = ndi.label(image > floor, structure=full)
    out = np.zeros(image.shape, bool)
    if not n:
        return out
    # plateaus of local maxima above ``level`` and the region of each
    peak = (image == ndi.maximum_filter(image, size=3, mode="constant", cval=-np.inf)) & (
        image > level
    )
    plateaus, n_plateaus = ndi.label(peak, structure=full)
    if not n_plateaus:
        return out
    region_of = np.zeros(n_plateaus + 1, np.int64)
    region_of[plateaus[peak]] = regions[peak]
    top = np.zeros(n_plateaus + 1, image.dtype)
    top[plateaus[peak]] = image[peak]
    count = np.bincount(region_of[1:], minlength=n + 1)
    # one plateau: it is the region's top, and h_maxima keeps the pixels whose residue
    # ``image - (top - h - resolution)`` reaches h (``resolution`` as skimage computes it)
    single = count == 1
    shifted = np.full(n + 1, np.inf)
    ids = region_of[1:][single[region_of[1:]]]
    tops = top[1:][single[region_of[1:]]]
    shifted[ids] = tops - h - 2 * np.finfo(image.dtype).resolution * np.abs(tops)
    out |= (image - shifted[regions] >= h) & (image > level)
    boxes = ndi.find_objects(regions)
    for i in np.flatnonzero(count >= 2):
        box = boxes[i - 1]
        own = regions[box] == i
        # a margin of 0 around the box, as the region has in the whole image
        crop = np.pad(np.where(own, image[box], 0), 1)
        inner = tuple(slice(1, -1) for _ in box)
        out[box] |= h_maxima(crop, h).astype(bool)[inner] & own & (image[box] > level)
    return out


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids ``1..N`` without gaps, in the smallest unsigned dtype that fits."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels].astype(label_dtype(len(ids)))


def instances_to_classes(labels: np.ndarray, *, boundary_width: int = 1) -> np.ndarray:
    """Dense instance labels -> 0 background / 1 foreground interior / 2 boundary (int64).

    Boundaries are the inner rim of each object, so touching objects are separated by
    boundary pixels of both.
    """
    from skimage.segmentation import find_boundaries

    target = (labels > 0).astype(np.int64)
    bd = find_boundaries(labels, mode="inner")
    if boundary_width > 1:
        bd = ndi.binary_dilation(bd, iterations=boundary_width - 1) & (labels > 0)
    target[bd] = BOUNDARY
    return target
