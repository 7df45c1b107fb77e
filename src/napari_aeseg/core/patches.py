"""Random patches cut straight from the training arrays at every step.

No patch set is ever written to disk or held in memory: the sampler keeps the (normalised)
arrays, on the compute device when they fit, and cuts a fresh random batch for each step,
with random flips and 90-degree rotations as augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidInputError


@dataclass(frozen=True)
class Region:
    """A box of one training sample: ``array`` index, sample index, spatial slices."""

    array: int
    sample: int
    slices: tuple[slice, ...]

    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices)


def split_regions(
    shapes: Sequence[tuple[int, ...]], patch: tuple[int, ...], val_fraction: float
) -> tuple[list[Region], list[Region], bool]:
    """Split every sample into a training and a held-out validation region.

    Shapes are internal ``(N, C, *spatial)``. When there are several samples, whole samples
    are held out; otherwise the last part along the longest in-plane axis is. Returns the
    training regions, the validation regions and whether validation is truly held out
    (``False`` when the data is too small to spare a separate region).
    """
    samples = [(a, n, s[2:]) for a, s in enumerate(shapes) for n in range(s[0])]
    for _, _, spatial in samples:
        _check_patch_fits(spatial, patch)
    full = [Region(a, n, tuple(slice(0, d) for d in sp)) for a, n, sp in samples]
    if val_fraction <= 0:
        return full, full, False
    if len(samples) >= 4:
        n_val = max(1, round(len(samples) * val_fraction))
        return full[:-n_val], full[-n_val:], True
    train, val = [], []
    held_out = True
    for region, (_, _, spatial) in zip(full, samples, strict=True):
        ax = int(np.argmax(spatial[-2:])) + len(spatial) - 2
        length = spatial[ax]
        v = max(round(length * val_fraction), patch[ax])
        if length - v < patch[ax]:
            train.append(region)
            val.append(region)
            held_out = False
            continue
        cut = length - v
        tr = list(region.slices)
        va = list(region.slices)
        tr[ax] = slice(0, cut)
        va[ax] = slice(cut, length)
        train.append(Region(region.array, region.sample, tuple(tr)))
        val.append(Region(region.array, region.sample, tuple(va)))
    return train, val, held_out


def _check_patch_fits(spatial: tuple[int, ...], patch: tuple[int, ...]) -> None:
    names = "ZYX"[-len(spatial) :]
    for name, size, p in zip(names, spatial, patch, strict=True):
        if size < p:
            raise InvalidInputError(
                f"the image is {size} pixels along {name}, smaller than the patch size {p}; "
                f"use a patch size of at most {size} (rounded down to the network's multiple)"
                + (
                    "; or, if that axis holds time points, samples or channels, say so in "
                    "the axes (TYX, SYX, CYX)"
                    if name == "Z"
                    else "; or, if that axis holds channels, say so in the axes (YXC)"
                    if name == "X" and size <= 4
                    else ""
                )
            )


class PatchSampler:
    """Cuts random, augmented batches ``(B, C, *patch)`` from regions of the arrays."""

    def __init__(
        self,
        arrays: Sequence[torch.Tensor],
        regions: Sequence[Region],
        patch: tuple[int, ...],
        *,
        augment: bool,
        generator: torch.Generator,
    ):
        self.arrays = list(arrays)
        self.regions = list(regions)
        self.patch = tuple(patch)
        self.augment = augment
        self.generator = generator
        # sample regions in proportion to the number of patch positions they hold
        counts = [
            float(np.prod([s - p + 1 for s, p in zip(r.shape(), self.patch, strict=True)]))
            for r in self.regions
        ]
        self.weights = torch.tensor(counts, dtype=torch.float64)
        # rotate in YX only when the patch is square there
        self.can_rotate = patch[-1] == patch[-2]

    def _rand(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def sample(self, batch_size: int) -> torch.Tensor:
        picks = torch.multinomial(
            self.weights, batch_size, replacement=True, generator=self.generator
        )
        out = []
        for i in picks.tolist():
            region = self.regions[i]
            arr = self.arrays[region.array][region.sample]
            slices = []
            for sl, p in zip(region.slices, self.patch, strict=True):
                start = sl.start + self._rand(sl.stop - sl.start - p + 1)
                slices.append(slice(start, start + p))
            patch = arr[(slice(None), *slices)]
            if self.augment:
                patch = self._augment(patch)
            out.append(patch)
        return torch.stack(out)

    def _augment(self, patch: torch.Tensor) -> torch.Tensor:
        # patch is (C, *spatial)
        flips = [d for d in range(1, patch.ndim) if self._rand(2)]
        if flips:
            patch = torch.flip(patch, flips)
        if self.can_rotate:
            k = self._rand(4)
            if k:
                patch = torch.rot90(patch, k, dims=(patch.ndim - 2, patch.ndim - 1))
        return patch

    def fixed_batches(self, n_patches: int, batch_size: int) -> list[torch.Tensor]:
        """Deterministic batches (for validation): same patches at every evaluation."""
        saved = self.augment
        self.augment = False
        try:
            batches = []
            left = n_patches
            while left > 0:
                b = min(batch_size, left)
                batches.append(self.sample(b))
                left -= b
            return batches
        finally:
            self.augment = saved
