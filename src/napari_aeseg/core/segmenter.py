"""Encoder-pretrained segmentation from a few labels.

A segmenter is the U-Net of :mod:`.models` with a fresh decoder and a head of one output per
class. Its encoder either starts from the encoder of a trained denoiser (weights and
intensity normalisation copied), which has learned what the user's images look like from
unlabeled data, or from random initialisation.

Labels it learns from:

- ``scribbles``: 0 = not annotated (ignored by the loss), 1 = background, 2 = foreground,
  or ``k + 1`` for class ``k`` of K semantic classes;
- ``instances``: dense instance masks (0 = background, one id per object), turned into
  background / foreground interior / boundary classes for instance segmentation.

With ``joint_denoising`` (as in DenoiSeg) the network also has one denoising output per
channel, trained with the blind-spot loss on every pixel while the segmentation loss uses
the labeled pixels only.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from scipy import ndimage as ndi

from .config import (
    FORMAT_VERSION,
    ArchitectureConfig,
    Normalization,
    _Strict,
    build,
    validate_axes,
)
from .data import Layout, check_axes_match, check_image, fit_normalization, normalize
from .denoiser import DenoiserModel, TrainedModel
from .devices import resolve_device
from .errors import InvalidInputError, TrainingCancelled
from .metrics import MAX_CLASSES
from .models import UNet, build_network
from .noise import apply_blind_spot, blind_spot_coordinates, masked_gather, noise_to_signal
from .postprocess import (
    entropy,
    instances_from_probabilities,
    instances_to_classes,
    label_dtype,
    semantic_labels,
    spatial_spacing,
)
from .tiling import run_generator, with_flip_averaging
from .training import TrainingProgress

LabelsKind = Literal["scribbles", "instances"]
Target = Literal["instances", "semantic"]


#: ``max_labeled_patches`` of a segmenter started from a denoiser (``make_segmenter_config``):
#: the labels of 150 steps of 8 fully labeled patches
PRETRAINED_LABELED_PATCHES = 1200.0
#: ``noisy_label_passes`` of a segmenter started from a denoiser
PRETRAINED_NOISY_LABEL_PASSES = 1200.0


class SegTrainingConfig(_Strict):
    steps: int = Field(400, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    patch_size: int = Field(64, ge=8, le=4096)
    patch_size_z: int = Field(16, ge=4, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    #: learning-rate factor of a pretrained encoder once it is unfrozen
    encoder_lr_factor: float = Field(0.2, ge=0, le=10)
    #: keep a pretrained encoder frozen for this many first steps (the new decoder settles)
    freeze_encoder_steps: int = Field(50, ge=0)
    #: what a denoiser initialises: its encoder only, or its decoder too (then only the 1x1
    #: head starts from scratch). ``make_segmenter_config`` picks "encoder+decoder"; the
    #: default here is what model files from before this option did
    transfer: Literal["encoder", "encoder+decoder"] = "encoder"
    #: pull of the weights copied from a denoiser back toward their starting values, each
    #: step (a decoupled L2-SP penalty: ``w -= lr * anchor * (w - w0)``); 0 turns it off.
    #: With very few labels it keeps fine-tuning from overfitting them
    anchor: float = Field(0.0, ge=0, le=1000)
    #: with a denoiser's start, training ends once its patches have held this many patches'
    #: worth of labeled pixels (a fully labeled patch counts 1, a half-labeled one 0.5), if
    #: that comes before ``steps``; the frozen steps shrink in proportion. A pretrained start
    #: learns a few marked crops fast and then overfits them: on real nuclei, one to five
    #: 64 x 64 crops did best at about 150 steps of 8 and lost up to 0.07 AP at 400. Spread
    #: strokes label a few pixels per patch and are not limited in practice. None: no limit
    max_labeled_patches: float | None = Field(None, gt=0)
    #: ... but where the labeled area is noisy the limit moves toward this many passes over
    #: each labeled pixel (if that is longer): not at all up to a noise-to-signal ratio of 1
    #: (noise std over the signal's, ``noise.noise_to_signal``), fully from 2 on. Noisy crops
    #: keep improving for longer: two 64 x 64 crops of real nuclei under strong noise did best
    #: at 300 steps of 8 (1200 passes), clean ones at 150. None: the same limit for all
    noisy_label_passes: float | None = Field(None, gt=0)
    #: ... but not before each labeled pixel has been in this many patches on average (many
    #: labels get a longer run)
    min_label_passes: float = Field(120.0, gt=0)
    #: the rule before ``max_labeled_patches`` (model files of 2026-11-28 record it): training
    #: ends once each labeled pixel has been in this many patches on average. None: no limit
    max_label_passes: float | None = Field(None, gt=0)
    joint_denoising: bool = False
    denoise_weight: float = Field(0.5, ge=0, le=100)
    masked_fraction: float = Field(0.02, gt=0, le=0.5)
    blind_spot_radius: int = Field(2, ge=1, le=8)
    #: weight classes by the inverse square root of their labeled pixel counts
    class_balance: bool = True
    augment: bool = True
    seed: int = 0
    #: the patch trained on, ``((Z,) Y, X)``, where labeled images smaller than the patch
    #: made it smaller (set by the trainer; automatic inference tiles follow small patches)
    fitted_patch: tuple[int, ...] | None = None


class PostprocessConfig(_Strict):
    threshold: float = Field(0.5, gt=0, lt=1)
    min_size: int = Field(15, ge=0)
    fill_holes: bool = True


class EncoderSource(_Strict):
    """Where a segmenter's encoder came from."""

    name: str
    mode: str
    trained_steps: int
    config_json: str
    #: SHA-256 of the denoiser's weights (``None`` in model files from before 2026-11-29)
    digest: str | None = None


