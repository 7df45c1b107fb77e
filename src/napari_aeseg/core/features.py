"""An instant pixel classifier on the encoder's multi-scale features.

For the "paint a little, see the result, paint more" loop: the encoder of a trained denoiser
turns every pixel into a feature vector (its activations at every level, upsampled to full
resolution, plus the intensity); a random forest learns the scribbled pixels and predicts
all others. Features are computed once per image and cached by the caller; refitting on new
scribbles takes well under a second on a 512x512 image. Without an encoder, scikit-image's
``multiscale_basic_features`` (intensity, edges, texture at several scales, as in ilastik)
serve instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import Layout, check_axes_match, check_image
from .denoiser import DenoiserModel
from .devices import resolve_device
from .errors import InvalidInputError
from .segmenter import check_class_numbering
from .tiling import iter_predict_tiled, run_generator

#: feature stacks up to this size (bytes) are always allowed; larger ones up to half the
#: free memory (features are held in memory, and refits reuse them)
_MAX_FEATURE_BYTES = 3 * 1024**3


def available_memory() -> int | None:
    """Bytes of memory free for new allocations, or None when the system does not say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def feature_budget() -> int:
    """The largest feature stack (bytes) :func:`encoder_features` computes."""
    free = available_memory()
    return max(_MAX_FEATURE_BYTES, free // 2) if free else _MAX_FEATURE_BYTES


def encoder_features(
    model: DenoiserModel,
    image: np.ndarray,
    *,
    axes: str | None = None,
    device="auto",
    tile="auto",
    levels: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-pixel features ``(F, *spatial)`` (float32) of one image from a denoiser's encoder.

    ``levels`` picks encoder levels (0 = full resolution); all by default. Images with
    sample axes (``T``/``S``) are not supported here: pass one frame.
    """
    image = check_image(image)
    layout = model.check_layout(image.shape, axes)
    if (
        layout.sample_axes
        and np.prod([layout.shape[layout.axes.index(a)] for a in layout.sample_axes]) > 1
    ):
        raise InvalidInputError(
            "features are computed for one frame at a time; pass a single frame"
        )
    dev = resolve_device(device)
    encoder = model.network.encoder.to(dev).eval()
    chans = encoder.channels
    use = list(levels) if levels is not None else list(range(len(chans)))
    n_feat = layout.channels + sum(chans[i] for i in use)
    size = n_feat * int(np.prod(layout.spatial_shape)) * 4
    budget = feature_budget()
    if size > budget:
        raise InvalidInputError(
            f"the encoder's features of this image would take {size / 1024**3:.1f} GiB, more "
            f"than the {budget / 1024**3:.1f} GiB allowed (half the free memory, at least "
            f"{_MAX_FEATURE_BYTES / 1024**3:g} GiB); use a crop or a slice, or the classic "
            "features (encoder: none)"
        )
    mode = "trilinear" if layout.spatial_dims == 3 else "bilinear"

    def forward(x: torch.Tensor) -> torch.Tensor:
        feats = encoder(x)
        up = [
            F.interpolate(feats[i], size=x.shape[2:], mode=mode, align_corners=False)
            if i
            else feats[i]
            for i in use
        ]
        return torch.cat([x, *up], dim=1)

    prepare, _, _ = model.normalizer(layout.spatial_dims)
    internal = layout.to_internal(image)[0]
    return run_generator(
        iter_predict_tiled(
            forward,
            internal,
            out_channels=n_feat,
            divisor=model.config.architecture.divisor,
            device=dev,
            tile=tile,
            overlap="auto",
            prepare=prepare,
            patch=model.training_patch(layout.spatial_dims),
        )
    )


def classic_features(image: np.ndarray, *, axes: str = "YX") -> np.ndarray:
    """ilastik-style features ``(F, *spatial)``: intensity, edges and texture at 1-16 px.

    The features of scikit-image's ``multiscale_basic_features`` (Gaussian, Sobel of it, and
    the Hessian's eigenvalues, largest first, at sigma 1, 2, 4, 8, 16), computed the same
    way, except that the eigenvalues of 3D Hessians come from a closed formula: scikit-image
    solves 3.9 million 3 x 3 problems per scale with LAPACK, which took 15.7 of the 18.7 s of
    a 60 x 256 x 256 stack here.
    """
    image = check_image(image)
    layout = Layout(check_axes_match(image.shape, axes), image.shape)
    thin = [a for a, n in zip(layout.spatial_axes, layout.spatial_shape, strict=True) if n < 2]
    if thin:
        raise InvalidInputError(
            f"the image is 1 pixel long along {', '.join(thin)} (shape {image.shape}, axes "
            f"{layout.axes}): the features need 2 or more; a single plane has axes YX"
        )
    x = layout.to_internal(image)[0].astype(np.float32)
    lo, hi = np.percentile(x, (0.5, 99.5))
    x = (x - lo) / max(hi - lo, 1e-6)
    feats = [f for c in range(x.shape[0]) for f in _basic_features(np.ascontiguousarray(x[c]))]
    return np.stack(feats).astype(np.float32, copy=False)


#: the scales of :func:`classic_features` (pixels)
CLASSIC_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _basic_features(image: np.ndarray) -> list[np.ndarray]:
    """Per scale: the Gaussian, its Sobel magnitude, the Hessian's eigenvalues (largest
    first), as ``skimage.feature.multiscale_basic_features``; scales in threads."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import combinations_with_replacement

    from skimage import filters

    def one_scale(sigma: float) -> list[np.ndarray]:
        smooth = filters.gaussian(image, sigma=sigma, preserve_range=False)
        gradient = np.gradient(smooth)
        hessian = [
            np.gradient(gradient[a], axis=b)
            for a, b in combinations_with_replacement(range(smooth.ndim), 2)
        ]
        return [smooth, filters.sobel(smooth), *hessian_eigenvalues(hessian)]

    with ThreadPoolExecutor() as pool:
        return [f for scale in pool.map(one_scale, CLASSIC_SIGMAS) for f in scale]


def hessian_eigenvalues(elements: list[np.ndarray], block: int = 1 << 20) -> list[np.ndarray]:
    """Eigenvalues, largest first, of symmetric matrices given by their upper-triangle
    elements (row by row: 3 in 2D, 6 in 3D), as ``skimage.feature.hessian_matrix_eigvals``.
    3 x 3: the trigonometric solution of the characteristic cubic (Smith 1961), in float64
    and in blocks of ``block`` voxels."""
    if len(elements) != 6:
        from skimage.feature import hessian_matrix_eigvals

        return list(hessian_matrix_eigvals(elements))
    shape, dtype = elements[0].shape, elements[0].dtype
    flat = [np.ravel(e) for e in elements]
    out = np.empty((3, flat[0].size), dtype)
    for start in range(0, flat[0].size, block):
        a, b, c, d, e, f = (v[start : start + block].astype(np.float64) for v in flat)
        q = (a + d + f) / 3  # [[a, b, c], [b, d, e], [c, e, f]] = q I + p B
        off = b * b + c * c + e * e
        p = np.sqrt(((a - q) ** 2 + (d - q) ** 2 + (f - q) ** 2 + 2 * off) / 6)
        s = np.where(p > 0, p, 1.0)
        a, d, f, b, c, e = (a - q) / s, (d - q) / s, (f - q) / s, b / s, c / s, e / s
        half_det = (a * (d * f - e * e) - b * (b * f - e * c) + c * (b * e - d * c)) / 2
        phi = np.arccos(np.clip(half_det, -1.0, 1.0)) / 3
        top = q + 2 * p * np.cos(phi)
        low = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
        out[:, start : start + block] = (top, 3 * q - top - low, low)
    return list(out.reshape(3, *shape))


@dataclass
class PixelClassifier:
    """A random forest on per-pixel features, fitted on scribbles (0 = not annotated).

    Sized for refitting after every paint stroke: at most ``max_samples`` scribbled pixels
    are used, and each tree is grown on a bootstrap sample of at most ``tree_samples`` of
    them, so that the fit time stops growing once a lot has been painted: an update on a
    512x512 image takes 0.2-0.5 s on 2 CPU cores (``benchmarks/bench_classifier.py``). On
    real strokes the cap changed AP by at most 0.01; 32 trees instead of 48 fit faster but
    scored 0.04 lower at 5 % strokes (within the seed spread, so not settled).
    """

    n_estimators: int = 48
    max_depth: int = 14
    max_samples: int = 40_000
    tree_samples: int = 5_000
    seed: int = 0

    def __post_init__(self):
        self.forest = None
        self.n_classes = 0

    def fit(self, features: np.ndarray, scribbles: np.ndarray) -> PixelClassifier:
        from sklearn.ensemble import RandomForestClassifier

        scribbles = np.asarray(scribbles)
        if scribbles.shape != features.shape[1:]:
            raise InvalidInputError(
                f"scribbles of shape {scribbles.shape} do not match the image {features.shape[1:]}"
            )
        labeled = np.flatnonzero(scribbles.ravel() > 0)
        classes = np.unique(scribbles.ravel()[labeled])
        if len(labeled) == 0:
            raise InvalidInputError("no pixel is annotated: paint some scribbles first")
        if len(classes) < 2:
            raise InvalidInputError(
                f"only label {int(classes[0])} is annotated; paint at least two classes "
                "(e.g. 1 = background and 2 = foreground)"
            )
        # one probability plane per value up to the largest painted one: 1..K, no gaps
        check_class_numbering(classes)
        rng = np.random.default_rng(self.seed)
        if len(labeled) > self.max_samples:
            labeled = rng.choice(labeled, self.max_samples, replace=False)
        flat = features.reshape(features.shape[0], -1)
        x = flat[:, labeled].T
        y = scribbles.ravel()[labeled]
        self.forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            n_jobs=-1,
            class_weight="balanced",
            max_samples=self.tree_samples if len(labeled) > self.tree_samples else None,
            random_state=self.seed,
        ).fit(x, y)
        self.n_classes = int(scribbles.max())
        return self

    def predict_proba(self, features: np.ndarray, chunk: int = 262_144) -> np.ndarray:
        """Probabilities ``(K, *spatial)`` for labels ``1..K`` (classes never painted get 0)."""
        if self.forest is None:
            raise InvalidInputError("the classifier has not been trained yet")
        flat = features.reshape(features.shape[0], -1)
        out = np.zeros((self.n_classes, flat.shape[1]), np.float32)
        rows = self.forest.classes_.astype(int) - 1
        for start in range(0, flat.shape[1], chunk):
            part = self.forest.predict_proba(flat[:, start : start + chunk].T)
            out[rows, start : start + chunk] = part.T
        return out.reshape(self.n_classes, *features.shape[1:])
