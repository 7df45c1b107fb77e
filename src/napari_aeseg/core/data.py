"""Image layout and intensity handling shared by training and inference.

Images arrive in any layout named by an ``axes`` string (``YX``, ``ZYX``, ``TYX``, ``CYX``,
``YXC``, ``TCZYX``...). Internally every image becomes ``(N, C, [Z,] Y, X)``: sample axes
``S`` and ``T`` are flattened into ``N`` (each frame is its own sample), ``C`` is the channel
axis (1 when absent). :class:`Layout` remembers how to turn results back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Normalization, validate_axes
from .errors import InvalidInputError


def guess_axes(shape: tuple[int, ...], *, rgb: bool = False) -> str:
    """A reasonable default axes string for an array shape (users can always override)."""
    nd = len(shape)
    if rgb or (nd == 3 and shape[-1] in (2, 3, 4) and shape[0] > 4):
        return {3: "YXC", 4: "ZYXC"}.get(nd, "YXC")
    if nd == 2:
        return "YX"
    if nd == 3:
        # a leading axis of 2-4 is far more often channels than planes (as in 4D below)
        return "CYX" if shape[0] <= 4 else "ZYX"
    if nd == 4:
        if shape[0] <= 4:
            return "CZYX"
        # 2-4 behind more planes: channels in an ImageJ hyperstack's order (Z, C, Y, X)
        return "ZCYX" if shape[1] <= 4 else "TZYX"
    if nd == 5:
        return "TZCYX" if shape[2] <= 4 < shape[1] else "TCZYX"
    raise InvalidInputError(f"cannot guess the axes of a {nd}D array of shape {shape}; give axes")


def check_axes_match(shape: tuple[int, ...], axes: str) -> str:
    """Validate ``axes`` against an array shape, with a message that says what to change."""
    try:
        axes = validate_axes(axes)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if len(axes) != len(shape):
        hint = ""
        if len(shape) == len(axes) + 1 and shape[-1] in (3, 4) and "C" not in axes:
            hint = (
                f"; it looks like an RGB(A) image: declare the channel axis, "
                f"e.g. axes '{axes}C', or convert it to grayscale"
            )
        raise InvalidInputError(
            f"axes '{axes}' name {len(axes)} axes but the image has {len(shape)} "
            f"(shape {tuple(shape)}){hint}"
        )
    return axes


@dataclass(frozen=True)
class Layout:
    """How an image of ``axes`` maps to the internal ``(N, C, *spatial)`` layout."""

    axes: str
    shape: tuple[int, ...]

    @property
    def spatial_axes(self) -> str:
        return "ZYX" if "Z" in self.axes else "YX"

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_axes)

    @property
    def sample_axes(self) -> str:
        return "".join(a for a in "ST" if a in self.axes)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial_axes)

    def _internal_order(self) -> str:
        return self.sample_axes + ("C" if "C" in self.axes else "") + self.spatial_axes

    def to_internal(self, image: np.ndarray) -> np.ndarray:
        """A view (no copy where possible) of ``image`` as ``(N, C, *spatial)``."""
        order = self._internal_order()
        arr = np.transpose(image, [self.axes.index(a) for a in order])
        n = int(np.prod([self.shape[self.axes.index(a)] for a in self.sample_axes], dtype=int))
        return arr.reshape(n, self.channels, *self.spatial_shape)

    def from_internal(self, internal: np.ndarray) -> np.ndarray:
        """Turn ``(N, C_out, *spatial)`` results back into the input's layout.

        The channel count may differ from the input's (class probabilities): with no ``C``
        in the input axes and more than one output channel, a channel axis is added first.
        """
        c_out = internal.shape[1]
        sample_shape = [self.shape[self.axes.index(a)] for a in self.sample_axes]
        axes = self.axes
        if "C" not in axes and c_out > 1:
            axes = "C" + axes
        order = self.sample_axes + "C" + self.spatial_axes
        arr = internal.reshape(*sample_shape, c_out, *self.spatial_shape)
        if "C" not in axes:
            arr = arr[(slice(None),) * len(sample_shape) + (0,)]  # a view, not a copy
            order = order.replace("C", "")
        return np.transpose(arr, [order.index(a) for a in axes])


def check_image(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Refuse what cannot be denoised: non-numeric, empty, NaN/Inf."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} has data type {arr.dtype}; a numeric image is needed")
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f" and not _all_finite(arr):
        raise InvalidInputError(
            f"{name} contains NaN or infinite values; replace them (e.g. with "
            "numpy.nan_to_num) before training or denoising"
        )
    return arr


def _all_finite(arr: np.ndarray, block: int = 1 << 24) -> bool:
    """Whether every value is finite: every value is read (one NaN in a large stack would
    spread through the network or the features), ``block`` values at a time along the
    first axis, so memory stays small whatever the strides (views are not copied)."""
    if arr.ndim == 0 or arr.size <= block:
        return bool(np.isfinite(arr).all())
    row = arr[0].size  # values per index of the first axis
    if row > block:
        return all(_all_finite(sub, block) for sub in arr)
    step = block // row
    return all(np.isfinite(arr[i : i + step]).all() for i in range(0, arr.shape[0], step))


def _sample(arr: np.ndarray, max_values: int = 4_000_000) -> np.ndarray:
    flat = arr.reshape(-1)
    if flat.size <= max_values:
        return flat
    step = flat.size // max_values + 1
    return flat[::step]


def fit_normalization(
    internals: list[np.ndarray], percentiles: tuple[float, float] = (0.5, 99.5)
) -> Normalization:
    """Per-channel percentiles over all training images (on a subsample for speed)."""
    channels = internals[0].shape[1]
    low, high = [], []
    for c in range(channels):
        values = np.concatenate(
            [
                _sample(np.ascontiguousarray(x[:, c]), 2_000_000).astype(np.float64)
                for x in internals
            ]
        )
        lo, hi = np.percentile(values, percentiles)
        if not hi > lo:
            lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise InvalidInputError(
                f"channel {c} of the training data is constant ({lo:g}); there is nothing to "
                "learn from a constant image"
            )
        low.append(float(lo))
        high.append(float(hi))
    return Normalization(low=low, high=high, percentiles=tuple(percentiles))


def normalize(x: np.ndarray, norm: Normalization, channel_axis: int = 1) -> np.ndarray:
    """``(x - low) / (high - low)`` per channel, as float32 (a new array)."""
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    lo = np.asarray(norm.low, np.float32).reshape(shape)
    span = (np.asarray(norm.high, np.float32) - np.asarray(norm.low, np.float32)).reshape(shape)
    out = x.astype(np.float32, copy=True)
    out -= lo
    out /= span
    return out