class SegmenterConfig(_Strict):
    kind: Literal["segmenter"] = "segmenter"
    format_version: int = FORMAT_VERSION
    axes: str = "YX"
    target: Target = "instances"
    labels_kind: LabelsKind = "scribbles"
    n_classes: int = Field(2, ge=2, le=255)
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    training: SegTrainingConfig = Field(default_factory=SegTrainingConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    normalization: Normalization | None = None
    encoder: EncoderSource | None = None
    #: the denoiser the training images went through first (its name; "" for none): the
    #: segmenter expects its inputs denoised the same way. ``None``: not recorded (model
    #: files from before 2026-11-29)
    denoised_with: str | None = None
    #: SHA-256 of that denoiser's weights: another model of the same name is told apart
    denoised_digest: str | None = None
    #: names of semantic classes 1..K (tissue types, organs), shown with the results
    class_names: list[str] | None = None

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, axes: str) -> str:
        return validate_axes(axes)

    @model_validator(mode="after")
    def _consistent(self) -> SegmenterConfig:
        dims = 3 if "Z" in self.axes else 2
        if self.architecture.spatial_dims != dims:
            raise ValueError(f"axes '{self.axes}' are {dims}D but the architecture is not")
        div = self.architecture.divisor
        if self.training.patch_size % div or (dims == 3 and self.training.patch_size_z % div):
            raise ValueError(f"patch sizes must be multiples of {div} (2**depth)")
        if self.labels_kind == "instances" and self.target != "instances":
            raise ValueError("instance masks train an instance segmenter (target 'instances')")
        if self.class_names is not None:
            if self.target != "semantic":
                raise ValueError("class names are for semantic classes (target 'semantic')")
            check_class_names(self.class_names, self.n_classes)
        return self

    @property
    def n_outputs(self) -> int:
        extra = self.architecture.in_channels if self.training.joint_denoising else 0
        return self.n_classes + extra


# ------------------------------------------------------------------ labels -> targets
#: more scribble classes than this are almost surely an instance mask given as scribbles
MAX_SCRIBBLE_CLASSES = MAX_CLASSES

_AS_INSTANCES = "if these are instance masks, give them as such (labels kind 'instances')"


def scribble_classes(labels: Sequence[np.ndarray], target: str) -> int:
    """The number of classes scribbles train: background and objects for an instance
    segmenter (values 1 and 2), the largest value for semantic classes."""
    if target == "instances":
        return 2
    top = max(int(np.max(lab)) if np.size(lab) else 0 for lab in labels)
    check_class_numbering(np.unique(np.concatenate([np.unique(lab) for lab in labels])))
    return max(2, top)


def parse_class_names(text: str | None) -> list[str] | None:
    """``"background, tumour, stroma"`` as a list (None for an empty text). A name that
    holds a comma is put in double quotes, as in a CSV file: ``"grade 1, 2", stroma``."""
    import csv

    try:
        fields = next(csv.reader([text or ""], skipinitialspace=True), [])
    except csv.Error as exc:
        raise InvalidInputError(f"cannot read the class names {text!r}: {exc}") from None
    names = [n.strip() for n in fields]
    while names and not names[-1]:  # a trailing comma
        names.pop()
    return names or None


def format_class_names(names: Sequence[str]) -> str:
    """Names as :func:`parse_class_names` reads them back: comma-separated, a name holding
    a comma, a quote or a line break in double quotes (CSV rules)."""
    return ", ".join(csv_field(n) for n in names)


def csv_field(text: str) -> str:
    """One CSV field, quoted where it holds a comma, a quote or a line break."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def check_class_names(names: Sequence[str], n_classes: int) -> None:
    """One non-empty, distinct name per class 1..K, else :class:`InvalidInputError`."""
    if not all(names) or len(set(names)) != len(names):
        raise InvalidInputError(f"class names must be distinct and not empty: {list(names)}")
    if len(names) != n_classes:
        raise InvalidInputError(
            f"{len(names)} class name(s) for {n_classes} classes (values 1..{n_classes}): "
            "give one name per class, in order of their values, or none"
        )


def check_class_numbering(values: np.ndarray) -> None:
    """Refuse painted values (those > 0 count) that cannot be classes 1..K without gaps."""
    values = np.asarray(values)
    present = np.unique(values[values > 0]).astype(np.int64)
    if not len(present):
        return
    top = int(present[-1])
    if top > MAX_SCRIBBLE_CLASSES:
        raise InvalidInputError(
            f"the scribbles use values up to {top}: scribbles are 1 = background, "
            f"2 = foreground, k + 1 = class k (at most {MAX_SCRIBBLE_CLASSES} classes); "
            f"{_AS_INSTANCES}"
        )
    missing = np.setdiff1d(np.arange(1, top + 1), present)
    if len(missing):
        values_text = ", ".join(str(v) for v in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise InvalidInputError(
            f"scribble value(s) {values_text} are not used but {top} is: classes are numbered "
            f"1..{top} without gaps (each value one class; for objects 1 = background and "
            "2 = objects), so paint every class or renumber them"
        )


def _checked_region(region: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A labeled-region mask as booleans, refused if its shape differs or it is empty."""
    if region is None:
        return None
    region = np.asarray(region).astype(bool)
    if region.shape != shape:
        raise InvalidInputError(
            f"the labeled-region mask has shape {region.shape} but the labels have shape {shape}"
        )
    if not region.any():
        raise InvalidInputError("the labeled-region mask is empty: mark the labeled crops")
    return region


