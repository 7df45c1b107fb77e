"""Synthetic fluorescence nuclei with exact instance labels.

:func:`synthetic_nuclei` draws a clean image of ellipsoidal nuclei together with its instance
label image, in 2D (YX) or 3D (ZYX). It is meant for demos, tests and benchmarks: the clean
image is the ground truth for denoising (add noise with :mod:`napari_aeseg.core.noise`) and
the labels are the ground truth for instance segmentation.

The nuclei touch but hardly overlap, so that separating touching instances matters. Each
nucleus has its own brightness, a smooth interior texture and a domed profile (darker towards
its rim); edges are slightly blurred and the background is dim, non-zero and varies slowly.

Only numpy, scipy and scikit-image are used here; the module imports neither torch nor napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InvalidInputError

__all__ = ["SyntheticNuclei", "small_pairs_and_large_discs", "synthetic_nuclei"]

# Fraction of the image covered by nuclei when ``n_nuclei`` is None.
_TARGET_FILL = 0.32
# A candidate nucleus is rejected when more than this fraction of it lies on earlier nuclei.
_MAX_OVERLAP = 0.10
# A candidate is rejected when less than this fraction of it remains (image border, overlap).
_MIN_VISIBLE = 0.50
# Largest ratio between the longest and the shortest semi-axis of a nucleus.
_MAX_ELONGATION = 1.6
# Probability that a candidate is placed right next to an earlier nucleus (touching pairs).
_P_NEIGHBOUR = 0.35
# Placement stops after this many rejected candidates in a row (the image is full).
_MAX_FAILURES_IN_A_ROW = 400
_BRIGHTNESS = (0.4, 1.0)
_BACKGROUND = 0.06  # mean background level
_BACKGROUND_VARIATION = 0.025  # amplitude of the slow background variation
_RIM_DARKENING = 0.3  # intensity at the rim is (1 - _RIM_DARKENING) of the centre
_TEXTURE_AMPLITUDE = 0.25  # interior texture spans this fraction of a nucleus' brightness
_TEXTURE_SIGMA = 1.5  # pixels; scale of the interior texture
_EDGE_SIGMA = 0.8  # pixels; blur that softens the nuclei edges


@dataclass(frozen=True, eq=False)
class SyntheticNuclei:
    """A synthetic nuclei image and its ground truth.

    Attributes
    ----------
    clean : numpy.ndarray
        Noise-free image, ``float32`` with values in ``[0, 1]``, of the requested shape.
    labels : numpy.ndarray
        Instance labels, ``uint16``, same shape as ``clean``: 0 is background and every
        nucleus has its own id, numbered ``1..N`` without gaps. Each nucleus is one connected
        region (face connectivity).
    """

    clean: np.ndarray
    labels: np.ndarray

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei, the largest label id."""
        return int(self.labels.max()) if self.labels.size else 0


def _check_args(
    shape: tuple[int, ...], n_nuclei: int | None, radius: tuple[float, float]
) -> tuple[tuple[int, ...], float, float]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"shape must be a tuple of 2 or 3 integers, got {shape!r}") from exc
    if len(shape) not in (2, 3):
        raise InvalidInputError(
            f"shape must have 2 (YX) or 3 (ZYX) dimensions, got {len(shape)}: {shape}"
        )
    if min(shape) < 1:
        raise InvalidInputError(f"every dimension of shape must be at least 1, got {shape}")
    try:
        r_lo, r_hi = (float(r) for r in radius)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"radius must be a pair (min, max) of positive numbers, got {radius!r}"
        ) from exc
    if not (0.5 <= r_lo <= r_hi) or not math.isfinite(r_hi):
        raise InvalidInputError(
            f"radius must be a pair (min, max) with 0.5 <= min <= max, got {radius!r}"
        )
    if n_nuclei is not None and (int(n_nuclei) != n_nuclei or n_nuclei < 0):
        raise InvalidInputError(f"n_nuclei must be None or an integer >= 0, got {n_nuclei!r}")
    if n_nuclei is not None and n_nuclei > np.iinfo(np.uint16).max:
        raise InvalidInputError(f"n_nuclei must be at most 65535, got {n_nuclei}")
    return shape, r_lo, r_hi


