"""The *Segment* dock widget: an image, a few scribbles (or masks) -> labels, probability,
uncertainty.

Two ways to learn from the labels:

- **Fine-tune network**: a segmenter (:class:`SegmenterTrainer`) whose encoder starts from a
  trained denoiser of this session (or at random) is trained on the labeled pixels, then
  segments the whole image tile by tile. The model goes to the session, so it can be saved.
- **Instant feature classifier**: per-pixel features (the denoiser's encoder activations, or
  classic filters without one) are computed once per image and cached; a random forest is
  refitted on the scribbles in a worker, on demand or after every paint stroke (Live update).

Outputs go to three layers named after the image, which a rerun updates instead of piling
up copies: ``"<image> segmentation"`` (Labels), ``"<image> probability"`` and
``"<image> uncertainty"`` (entropy), all with the image's scale and translation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)
from superqt import QCollapsible

from ..core.data import check_axes_match
from ..core.denoiser import DenoiserModel
from ..core.devices import describe_device, resolve_device
from ..core.errors import AesegError, InvalidInputError, TrainingCancelled
from ..core.features import PixelClassifier, classic_features, encoder_features
from ..core.metrics import SemanticScores, score_segmentation
from ..core.postprocess import (
    entropy,
    instances_from_probabilities,
    parse_voxel_size,
    relative_spacing,
    semantic_labels,
    spatial_spacing,
)
from ..core.segmenter import (
    PRETRAINED_LABELED_PATCHES,
    SegmenterModel,
    SegmenterTrainer,
    check_class_names,
    format_class_names,
    make_segmenter_config,
    missed_scribbles_note,
    parse_class_names,
    scribble_classes,
    shortened_note,
    undertrained_note,
)
from ..core.tiling import Cancelled, TileProgress
from ..core.training import TrainingProgress
from ._common import (
    CHANNELS_AS_PLANES,
    DeviceCombo,
    Failure,
    ImageLayerCombo,
    StopsWhenUndocked,
    WorkerJob,
    WrappedLabel,
    _FollowsLayers,
    add_output,
    ask_and_load_denoiser,
    ask_and_save_model,
    axes_for_model,
    bring_into_view,
    combo_box,
    format_seconds,
    guess_layer_axes,
    is_ground_truth,
    is_output,
    labelled_axes,
    layer_data,
    output_layer,
    report_failure,
    row_widget,
    scrolling_layout,
    spatial_metadata,
    spin_box,
    start_job,
)
from .loss_plot import LossPlot
from .session import SESSION

FINE_TUNE = "Fine-tune network"
INSTANT = "Instant feature classifier"
NO_ENCODER = "none (random init)"
NO_TRUTH = "none"
WHOLE_LAYER = "whole layer"
SCRIBBLES = "scribbles"
MASKS = "instance masks"
LIVE_DELAY_MS = 300
#: the instant classifier keeps the features of the frames it learnt from up to this size
FEATURE_CACHE_BYTES = 2 * 1024**3
SCRIBBLE_HINT = "Paint 1 = background, 2 = foreground (3, 4... more classes)."
SEMANTIC_HINT = "Paint one value per class: 1, 2, 3... (1 is often the background)."
MASK_HINT = (
    "Paint each object with its own label, 0 = background; labeled only in places? "
    "Mark those crops."
)
#: scribble and class colours: background (1) bright on dark images too, unlike napari's
#: default for label 1; further classes stay distinct; anything higher is white
CLASS_COLORS = {
    None: "white",
    0: "transparent",
    1: "#ff9f1c",
    2: "#2ec4ff",
    3: "#ff4fd8",
    4: "#9bff4f",
    5: "#ffe14f",
    6: "#a47bff",
    7: "#ff4f4f",
    8: "#4fffb0",
}


# --------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class Stage:
    """A step of the job worth telling the user about."""

    text: str


@dataclass(frozen=True)
class Notice:
    """A warning for the user (shown as a napari notification on the main thread)."""

    text: str


@dataclass
class Segmented:
    """What a job hands back to the widget (on the main thread)."""

    labels: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    scores: object | None = None
    model: SegmenterModel | None = None
    features: np.ndarray | None = None
    features_key: tuple | None = None
    frame: int | None = None
    #: features at the scribbled pixels of the other frames the instant classifier learnt
    #: from, ``(F, n)`` and ``(n,)``, by (frame key, hash of its scribbles)
    other_samples: dict | None = None
    #: a live preview of one plane of a stack: (spatial axis, index); the outputs are 2D
    plane: tuple[int, int] | None = None
    #: a fine-tuned result that gets many of its own scribbles wrong (a warning), or None
    missed: str | None = None


@dataclass(frozen=True)
class Stopped:
    model: SegmenterModel | None


@dataclass(frozen=True)
class FailedFit(Failure):
    """The instant classifier's fit failed after its features were computed: they are
    kept for the next try (a stack's take tens of seconds)."""

    features: np.ndarray | None = None
    features_key: tuple | None = None
    other_samples: dict | None = None


def check_two_classes(scribbles, others=()) -> None:
    """Refuse, before any features are computed, scribbles of fewer than two classes in
    the frame and the other painted frames (as the classifier's fit would, later)."""
    present: set = set()
    for lab in (scribbles, *(o[2] for o in others)):
        lab = np.asarray(lab)
        present.update(np.unique(lab[lab > 0]).tolist())
        if len(present) >= 2:
            return
    if not present:
        raise InvalidInputError("no pixel is annotated: paint some scribbles first")
    raise InvalidInputError(
        f"only label {int(next(iter(present)))} is annotated; paint at least two classes "
        "(e.g. 1 = background and 2 = foreground)"
    )


class SegmentJob(WorkerJob):
    """The Segment widget's job: its worker fine-tunes, denoises and segments."""

    trainer: SegmenterTrainer | None

    def _denoised(self, denoiser, image, axes, device):
        if denoiser is None:
            return image
        yield Stage(f"Denoising with '{denoiser.name}'...")
        return (
            yield from denoiser.iter_denoise(
                image, axes=axes, device=device, cancel=self.stop_requested.is_set
            )
        )

    def fine_tune(
        self,
        *,
        image,
        labels,
        config,
        encoder,
        denoiser,
        axes,
        device,
        name,
        truth,
        target,
        crops=None,
        labels_name="",
        spacing=None,
    ):
        """Yields Stage/Notice/TrainingProgress/TileProgress; returns Segmented, Stopped or
        Failure. ``crops``: the marked crops (:class:`Footprints`), turned into a mask here,
        since on a large stack that reads every plane for seconds."""
        try:
            region = None
            if crops is not None:
                yield Stage("Reading the marked crops...")
                region, left_out = checked_crops(crops, labels, axes, labels_name)
                if left_out:
                    yield Notice(left_out)
                if self.stop_requested.is_set():
                    return Stopped(None)
            image = np.asarray(image)  # lazy (dask) data is read here, in the worker
            image = yield from self._denoised(denoiser, image, axes, device)
            self.trainer = SegmenterTrainer(
                [image],
                [labels],
                config,
                encoder=encoder,
                device=device,
                name=name,
                regions=None if region is None else [region],
            )
            yield Stage(
                f"Training on {describe_device(self.trainer.device)}"
                f"{shortened_note(self.trainer)}..."
            )
            if self.stop_requested.is_set():
                self.trainer.stop()
            model = yield from self.trainer.run()
            if self.stop_requested.is_set():
                return Stopped(model)
            yield Stage("Segmenting...")
            result = yield from model.iter_segment(
                image,
                axes=axes,
                device=device,
                cancel=self.stop_requested.is_set,
                spacing=spacing,
            )
            probability = foreground_or_all(result.probabilities, target)
            missed = None
            if config.labels_kind == "scribbles":
                missed = missed_scribbles_note(
                    result.labels, labels, target=target, class_names=config.class_names
                )
            return Segmented(
                labels=result.labels,
                probability=probability,
                uncertainty=result.uncertainty,
                scores=_score(
                    truth,
                    result.labels,
                    target,
                    frame_axes=_frame_count(axes),
                    n_classes=model.config.n_classes,
                ),
                model=model,
                missed=missed,
            )
        except (Cancelled, TrainingCancelled):
            return Stopped(self.trainer.result() if self._has_steps() else None)
        except Exception as exc:  # noqa: BLE001 - handed to the widget, which reports it
            return Failure(exc)
        finally:
            self.idle.set()

    def _has_steps(self) -> bool:
        return self.trainer is not None and self.trainer.step > 0

    def classify(
        self,
        *,
        image,
        scribbles,
        axes,
        encoder,
        denoiser,
        device,
        features,
        features_key,
        target,
        threshold,
        min_size,
        truth,
        frame,
        spacing=None,
        others=(),
        plane=None,
    ):
        """Features (unless cached) -> random forest -> labels; returns Segmented or Failure.

        ``others``: ``(key, image, scribbles, samples or None)`` of the other frames with
        scribbles; the classifier learns from them too and segments only ``image``. Of those
        frames only the features at their scribbled pixels are kept (``samples``).
        ``plane``: ``(spatial axis, index)``: learn from the whole stack's scribbles but
        predict and split only that plane (a live preview: one plane costs a fraction of a
        second where a stack of 60 x 256 x 256 takes seconds).
        """
        learnt: dict = {}
        try:

            def compute(data):
                data = np.asarray(data)
                data = yield from self._denoised(denoiser, data, axes, device)
                if encoder is not None:
                    return encoder_features(encoder, data, axes=axes, device=device)
                return classic_features(data, axes=axes)

            check_two_classes(scribbles, others)  # before tens of seconds of features
            if features is None:
                yield Stage("Computing features (once per frame)...")
                features = yield from compute(image)
            missing = [o for o in others if o[3] is None]
            for i, (key, data, lab, _) in enumerate(missing):
                if self.stop_requested.is_set():
                    return Stopped(None)
                yield Stage(f"Features of the other painted frames ({i + 1} of {len(missing)})...")
                learnt[key] = frame_samples((yield from compute(data)), lab)
            if self.stop_requested.is_set():
                return Stopped(None)
            yield Stage("Fitting the classifier...")
            samples = [learnt.get(key, cached) for key, _, _, cached in others]
            if np.any(scribbles):
                samples.insert(0, frame_samples(features, scribbles))
            if not others:
                classifier = PixelClassifier().fit(features, scribbles)
            else:  # one fit on the scribbled pixels of every frame, (F, N) and (N,)
                classifier = PixelClassifier().fit(
                    np.concatenate([x for x, _ in samples], axis=1),
                    np.concatenate([y for _, y in samples]),
                )
            shown = features
            if plane is not None:
                axis, index = plane
                shown = features[(slice(None),) * (1 + axis) + (index,)]  # a view
                if spacing is not None:
                    spacing = tuple(v for a, v in enumerate(spacing) if a != axis)
                truth = None  # scored on the whole stack only
                # a size in voxels, as the area of a cube's face: a cut through an object
                # of the smallest size kept in 3D is kept in the plane
                min_size = round(min_size ** (2 / 3))
            probs = classifier.predict_proba(shown)
            if target == "instances":
                # background and objects: scribbles 1 and 2 (values above 2 are refused)
                probs = np.stack([probs[0], probs[1:].sum(axis=0)])
                labels = instances_from_probabilities(
                    probs, threshold=threshold, min_size=min_size, spacing=spacing
                )
            else:
                labels = semantic_labels(probs)
            return Segmented(
                labels=labels,
                probability=foreground_or_all(probs, target),
                uncertainty=entropy(probs),
                scores=_score(truth, labels, target, n_classes=probs.shape[0]),
                features=features,
                features_key=features_key,
                frame=frame,
                other_samples=learnt,
                plane=plane,
            )
        except Cancelled:  # Stop while denoising first
            return Stopped(None)
        except Exception as exc:  # noqa: BLE001 - handed to the widget, which reports it
            if features is None:
                return Failure(exc)
            return FailedFit(exc, features, features_key, learnt)
        finally:
            self.idle.set()


#: scribbled pixels kept per frame for the instant classifier (a random subset beyond)
FRAME_SAMPLES = 20_000


def frame_samples(features: np.ndarray, scribbles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features ``(F, n)`` and classes ``(n,)`` of a frame's scribbled pixels, at most
    :data:`FRAME_SAMPLES` of them (a fixed random subset: dense masks label every pixel)."""
    where = np.flatnonzero(np.asarray(scribbles).ravel() > 0)
    if len(where) > FRAME_SAMPLES:
        where = np.sort(np.random.default_rng(0).choice(where, FRAME_SAMPLES, replace=False))
    flat = features.reshape(features.shape[0], -1)
    return flat[:, where], np.asarray(scribbles).ravel()[where]


def foreground_or_all(probabilities: np.ndarray, target: str) -> np.ndarray:
    """Object probability for instances (foreground plus boundary), all classes otherwise."""
    if target == "instances":
        return probabilities[1:].sum(axis=0).astype(np.float32)
    return probabilities.astype(np.float32)


def _frame_count(axes: str | None) -> int:
    """Leading axes of a segmentation that are frames (T, S): scored one by one."""
    return sum(a in "ST" for a in (axes or "").upper())


def _score(truth, labels: np.ndarray, target: str, frame_axes: int = 0, n_classes: int = 2):
    if truth is None:
        return None
    truth = np.asarray(truth)
    if truth.shape != labels.shape:
        return InvalidInputError(
            f"ground truth of shape {truth.shape} does not match the segmentation {labels.shape}"
        )
    try:
        return score_segmentation(
            truth, labels, target=target, n_classes=n_classes, frame_axes=frame_axes
        )
    except AesegError as exc:  # shown next to the result, which is kept
        return exc


# --------------------------------------------------------------------------- layers
def output_names(image_name: str) -> tuple[str, str, str]:
    return (
        f"{image_name} segmentation",
        f"{image_name} probability",
        f"{image_name} uncertainty",
    )


def labels_shape(layer: Image, axes: str) -> tuple[int, ...]:
    """The shape labels of ``layer`` need: the image without its channel (or RGB) axis."""
    shape = tuple(layer_data(layer).shape)
    if "C" in axes and len(axes) == len(shape):
        return tuple(n for a, n in zip(axes, shape, strict=True) if a != "C")
    return shape[:-1] if layer.rgb else shape


def buried_channels(layer, axes: str) -> int | None:
    """The axis of ``layer``'s channels when they are a world axis behind another (ZCYX,
    TCYX): labels (ZYX) line up with a layer's last axes, so they would sit on C, Y, X."""
    axes = (axes or "").upper()
    if layer.rgb or "C" not in axes or len(axes) != layer.ndim or axes.index("C") == 0:
        return None
    return axes.index("C")


def buried_channels_note(layer, axes: str) -> str | None:
    """What to do about :func:`buried_channels`, or None."""
    c = buried_channels(layer, axes)
    if c is None:
        return None
    front = axes[c] + axes[:c] + axes[c + 1 :]
    before = ", ".join(axes[:c])
    note = (
        f"the channels of '{layer.name}' come after its {before} ax{'is' if c == 1 else 'es'} "
        f"({axes}); napari lines up layers by their last axes, so labels would sit on its "
        f"channels: press 'Channels first' to show it as {front}"
    )
    # a movie of a few planes is guessed the same way (ImageJ hyperstacks are commoner)
    movie = [a for a in CHANNELS_AS_PLANES.get(axes, ()) if "C" not in a]
    if movie and labelled_axes(layer) is None and axes == guess_layer_axes(layer):
        note += f", or, if its {axes[c]} axis holds planes of a movie, type {movie[0]} in Axes"
    return note


def _linear_parts(layer) -> list[np.ndarray]:
    """The rotation, the shear and the whole affine of ``layer`` (identity when unset)."""
    n = layer.ndim
    return [
        np.asarray(layer.rotate, float),
        _shear_matrix(layer.shear, n),
        np.asarray(layer.affine.affine_matrix, float),
    ]


#: the parts of a layer's placement in the world that are matrices, not one value per axis
_MATRICES = ("rotate", "shear", "affine")


def _shear_matrix(shear, n: int) -> np.ndarray:
    """napari's shear (upper-triangle values, or the matrix itself) as an n x n matrix."""
    shear = np.asarray(shear, float)
    if shear.ndim == 2:
        return shear
    full = np.eye(n)
    full[np.triu_indices(n, 1)] = shear
    return full


def _sub_space(space: dict, keep: list[int]) -> dict:
    """``space`` for the axes ``keep`` of the layer only."""
    n = len(space["scale"])
    out = {}
    for key, values in space.items():
        if key == "rotate":
            out[key] = np.asarray(values)[np.ix_(keep, keep)]
        elif key == "shear":
            out[key] = _shear_matrix(values, n)[np.ix_(keep, keep)]
        elif key == "affine":
            rows = [*keep, n]
            out[key] = np.asarray(values)[np.ix_(rows, rows)]
        else:
            out[key] = tuple(values[i] for i in keep)
    return out


def label_space(layer: Image, axes: str) -> dict:
    """Where ``layer`` sits in the world (scale, translation, rotation, shear, affine), its
    units and axis labels, without a (non-RGB) channel axis: labels, probabilities and
    scribbles placed with it overlay the image exactly (layers with other units than the
    image's make napari warn and drop units)."""
    space = spatial_metadata(layer)
    if not layer.rgb and "C" in axes and len(axes) == len(space["scale"]):
        space = _sub_space(space, [i for i, a in enumerate(axes) if a != "C"])
    return space


def with_leading_axis(space: dict, label: str, start: float = 0.0) -> dict:
    """``space`` for data with one more axis in front (unit scale, from ``start``)."""
    first = {"scale": 1.0, "translate": start, "units": "pixel", "axis_labels": label}
    n = len(space["scale"])
    out = {}
    for key, values in space.items():
        if key in _MATRICES:
            matrix = _shear_matrix(values, n) if key == "shear" else np.asarray(values, float)
            grown = np.eye(matrix.shape[0] + 1)
            grown[1:, 1:] = matrix
            out[key] = grown
        else:
            out[key] = (first[key], *values)
    return out


def _placement_differs(layer, space: dict) -> bool:
    current = spatial_metadata(layer)
    n = len(space["scale"])
    for key in ("scale", "translate", *_MATRICES):
        if key not in space:
            continue
        a, b = current[key], space[key]
        if key == "shear":
            a, b = _shear_matrix(a, n), _shear_matrix(b, n)
        if np.shape(a) != np.shape(b) or not np.allclose(a, b):
            return True
    return False


def _put(viewer, kind, name: str, data: np.ndarray, space: dict, **display):
    """Update the output layer ``name`` of type ``kind`` in place, or add it (once)."""
    existing = output_layer(viewer, name)
    if isinstance(existing, kind) and existing.data.shape == data.shape:
        if _placement_differs(existing, space):  # each property set re-slices the layer
            for key in ("scale", "translate", *_MATRICES):
                if key in space:
                    setattr(existing, key, space[key])
        for key in ("units", "axis_labels"):
            if key in space and tuple(map(str, getattr(existing, key))) != space[key]:
                setattr(existing, key, space[key])
        existing.data = data
        return existing
    index = None
    if existing is not None:  # ours, but of another shape or type: replace it where it was
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
    make = Labels if kind is Labels else Image
    return add_output(viewer, make(data, name=name, **space, **display), name, index)


def _existing_data(viewer, kind, name: str, shape: tuple):
    """The data of output layer ``name`` when it is a ``kind`` of ``shape``, else None."""
    existing = output_layer(viewer, name)
    if isinstance(existing, kind) and existing.data.shape == shape:
        return existing.data
    return None


def _with_slice(
    base, data, axis: int, index: int, shape: tuple, dtype, *, unique_ids=False, inplace=False
):
    """``base`` (zeros of ``shape`` when None) with ``data`` at ``index`` along ``axis``: a
    copy, or with ``inplace`` ``base`` itself where it can hold ``data`` (a live preview of
    one plane then writes one plane, not the whole stack). With ``unique_ids`` (instance
    labels) the ids of ``data`` are shifted above those of the rest, so that an id names one
    object in the whole array."""
    where = (slice(None),) * axis + (index,)
    own = (
        inplace
        and isinstance(base, np.ndarray)
        and base.flags.writeable
        and np.can_cast(dtype, base.dtype)
    )
    if own:
        full = base
    elif base is not None:
        full = np.array(base, dtype=np.result_type(base.dtype, dtype))
    else:
        full = np.zeros(shape, dtype)
    if unique_ids:
        full[where] = 0
        offset = int(full.max())
        top = offset + int(data.max(initial=0))
        if top > np.iinfo(full.dtype).max and offset:  # ids left behind: number them afresh
            from skimage.segmentation import relabel_sequential

            full = relabel_sequential(full)[0]
            offset = int(full.max())
            top = offset + int(data.max(initial=0))
        if top > np.iinfo(full.dtype).max:
            full = full.astype(np.uint32 if top <= np.iinfo(np.uint32).max else np.uint64)
        data = np.where(data > 0, data.astype(full.dtype) + offset, 0)
    full[where] = data
    return full


def _axis_aligned(layer) -> bool:
    """Whether every data axis of ``layer`` lies along one world axis (no rotation, shear
    or oblique affine), so that a plane on screen is a plane of the data."""
    from napari.utils.transforms import Affine

    linear = (
        layer.affine.linear_matrix
        @ Affine(scale=layer.scale, rotate=layer.rotate, shear=layer.shear).linear_matrix
    )
    off = linear - np.diag(np.diag(linear))
    return bool(np.allclose(off, 0, atol=1e-9 * max(1.0, float(np.abs(linear).max()))))


def _in_frame(
    viewer, kind, name, frame_data, frame, t_index, full_shape, dtype, *, unique_ids=False
):
    """The full array of layer ``name`` with frame ``frame`` (on axis ``t_index``) replaced
    (object ids unique in the whole series with ``unique_ids``)."""
    base = _existing_data(viewer, kind, name, full_shape)
    return _with_slice(base, frame_data, t_index, frame, full_shape, dtype, unique_ids=unique_ids)


def _from_one(ids: np.ndarray) -> np.ndarray:
    """Object ids moved down so that the smallest is 1 (a frame's ids, before they are
    shifted above the other frames' again)."""
    if not ids.any():
        return ids
    low = int(ids[ids > 0].min())
    return np.where(ids > 0, ids - (low - 1), 0).astype(ids.dtype) if low > 1 else ids


class LabelsLayerCombo(_FollowsLayers, QComboBox):
    """A dropdown of the viewer's Labels layers, or of another ``kind`` (optionally with a
    'none' entry)."""

    def __init__(
        self,
        viewer,
        *,
        none: str | None = None,
        exclude=lambda layer: False,
        kind=Labels,
        prefer=None,
    ):
        super().__init__()
        self._kind = kind
        self._none = none
        self._exclude = exclude
        #: layers the combo chooses when they appear, until the user chooses ('preferred'),
        #: or never by default, listed last ('avoided': ``prefer`` returns False)
        self._prefer = prefer
        self._seen: set[str] = set()
        self._user_chose = False
        self.activated.connect(self._on_user_choice)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self._follow(viewer)

    def _refresh(self) -> None:
        layers = [
            ly for ly in self._viewer.layers if isinstance(ly, self._kind) and not self._exclude(ly)
        ]
        verdict = {ly.name: None if self._prefer is None else self._prefer(ly) for ly in layers}
        layers.sort(key=lambda ly: verdict[ly.name] is False)  # avoided ones last
        self._watch_names(layers)
        names = ([self._none] if self._none else []) + [ly.name for ly in layers]
        appeared = [ly for ly in layers if str(ly.unique_id) not in self._seen]
        self._seen |= {str(ly.unique_id) for ly in layers}
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        new = [ly.name for ly in appeared if verdict[ly.name]]
        if new and not self._user_chose and (current == self._none or current not in names):
            self.setCurrentText(new[0])
        elif current in names:
            self.setCurrentText(current)
        elif not self._none and layers:  # the first not avoided (they are listed last)
            self.setCurrentIndex(0 if verdict[layers[0].name] is not False else -1)
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def _on_user_choice(self, *_) -> None:
        self._user_chose = True

    def layer(self):
        name = self.currentText()
        layer = self._viewer.layers[name] if name in self._viewer.layers else None
        return layer if isinstance(layer, self._kind) else None


# --------------------------------------------------------------------------- the widget
class SegmentWidget(StopsWhenUndocked, QWidget):
    """Segment an image layer from a few scribbles or masks."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._job = SegmentJob()
        self._worker = None
        self._running = False
        self._planned_steps = 0
        self._model: SegmenterModel | None = None
        self._registered_name: str | None = None
        self._intensity_warned: set[tuple[int, str]] = set()
        #: the instant classifier's features of the frames shown, by key, the most recent last
        self._features: dict[tuple, np.ndarray] = {}
        #: the features at the scribbled pixels of other frames, by (key, their scribbles)
        self._samples: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        #: bumped when cached features become invalid: a run started before keeps nothing
        self._feature_generation = 0
        self._run_generation = 0
        self._spacing: tuple[float, ...] | None = None  # the voxel size of the last run
        self._live = _LayerLink(self._schedule_live)
        # the image layer's scale, shown greyed in the empty Voxel size field
        self._scale_link = _LayerLink(self._show_layer_scale, events=("scale",))
        # new data in the image layer: features computed from the old data are stale (and a
        # new array may even get the old one's id)
        self._data_link = _LayerLink(self._forget_features, events=("data",))
        self._live_pending = False
        self._quiet = False
        #: (frame, plane) of the live preview on screen, None when the last result was whole
        self._preview: tuple | None = None
        self._crops_warned: str | None = None  # the last warning about labels outside crops
        self._channel_axis = False  # the image's channels are a world axis (not RGB)
        self._class_names: list[str] | None = None  # of the last run's semantic classes
        self._last_status = 0.0
        self._build()
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_refit)
        SESSION.changed.connect(self._on_session_changed)
        on_change = self._on_session_changed
        job_ref = [self._job]
        self.destroyed.connect(lambda *_: SESSION.changed.disconnect(on_change))
        self.destroyed.connect(lambda *_: job_ref[0].shutdown())
        live, scale_link, data_link = self._live, self._scale_link, self._data_link
        self.destroyed.connect(lambda *_: scale_link.unfollow())
        self.destroyed.connect(lambda *_: data_link.unfollow())
        self.destroyed.connect(lambda *_: live.unfollow())
        # a live preview of one plane follows the plane on screen
        dims = self.viewer.dims
        self._dims_events = (dims.events.current_step, dims.events.ndisplay, dims.events.order)
        for event in self._dims_events:
            event.connect(self._on_view_changed)
        events, on_view = self._dims_events, self._on_view_changed
        self.destroyed.connect(lambda *_: [event.disconnect(on_view) for event in events])
        self._job_ref = job_ref
        denoisers = self._denoisers()  # the newest denoiser of the session is the encoder
        self._on_session_changed(denoisers[-1] if denoisers else "")
        self._on_image_changed()
        self._on_kind_changed()
        self._on_mode_changed()
        self._on_encoder_changed()
        self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = scrolling_layout(self)
        # the inputs sit in one box, locked while a network trains (they would not apply)
        self.form_box = QWidget()
        form = QFormLayout(self.form_box)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        outer.addWidget(self.form_box)

        self.image_combo = ImageLayerCombo(self.viewer, self)
        self.image_combo.layer_changed.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip(
            "Axes of the image: YX, ZYX, TYX, YXC... With T, the feature classifier learns "
            "from the scribbles of every frame and segments the frame shown in the viewer; "
            "fine-tuning learns from all frames and segments them all."
        )
        self.axes_edit.textEdited.connect(lambda *_: self._on_axes_changed())
        self.channels_first_button = QPushButton("Channels first")
        self.channels_first_button.setToolTip(
            "Put the image's channels in front (ZCYX -> CZYX; the layer shows the same data, "
            "not a copy): napari lines up layers by their last axes, so labels of a ZCYX "
            "image would sit on its channels"
        )
        self.channels_first_button.clicked.connect(lambda: self.channels_first())
        form.addRow("Axes", row_widget((self.axes_edit, 1), self.channels_first_button))

        # a sample's ground truth is for scoring (below): listed last, never the default
        self.labels_combo = LabelsLayerCombo(
            self.viewer, exclude=is_output, prefer=lambda ly: not is_ground_truth(ly)
        )
        self.labels_combo.setToolTip("The scribbles or instance masks to learn from")
        self.labels_combo.currentIndexChanged.connect(lambda *_: self._on_labels_changed())
        self.new_scribbles_button = QPushButton("New scribble layer")
        self.new_scribbles_button.setToolTip(
            "An empty Labels layer over the image, selected with the paint brush on label 2"
        )
        self.new_scribbles_button.clicked.connect(lambda: self.new_scribble_layer())
        labels_row = row_widget((self.labels_combo, 1), self.new_scribbles_button)
        form.addRow("Labels", labels_row)
        self.hint = WrappedLabel(SCRIBBLE_HINT)
        self.hint.setToolTip(
            "0 = not annotated (ignored). A layer made with 'New scribble layer' shows "
            "background in orange and foreground in cyan. For semantic classes, paint "
            "class k as label k + 1."
        )
        form.addRow(self.hint)

        self.kind_combo = combo_box([SCRIBBLES, MASKS])
        self.kind_combo.setToolTip(
            "Scribbles: a few painted pixels per class. Instance masks: every object painted "
            "with its own id, the rest 0 (= background)."
        )
        self.kind_combo.currentIndexChanged.connect(lambda *_: self._on_kind_changed())
        form.addRow("Labels are", self.kind_combo)
        self.regions_combo = LabelsLayerCombo(self.viewer, none=WHOLE_LAYER, kind=Shapes)
        self.regions_combo.setToolTip(
            "Where the masks are complete: a Shapes layer whose rectangles (or polygons, "
            "ellipses) mark a few fully labeled crops; outside them pixels count as not "
            "annotated. 'whole layer': every pixel without an object is background"
        )
        self.mark_crops_button = QPushButton("Mark crops")
        self.mark_crops_button.setToolTip(
            "A Shapes layer over the image to draw rectangles around the crops you labeled"
        )
        self.mark_crops_button.clicked.connect(lambda: self.mark_crops())
        self.regions_row = row_widget((self.regions_combo, 1), self.mark_crops_button)
        self.regions_label = QLabel("Labeled crops")
        form.addRow(self.regions_label, self.regions_row)
        self.target_combo = combo_box(["instances", "semantic"])
        self.target_combo.setToolTip(
            "Instances: separate objects (touching ones split by a watershed). "
            "Semantic: one label per class."
        )
        form.addRow("Target", self.target_combo)
        self.target_combo.currentIndexChanged.connect(lambda *_: self._on_kind_changed())
        self.target_combo.currentIndexChanged.connect(lambda *_: self._on_target_changed())
        self.class_names_edit = QLineEdit()
        self.class_names_edit.setPlaceholderText("optional: background, tumour, stroma...")
        self.class_names_edit.setToolTip(
            "Names of the classes painted 1, 2, 3..., in order, separated by commas (a name "
            'that holds a comma goes in double quotes: "grade 1, 2"): the '
            "result shows the name of the class under the cursor, the scores use them, and a "
            "trained segmenter keeps them"
        )
        self.class_names_label = QLabel("Class names")
        form.addRow(self.class_names_label, self.class_names_edit)

        self.mode_combo = combo_box([INSTANT, FINE_TUNE])
        self.mode_combo.setToolTip(
            "Instant: a random forest on encoder features, refitted in about a second. "
            "Fine-tune: trains a segmentation network (better, slower; can be saved)."
        )
        self.mode_combo.currentIndexChanged.connect(lambda *_: self._on_mode_changed())
        form.addRow("Mode", self.mode_combo)

        self.encoder_combo = QComboBox()
        self.encoder_combo.setToolTip(
            "A denoiser of this session whose encoder knows your images; without one the "
            "network starts at random and the classifier uses classic filters"
        )
        self.encoder_combo.currentIndexChanged.connect(lambda *_: self._forget_features())
        self.encoder_combo.currentIndexChanged.connect(lambda *_: self._on_encoder_changed())
        self.load_button = QPushButton("Load...")
        self.load_button.setToolTip("Load a denoiser file (.aeseg) into this session")
        self.load_button.clicked.connect(self.load_encoder)
        enc_row = row_widget((self.encoder_combo, 1), self.load_button)
        form.addRow("Encoder", enc_row)

        self.denoise_check = QCheckBox("Denoise first with")
        self.denoise_check.setToolTip(
            "Denoise the image before training, segmenting and computing features. Helps the "
            "feature classifier on noisy images; a network whose encoder comes from the same "
            "denoiser did better on the noisy image itself (docs/segmentation_benchmark.md)"
        )
        self.denoise_check.toggled.connect(lambda *_: self._on_denoise_toggled())
        self.denoiser_combo = QComboBox()
        self.denoiser_combo.currentIndexChanged.connect(lambda *_: self._forget_features())
        den_row = row_widget(self.denoise_check, (self.denoiser_combo, 1))
        form.addRow(den_row)

        self.steps = spin_box(
            1,
            1_000_000,
            300,
            tip="Training steps (batches). With an encoder and labels on a small area (a few "
            "marked crops), training ends sooner: longer runs overfit them (Advanced: 'Fewer "
            "steps for a small labeled area'; docs/segmentation_benchmark.md)",
        )
        self.steps.valueChanged.connect(lambda *_: self._idle_progress())
        self.steps_label = QLabel("Steps")
        form.addRow(self.steps_label, self.steps)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(1e-3)
        self.lr_label = QLabel("Learning rate")
        form.addRow(self.lr_label, self.learning_rate)
        self.joint_check = QCheckBox("Joint denoising (DenoiSeg)")
        self.joint_check.setToolTip(
            "Also learn to denoise (blind-spot loss) every pixel of the training patches, "
            "labeled or not, while segmenting"
        )
        form.addRow(self.joint_check)
        self.device_combo = DeviceCombo()
        form.addRow("Device", self.device_combo)
        self.truth_combo = LabelsLayerCombo(
            self.viewer, none=NO_TRUTH, exclude=is_output, prefer=is_ground_truth
        )
        self.truth_combo.setToolTip(
            "Optional ground truth, shown against each result: instances (0 = background, "
            "an id per object) give AP@0.5, F1 and IoU; semantic classes (values as the "
            "scribbles, 0 = not scored) give the IoU per class, their mean and the accuracy"
        )
        form.addRow("Ground truth", self.truth_combo)

        self.advanced = QCollapsible("Advanced", expandedIcon="▼", collapsedIcon="▶")
        adv = QWidget()
        adv_form = self._adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        self.batch_size = spin_box(1, 1024, 8, tip="Patches per training step")
        self.patch_size = spin_box(
            8, 1024, 64, step=8, tip="Patch side in pixels (multiple of 2**depth)"
        )
        self.patch_size_z = spin_box(4, 1024, 16, step=4, tip="Patch depth along Z (3D only)")
        self.base_channels = spin_box(
            4, 256, 32, step=4, tip="Feature maps at full resolution (random init only)"
        )
        self.depth = spin_box(
            1, 5, 2, tip="Levels of a random-init network (an encoder sets its own)"
        )
        self.freeze_steps = spin_box(
            -1, 100_000, -1, tip="Steps with the pretrained encoder frozen; -1 = automatic"
        )
        self.freeze_steps.setSpecialValueText("auto")
        self.decoder_check = QCheckBox("Decoder from the denoiser too")
        self.decoder_check.setChecked(True)
        self.decoder_check.setToolTip(
            "With an encoder: start the whole network from the denoiser, not only its encoder "
            "(only the output layer starts from scratch). Off: a fresh decoder"
        )
        self.step_limit_check = QCheckBox("Fewer steps for a small labeled area")
        self.step_limit_check.setChecked(True)
        self.step_limit_check.setToolTip(
            "With an encoder: end training once the patches have held about "
            f"{PRETRAINED_LABELED_PATCHES:.0f} fully labeled patches' worth of labels (150 "
            "steps of 8 on a few marked crops), since a pretrained start overfits a small "
            "labeled area when it trains longer; longer where the labeled area is noisy (its "
            "noise as strong as its contrast or stronger). Off: train all the steps"
        )
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("Object probability above which a pixel belongs to an object")
        self.min_size = spin_box(0, 1_000_000, 15, tip="Smaller objects (pixels) are dropped")
        self.spacing_edit = QLineEdit()
        self.spacing_edit.setToolTip(
            "Voxel size along Z, Y, X (or Y, X), any unit: objects of a stack whose Z step is "
            "longer than a pixel are then split by distances in space, not in voxels. Empty: "
            "the image layer's scale"
        )
        self.seed = spin_box(0, 2**31 - 1, 0, tip="Random seed")
        for label, w in (
            ("Batch size", self.batch_size),
            ("Patch size", self.patch_size),
            ("Patch depth", self.patch_size_z),
            ("Base channels", self.base_channels),
            ("Depth", self.depth),
            ("Freeze encoder", self.freeze_steps),
            ("Threshold", self.threshold),
            ("Min object size", self.min_size),
            ("Voxel size", self.spacing_edit),
            ("Seed", self.seed),
        ):
            adv_form.addRow(label, w)
            if w is self.freeze_steps:
                adv_form.addRow(self.decoder_check)
                adv_form.addRow(self.step_limit_check)
        self.advanced.addWidget(adv)
        outer.addWidget(self.advanced)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Train && Segment")
        self.run_button.clicked.connect(lambda: self.run())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop now; a network trained so far is kept in the session")
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.stop_button)
        outer.addLayout(buttons)
        self.live_check = QCheckBox(f"Live update (refit {LIVE_DELAY_MS} ms after each stroke)")
        self.live_check.toggled.connect(lambda *_: self._on_labels_changed())
        outer.addWidget(self.live_check)

        self.progress = QProgressBar()
        self.progress.setValue(0)
        outer.addWidget(self.progress)
        self.loss_plot = LossPlot(self)
        self.loss_plot.setMinimumHeight(120)
        self.loss_plot.setToolTip("Fine-tuning loss on the annotated pixels")
        outer.addWidget(self.loss_plot)
        self.status = WrappedLabel("")
        self._show_hint("Choose an image, paint scribbles, press {}.")
        outer.addWidget(self.status)
        self.metrics = WrappedLabel("")
        outer.addWidget(self.metrics)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save model...")
        self.save_button.setToolTip("Save the last fine-tuned segmenter to a .aeseg file")
        self.save_button.clicked.connect(self.save_model)
        files.addWidget(self.save_button)
        outer.addLayout(files)
        self.model_info = WrappedLabel("")
        outer.addWidget(self.model_info)
        outer.addStretch(1)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._running

    @property
    def model(self) -> SegmenterModel | None:
        return self._model

    @property
    def instant(self) -> bool:
        return self.mode_combo.currentText() == INSTANT

    def set_options(self, **options) -> None:
        """Set the form from keyword arguments (tests and scripts)."""
        spins = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "patch_size": self.patch_size,
            "patch_size_z": self.patch_size_z,
            "base_channels": self.base_channels,
            "depth": self.depth,
            "freeze_encoder_steps": self.freeze_steps,
            "min_size": self.min_size,
            "seed": self.seed,
            "learning_rate": self.learning_rate,
            "threshold": self.threshold,
        }
        combos = {
            "mode": self.mode_combo,
            "labels_kind": self.kind_combo,
            "target": self.target_combo,
            "encoder": self.encoder_combo,
            "labels": self.labels_combo,
            "ground_truth": self.truth_combo,
            "regions": self.regions_combo,
            "image": self.image_combo,
        }
        for key, value in options.items():
            if key in spins:
                spins[key].setValue(value)
            elif key in combos:
                box = combos[key]
                if box.findText(str(value)) < 0:
                    raise ValueError(f"'{value}' is not offered for {key}")
                box.setCurrentText(str(value))
            elif key == "device":
                self.device_combo.setCurrentIndex(self.device_combo.findData(value))
            elif key == "joint_denoising":
                self.joint_check.setChecked(bool(value))
            elif key == "transfer":
                if value not in ("encoder", "encoder+decoder"):
                    raise ValueError(f"'{value}' is not offered for transfer")
                self.decoder_check.setChecked(value == "encoder+decoder")
            elif key == "step_limit":
                self.step_limit_check.setChecked(bool(value))
            elif key == "live":
                self.live_check.setChecked(bool(value))
            elif key == "denoiser":
                self.denoise_check.setChecked(value is not None)
                if value is not None:
                    self.denoiser_combo.setCurrentText(value)
            elif key == "axes":
                self.axes_edit.setText(value)
                self._on_axes_changed()
            elif key == "class_names":  # a list, or the text as typed
                text = value if isinstance(value, str) else format_class_names(value or ())
                self.class_names_edit.setText(text)
            elif key == "spacing":
                self.spacing_edit.setText(
                    "" if value is None else ", ".join(f"{v:g}" for v in value)
                )
            else:
                raise TypeError(f"unknown option '{key}'")

    def _denoisers(self) -> list[str]:
        return [n for n in SESSION.names() if isinstance(SESSION.get(n), DenoiserModel)]

    def encoder(self) -> DenoiserModel | None:
        name = self.encoder_combo.currentText()
        return SESSION.get(name) if name in SESSION else None

    def denoiser(self) -> DenoiserModel | None:
        name = self.denoiser_combo.currentText()
        if not self.denoise_check.isChecked() or name not in SESSION:
            return None
        return SESSION.get(name)

    def _on_session_changed(self, name: str) -> None:
        names = self._denoisers()
        for box, head in ((self.encoder_combo, [NO_ENCODER]), (self.denoiser_combo, [])):
            current = box.currentText()
            items = head + names
            if items == [box.itemText(i) for i in range(box.count())]:
                continue
            box.blockSignals(True)
            box.clear()
            box.addItems(items)
            if name in names and box is self.encoder_combo:
                box.setCurrentText(name)  # a new denoiser is what the user wants next
            elif current in items:
                box.setCurrentText(current)
            box.blockSignals(False)
        self._forget_features()
        self._on_encoder_changed()
        self.denoise_check.setEnabled(bool(names))
        self._on_denoise_toggled()

    def _on_denoise_toggled(self) -> None:
        self._forget_features()
        self.denoiser_combo.setEnabled(
            self.denoise_check.isEnabled() and self.denoise_check.isChecked()
        )

    def _on_image_changed(self) -> None:
        layer = self.image_combo.layer()
        if layer is not None:
            self.axes_edit.setText(axes_for_model(layer, self.encoder()))
        if self._scale_link.follow(layer):
            self.spacing_edit.clear()  # a size typed for another image
        self._data_link.follow(layer)
        self._on_axes_changed()

    def _on_axes_changed(self) -> None:
        self._forget_features()
        axes = self.axes_edit.text().strip().upper()
        frames = _frame_axis(axes) is not None
        shown = "the plane shown" if "Z" in axes else "the frame shown" if frames else ""
        self.live_check.setText(
            f"Live update of {shown} (refit after each stroke)"
            if shown
            else f"Live update (refit {LIVE_DELAY_MS} ms after each stroke)"
        )
        self.live_check.setToolTip(
            "In a 2D view of a stack, live updates predict the plane on screen only, and "
            "follow it as you scroll; Segment (or a 3D view) does the whole stack."
            if "Z" in axes
            else ""
        )
        self.run_button.setToolTip(self._run_tip(frames))
        self.patch_size_z.setEnabled("Z" in self.axes_edit.text().strip().upper())
        image = self.image_combo.layer()
        note = buried_channels_note(image, axes) if image is not None else None
        self.channels_first_button.setVisible(note is not None)
        if note:  # said now, not only when a button is pressed
            self.status.setText(note[0].upper() + note[1:] + ".")
        self._show_layer_scale()
        self._update_buttons()

    def _show_layer_scale(self) -> None:
        """The layer's voxel size, greyed in the empty Voxel size field."""
        layer = self.image_combo.layer()
        try:
            axes = check_axes_match(
                tuple(layer_data(layer).shape),
                self.axes_edit.text().strip().upper() or guess_layer_axes(layer),
            )
            sizes = self._layer_voxel_size(layer, axes)
        except (AttributeError, AesegError):
            sizes = None
        self.spacing_edit.setPlaceholderText(
            "" if sizes is None else "layer scale: " + ", ".join(f"{v:g}" for v in sizes)
        )

    @staticmethod
    def _layer_voxel_size(layer: Image, axes: str) -> tuple[float, ...] | None:
        scale = label_space(layer, axes)["scale"]
        if len(scale) != len(axes.replace("C", "")):
            return None
        by_axis = dict(zip(axes.replace("C", ""), scale, strict=True))
        # a negative scale flips the display; the size is its magnitude
        return tuple(abs(float(by_axis[a])) for a in ("ZYX" if "Z" in axes else "YX"))

    def _voxel_size(self, layer: Image, axes: str) -> tuple[float, ...] | None:
        """The Voxel size field, or the layer's scale when it is empty; checked."""
        spatial = "ZYX" if "Z" in axes else "YX"
        text = self.spacing_edit.text().strip()
        if not text:
            return spatial_spacing(self._layer_voxel_size(layer, axes), spatial)
        try:
            return spatial_spacing(parse_voxel_size(text), spatial)
        except AesegError as exc:
            raise InvalidInputError(
                f"Voxel size: {exc}; give {len(spatial)} sizes ({', '.join(spatial)}) or "
                "leave it empty for the layer's scale"
            ) from None

    def _run_tip(self, frames: bool) -> str:
        if not self.instant:
            return "Train a segmenter on the labels (all frames), then segment the whole image"
        if frames:
            return (
                "Refit the classifier on the scribbles of every frame and segment the frame "
                "shown in the viewer"
            )
        return "Refit the classifier on the scribbles of the image and show the result"

    def _on_kind_changed(self) -> None:
        masks = self.kind_combo.currentText() == MASKS
        if masks:
            self.target_combo.setCurrentText("instances")
        self.target_combo.setEnabled(not masks)
        semantic = self.target_combo.currentText() == "semantic"
        self.hint.setText(MASK_HINT if masks else SEMANTIC_HINT if semantic else SCRIBBLE_HINT)
        self.class_names_edit.setVisible(semantic)
        self.class_names_label.setVisible(semantic)
        # labeled crops inside an otherwise unlabeled image only mean something for masks
        self.regions_row.setVisible(masks)
        self.regions_label.setVisible(masks)

    def _on_target_changed(self) -> None:
        """The status still tells the last run's result: say that it was another target."""
        if not self._running and self.status.text().startswith("Done"):
            target = self.target_combo.currentText()
            button = self.run_button.text().replace("&&", "&")
            self.status.setText(f"Target is now {target}: press {button} to see it.")

    def _on_mode_changed(self) -> None:
        instant = self.instant
        for w in (self.steps, self.steps_label, self.learning_rate, self.lr_label):
            w.setVisible(not instant)
        self.joint_check.setVisible(not instant)
        # the network's settings mean nothing to the feature classifier
        for w in (
            self.batch_size,
            self.patch_size,
            self.patch_size_z,
            self.base_channels,
            self.depth,
            self.freeze_steps,
            self.decoder_check,
            self.step_limit_check,
        ):
            w.setVisible(not instant)
            label = self._adv_form.labelForField(w)
            if label is not None:
                label.setVisible(not instant)
        self.live_check.setVisible(instant)
        self.save_button.setVisible(not instant)
        self.loss_plot.setVisible(not instant)
        self.advanced.setVisible(True)
        self.run_button.setText("Update" if instant else "Train && Segment")
        self.run_button.setToolTip(
            self._run_tip(_frame_axis(self.axes_edit.text().strip().upper()) is not None)
        )
        if not self._running:
            self.progress.setValue(0)  # the last run was of the other mode
        self._idle_progress()
        self._on_labels_changed()
        self._update_buttons()

    def _on_encoder_changed(self) -> None:
        # what to take from a denoiser and how long to freeze it only matter with one; the
        # network's width and depth then come from the denoiser
        pretrained = self.encoder_combo.currentText() != NO_ENCODER
        layer = self.image_combo.layer()
        if pretrained and layer is not None:  # e.g. a 2D encoder takes a stack as slices (S)
            self.axes_edit.setText(axes_for_model(layer, self.encoder()))
        self.decoder_check.setEnabled(pretrained)
        self.step_limit_check.setEnabled(pretrained)
        self.freeze_steps.setEnabled(pretrained)
        self.base_channels.setEnabled(not pretrained)
        self.depth.setEnabled(not pretrained)

    def _idle_progress(self) -> None:
        """Before a run the bar shows the form's step count, and the hint names the button."""
        if self._running:
            return
        instant = self.instant
        self.progress.setFormat("%p%" if instant else "%v / %m steps")
        if not instant and self.progress.value() <= 0:
            self.progress.setMaximum(max(1, self.steps.value()))
        if self._hint and self.status.text() == self._hint_shown:
            self._show_hint(self._hint)  # the hint names the button of the new mode

    def _show_hint(self, template: str) -> None:
        """A status hint naming the run button (``{}``); it follows later mode changes."""
        self._hint = template
        self._hint_shown = template.format("Update" if self.instant else "Train & Segment")
        self.status.setText(self._hint_shown)

    def _on_labels_changed(self) -> None:
        """Follow paint strokes of the chosen labels layer while Live update is on."""
        layer = self.labels_combo.layer() if self.live_check.isChecked() and self.instant else None
        if self._live.follow(layer) and layer is not None:
            self._schedule_live()

    def _schedule_live(self, *_) -> None:
        self._live_timer.start()

    def _live_refit(self) -> None:
        if self._running:
            self._live_pending = True  # refit again once the current fit is back
            return
        self.run(quiet=True)

    def _forget_features(self) -> None:
        self._features = {}
        self._samples = {}
        self._feature_generation += 1
        self._preview = None  # of another image (or axes): scrolling must not run on this one

    def _keep_features(self, result: Segmented | FailedFit) -> None:
        """Cache the shown frame's features (the least recently shown dropped beyond a memory
        budget) and the other frames' samples, unless they went stale during the run."""
        if self._run_generation != self._feature_generation:
            return
        self._samples.update(result.other_samples or {})
        self._features.pop(result.features_key, None)
        self._features[result.features_key] = result.features
        while (
            len(self._features) > 1
            and sum(f.nbytes for f in self._features.values()) > FEATURE_CACHE_BYTES
        ):
            self._features.pop(next(iter(self._features)))

    def _update_buttons(self) -> None:
        idle = not self._running
        self.run_button.setEnabled(idle)
        self.stop_button.setEnabled(self._running)
        for w in (
            self.load_button,
            self.new_scribbles_button,
            self.mark_crops_button,
            self.mode_combo,
        ):
            w.setEnabled(idle)
        # while a network trains the form would not apply to the run; live refits of the
        # feature classifier are short and painting goes on, so nothing is locked for them
        locked = self._running and not self.instant
        self.form_box.setEnabled(not locked)
        self.advanced.setEnabled(not locked)
        self.save_button.setEnabled(idle and self._model is not None)

    # ------------------------------------------------------------------ actions
    def _image_and_axes(self):
        """The chosen image layer and the form's axes; (None, '') with a message if none."""
        image = self.image_combo.layer()
        if image is None:
            show_error("Choose an image layer first.")
            return None, ""
        return image, self.axes_edit.text().strip().upper()

    def _channels_in_front(self, image, axes: str) -> bool:
        """False, with a message, when the image's channels lie behind another axis."""
        note = buried_channels_note(image, axes)
        if note:
            self.status.setText(f"Not started: {note}")
            show_error(note)
        return not note

    def channels_first(self) -> Image | None:
        """Put the chosen image's channels in front (ZCYX -> CZYX): its data becomes a view
        of the same array with that axis order (no copy; files are untouched), its scale,
        translation, units and axis labels follow, so labels and results line up with it.
        The layer is changed in place, not copied: a second layer would keep the old order
        on the same sliders."""
        image, axes = self._image_and_axes()
        if image is None:
            return None
        c = buried_channels(image, axes)
        if c is None:
            return None
        if any(not np.allclose(m, np.eye(len(m))) for m in _linear_parts(image)):
            show_error(
                f"'{image.name}' is rotated, sheared or placed by an affine transform: move "
                "its channels to the front before placing it"
            )
            return None
        front = axes[c] + axes[:c] + axes[c + 1 :]
        order = [c, *(i for i in range(image.ndim) if i != c)]
        meta = spatial_metadata(image)
        moved = (
            [np.moveaxis(d, c, 0) for d in image.data]
            if image.multiscale
            else np.moveaxis(image.data, c, 0)
        )
        limits = image.contrast_limits
        viewer = self.viewer
        shown = image.world_to_data(viewer.dims.point)  # the plane and channel on screen
        image.data = moved
        image.scale = [meta["scale"][i] for i in order]
        image.translate = [meta["translate"][i] for i in order]
        if "units" in meta:
            image.units = [meta["units"][i] for i in order]
        image.axis_labels = [a.lower() for a in front]  # read back as the axes next time
        image.contrast_limits = limits
        # the sliders keep their places by position, not by axis: put them back on the
        # channel and plane that were on screen
        world = image.data_to_world([shown[i] for i in order])
        lead = viewer.dims.ndim - image.ndim
        for k, value in enumerate(world):
            if lead + k not in viewer.dims.displayed:
                viewer.dims.set_point(lead + k, value)
        self.axes_edit.setText(front)
        self._on_image_changed()
        self.status.setText(
            f"'{image.name}' now has its channels in front ({front}; the same data, not a "
            "copy): paint and segment it"
        )
        return image

    def new_scribble_layer(self) -> Labels | None:
        """Add an empty Labels layer over the image, ready to paint foreground (label 2)."""
        image, axes = self._image_and_axes()
        if image is None or not self._channels_in_front(image, axes):
            return None
        layer = self.viewer.add_labels(
            np.zeros(labels_shape(image, axes), np.uint8),
            name=f"{image.name} scribbles",
            colormap=class_colormap(),
            **label_space(image, axes),
        )
        self.labels_combo.setCurrentText(layer.name)
        self.kind_combo.setCurrentText(SCRIBBLES)
        self.viewer.layers.selection.active = layer
        layer.brush_size = 4
        layer.selected_label = 2
        layer.mode = "paint"
        name = layer.name.replace("{", "{{").replace("}", "}}")
        self._show_hint(f"Paint in '{name}': 1 = background, 2 = foreground; then {{}}.")
        return layer

    def mark_crops(self) -> Shapes | None:
        """Add a Shapes layer over the image for rectangles around the labeled crops."""
        image, axes = self._image_and_axes()
        if image is None or not self._channels_in_front(image, axes):
            return None
        space = label_space(image, axes)
        layer = self.viewer.add_shapes(
            name=f"{image.name} labeled crops",
            ndim=len(space["scale"]),
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **space,
        )
        self.kind_combo.setCurrentText(MASKS)
        self.regions_combo.setCurrentText(layer.name)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self._show_hint(
            "Draw a rectangle around each crop whose objects are all painted in the masks; then {}."
        )
        return layer

    def load_encoder(self) -> None:
        model = ask_and_load_denoiser(self)
        if model is None:
            return
        name = SESSION.add_model(model)
        self.encoder_combo.setCurrentText(name)

    def save_model(self) -> None:
        ask_and_save_model(
            self, self._model, "There is no segmenter to save yet: fine-tune one first."
        )

    def stop(self) -> None:
        self._job.stop()
        if self._running:
            self.status.setText("Stopping...")

    def run(self, *, sync: bool = False, quiet: bool = False) -> None:
        """Train & segment (or refit the classifier) on the chosen layers."""
        if self._running:
            return
        if not quiet:  # Segment: a live update due now would replace its result by a plane
            self._live_timer.stop()
            self._live_pending = False
        self._quiet = quiet  # a live update (one plane of a stack)
        try:
            job_args = self._prepare()
        except AesegError as exc:
            self._report(exc, quiet=quiet, before="Not started")
            return
        gen, total = job_args
        self._planned_steps = total
        self._running = True
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(0)
        if not self.instant:
            self.loss_plot.clear()
            self.loss_plot.set_planned_steps(total)
        self._update_buttons()
        if not quiet:  # (a live update leaves the view where the user works)
            bring_into_view(self.status)
        self._worker = start_job(
            gen,
            on_yield=self._on_yield,
            on_return=self._on_return,
            on_exit=self._job.idle.set,
            sync=sync,
        )

    def _prepare(self):
        """Read the layers (main thread) and build the job; errors are AesegError."""
        image = self.image_combo.layer()
        labels_layer = self.labels_combo.layer()
        if image is None:
            raise InvalidInputError("choose an image layer first")
        if labels_layer is None:
            raise InvalidInputError(
                "choose a labels layer with scribbles or masks (or press 'New scribble layer')"
            )
        data = layer_data(image)
        axes = check_axes_match(
            tuple(data.shape), self.axes_edit.text().strip().upper() or guess_layer_axes(image)
        )
        note = buried_channels_note(image, axes)
        if note:
            raise InvalidInputError(note)
        want = labels_shape(image, axes)
        labels = np.array(labels_layer.data)  # a copy: the user may paint on while we work
        if labels.shape != want:
            raise InvalidInputError(
                f"labels layer '{labels_layer.name}' has shape {labels.shape} but image "
                f"'{image.name}' needs labels of shape {want} (the image without its channel "
                "axis); press 'New scribble layer' for an empty one"
            )
        if not labels.any():
            raise InvalidInputError(
                f"no pixel is annotated in '{labels_layer.name}': paint some scribbles first "
                "(1 = background, 2 = foreground)"
            )
        truth_layer = self.truth_combo.layer()
        truth = np.asarray(truth_layer.data) if truth_layer is not None else None
        masks = self.kind_combo.currentText() == MASKS
        region = crops = None
        regions_layer = self.regions_combo.layer() if masks else None
        if regions_layer is not None:  # where the shapes lie; their mask is built later
            crops = crop_footprints(regions_layer, want, label_space(image, axes))
        target = "instances" if masks else self.target_combo.currentText()
        class_names = None
        if target == "semantic":
            class_names = parse_class_names(self.class_names_edit.text())
            if class_names is not None:
                check_class_names(class_names, scribble_classes([labels], target))
        self._class_names = class_names
        # only instances are split by distances
        spacing = self._voxel_size(image, axes) if target == "instances" else None
        self._spacing = spacing
        device = resolve_device(self.device_combo.device())
        encoder = self.encoder()
        denoiser = self.denoiser()
        self._warn_intensities(denoiser or encoder, data, axes, image.name)
        self._job = SegmentJob()
        self._job_ref[0] = self._job
        names = output_names(image.name)
        space = label_space(image, axes)
        self._channel_axis = not image.rgb and "C" in axes and len(axes) == image.ndim
        self._target = (names, space, target, tuple(labels.shape), axes)
        self.metrics.setText("")
        if self.instant:  # the classifier steps through frames here: the mask is needed now
            if crops is not None:
                region, left_out = checked_crops(crops, labels, axes, labels_layer.name)
                if left_out and (not self._quiet or left_out != self._crops_warned):
                    show_warning(f"Segment: {left_out}")  # live: once, not every stroke
                self._crops_warned = left_out
            return self._prepare_instant(
                image, data, labels, truth, axes, encoder, denoiser, device, target, masks, region
            )
        n_classes = None
        if not masks:
            n_classes = scribble_classes([labels], target)
        freeze = self.freeze_steps.value()
        training = {} if freeze < 0 else {"freeze_encoder_steps": freeze}
        if encoder is not None:
            training["transfer"] = (
                "encoder+decoder" if self.decoder_check.isChecked() else "encoder"
            )
            if not self.step_limit_check.isChecked():
                training["max_labeled_patches"] = None
        config = make_segmenter_config(
            tuple(data.shape),
            encoder=encoder,
            axes=axes,
            labels_kind="instances" if masks else "scribbles",
            target=target,
            n_classes=n_classes,
            depth=self.depth.value(),
            base_channels=self.base_channels.value(),
            steps=self.steps.value(),
            batch_size=self.batch_size.value(),
            patch_size=self.patch_size.value(),
            patch_size_z=self.patch_size_z.value(),
            learning_rate=self.learning_rate.value(),
            joint_denoising=self.joint_check.isChecked(),
            seed=self.seed.value(),
            denoised_with=None if denoiser is None else denoiser.name,
            denoised_digest=None if denoiser is None else denoiser.weights_digest(),
            class_names=class_names,
            **training,
        )
        config.postprocess.threshold = self.threshold.value()
        config.postprocess.min_size = self.min_size.value()
        name = self._registered_name or f"{image.name}-segmenter"
        self.status.setText("Preparing the training data...")
        gen = self._job.fine_tune(
            image=data,
            labels=labels,
            config=config,
            encoder=encoder,
            denoiser=denoiser,
            axes=axes,
            device=device,
            name=name,
            truth=truth,
            target=target,
            crops=crops,
            labels_name=labels_layer.name,
            spacing=spacing,
        )
        return gen, config.training.steps

    def _warn_intensities(self, model, data, axes: str, layer_name: str) -> None:
        """Warn once per model and layer when a denoiser (to denoise first, or as the
        encoder) was trained on intensities far from the image's: its output means little."""
        if model is None or (id(model), layer_name) in self._intensity_warned:
            return
        self._intensity_warned.add((id(model), layer_name))
        try:
            note = model.intensity_note(data, axes)
        except AesegError:  # (a layout the run itself will refuse, with its own message)
            return
        if note:
            show_warning(f"Segment: {note}")

    def _prepare_instant(
        self, image, data, labels, truth, axes, encoder, denoiser, device, target, masks, region
    ):
        frame = None
        frame_axes = axes
        step = _frame_axis(axes)
        if {"T", "S"} <= set(axes):
            raise InvalidInputError(
                f"the instant classifier works on one frame at a time, and axes '{axes}' have "
                "both T and S: fine-tune a network instead, or segment one stack at a time"
            )
        if not masks and target == "instances" and labels.max() > 2:
            raise InvalidInputError(
                f"the scribbles hold the value {int(labels.max())}: for objects, scribbles are "
                "1 = background and 2 = objects; if these are instance masks, choose 'Labels "
                "are: instance masks', or target 'semantic' for more classes"
            )

        def as_scribbles(lab, reg, where=""):
            if not masks:
                return lab
            lab = np.where(lab > 0, 2, 1).astype(np.uint8)
            if reg is not None:
                lab[~reg] = 0  # outside the labeled crops: not annotated
                if not (lab == 1).any() or not (lab == 2).any():
                    raise InvalidInputError(f"the labeled crops need background and objects{where}")
            return lab

        def key_of(shape, k):
            return (id(image.data), shape, frame_axes, k, id(encoder), id(denoiser), device.type)

        others = []
        if step is not None:
            # one frame (time point or slice of a stack) at a time: the one the viewer shows;
            # the classifier learns from the scribbles of every frame
            t_axis = axes.index(step)
            t_labels = [a for a in axes if a != "C"].index(step)
            frame = self._shown_frame(image, axes)
            frame_axes = axes.replace(step, "")
            painted = [
                k
                for k in range(labels.shape[t_labels])
                if (
                    np.take(labels, k, axis=t_labels)
                    if region is None
                    else np.take(labels, k, axis=t_labels) * np.take(region, k, axis=t_labels)
                ).any()
            ]
            if not painted:
                raise InvalidInputError(
                    "no pixel is annotated in any frame: paint scribbles on a frame or two"
                )
            for k in painted:
                if k == frame:
                    continue
                lab = np.take(labels, k, axis=t_labels)
                reg = None if region is None else np.take(region, k, axis=t_labels)
                try:
                    lab = as_scribbles(lab, reg, f" in frame {k}")
                except InvalidInputError:  # crops of only objects or only background there
                    continue
                frame_data = np.take(data, k, axis=t_axis)
                key = (key_of(tuple(np.shape(frame_data)), k), _digest(lab))
                others.append((key, frame_data, lab, self._samples.get(key)))
            data = np.take(data, frame, axis=t_axis)
            labels = np.take(labels, frame, axis=t_labels)
            if region is not None:
                region = np.take(region, frame, axis=t_labels)
            if truth is not None and truth.ndim == len(self._target[3]):
                truth = np.take(truth, frame, axis=t_labels)
            if frame not in painted:
                labels = np.zeros_like(labels)
                region = None
        if np.any(labels):
            labels = as_scribbles(labels, region, f" in frame {frame}" if frame is not None else "")
        plane = self._shown_plane(image, axes) if self._quiet else None
        key = key_of(tuple(np.shape(data)), frame)
        features = self._features.get(key)
        if features is not None:  # the most recently shown is dropped last
            self._features[key] = self._features.pop(key)
        self._run_generation = self._feature_generation
        self._target = (*self._target, frame)
        missing = features is None or any(f is None for *_, f in others)
        self.status.setText("Computing features (once per frame)..." if missing else "Fitting...")
        gen = self._job.classify(
            image=data,
            scribbles=labels,
            axes=frame_axes,
            encoder=encoder,
            denoiser=denoiser,
            device=device,
            features=features,
            features_key=key,
            target=target,
            threshold=self.threshold.value(),
            min_size=self.min_size.value(),
            truth=truth,
            frame=frame,
            spacing=self._spacing,
            others=others,
            plane=plane,
        )
        return gen, 3

    def _shown_frame(self, image, axes: str) -> int | None:
        """The frame (time point, or slice of a stack of slices) the viewer shows."""
        step = _frame_axis(axes)
        if step is None:
            return None
        t_axis = axes.index(step)
        frame = int(self.viewer.dims.current_step[_world_axis(self.viewer, image, t_axis)])
        return min(max(frame, 0), layer_data(image).shape[t_axis] - 1)

    def _shown_plane(self, image, axes: str) -> tuple[int, int] | None:
        """The plane of a stack on screen in a 2D view, as (axis among the spatial axes,
        index): what a live update predicts. None (the whole stack) in a 3D view, for 2D
        images, and where the plane on screen is not a plane of the data (rotation, shear)."""
        viewer = self.viewer
        if viewer.dims.ndisplay != 2 or "Z" not in axes or not _axis_aligned(image):
            return None
        spatial = [a for a in axes if a in "ZYX"]
        shown = set(viewer.dims.displayed)
        hidden = [a for a in spatial if _world_axis(viewer, image, axes.index(a)) not in shown]
        if len(hidden) != 1:
            return None
        data_axis = axes.index(hidden[0])
        at = image.world_to_data(viewer.dims.point)[data_axis]
        index = min(max(round(float(at)), 0), layer_data(image).shape[data_axis] - 1)
        return spatial.index(hidden[0]), index

    def _on_view_changed(self, *_) -> None:
        """Scrolled to another plane, or switched to a 3D view, while Live update shows one
        plane (or frame): show the new plane (or the whole stack) too. Features are computed
        for a whole frame, so another frame is shown only when they are at hand (it was
        segmented before); else it waits for a stroke or Segment."""
        preview = self._preview
        if preview is None or not (self.live_check.isChecked() and self.instant):
            return
        image = self.image_combo.layer()
        if image is None:
            return
        axes = self.axes_edit.text().strip().upper() or guess_layer_axes(image)
        try:
            axes = check_axes_match(tuple(layer_data(image).shape), axes)
        except AesegError:
            return
        now = (self._shown_frame(image, axes), self._shown_plane(image, axes))
        cached = now[0] == preview[0] or any(
            key[0] == id(image.data) and key[3] == now[0] for key in self._features
        )
        if now != preview and cached:
            self._schedule_live()

    # ------------------------------------------------------------------ worker events
    def _on_yield(self, item) -> None:
        if isinstance(item, TrainingProgress):
            self.progress.setFormat("%v / %m steps")
            self.progress.setMaximum(max(1, item.total_steps))
            self.progress.setValue(item.step)
            self.loss_plot.set_planned_steps(item.total_steps)
            self.loss_plot.add_point(item.step, item.train_loss)
            now = time.monotonic()
            if now - self._last_status > 0.2 or item.step == item.total_steps:
                self._last_status = now
                short = ""
                if item.total_steps < self._planned_steps:
                    short = (
                        f" · {item.total_steps} of {self._planned_steps} steps: small labeled area"
                    )
                    trainer = getattr(self._job, "trainer", None)
                    if getattr(trainer, "noise_ratio", None) is not None:
                        short += f" (noisy: longer, noise/signal {trainer.noise_ratio:.1f})"
                self.status.setText(
                    f"Training: {item.steps_per_second:.1f} steps/s · ETA "
                    f"{format_seconds(item.eta_seconds)} · loss {item.train_loss:.4g}{short}"
                )
        elif isinstance(item, TileProgress):
            self.progress.setFormat("%v / %m tiles")
            self.progress.setMaximum(max(1, item.total))
            self.progress.setValue(item.done)
        elif isinstance(item, Notice):
            show_warning(f"Segment: {item.text}")
        elif isinstance(item, Stage):
            self.status.setText(item.text)
            if self.instant:
                self.progress.setFormat("%p%")
                self.progress.setMaximum(3)
                self.progress.setValue(min(3, self.progress.value() + 1))

    def _on_return(self, result) -> None:
        self._running = False
        self._worker = None
        try:
            if isinstance(result, Segmented):
                self._show(result)
            elif isinstance(result, Stopped):
                if result.model is not None:
                    self._register(result.model)
                kept = (
                    f"; model '{result.model.name}' ({result.model.trained_steps} steps) is in "
                    "the session"
                    if result.model is not None
                    else ""
                )
                self.status.setText(f"Stopped; no layer was changed{kept}.")
            elif isinstance(result, Failure):
                if isinstance(result, FailedFit) and result.features is not None:
                    self._keep_features(result)
                self._report(result.error, quiet=self._quiet, before="Failed")
        finally:
            self._update_buttons()
            if self._live_pending:
                self._live_pending = False
                self._schedule_live()

    def _report(self, error: BaseException, *, quiet: bool, before: str) -> None:
        """A notification, except for live updates: those say it in the status line only,
        so that painting the first class does not pop up 'paint a second class' each stroke."""
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        if quiet and isinstance(error, AesegError):
            self.status.setText(f"Live update waits: {first}")
            return
        self.status.setText(f"{before}; no layer was changed.")
        report_failure(error, "Segmentation")

    def _show(self, result: Segmented) -> None:
        names, space, target, full_shape, axes, *rest = self._target
        frame = rest[0] if rest else None
        if result.features is not None:
            self._keep_features(result)
        if result.model is not None:
            self._register(result.model)
        labels, prob, unc = result.labels, result.probability, result.uncertainty
        t = [a for a in axes if a != "C"].index(_frame_axis(axes)) if frame is not None else None
        self._preview = None
        if result.plane is not None:  # one plane: the other planes keep what they show
            axis, index = result.plane
            spatial = full_shape if t is None else full_shape[:t] + full_shape[t + 1 :]
            lead = prob.ndim - unc.ndim  # the class axis of semantic probabilities

            def planed(kind, name, data, k, ids=False):
                """The frame's array with this plane; ``k`` axes (classes) in front."""
                shape = data.shape[:k] + spatial
                if t is None:
                    base = _existing_data(self.viewer, kind, name, shape)
                else:
                    whole = shape[: k + t] + (full_shape[t],) + shape[k + t :]
                    base = _existing_data(self.viewer, kind, name, whole)
                    if base is not None:
                        base = np.take(base, frame, axis=k + t)
                        base = _from_one(base) if ids else base
                return _with_slice(
                    base,
                    data,
                    k + axis,
                    index,
                    shape,
                    data.dtype,
                    unique_ids=ids,
                    inplace=t is None,  # in a movie, the frame is a copy anyway
                )

            labels = planed(Labels, names[0], labels, 0, target == "instances")
            prob = planed(Image, names[1], prob, lead)
            unc = planed(Image, names[2], unc, 0)
        if (result.plane is not None or frame is not None) and (
            self._run_generation == self._feature_generation
        ):
            self._preview = (frame, result.plane)
        if frame is not None:
            labels = _in_frame(
                self.viewer,
                Labels,
                names[0],
                labels,
                frame,
                t,
                full_shape,
                labels.dtype,
                unique_ids=target == "instances",
            )
            lead = prob.ndim - unc.ndim  # the class axis of a semantic stack
            prob = _in_frame(
                self.viewer,
                Image,
                names[1],
                prob,
                frame,
                t + lead,
                prob.shape[:lead] + full_shape,
                np.float32,
            )
            unc = _in_frame(self.viewer, Image, names[2], unc, frame, t, full_shape, np.float32)
        prob_space = space
        if prob.ndim > len(space["scale"]):  # one plane per class in front
            # classes at 1..K, so that the slider reads the values painted; but where the
            # image has channels on a world axis the classes share it, and stay at 0..K-1
            start = 0.0 if self._channel_axis else 1.0
            prob_space = with_leading_axis(space, "class", start)
        _put(
            self.viewer,
            Image,
            names[1],
            prob,
            prob_space,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            visible=False,
        )
        _put(
            self.viewer,
            Image,
            names[2],
            unc,
            space,
            colormap="inferno",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            visible=False,
        )
        layer = _put(self.viewer, Labels, names[0], labels, space, opacity=0.5)
        named = self._class_names if target == "semantic" else None
        _class_or_object_colors(
            layer,
            semantic=target == "semantic",
            # class 1 is the background by the scribbles' convention, unless named otherwise
            clear_first=not named or named[0].strip().lower() == "background",
        )
        _name_classes(layer, self._class_names if target == "semantic" else None)
        labels_layer = self.labels_combo.layer()
        if (
            target == "semantic"
            and self._class_names
            and labels_layer is not None
            and set(labels_layer.features.columns) <= {"index", "class"}
        ):  # the scribbles' classes named too: the status bar shows them while painting
            _name_classes(labels_layer, self._class_names)
        if labels_layer is not None:  # keep painting where the user was, and see the strokes
            layers = self.viewer.layers
            if layers.index(labels_layer) < layers.index(layer):
                layers.move(layers.index(labels_layer), len(layers))
            layers.selection.active = labels_layer
        sizes = np.bincount(np.asarray(result.labels).ravel())[1:]
        sizes = sizes[sizes > 0]
        n = len(sizes)
        what = "objects" if target == "instances" else "classes"
        if target == "instances" and n:  # to check against "Min object size"
            unit = "voxels" if "Z" in axes and result.plane is None else "pixels"
            what += f" (median {int(np.median(sizes))} {unit})"
            spacing = self._spacing
            if result.plane is not None and spacing is not None:  # split in the plane
                spacing = tuple(v for a, v in enumerate(spacing) if a != result.plane[0])
            if spacing is not None and relative_spacing(spacing, len(spacing)) is not None:
                spatial = [a for a in axes if a in "ZYX"]
                if result.plane is not None:
                    del spatial[result.plane[0]]
                if len(spatial) != len(spacing):
                    spatial = list("ZYX"[-len(spacing) :])
                sizes_text = ", ".join(f"{a} {v:g}" for a, v in zip(spatial, spacing, strict=True))
                what += f", split in space (voxel size {sizes_text})"
        where = f" in frame {frame}" if frame is not None else ""
        if result.plane is not None:
            letter = [a for a in axes if a in "ZYX"][result.plane[0]]
            where = (
                f" on {letter} plane {result.plane[1]}{where} (live preview; Segment: the stack)"
            )
            if self.truth_combo.layer() is not None:
                self.metrics.setText("Scores: press Segment to score the whole stack.")
        if result.model is not None:  # the run ends on the training it did, not the tiles
            self.progress.setFormat("%v / %m steps")
            self.progress.setMaximum(max(1, result.model.trained_steps))
            self.progress.setValue(result.model.trained_steps)
        else:
            self.progress.setValue(self.progress.maximum())
        self.status.setText(f"Done: {n} {what}{where} in '{layer.name}'.")
        warning = undertrained_note(result.model) if result.model is not None else None
        warning = "; ".join(w for w in (warning, result.missed) if w) or None
        if warning:
            self.status.setText(f"{self.status.text()} Warning: {warning}.")
            show_warning(f"Segment: {warning}")
        scores = result.scores
        if isinstance(scores, AesegError):
            self.metrics.setText(f"Ground truth not scored: {scores}")
        elif isinstance(scores, SemanticScores):
            named = self._class_names if target == "semantic" else None

            def title(k):
                return f"{k} {named[k - 1]}" if named and 0 < k <= len(named) else f"{k}"

            per = ", ".join(f"{title(k)}: {v:.2f}" for k, v in scores.class_iou.items())
            self.metrics.setText(
                f"mean IoU {scores.mean_iou:.3f} · accuracy {scores.accuracy:.3f} · "
                f"IoU per class {per}" + (f" (note: {scores.note})" if scores.note else "")
            )
        elif scores is not None:
            self.metrics.setText(
                f"AP@0.5 {scores.ap:.3f} · F1 {scores.f1:.3f} · mean IoU "
                f"{scores.mean_matched_iou:.3f} · pixel IoU {scores.pixel_iou:.3f} "
                f"({scores.n_pred} predicted, {scores.n_true} true"
                + (f", in {scores.frames} frames)" if scores.frames > 1 else ")")
            )

    def _register(self, model: SegmenterModel) -> None:
        if self._registered_name is None or self._registered_name not in SESSION:
            self._registered_name = SESSION.add_model(model)
        else:
            model.name = self._registered_name
            SESSION.add_model(model, replace=True)
        self._model = model
        self.model_info.setText(model.describe())
        self.model_info.setToolTip("In the session: Save model writes it to a file")

    def _on_undocked(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        for event in self._dims_events:
            event.disconnect(self._on_view_changed)
        self._live_timer.stop()
        self._live.unfollow()
        self._scale_link.unfollow()
        self._data_link.unfollow()
        self._job.shutdown()


class _LayerLink:
    """The connection of the widget to some events of one layer: by default a labels layer's
    paint strokes and data changes (Live update).

    Kept apart from the widget so that the widget's ``destroyed`` signal can cut it without
    touching the (deleted) widget.
    """

    # napari >= 0.4.19: one 'paint' event per brush stroke (undo step); 'data' catches
    # layer.data = ... from scripts and plugins
    def __init__(self, on_change, events: tuple[str, ...] = ("paint", "data")) -> None:
        self.layer = None
        self._on_change = on_change
        self._events = events

    def follow(self, layer) -> bool:
        """Follow ``layer`` (or nothing); true when that changed anything."""
        if layer is self.layer:
            return False
        self.unfollow()
        if layer is not None:
            for name in self._events:
                getattr(layer.events, name).connect(self._fire)
            self.layer = layer
        return True

    def unfollow(self) -> None:
        if self.layer is not None:
            for name in self._events:
                getattr(self.layer.events, name).disconnect(self._fire)
            self.layer = None

    def _fire(self, *_) -> None:
        self._on_change()


def class_colormap(*, background: bool = True):
    """Label colours of scribbles and semantic classes (see :data:`CLASS_COLORS`); without
    ``background``, class 1 (background, by the scribbles' convention) is transparent, so
    that a result shows the image under it rather than one colour over most of it."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = dict(CLASS_COLORS)
    if not background:
        colors[1] = "transparent"
    return DirectLabelColormap(color_dict=colors)


def _name_classes(layer: Labels, names: list[str] | None) -> None:
    """Class names as the labels layer's features: napari shows the name of the class
    under the cursor in its status bar. Without names, a table set before is dropped."""
    if names:
        layer.features = {"index": np.arange(1, len(names) + 1), "class": list(names)}
    elif "class" in layer.features:
        layer.features = {}


def _class_or_object_colors(layer: Labels, *, semantic: bool, clear_first: bool = True) -> None:
    """Classes in the scribble colours (class 1 transparent with ``clear_first``); objects
    in napari's cycling colours."""
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    if semantic:
        current = layer.colormap
        clear = isinstance(current, DirectLabelColormap) and current.map(1)[3] == 0
        if not isinstance(current, DirectLabelColormap) or clear != clear_first:
            layer.colormap = class_colormap(background=not clear_first)
    elif isinstance(layer.colormap, DirectLabelColormap):
        layer.colormap = label_colormap()


def region_mask(
    shapes: Shapes, shape: tuple[int, ...], space: dict, labels: np.ndarray | None = None
) -> np.ndarray:
    """The pixels of a labels grid of ``shape`` (placed in the world by ``space``) that the
    rectangles, polygons and ellipses of ``shapes`` cover.

    Shapes drawn in a plane of a 3D (or time) layer mark that plane, and with ``labels``
    also the neighbouring planes (or frames) that hold labels inside the shape, as far as
    they run on without a gap: a sub-volume labeled plane by plane is marked with one
    rectangle. Shapes of a 2D layer over a 3D image mark every plane. Errors are
    :class:`InvalidInputError`.
    """
    return crops_mask(crop_footprints(shapes, shape, space), labels)


@dataclass(frozen=True)
class Footprints:
    """The crops of a Shapes layer over a labels grid, read on the main thread: for each,
    the index of the plane it is drawn in, its area, and the axis across planes."""

    name: str
    shape: tuple[int, ...]
    placed: tuple


def crop_footprints(shapes: Shapes, shape: tuple[int, ...], space: dict) -> Footprints:
    """Where the shapes of ``shapes`` lie on a labels grid of ``shape`` placed by ``space``
    (the part of :func:`region_mask` that reads the layers: quick, on the main thread)."""
    from skimage.draw import polygon2mask

    if not len(shapes.data):
        raise InvalidInputError(
            f"'{shapes.name}' has no shape: draw rectangles around the labeled crops, or choose "
            f"'{WHOLE_LAYER}'"
        )
    nd = len(shape)
    placed = []  # (index of the drawn plane, footprint over the grid, axis across planes)
    for verts, kind in zip(shapes.data, shapes.shape_type, strict=True):
        if kind not in ("rectangle", "polygon", "ellipse"):
            raise InvalidInputError(
                f"'{shapes.name}' holds a {kind}: mark the labeled crops with rectangles, "
                "polygons or ellipses"
            )
        world = np.array([shapes.data_to_world(v) for v in verts], float)
        k = min(nd, world.shape[1])
        # the labels' pixel coordinates: through the grid's own placement (scale, shear...)
        grid = space if k == nd else _sub_space(space, list(range(nd - k, nd)))
        probe = Labels(
            np.zeros((1,) * k, np.uint8),
            **{key: grid[key] for key in ("scale", "translate", *_MATRICES) if key in grid},
        )
        pix = np.array([probe.world_to_data(w[-k:]) for w in world], float)
        if kind == "ellipse":  # napari stores the four corners of its bounding box
            c = pix.mean(axis=0)
            a, b = (pix[1] - pix[0]) / 2, (pix[3] - pix[0]) / 2
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
            pix = c + np.cos(t) * a + np.sin(t) * b
        varying = [i for i in range(k) if np.ptp(pix[:, i]) > 1e-6]
        if len(varying) != 2:
            raise InvalidInputError(f"a shape of '{shapes.name}' is not a flat area")
        lead = nd - k  # labels axes the shapes layer does not have: every plane
        index = [slice(None)] * nd
        for i in range(k):
            if i not in varying:
                at = int(round(float(pix[0, i])))
                if not 0 <= at < shape[lead + i]:
                    break  # in a plane outside the image
                index[lead + i] = at
        else:
            plane_axes = [lead + i for i in varying]
            plane = polygon2mask(tuple(shape[a] for a in plane_axes), pix[:, varying])
            grown = [shape[a] if a in plane_axes else 1 for a in range(nd)]
            footprint = np.broadcast_to(plane.reshape(grown), shape)  # whatever the plane
            fixed = [lead + i for i in range(k) if i not in varying]
            placed.append((index, footprint, fixed[-1] if fixed else None))
    return Footprints(shapes.name, tuple(shape), tuple(placed))


def crops_mask(crops: Footprints, labels: np.ndarray | None = None) -> np.ndarray:
    """The labels grid's pixels in ``crops``; with ``labels``, a crop drawn in a plane also
    spans the neighbouring planes labeled inside it (the part of :func:`region_mask` that
    reads every plane: seconds on a large stack, so it runs in the worker)."""
    mask = np.zeros(crops.shape, bool)
    # a crop spans the planes next to it that hold labels inside it, up to a plane where
    # another crop is drawn (those labels are that crop's)
    drawn = {_plane_key(index, axis) for index, _, axis in crops.placed if axis is not None}
    for index, footprint, axis in crops.placed:
        if labels is not None and axis is not None:
            index = list(index)
            index[axis] = _labeled_run(labels, index, axis, footprint, drawn)
        mask[tuple(index)] |= footprint[tuple(index)]
    if not mask.any():
        raise InvalidInputError(f"the shapes of '{crops.name}' do not cover the image")
    return mask


def checked_crops(crops: Footprints, labels: np.ndarray, axes: str, labels_name: str):
    """The crops' mask over ``labels``, and the warning of :func:`crops_note` (or None);
    :class:`InvalidInputError` when no object lies in the crops."""
    region = crops_mask(crops, labels)
    if not np.any(labels[region]):
        raise InvalidInputError(
            f"no object of '{labels_name}' lies in the crops of '{crops.name}': draw the "
            "rectangles around labeled objects"
        )
    return region, crops_note(labels, region, axes)


def _plane_key(index: list, axis: int, at: int | None = None) -> tuple:
    """The plane ``index`` draws in, moved to ``at`` along ``axis``."""
    key = list(index)
    if at is not None:
        key[axis] = at
    return (axis, *(v if isinstance(v, int) else None for v in key))


def _labeled_run(labels, index: list, axis: int, footprint: np.ndarray, drawn: set) -> slice:
    """The planes along ``axis`` around ``index[axis]`` that hold labels inside
    ``footprint`` (the other axes as in ``index``), as far as they run on without a gap
    and without reaching a plane another crop is drawn in; only the drawn plane when it
    holds no label inside."""
    at = index[axis]

    def labeled(i: int) -> bool:
        where = list(index)
        where[axis] = i
        where = tuple(where)
        return bool((np.asarray(labels[where]) > 0)[footprint[where]].any())

    if not labeled(at):
        return slice(at, at + 1)
    lo = hi = at
    while lo > 0 and _plane_key(index, axis, lo - 1) not in drawn and labeled(lo - 1):
        lo -= 1
    while (
        hi < labels.shape[axis] - 1
        and _plane_key(index, axis, hi + 1) not in drawn
        and labeled(hi + 1)
    ):
        hi += 1
    return slice(lo, hi + 1)


def crops_note(labels: np.ndarray, region: np.ndarray, axes: str) -> str | None:
    """What the marked crops take of a stack's labels, when labels lie outside them (those
    are not used): the planes (frames, slices) the crops span, and those left out."""
    outside = (labels > 0) & ~region
    if not outside.any():
        return None
    names = [a for a in axes if a != "C"]
    if len(names) != labels.ndim:
        names = ["?"] * (labels.ndim - 2) + ["Y", "X"]
    lead = [i for i, a in enumerate(names) if a not in ("Y", "X")][:2]
    if not lead:
        return "labels outside the marked crops are not used"
    words = {"Z": "planes", "T": "frames", "S": "slices"}

    def where(mask: np.ndarray) -> str:
        axis = lead[-1]
        word = words.get(names[axis], "planes")
        rest = tuple(i for i in range(labels.ndim) if i != axis)
        if len(lead) == 1:
            return f"{word} {_ranges(np.flatnonzero(mask.any(axis=rest)))}"
        outer = lead[0]
        parts = []
        for i in np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != outer))):
            one = np.take(mask, i, axis=outer)
            inner = [j for j in range(one.ndim) if j != axis - (axis > outer)]
            planes = _ranges(np.flatnonzero(one.any(axis=tuple(inner))))
            parts.append(f"{words.get(names[outer], 'frames')[:-1]} {i} ({word} {planes})")
        return ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")

    return (
        f"the crops span {where(region)}; labels in {where(outside)} lie outside them and are "
        "not used (mark those crops too)"
    )


def _ranges(indices: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` as ``"3-5, 9"``."""
    parts, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _digest(array: np.ndarray) -> str:
    """A short fingerprint of an array's content (a frame's scribbles)."""
    import hashlib

    a = np.ascontiguousarray(array)
    return hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest() + str(a.shape) + a.dtype.str


def _frame_axis(axes: str) -> str | None:
    """The axis the instant classifier steps along, one frame at a time: time, else the
    sample axis of a stack processed slice by slice."""
    return "T" if "T" in axes else "S" if "S" in axes else None


def _world_axis(viewer, layer, data_axis: int) -> int:
    """The viewer dimension that shows ``data_axis`` of ``layer`` (layers align to the end)."""
    return viewer.dims.ndim - layer.ndim + data_axis