def frame_targets(
    labels: np.ndarray,
    kind: LabelsKind,
    n_classes: int | None = None,
    *,
    region: np.ndarray | None = None,
    spatial_dims: int,
) -> np.ndarray:
    """:func:`labels_to_target` frame by frame: ``(N, *spatial)`` from ``(*frames, *spatial)``.

    The leading axes (time points, samples) are independent images: instance outlines are
    found within a frame, never between frames (ids that continue from frame to frame, as
    tracks do, stay separate objects). With instance masks, a frame without any label among
    labeled ones is ignored (not taken as all background), as are frames without any of a
    ``region``.
    """
    labels = np.asarray(labels)
    region = _checked_region(region, labels.shape)
    spatial = labels.shape[labels.ndim - spatial_dims :]
    flat = labels.reshape(-1, *spatial)
    regions = None if region is None else region.reshape(-1, *spatial)
    if len(flat) == 1:
        only = None if regions is None else regions[0]
        return labels_to_target(flat[0], kind, n_classes, region=only)[None]
    skip = [
        (regions is not None and not regions[k].any())
        or (kind == "instances" and regions is None and not flat[k].any())
        for k in range(len(flat))
    ]
    if all(skip):  # no frame holds an object: all background (refused later, one class)
        return np.stack([labels_to_target(f, kind, n_classes) for f in flat])
    return np.stack(
        [
            np.full(spatial, -1, np.int64)
            if skip[k]
            else labels_to_target(
                flat[k], kind, n_classes, region=None if regions is None else regions[k]
            )
            for k in range(len(flat))
        ]
    )