def _default_count(shape: tuple[int, ...], r_lo: float, r_hi: float) -> int:
    """Number of nuclei that covers about ``_TARGET_FILL`` of the image."""
    ndim = len(shape)
    # mean of r**ndim for r uniform in [r_lo, r_hi]; elongation keeps the volume
    if r_hi > r_lo:
        mean_rn = (r_hi ** (ndim + 1) - r_lo ** (ndim + 1)) / ((ndim + 1) * (r_hi - r_lo))
    else:
        mean_rn = r_lo**ndim
    unit_ball = math.pi if ndim == 2 else 4.0 / 3.0 * math.pi
    n = _TARGET_FILL * math.prod(shape) / (unit_ball * mean_rn)
    return int(min(max(round(n), 1), np.iinfo(np.uint16).max))


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix (``ndim x ndim``)."""
    if ndim == 2:
        a = rng.uniform(0.0, math.pi)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _semi_axes(rng: np.random.Generator, ndim: int, r_lo: float, r_hi: float) -> np.ndarray:
    """Semi-axes of one nucleus: base radius in ``[r_lo, r_hi]``, random elongation."""
    r = rng.uniform(r_lo, r_hi)
    stretch = rng.uniform(0.0, math.log(_MAX_ELONGATION), size=ndim)
    stretch -= stretch.mean()  # keep the volume of a ball of radius r
    return r * np.exp(stretch)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Slowly varying field in about ``[-1, 1]``: a coarse random grid, cubically upsampled."""
    coarse_shape = tuple(min(cells, s) + 1 for s in shape)
    coarse = rng.uniform(-1.0, 1.0, size=coarse_shape)
    zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
    field = ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    # zoom may be one pixel off when shapes do not divide evenly
    field = field[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - f) for s, f in zip(shape, field.shape, strict=True)]
    if any(p[1] for p in pad):
        field = np.pad(field, pad, mode="edge")
    return np.clip(field, -1.0, 1.0)


