"""From class probabilities to label images: semantic argmax and seeded-watershed instances."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

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


def instances_from_probabilities(
    probabilities: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 15,
    fill_holes: bool = True,
    seed_erosion: int = 1,
) -> np.ndarray:
    """Instance labels from background / foreground (/ boundary) probabilities, 2D or 3D.

    With a boundary class, seeds are the connected regions of confident interior
    (foreground minus boundary), and the watershed floods the object mask (foreground plus
    boundary) from them along the boundary probability. With two classes only, seeds are the
    maxima of the smoothed distance to the background.
    """
    fg = probabilities[FOREGROUND]
    if probabilities.shape[0] > 2:
        bd = probabilities[BOUNDARY]
        mask = (fg + bd) > threshold
        interior = (fg - bd) > threshold * 0.5
        if seed_erosion:
            interior = ndi.binary_erosion(interior, iterations=seed_erosion)
        markers, _ = ndi.label(interior)
        elevation = bd - fg
    else:
        mask = fg > threshold
        dist = ndi.distance_transform_edt(mask)
        dist = ndi.gaussian_filter(dist, 1.0)
        size = 5 if fg.ndim == 2 else 3
        peaks = (dist == ndi.maximum_filter(dist, size=size)) & (dist > 1.5)
        markers, _ = ndi.label(peaks)
        elevation = -dist
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    labels = watershed(elevation, markers, mask=mask)
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
