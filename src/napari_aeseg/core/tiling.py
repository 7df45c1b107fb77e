"""Tiled inference for images of any size, 2D and 3D.

The image is covered by a grid of equal tiles that overlap by at least ``overlap`` pixels.
Tile sizes are chosen so the grid divides the image evenly (little wasted compute), each
tile is padded to a multiple of the network's divisor and cropped back, and overlapping
predictions are blended with complementary raised-cosine ramps, so no seams show and the
pixels near a tile's border, where the network lacks context, get almost no weight.

The blending weight of a tile is the outer product of one window per axis, so the sum of
all weights is the outer product of per-axis sums: no full-size weight array is needed.
Tiles run on the compute device; the output array stays in CPU memory and is the only
full-size array this module allocates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import AesegError, InvalidInputError


class Cancelled(AesegError):
    """The user cancelled a running prediction."""


@dataclass(frozen=True)
class TileProgress:
    done: int
    total: int


@dataclass(frozen=True)
class AxisPlan:
    tile: int
    starts: tuple[int, ...]
    windows: tuple[np.ndarray, ...]

    @property
    def weight_sum(self) -> np.ndarray:
        total = np.zeros(self.starts[-1] + self.tile, np.float32)
        for s, w in zip(self.starts, self.windows, strict=True):
            total[s : s + self.tile] += w
        return total


def _ramp(n: int) -> np.ndarray:
    k = (np.arange(n, dtype=np.float64) + 0.5) / n
    return (np.sin(0.5 * np.pi * k) ** 2).astype(np.float32)


def plan_axis(length: int, max_tile: int, overlap: int, divisor: int) -> AxisPlan:
    """Starts and blending windows of equal tiles along one axis.

    Tiles start at multiples of ``divisor`` so that every tile sees the same pooling grid
    as the whole image would (otherwise tiles disagree everywhere, not only at borders).
    The axis is planned on its length rounded up to ``divisor``; the part of the last tile
    past the image end is filled by reflection when the tile is read.
    """
    padded = math.ceil(length / divisor) * divisor
    if max_tile >= padded:
        return AxisPlan(padded, (0,), (np.ones(padded, np.float32),))
    overlap = min(overlap, max_tile // 2)
    n = math.ceil((padded - overlap) / (max_tile - overlap))
    tile = math.ceil((padded - overlap) / n) + overlap
    tile = min(padded, math.ceil(tile / divisor) * divisor)
    n = max(n, math.ceil((padded - tile) / max(divisor, tile - overlap)) + 1)
    step = (padded - tile) / (n - 1) if n > 1 else 0.0
    starts = sorted({int(round(i * step / divisor)) * divisor for i in range(n)})
    starts[-1] = padded - tile
    windows = []
    for i, s in enumerate(starts):
        w = np.ones(tile, np.float32)
        if i > 0:
            ov = starts[i - 1] + tile - s
            w[:ov] *= _ramp(ov)
        if i < len(starts) - 1:
            ov = s + tile - starts[i + 1]
            w[tile - ov :] *= _ramp(ov)[::-1]
        windows.append(w)
    return AxisPlan(tile, tuple(starts), tuple(windows))


#: Training patches smaller than this (in-plane; along Z: ``SMALL_PATCH_Z``) make networks
#: that are right only on inputs about as small as their patches: every pixel they learnt
#: from was near a zero-padded border. Measured on synthetic nuclei (n2v2, depth 2, whole
#: image vs tiles of the patch size): patch 8 17.9 vs 26.2 dB, 16 24.0 vs 27.0, 24 27.1 vs
#: 27.6, 32 27.9 vs 27.9 (depth 3 too); in 3D, patch depth 8 14.6 vs 27.6 dB, 16 26.7 vs 27.2.
SMALL_PATCH = 32
SMALL_PATCH_Z = 16


def auto_tile(
    spatial_shape: Sequence[int],
    device: torch.device,
    patch: Sequence[int] | None = None,
    divisor: int = 1,
) -> tuple[int, ...]:
    """Tiles that keep memory modest: in-plane up to 1024 on CUDA, 384 elsewhere.

    On the CPU, tiles of a few hundred pixels are as fast per pixel as whole images (they
    stay in cache) while the activations of one tile stay small next to the output array.
    ``patch`` is the network's training patch: along an axis where it is small (see
    :data:`SMALL_PATCH`), tiles are no larger than the patch (slower, but right), and at
    least twice the network's ``divisor``: tiles start on its grid, so a tile of one
    ``divisor`` could not overlap its neighbours (seams).
    """
    plane = 1024 if device.type == "cuda" else 384
    if len(spatial_shape) == 3:
        plane = 256 if device.type == "cuda" else 128
        tiles: tuple[int, ...] = (128 if device.type == "cuda" else 64, plane, plane)
    else:
        tiles = (plane, plane)
    if patch is None:
        return tiles
    return tuple(
        min(t, max(p, 2 * divisor)) if p < small else t
        for t, p, small in zip(tiles, patch, small_patch_limits(len(tiles)), strict=True)
    )


def small_patch_limits(spatial_dims: int) -> tuple[int, ...]:
    """Per spatial axis, the training patch below which tiles follow the patch."""
    return (SMALL_PATCH_Z,) * (spatial_dims == 3) + (SMALL_PATCH, SMALL_PATCH)


def auto_overlap(spatial_dims: int, divisor: int) -> tuple[int, ...]:
    """Wide enough to hide the network's border effects: 8 pixels per level of depth, >= 16."""
    plane = max(16, 8 * int(round(math.log2(divisor))) + 16)
    return (plane // 2, plane, plane) if spatial_dims == 3 else (plane, plane)


def _per_axis(value, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        values = (int(value),) * dims
    else:
        values = tuple(int(v) for v in value)
        if len(values) == 1:
            values = values * dims
    if len(values) != dims:
        raise InvalidInputError(f"{name} needs 1 or {dims} values, got {len(values)}")
    if any(v < 0 for v in values):
        raise InvalidInputError(f"{name} cannot be negative")
    return values


def resolve_tiling(
    spatial_shape: Sequence[int],
    *,
    tile: int | Sequence[int] | str,
    overlap: int | Sequence[int] | str,
    divisor: int,
    device: torch.device,
    patch: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dims = len(spatial_shape)
    if tile == "auto":
        tiles = auto_tile(spatial_shape, device, patch, divisor)
    else:
        tiles = _per_axis(tile, dims, "tile")
    if any(t < divisor for t in tiles):
        raise InvalidInputError(f"tile size must be at least {divisor} (the network's divisor)")
    tiles = tuple(t // divisor * divisor for t in tiles)
    ovs = auto_overlap(dims, divisor) if overlap == "auto" else _per_axis(overlap, dims, "overlap")
    if overlap != "auto" and tile != "auto":
        # (with automatic tiles, a wide overlap is cut to half a tile, as automatic ones are)
        for n, t, o in zip(spatial_shape, tiles, ovs, strict=True):
            if n > t and o > t // 2:  # (an axis that fits in one tile has no overlap)
                raise InvalidInputError(
                    f"an overlap of {o} is more than half the tile size {t}: use at most "
                    f"{t // 2}, or a larger tile"
                )
    return tiles, ovs


def iter_predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    *,
    out_channels: int,
    divisor: int,
    device: torch.device,
    tile: int | Sequence[int] | str = "auto",
    overlap: int | Sequence[int] | str = "auto",
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    tile_batch: int | None = None,
    cancel: Callable[[], bool] | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    out: np.ndarray | None = None,
    patch: Sequence[int] | None = None,
) -> Generator[TileProgress, None, np.ndarray]:
    """Predict ``image`` (``(C, *spatial)``) tile by tile; yields progress, returns the output.

    Parameters
    ----------
    forward
        The network call, ``(B, C, *tile) -> (B, out_channels, *tile)``, run under
        :func:`torch.inference_mode`.
    image
        Any numeric array, ``(C, *spatial)``; it is read one tile at a time.
    prepare
        Applied to each tile (as numpy, float32) before it goes to the device, e.g. the
        model's intensity normalisation, so the whole image is never copied.
    tile, overlap
        ``auto`` or pixels (one value or one per spatial axis).
    cancel
        Polled between tile batches; when it returns ``True``, :class:`Cancelled` is raised.
    out
        Optional float32 array ``(out_channels, *spatial)`` to write into (it is zeroed).
    patch
        The network's training patch (limits automatic tiles, see :func:`auto_tile`).

    Returns
    -------
    numpy.ndarray
        float32 ``(out_channels, *spatial)`` in CPU memory.
    """
    spatial = image.shape[1:]
    tiles, overlaps = resolve_tiling(
        spatial, tile=tile, overlap=overlap, divisor=divisor, device=device, patch=patch
    )
    plans = [plan_axis(n, t, o, divisor) for n, t, o in zip(spatial, tiles, overlaps, strict=True)]
    tile_shape = tuple(p.tile for p in plans)
    if tile_batch is None:
        pixels = int(np.prod(tile_shape))
        # small tiles are batched on the CPU too: one call per tile costs more than its pixels
        budget = 4 * 1024 * 1024 if device.type == "cuda" else 64 * 1024
        tile_batch = max(1, budget // pixels)
    if out is None:
        out = np.zeros((out_channels, *spatial), np.float32)
    else:
        out[...] = 0.0
    grid = list(itertools.product(*[range(len(p.starts)) for p in plans]))
    total = progress_total if progress_total is not None else len(grid)
    done = progress_offset

    def valid_slices(idx):
        # the part of a tile inside the image, as slices of the image
        return tuple(
            slice(p.starts[i], min(p.starts[i] + p.tile, n))
            for p, i, n in zip(plans, idx, spatial, strict=True)
        )

    for first in range(0, len(grid), tile_batch):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        chunk = grid[first : first + tile_batch]
        batch = []
        for idx in chunk:
            sl = valid_slices(idx)
            t = np.array(image[(slice(None), *sl)], dtype=np.float32, copy=True)
            if prepare is not None:
                t = prepare(t)
            pad = [(0, 0)] + [
                (0, T - (s.stop - s.start)) for T, s in zip(tile_shape, sl, strict=True)
            ]
            if any(p[1] for p in pad):
                small = min(t.shape[1:]) < 2
                t = np.pad(t, pad, mode="edge" if small else "reflect")
            batch.append(t)
        x = torch.from_numpy(np.stack(batch)).to(device)
        with torch.inference_mode():
            y = forward(x).float().cpu().numpy()
        for k, idx in enumerate(chunk):
            sl = valid_slices(idx)
            crop = tuple(slice(0, s.stop - s.start) for s in sl)
            w = _outer([p.windows[i][c] for p, i, c in zip(plans, idx, crop, strict=True)])
            out[(slice(None), *sl)] += y[k][(slice(None), *crop)] * w
        done += len(chunk)
        yield TileProgress(done, total)
    # divide by the summed weights one leading slice at a time: no full-size temporary
    sums = [p.weight_sum[:n] for p, n in zip(plans, spatial, strict=True)]
    rest = _outer(sums[1:]) if len(sums) > 1 else np.float32(1.0)
    for i, s0 in enumerate(sums[0]):
        out[:, i] /= s0 * rest
    return out


def _outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    out = vectors[0]
    for v in vectors[1:]:
        out = np.multiply.outer(out, v)
    return out


def count_tiles(
    spatial_shape: Sequence[int],
    *,
    tile: int | Sequence[int] | str,
    overlap: int | Sequence[int] | str,
    divisor: int,
    device: torch.device,
    patch: Sequence[int] | None = None,
) -> int:
    tiles, overlaps = resolve_tiling(
        spatial_shape, tile=tile, overlap=overlap, divisor=divisor, device=device, patch=patch
    )
    return int(
        np.prod(
            [
                len(plan_axis(n, t, o, divisor).starts)
                for n, t, o in zip(spatial_shape, tiles, overlaps, strict=True)
            ]
        )
    )


def with_flip_averaging(forward: Callable[[torch.Tensor], torch.Tensor], spatial_dims: int):
    """Test-time augmentation: the mean of the predictions for every mirror image of a tile.

    4 passes in 2D, 8 in 3D; each prediction is flipped back before averaging. Works for
    tiles of any shape (no rotations), and lowers the variance of the prediction.
    """
    axes = list(range(2, 2 + spatial_dims))
    flips = [
        [a for a, on in zip(axes, mask, strict=True) if on]
        for mask in itertools.product([False, True], repeat=spatial_dims)
    ]

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in flips:
            y = forward(torch.flip(x, dims) if dims else x).float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
        return total / len(flips)

    return averaged


def run_generator(gen: Generator, callback: Callable | None = None):
    """Exhaust a progress generator and return its return value.

    ``callback`` is called with every progress update.
    """
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(progress)