def _texture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random texture in ``[0, 1]`` (blurred white noise, contrast-stretched)."""
    tex = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), _TEXTURE_SIGMA)
    std = float(tex.std()) or 1.0
    tex = tex / (3.0 * std)  # about +-3 std maps to +-1
    return np.clip(0.5 + 0.5 * tex, 0.0, 1.0)


def synthetic_nuclei(
    shape: tuple[int, ...] = (256, 256),
    *,
    n_nuclei: int | None = None,
    radius: tuple[float, float] = (6.0, 12.0),
    seed: int = 0,
) -> SyntheticNuclei:
    """Draw a clean synthetic image of fluorescent nuclei and its instance labels.

    Nuclei are ellipsoids (ellipses in 2D) with random size, elongation and orientation,
    placed one after the other, each either at a random position or (about one in three)
    right next to an earlier nucleus, so that touching pairs and clusters occur. A candidate is rejected when more than
    10 % of it lies on earlier nuclei or when less than half of it remains visible (image
    border, overlap), so nuclei touch but hardly overlap; where they do overlap, the earlier
    nucleus keeps the pixels. Each nucleus gets a brightness in ``[0.4, 1.0]``, a smooth
    interior texture and a domed profile that falls to 70 % at its rim. The nuclei are then
    slightly blurred and laid on a dim background (about 0.06) that varies slowly.

    Parameters
    ----------
    shape : tuple of int
        Image shape, ``(Y, X)`` for 2D or ``(Z, Y, X)`` for 3D. Voxels are taken as isotropic.
    n_nuclei : int or None
        How many nuclei to place. ``None`` chooses the number that covers about 30 % of the
        image. In a crowded image fewer may fit; the result then holds as many as could be
        placed (see :attr:`SyntheticNuclei.n_nuclei`).
    radius : tuple of float
        ``(min, max)`` radius in pixels of the ball with the same volume as a nucleus. The
        semi-axes of a nucleus differ from that radius by at most a factor of about 1.26.
    seed : int
        Seed of the random generator; the same arguments always give the same result.

    Returns
    -------
    SyntheticNuclei
        ``clean`` (``float32`` in ``[0, 1]``) and ``labels`` (``uint16``, ids ``1..N``).

    Raises
    ------
    InvalidInputError
        If ``shape`` does not have 2 or 3 positive dimensions, ``radius`` is not a pair
        ``(min, max)`` with ``0.5 <= min <= max``, or ``n_nuclei`` is negative or above 65535.

    Examples
    --------
    >>> sample = synthetic_nuclei((128, 128), seed=1)
    >>> sample.clean.dtype, sample.labels.dtype
    (dtype('float32'), dtype('uint16'))
    >>> int(sample.labels.max()) == len(set(sample.labels.ravel().tolist()) - {0})
    True
    """
    shape, r_lo, r_hi = _check_args(shape, n_nuclei, radius)
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    target = _default_count(shape, r_lo, r_hi) if n_nuclei is None else int(n_nuclei)

    labels = np.zeros(shape, dtype=np.uint16)
    # normalised radial distance inside the nucleus (0 at the centre, 1 at the rim)
    rho = np.ones(shape, dtype=np.float32)
    brightness = [0.0]  # index 0: background
    extent = np.asarray(shape)
    centres: list[np.ndarray] = []
    radii: list[float] = []

    attempts = 0
    max_attempts = 30 * target + 100
    failures = 0  # rejected candidates since the last accepted one
    while (
        len(brightness) - 1 < target
        and attempts < max_attempts
        and failures < _MAX_FAILURES_IN_A_ROW
    ):
        attempts += 1
        failures += 1
        axes = _semi_axes(rng, ndim, r_lo, r_hi)
        rot = _random_rotation(rng, ndim)
        if centres and rng.random() < _P_NEIGHBOUR:
            # next to an earlier nucleus, at about the sum of the two radii
            j = int(rng.integers(len(centres)))
            direction = rng.standard_normal(ndim)
            direction /= np.linalg.norm(direction) or 1.0
            distance = (radii[j] + float(np.exp(np.log(axes).mean()))) * rng.uniform(0.85, 1.0)
            centre = centres[j] + distance * direction
        else:
            centre = rng.uniform(0.0, 1.0, size=ndim) * extent - 0.5
        # bounding box of the ellipsoid: half-width along dim i is ||rot[i] * axes||
        half = np.sqrt(((rot * axes) ** 2).sum(axis=1))
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, extent)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grids = np.meshgrid(
            *[
                np.arange(a, b, dtype=np.float64) - c
                for a, b, c in zip(lo, hi, centre, strict=True)
            ],
            indexing="ij",
        )
        # coordinates in the nucleus frame, scaled by the semi-axes
        r2 = np.zeros(grids[0].shape)
        for k in range(ndim):
            proj = sum(rot[i, k] * grids[i] for i in range(ndim))
            r2 += (proj / axes[k]) ** 2
        inside = r2 <= 1.0
        full_volume = (math.pi if ndim == 2 else 4.0 / 3.0 * math.pi) * float(np.prod(axes))
        n_inside = int(inside.sum())
        if n_inside == 0:
            continue
        sub = labels[box]
        taken = inside & (sub > 0)
        if taken.sum() > _MAX_OVERLAP * n_inside:
            continue
        free = inside & ~taken
        if free.sum() < _MIN_VISIBLE * full_volume:
            continue
        _, n_parts = ndi.label(free)
        if n_parts != 1:
            continue
        failures = 0
        new_id = len(brightness)
        sub[free] = new_id
        rho[box][free] = np.sqrt(r2[free]).astype(np.float32)
        brightness.append(float(rng.uniform(*_BRIGHTNESS)))
        centres.append(centre)
        radii.append(float(np.exp(np.log(axes).mean())))

    bright = np.asarray(brightness, dtype=np.float32)[labels]
    profile = 1.0 - _RIM_DARKENING * rho**2
    texture = (1.0 - _TEXTURE_AMPLITUDE) + _TEXTURE_AMPLITUDE * _texture(rng, shape)
    background = _BACKGROUND + _BACKGROUND_VARIATION * _smooth_field(rng, shape, cells=3)
    background = background.astype(np.float32)
    foreground = np.where(labels > 0, bright * profile * texture, background)
    clean = ndi.gaussian_filter(foreground.astype(np.float32), _EDGE_SIGMA)
    clean = np.clip(clean, 0.0, 1.0).astype(np.float32, copy=False)
    return SyntheticNuclei(clean=clean, labels=labels)


def small_pairs_and_large_discs() -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """Objects of two sizes in one 400 x 400 image: 50 touching pairs of small cells
    (radius 7 and 6) and 3 large discs (radius 50) that hold most of the object pixels.

    Returns the labels (``uint16``), the id pairs of the touching cells and the ids of the
    discs: one rule for all objects' seeds cannot fit both sizes.
    """
    yy, xx = np.mgrid[:400, :400]
    labels = np.zeros((400, 400), np.uint16)
    pairs, discs, k = [], [], 0
    for cy in range(15, 160, 30):
        for cx in range(15, 380, 40):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = k + 1
            labels[((yy - cy) ** 2 + (xx - cx - 12) ** 2 <= 6**2) & (labels == 0)] = k + 2
            pairs.append((k + 1, k + 2))
            k += 2
    for cy, cx in ((260, 70), (280, 200), (270, 330)):
        k += 1
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 50**2] = k
        discs.append(k)
    return labels, pairs, discs