def labels_to_target(
    labels: np.ndarray,
    kind: LabelsKind,
    n_classes: int | None = None,
    *,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """Class targets (int64, -1 = ignored) from scribbles or dense instance masks.

    ``region`` marks where the labels are complete (a few fully labeled crops inside otherwise
    unlabeled images): outside it, pixels are ignored. For instance masks the labels are first
    continued outward from the region's edge (each outside pixel takes the label of the
    nearest inside pixel), so an object cut by a crop's edge gets no boundary there.
    """
    labels = np.asarray(labels)
    region = _checked_region(region, labels.shape)
    if region is not None:
        target = labels_to_target(_continue_outward(labels, region), kind, n_classes)
        return np.where(region, target, -1)
    if labels.dtype.kind not in "biu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise InvalidInputError(f"labels must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise InvalidInputError("labels contain negative values; use 0 for unlabeled pixels")
    if kind == "instances":
        return instances_to_classes(labels)
    target = labels.astype(np.int64) - 1
    if n_classes is not None and target.max() >= n_classes:
        raise InvalidInputError(
            f"scribbles contain the value {int(labels.max())} but only {n_classes} classes "
            f"exist (values 1..{n_classes}; 0 = not annotated)"
            + (
                f"; {_AS_INSTANCES}, or choose target 'semantic' for more classes"
                if n_classes == 2
                else f"; {_AS_INSTANCES}"
            )
        )
    return target


def _continue_outward(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``labels`` inside ``region``; outside, the label of the nearest pixel inside."""
    if region.all():
        return labels
    idx = ndi.distance_transform_edt(~region, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


def check_targets(
    targets: Sequence[np.ndarray], n_classes: int, kind: LabelsKind = "scribbles"
) -> np.ndarray:
    """Counts of labeled pixels per class; errors for no labels, a single class, and scribble
    classes without a pixel (values 1 and 5 would make five classes, three never seen)."""
    counts = np.zeros(n_classes, np.int64)
    for t in targets:
        vals, cnt = np.unique(t[t >= 0], return_counts=True)
        counts[vals] += cnt
    if counts.sum() == 0:
        raise InvalidInputError(
            "no pixel is annotated: paint scribbles (1 = background, 2 = foreground) or give "
            "instance masks"
        )
    present = np.flatnonzero(counts)
    if kind == "instances":
        if counts[1:].sum() == 0:
            raise InvalidInputError(
                "the instance masks hold no object (every labeled pixel is 0, background): "
                "paint the objects, each with its own id"
            )
        if counts[0] == 0:
            raise InvalidInputError(
                "the instance masks have no background (no pixel is 0): label whole crops, "
                "with the background between the objects as 0"
            )
        return counts
    if len(present) < 2:
        raise InvalidInputError(
            f"only label {int(present[0]) + 1} is annotated; annotate at least two classes "
            "(e.g. 1 = background and 2 = foreground)"
        )
    check_class_numbering(present + 1)
    return counts


# ------------------------------------------------------------------------- patches
class LabeledPatchSampler:
    """Random patches centred near annotated pixels (scribbles are sparse), image and target
    cropped and augmented together."""

    def __init__(self, images, targets, patch, *, augment, generator, regions=None):
        self.images = images  # list of (C, *S) tensors
        self.targets = targets  # list of (*S) int64 tensors
        self.patch = tuple(patch)
        self.augment = augment
        self.g = generator
        # boxes[j]: (lower, upper) corners of a labeled crop; a pixel outside any crop gets its
        # image's whole extent. A patch drawn for a pixel covers as much of its crop as fits.
        self.boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        coords, classes = [], []
        for i, t in enumerate(targets):
            idx = torch.nonzero(t >= 0).cpu()
            region = None if regions is None else regions[i]
            box = torch.full((len(idx), 1), len(self.boxes))
            self.boxes.append(((0,) * t.ndim, tuple(t.shape)))
            if region is not None:
                parts, _ = ndi.label(region)
                for sl in ndi.find_objects(parts):
                    self.boxes.append((tuple(a.start for a in sl), tuple(a.stop for a in sl)))
                part = torch.from_numpy(parts[tuple(idx.T.numpy())].astype(np.int64))
                box = torch.where(part > 0, part + box[:, 0], box[:, 0])[:, None]
            coords.append(torch.cat([torch.full((len(idx), 1), i), idx, box], 1))
            classes.append(t[t >= 0].cpu())
        self.coords = torch.cat(coords)
        cls = torch.cat(classes)
        # pick a class uniformly, then a pixel of it: rare classes are not drowned
        self.by_class = [torch.nonzero(cls == k)[:, 0] for k in range(int(cls.max()) + 1)]
        self.by_class = [b for b in self.by_class if len(b)]

    def labeled_per_patch(self, n: int = 64) -> float:
        """Mean number of labeled pixels in a patch (a sample of ``n``; the stream of the
        training patches is left as it was)."""
        stream, self.g = self.g, torch.Generator().manual_seed(0)
        try:
            _, t = self.sample(n)
        finally:
            self.g = stream
        return float((t >= 0).sum()) / n

    def _r(self, n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=self.g))

    def sample(self, batch: int):
        """``batch`` patches, each holding an annotated pixel.

        Joint training uses these patches too: its denoising loss covers all their pixels,
        most of them unlabeled. Drawing half of the patches anywhere instead (as before)
        starved the segmentation loss, which stalled at chance on noisy images with a few
        strokes.
        """
        xs, ts = [], []
        for _ in range(batch):
            # one draw that picks nothing: the stream stays as it was when this draw chose
            # between labeled and random patches, so seeds give the patches they gave
            torch.rand(1, generator=self.g)
            members = self.by_class[self._r(len(self.by_class))]
            row = self.coords[members[self._r(len(members))]]
            i = int(row[0])
            shape = self.targets[i].shape
            lower, upper = self.boxes[int(row[-1])]
            starts = []
            spans = zip(row[1:-1].tolist(), shape, self.patch, lower, upper, strict=True)
            for c, s, p, b0, b1 in spans:
                # holds pixel c; inside the crop when it is larger than the patch, around all
                # of it when smaller (without a crop: anywhere in the image)
                lo = max(0, c - p + 1, min(b0, b1 - p))
                hi = min(s - p, c, max(b0, b1 - p))
                starts.append(lo + self._r(hi - lo + 1))
            sl = tuple(slice(a, a + p) for a, p in zip(starts, self.patch, strict=True))
            x = self.images[i][(slice(None), *sl)]
            t = self.targets[i][sl]
            if self.augment:
                flips = [d for d in range(1, x.ndim) if self._r(2)]
                if flips:
                    x = torch.flip(x, flips)
                    t = torch.flip(t, [d - 1 for d in flips])
                if self.patch[-1] == self.patch[-2]:
                    k = self._r(4)
                    if k:
                        x = torch.rot90(x, k, dims=(x.ndim - 2, x.ndim - 1))
                        t = torch.rot90(t, k, dims=(t.ndim - 2, t.ndim - 1))
            xs.append(x)
            ts.append(t)
        return torch.stack(xs), torch.stack(ts)


# --------------------------------------------------------------------------- model
@dataclass
class SegmentationResult:
    """Outputs of :meth:`SegmenterModel.segment`, laid out as the input without its channel axis."""

    labels: np.ndarray
    probabilities: np.ndarray  # (K, ...) float32
    uncertainty: np.ndarray  # entropy in [0, 1]
    denoised: np.ndarray | None = None


@dataclass
class SegmenterModel(TrainedModel):
    name: str = "segmenter"
    kind: ClassVar[str] = "segmenter"
    config_class: ClassVar[type] = SegmenterConfig

    @classmethod
    def _build_network(cls, config) -> UNet:
        return build_network(config.architecture, out_channels=config.n_outputs)

    def describe(self) -> str:
        c = self.config
        if c.encoder is None:
            enc = "random-init network"
        else:
            part = "encoder" if c.training.transfer == "encoder" else "encoder and decoder"
            enc = f"{part} from denoiser '{c.encoder.name}'"
        joint = ", joint denoising" if c.training.joint_denoising else ""
        return (
            f"{self.name}: {c.target} segmenter, {c.n_classes} classes from {c.labels_kind}, "
            f"{enc}{joint}, axes {c.axes}, {self.trained_steps} steps trained"
        )

    def training_patch(self, spatial_dims: int) -> tuple[int, ...]:
        fitted = self.config.training.fitted_patch
        if fitted is not None and len(fitted) == spatial_dims:
            return tuple(fitted)
        return super().training_patch(spatial_dims)

    def iter_segment(
        self,
        image: np.ndarray,
        *,
        axes: str | None = None,
        tile="auto",
        overlap="auto",
        device="auto",
        cancel: Callable[[], bool] | None = None,
        tta: bool = False,
        spacing=None,
    ) -> Generator:
        """Tiled segmentation yielding progress; returns a :class:`SegmentationResult`.

        ``tta`` averages the class probabilities of all mirror images of each tile (4 passes
        in 2D, 8 in 3D), as the denoiser's option does. ``spacing`` is the voxel size along
        the spatial axes (``(Z, Y, X)`` or ``(Y, X)``, or a mapping by axis letter): the
        instances of an anisotropic stack are then split by distances in space, not in
        voxels (see :func:`~.postprocess.instances_from_probabilities`).
        """
        image = check_image(image)
        layout = self.check_layout(image.shape, axes)
        spacing = spatial_spacing(spacing, layout.spatial_axes)
        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        k = self.config.n_classes
        joint = self.config.training.joint_denoising

        def forward(x):
            y = net(x)
            probs = torch.softmax(y[:, :k].float(), dim=1)
            return torch.cat([probs, y[:, k:].float()], dim=1) if joint else probs

        if tta:
            forward = with_flip_averaging(forward, layout.spatial_dims)

        stack = yield from self.iter_predict_samples(
            forward,
            layout.to_internal(image),
            layout,
            out_channels=self.config.n_outputs,
            tile=tile,
            overlap=overlap,
            device=dev,
            cancel=cancel,
        )  # (N, K(+C), *S)
        n = stack.shape[0]
        probs = stack[:, :k]
        lead = [layout.shape[layout.axes.index(a)] for a in layout.sample_axes]
        shape = (*lead, *layout.spatial_shape)
        pp = self.config.postprocess
        labels = np.stack(
            [
                instances_from_probabilities(
                    p,
                    threshold=pp.threshold,
                    min_size=pp.min_size,
                    fill_holes=pp.fill_holes,
                    spacing=spacing,
                )
                if self.config.target == "instances"
                else semantic_labels(p)
                for p in probs
            ]
        )
        if self.config.target == "instances" and n > 1:
            # unique ids across frames, in the smallest type that holds them all
            tops = [int(frame.max(initial=0)) for frame in labels]
            labels = labels.astype(label_dtype(sum(tops)))
            offset = 0
            for i in range(n):
                m = labels[i] > 0
                labels[i][m] += offset
                offset += tops[i]
        probs_out = np.moveaxis(probs, 1, 0).reshape(k, *shape)
        denoised = None
        if joint:
            _, lo, span = self.normalizer(layout.spatial_dims)
            den = stack[:, k:] * span + lo
            denoised = layout.from_internal(den)
        return SegmentationResult(
            labels=labels.reshape(shape),
            probabilities=probs_out,
            uncertainty=entropy(probs_out),
            denoised=denoised,
        )

    def segment(self, image: np.ndarray, **kwargs) -> SegmentationResult:
        """Segment an image; see :meth:`iter_segment` for the options."""
        return run_generator(self.iter_segment(image, **kwargs))


def denoising_note(model: SegmenterModel, denoiser: DenoiserModel | None) -> str | None:
    """Why results may be poor when a segmenter gets its inputs denoised otherwise than
    its training images were (``denoiser``: the denoiser applied now, or ``None``)."""
    trained = model.config.denoised_with
    denoiser_name = None if denoiser is None else denoiser.name
    digest = model.config.denoised_digest
    if trained and denoiser is not None and digest and digest != denoiser.weights_digest():
        return (
            f"'{model.name}' was trained on images denoised by '{trained}', and these are "
            f"denoised by '{denoiser_name}', a model with other weights (results may be "
            "poor): denoise them with the model the training images went through, or train "
            "on images denoised by this one"
        )
    if trained is None or bool(trained) == (denoiser is not None):
        return None  # not recorded, or alike (a saved denoiser is named by its file)
    if denoiser_name is None:
        return (
            f"'{model.name}' was trained on images denoised by '{trained}', and these are not "
            "denoised first: denoise them with that model unless they already are (results "
            "may be poor)"
        )
    return (
        f"'{model.name}' was trained on images that were not denoised and now gets them "
        f"denoised by '{denoiser_name}' (results may be poor): train it on denoised images "
        "too, or segment without denoising"
    )


def load_segmenter(path: str | os.PathLike) -> SegmenterModel:
    return SegmenterModel.load(path)


# ------------------------------------------------------------------------ training
def make_segmenter_config(
    shape: tuple[int, ...],
    *,
    encoder: DenoiserModel | None = None,
    axes: str | None = None,
    labels_kind: LabelsKind = "scribbles",
    target: Target = "instances",
    n_classes: int | None = None,
    depth: int = 2,
    base_channels: int = 32,
    denoised_with: str | None = None,
    denoised_digest: str | None = None,
    class_names: Sequence[str] | None = None,
    **training,
) -> SegmenterConfig:
    """A validated segmenter config; architecture and axes follow ``encoder`` when given.
    ``denoised_with`` records the name of the denoiser the training images go through, and
    ``denoised_digest`` its weights' SHA-256."""
    from .data import guess_axes

    if encoder is not None:
        axes = axes or (encoder.config.axes if len(encoder.config.axes) == len(shape) else None)
    axes = check_axes_match(tuple(shape), axes or guess_axes(tuple(shape)))
    channels = shape[axes.index("C")] if "C" in axes else 1
    if encoder is not None:
        encoder.check_layout(tuple(shape), axes)
        arch = encoder.config.architecture.model_copy(update={"top_skip": True})
    else:
        arch = build(
            ArchitectureConfig,
            spatial_dims=3 if "Z" in axes else 2,
            in_channels=channels,
            out_channels=channels,
            depth=depth,
            base_channels=base_channels,
        )
    if n_classes is None:
        n_classes = 3 if labels_kind == "instances" else 2
    source = None
    if encoder is not None:
        source = EncoderSource(
            name=encoder.name,
            mode=encoder.config.mode,
            trained_steps=encoder.trained_steps,
            config_json=encoder.config.model_dump_json(),
            digest=encoder.weights_digest(),
        )
        if "freeze_encoder_steps" not in training:
            training["freeze_encoder_steps"] = min(50, training.get("steps", 400) // 5)
        training.setdefault("transfer", "encoder+decoder")
        training.setdefault("max_labeled_patches", PRETRAINED_LABELED_PATCHES)
        training.setdefault("noisy_label_passes", PRETRAINED_NOISY_LABEL_PASSES)
    else:
        training.setdefault("freeze_encoder_steps", 0)
    train_cfg = build(SegTrainingConfig, **training)
    if class_names:
        if target != "semantic":
            raise InvalidInputError("class names are for semantic classes (target 'semantic')")
        check_class_names(list(class_names), n_classes)
    return build(
        SegmenterConfig,
        axes=axes,
        target=target,
        labels_kind=labels_kind,
        n_classes=n_classes,
        architecture=arch,
        training=train_cfg,
        normalization=encoder.config.normalization if encoder is not None else None,
        encoder=source,
        denoised_with=denoised_with or "",
        denoised_digest=denoised_digest,
        class_names=list(class_names) if class_names else None,
    )


class SegmenterTrainer:
    """Fine-tunes a segmenter on a few labels; ``run()`` yields progress like the denoiser's."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: SegmenterConfig,
        *,
        encoder: DenoiserModel | None = None,
        device="auto",
        name: str = "segmenter",
        regions: Sequence[np.ndarray | None] | None = None,
    ):
        if len(images) != len(labels):
            raise InvalidInputError(
                f"{len(images)} image(s) but {len(labels)} label image(s); give one per image"
            )
        if not images:
            raise InvalidInputError("no training images were given")
        if regions is None:
            regions = [None] * len(labels)
        if len(regions) != len(labels):
            raise InvalidInputError(
                f"{len(labels)} label image(s) but {len(regions)} region mask(s); give one per "
                "label image (None where the whole image is labeled)"
            )
        self.config = config
        self.device = resolve_device(device)
        t = config.training
        internals, targets, masks = [], [], []
        for i, (img, lab, region) in enumerate(zip(images, labels, regions, strict=True)):
            img = check_image(img, name=f"image {i + 1}")
            layout = Layout(check_axes_match(img.shape, config.axes), img.shape)
            lab = np.asarray(lab)
            want = (
                *[layout.shape[layout.axes.index(a)] for a in layout.sample_axes],
                *layout.spatial_shape,
            )
            if lab.shape != tuple(want):
                raise InvalidInputError(
                    f"labels {i + 1} have shape {lab.shape} but image {i + 1} needs labels of "
                    f"shape {tuple(want)} (the image without its channel axis)"
                )
            if layout.channels != config.architecture.in_channels:
                raise InvalidInputError(
                    f"the encoder expects {config.architecture.in_channels} channel(s) but image "
                    f"{i + 1} has {layout.channels}"
                )
            internals.append(layout.to_internal(img))
            try:
                tgt = frame_targets(
                    lab,
                    config.labels_kind,
                    config.n_classes,
                    region=region,
                    spatial_dims=layout.spatial_dims,
                )
            except InvalidInputError as exc:
                raise InvalidInputError(f"labels {i + 1}: {exc}") from None
            targets.append(tgt)
            masks.append(
                None if region is None else np.asarray(region, bool).reshape(targets[-1].shape)
            )
        counts = check_targets(targets, config.n_classes, config.labels_kind)
        if config.normalization is None:
            config.normalization = fit_normalization(internals)
        dims = config.architecture.spatial_dims
        self.patch = (t.patch_size_z,) * (dims == 3) + (t.patch_size, t.patch_size)
        fitted = tuple(
            min(p, _fit(p, min(tg.shape[1 + d] for tg in targets), config.architecture.divisor))
            for d, p in enumerate(self.patch)
        )
        t.fitted_patch = fitted if fitted != self.patch else None
        self.patch = fitted
        imgs, tgts, crops = [], [], []
        for x, tg, mask in zip(internals, targets, masks, strict=True):
            xn = torch.from_numpy(normalize(x, config.normalization))
            for n in range(x.shape[0]):
                imgs.append(xn[n].to(self.device))
                tgts.append(torch.from_numpy(tg[n]).to(self.device))
                crops.append(None if mask is None else mask[n])
        self.generator = torch.Generator().manual_seed(t.seed)
        self.sampler = LabeledPatchSampler(
            imgs,
            tgts,
            self.patch,
            augment=t.augment,
            generator=self.generator,
            regions=crops,
        )
        #: the steps asked for, when few labels made the run shorter (``max_labeled_patches``)
        self.requested_steps: int | None = None
        #: the labeled images' noise-to-signal ratio when it lengthened the limit, else None
        self.noise_ratio: float | None = None
        enough = None
        if encoder is not None:
            enough = self._steps_for_few_labels(float(counts.sum()), imgs, tgts)
        if enough is not None and enough < t.steps:
            self.requested_steps = t.steps
            t.freeze_encoder_steps = t.freeze_encoder_steps * enough // t.steps
            t.steps = enough
        torch.manual_seed(t.seed)
        self.network = build_network(config.architecture, out_channels=config.n_outputs).to(
            self.device
        )
        if encoder is not None:
            transfer_weights(
                encoder.network,
                self.network,
                decoder=t.transfer == "encoder+decoder",
                n_classes=config.n_classes,
            )
        enc_params = list(self.network.encoder.parameters())
        rest = [p for n_, p in self.network.named_parameters() if not n_.startswith("encoder.")]
        self.pretrained = encoder is not None
        # (parameter, its pretrained value, optimizer group) for the anchor toward the denoiser
        self.anchors: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        if self.pretrained and t.anchor > 0:
            copied = ("encoder.", "decoder.") if t.transfer == "encoder+decoder" else ("encoder.",)
            for n_, p in self.network.named_parameters():
                if n_.startswith(copied):
                    group = 0 if n_.startswith("encoder.") else 1
                    self.anchors.append((p, p.detach().clone(), group))
        self.enc_lr = t.learning_rate * (t.encoder_lr_factor if self.pretrained else 1.0)
        self.optimizer = torch.optim.AdamW(
            [{"params": enc_params, "lr": self.enc_lr}, {"params": rest, "lr": t.learning_rate}],
            weight_decay=1e-4,
        )
        weights = None
        if t.class_balance:
            w = 1.0 / np.sqrt(np.maximum(counts, 1))
            w = w / w[counts > 0].mean()
            weights = torch.tensor(w, dtype=torch.float32, device=self.device)
        self.class_weights = weights
        self.history: list[tuple[int, float, float]] = []
        self.step = 0
        self.name = name
        self._stop = False

    def _steps_for_few_labels(self, labeled: float, images, targets) -> int | None:
        """The steps after which a pretrained run has seen enough of ``labeled`` pixels
        (``max_labeled_patches``, ``max_label_passes``), or None without a limit."""
        t = self.config.training
        if not (t.max_labeled_patches or t.max_label_passes):
            return None
        per_patch = self.sampler.labeled_per_patch()
        passes_per_step = t.batch_size * per_patch / labeled
        limits = []
        if t.max_labeled_patches:
            fraction = per_patch / math.prod(self.patch)
            limit = max(
                t.max_labeled_patches / (t.batch_size * fraction),
                t.min_label_passes / passes_per_step,
            )
            noisy = (t.noisy_label_passes or 0.0) / passes_per_step
            if noisy > limit:
                ratio = labeled_noise_ratio(images, targets)
                if ratio > 1:
                    self.noise_ratio = ratio
                    limit += min(ratio - 1.0, 1.0) * (noisy - limit)
            limits.append(limit)
        if t.max_label_passes:
            limits.append(t.max_label_passes / passes_per_step)
        return max(1, math.ceil(min(limits) - 1e-9))

    @property
    def total_steps(self) -> int:
        return self.config.training.steps

    def stop(self) -> None:
        self._stop = True

    def extend(self, steps: int) -> None:
        self.config.training.steps = self.step + int(steps)

    def _loss(self, x, target):
        cfg = self.config
        k = cfg.n_classes
        t = cfg.training
        coords = None
        if t.joint_denoising:
            coords = blind_spot_coordinates(x.shape, t.masked_fraction, self.generator)
            inp = apply_blind_spot(
                x,
                coords,
                radius=t.blind_spot_radius,
                replacement="median",
                generator=self.generator,
            )
        else:
            inp = x
        y = self.network(inp)
        logits = y[:, :k]
        per_pixel = F.cross_entropy(
            logits, target.clamp(min=0), weight=self.class_weights, reduction="none"
        )
        valid = (target >= 0).float()
        if self.class_weights is not None:
            norm = (self.class_weights[target.clamp(min=0)] * valid).sum()
        else:
            norm = valid.sum()
        loss = (per_pixel * valid).sum() / norm.clamp(min=1e-6)
        if coords is not None:
            den = y[:, k:]
            loss = loss + t.denoise_weight * F.mse_loss(
                masked_gather(den, coords), masked_gather(x, coords)
            )
        return loss

    @torch.no_grad()
    def _pull_to_anchors(self) -> None:
        a = self.config.training.anchor
        for p, start, group in self.anchors:
            lr = self.optimizer.param_groups[group]["lr"]
            if lr > 0:
                p.sub_(p - start, alpha=min(1.0, lr * a))

    def run(self) -> Generator[TrainingProgress, None, SegmenterModel]:
        t = self.config.training
        self.network.train()
        started = time.perf_counter()
        first = self.step
        while self.step < t.steps and not self._stop:
            frac = min(1.0, self.step / max(1, t.steps))
            scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
            frozen = self.pretrained and self.step < t.freeze_encoder_steps
            self.optimizer.param_groups[0]["lr"] = 0.0 if frozen else self.enc_lr * scale
            self.optimizer.param_groups[1]["lr"] = t.learning_rate * scale
            x, target = self.sampler.sample(t.batch_size)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(x, target)
            loss.backward()
            self.optimizer.step()
            self._pull_to_anchors()
            self.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise InvalidInputError(
                    f"training diverged at step {self.step}; lower the learning rate"
                )
            self.history.append((self.step, value, math.nan))
            rate = (self.step - first) / max(1e-9, time.perf_counter() - started)
            yield TrainingProgress(
                step=self.step,
                total_steps=t.steps,
                epoch=0,
                train_loss=value,
                val_loss=None,
                best_val_loss=None,
                learning_rate=self.optimizer.param_groups[1]["lr"],
                steps_per_second=rate,
                eta_seconds=(t.steps - self.step) / rate if rate > 0 else math.inf,
            )
        self._stop = False
        return self.result()

    def result(self) -> SegmenterModel:
        if self.step == 0:
            raise TrainingCancelled("training stopped before the first step; nothing to save")
        network = build_network(self.config.architecture, out_channels=self.config.n_outputs)
        network.load_state_dict({k: v.detach().cpu() for k, v in self.network.state_dict().items()})
        return SegmenterModel(
            config=self.config.model_copy(deep=True),
            network=network.eval(),
            history=list(self.history),
            trained_steps=self.step,
            optimizer_state=copy.deepcopy(self.optimizer.state_dict()),
            name=self.name,
        )


@torch.no_grad()
def transfer_weights(source: UNet, target: UNet, *, decoder: bool, n_classes: int) -> None:
    """Initialise ``target`` (a segmenter) from ``source`` (a denoiser's network).

    The encoder is copied. With ``decoder`` the decoder is copied as well; an ``n2v2``
    denoiser has no skip connection at full resolution and the segmenter has one, so that
    input of the last decoder block starts at zero: the segmenter's last feature maps then
    equal the denoiser's until training teaches it to use the skip. With joint denoising the
    denoising outputs of the head start as the denoiser's own head.
    """
    target.encoder.load_state_dict(source.encoder.state_dict())
    if not decoder:
        return
    state = target.decoder.state_dict()
    for key, value in source.decoder.state_dict().items():
        dst = state[key]
        if dst.shape == value.shape:
            dst.copy_(value)
        elif dst.ndim > 1 and dst.shape[0] == value.shape[0] and dst.shape[2:] == value.shape[2:]:
            dst.zero_()
            dst[:, : value.shape[1]].copy_(value)
        else:
            raise InvalidInputError(
                f"the denoiser's decoder does not fit this segmenter ({key}: "
                f"{tuple(value.shape)} vs {tuple(dst.shape)})"
            )
    target.decoder.load_state_dict(state)
    extra = target.head.out_channels - n_classes
    if extra and extra == source.head.out_channels:
        target.head.weight[n_classes:].copy_(source.head.weight)
        target.head.bias[n_classes:].copy_(source.head.bias)


def shortened_note(trainer: SegmenterTrainer) -> str:
    """ ", N of M steps: ..." when few labels shortened a pretrained run, else ""."""
    if trainer.requested_steps is None:
        return ""
    noisy = ""
    if trainer.noise_ratio is not None:
        noisy = (
            f" (longer than for clean labels: the labeled area is noisy, noise/signal "
            f"{trainer.noise_ratio:.1f})"
        )
    return (
        f", {trainer.total_steps} of {trainer.requested_steps} steps: the labels cover a small "
        f"area, and longer runs from a denoiser overfit it{noisy}"
    )


def labeled_noise_ratio(images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> float:
    """The noise-to-signal ratio (:func:`.noise.noise_to_signal`) of the images inside the
    box around their labeled pixels, one channel at a time (images ``(C, *spatial)``,
    targets ``(*spatial)`` with -1 where not annotated)."""
    pieces = []
    for image, target in zip(images, targets, strict=True):
        box = ndi.find_objects((target >= 0).cpu().numpy().astype(np.uint8))
        if box and box[0] is not None:
            pieces.extend(image[(slice(None), *box[0])].cpu().numpy())
    return noise_to_signal(pieces)


#: a run whose last 20 losses average above this fraction of the loss of a uniform guess
#: (ln K) has not learnt its classes: 4 semantic classes from random weights after 150
#: steps stood at 0.90 and labeled almost everything as one class; runs that worked ended
#: at 0.00-0.12 (400 steps, or with a denoiser's start). Instance masks keep a higher floor
#: (the thin boundary class): a run on very noisy blobs that found every object ended at 0.62
UNDERTRAINED_LOSS = 0.75


def undertrained_note(model: SegmenterModel) -> str | None:
    """A warning when the training loss ended near that of guessing, else None."""
    if model.config.training.joint_denoising:  # (its loss holds the denoising term)
        return None
    losses = [h[1] for h in model.history[-20:] if math.isfinite(h[1])]
    if not losses:
        return None
    chance = math.log(model.config.n_classes)
    mean = float(np.mean(losses))
    if mean <= UNDERTRAINED_LOSS * chance:
        return None
    if mean > 2 * chance:
        return (
            f"the training loss ended at {mean:.3g}, far above the {chance:.2f} of guessing: "
            "training went wrong; try a lower learning rate, and check that the images are "
            "like those the encoder was trained on"
        )
    start = "" if model.config.encoder is not None else " (or start from a denoiser)"
    return (
        f"the training loss ended at {mean:.2f}, near the {chance:.2f} of guessing: the "
        f"network has probably not learnt the classes yet; train for more steps{start}"
    )


#: below this share of the pixels painted as a class coming out as that class, a result is
#: flagged: a network fitted to its scribbles gets most of them right
MISSED_SCRIBBLES = 0.5


def missed_scribbles_note(
    labels: np.ndarray,
    scribbles: np.ndarray,
    *,
    target: str,
    class_names: Sequence[str] | None = None,
) -> str | None:
    """A warning when a result gets under half of the pixels painted as some class right
    (scribbles 1 = background, 2 = objects, or classes 1..K; ``labels`` the result: object
    ids, or classes 1..K). The training loss can look fine while a class is lost."""
    labels, scribbles = np.asarray(labels), np.asarray(scribbles)
    if labels.shape != scribbles.shape:
        return None
    painted = scribbles > 0
    values, classes = labels[painted], scribbles[painted]
    if target == "instances":
        if classes.max(initial=0) > 2:  # instance masks, not scribbles
            return None
        values = np.where(values > 0, 2, 1)
    missed = []
    for k in np.unique(classes).astype(int):
        right = float(np.mean(values[classes == k] == k))
        if right < MISSED_SCRIBBLES:
            name = class_names[k - 1] if class_names and k <= len(class_names) else None
            what = {1: "background", 2: "objects"}.get(int(k)) if target == "instances" else name
            missed.append(f"{right:.0%} of those painted {int(k)}" + (f" ({what})" if what else ""))
    if not missed:
        return None
    return (
        f"the result gets only {' and '.join(missed)} right: train for more steps, or try the "
        "instant classifier"
    )


def _fit(patch: int, size: int, divisor: int) -> int:
    """The largest multiple of ``divisor`` not above ``size`` (patches shrink for small crops)."""
    fitted = size // divisor * divisor
    if fitted < divisor:
        raise InvalidInputError(
            f"a labeled image is only {size} pixels wide; it needs at least {divisor}"
        )
    return min(patch, fitted)


def train_segmenter(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    encoder: DenoiserModel | str | os.PathLike | None = None,
    device="auto",
    callback=None,
    regions: np.ndarray | Sequence[np.ndarray | None] | None = None,
    **options,
) -> SegmenterModel:
    """Train a segmenter on images and their scribbles or instance masks (synchronous).

    ``encoder`` is a trained :class:`DenoiserModel` (or its file) whose encoder initialises
    the network, or ``None`` for random initialisation. ``regions`` (one mask per label image,
    or ``None``) marks where the labels are complete, for a few fully labeled crops inside
    otherwise unlabeled images: outside, pixels are not annotated. ``options`` go to
    :func:`make_segmenter_config` (``labels_kind``, ``target``, ``steps``, ``joint_denoising``...).
    With an encoder, training ends before ``steps`` when the labels cover a small area: after
    ``max_labeled_patches`` patches' worth of labeled pixels (1200, that is 150 steps of 8
    fully labeled patches) but not before each labeled pixel was in ``min_label_passes``
    patches (120); where the labeled area's noise is stronger than its signal, the limit
    moves toward ``noisy_label_passes`` (1200) passes over each labeled pixel;
    ``max_labeled_patches=None`` trains them all.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    if isinstance(labels, np.ndarray):
        labels = [labels]
    if isinstance(regions, np.ndarray):
        regions = [regions]
    if encoder is not None and not isinstance(encoder, DenoiserModel):
        encoder = DenoiserModel.load(encoder)
    if options.get("labels_kind", "scribbles") == "scribbles" and options.get("n_classes") is None:
        options["n_classes"] = scribble_classes(labels, options.get("target", "instances"))
    config = make_segmenter_config(images[0].shape, encoder=encoder, **options)
    trainer = SegmenterTrainer(
        images, labels, config, encoder=encoder, device=device, regions=regions
    )
    return run_generator(trainer.run(), callback)
