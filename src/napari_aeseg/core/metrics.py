"""Instance segmentation metrics: AP at an IoU threshold, F1, mean matched IoU, pixel IoU.

Predicted and true objects are matched one-to-one by the Hungarian algorithm on their IoU;
a match counts as a true positive when its IoU reaches the threshold. AP here is the
definition used by the 2018 Data Science Bowl and StarDist: ``TP / (TP + FP + FN)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import InvalidInputError


@dataclass(frozen=True)
class SegmentationScores:
    ap: float
    f1: float
    precision: float
    recall: float
    mean_matched_iou: float
    pixel_iou: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    threshold: float
    #: independent frames the objects were matched in (1 for an image or a volume)
    frames: int = 1

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"AP@{self.threshold:g} {self.ap:.3f}  F1 {self.f1:.3f}  mean IoU {self.mean_matched_iou:.3f}  "
            f"pixel IoU {self.pixel_iou:.3f}  ({self.n_pred} predicted, {self.n_true} true"
            + (f", in {self.frames} frames)" if self.frames > 1 else ")")
        )


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every true and every predicted object (ids > 0)."""
    t = true.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    overlap = np.zeros((len(t_ids), len(p_ids)), np.int64)
    np.add.at(overlap, (t_inv, p_inv), 1)
    t_area = overlap.sum(axis=1, keepdims=True)
    p_area = overlap.sum(axis=0, keepdims=True)
    union = t_area + p_area - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    t_keep = t_ids != 0
    p_keep = p_ids != 0
    return iou[np.ix_(t_keep, p_keep)], t_ids[t_keep], p_ids[p_keep]


def _label_image(labels, what: str) -> np.ndarray:
    """Integer labels (0 = background, ids > 0); floats only where they hold whole numbers."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise InvalidInputError(f"the {what} holds NaN or infinite values, not label ids")
        if np.any(np.mod(labels, 1) != 0):
            raise InvalidInputError(
                f"the {what} holds fractional values (a probability map?); give label ids"
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise InvalidInputError(f"the {what} must hold integer label ids, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InvalidInputError(f"the {what} holds negative values; labels are 0 or ids > 0")
    return labels


def _matches(true: np.ndarray, pred: np.ndarray, threshold: float) -> tuple[np.ndarray, int, int]:
    """IoUs of the one-to-one matches at or above ``threshold``; numbers of objects."""
    iou, t_ids, p_ids = iou_matrix(true, pred)
    matched = np.zeros(0)
    if len(t_ids) and len(p_ids):
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols]
        matched = matched[matched >= threshold]
    return matched, len(t_ids), len(p_ids)


def score_instances(
    true: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5, frame_axes: int = 0
) -> SegmentationScores:
    """Compare an instance prediction to the ground truth (same shape, 0 = background).

    ``frame_axes`` leading axes hold independent frames (time points, samples): objects are
    matched within each frame and the counts are pooled, so an id that continues from frame
    to frame (a track) counts once per frame. Without it, an object is one connected id over
    the whole array (right for 2D and 3D images, wrong for a movie).
    """
    if not 0.0 < threshold <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"the IoU threshold must lie in (0, 1], got {threshold}")
    true = _label_image(true, "ground truth")
    pred = _label_image(pred, "prediction")
    if true.shape != pred.shape:
        raise InvalidInputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {true.shape}"
        )
    if not 0 <= frame_axes < max(true.ndim, 1):
        raise InvalidInputError(
            f"{frame_axes} frame axes leave no image axes in an array of shape {true.shape}"
        )
    spatial = true.shape[frame_axes:]
    frames = zip(true.reshape(-1, *spatial), pred.reshape(-1, *spatial), strict=True)
    parts = [_matches(t, p, threshold) for t, p in frames]
    matched = np.concatenate([np.zeros(0), *(m for m, _, _ in parts)])
    n_true = sum(n for _, n, _ in parts)
    n_pred = sum(n for _, _, n in parts)
    tp = int(len(matched))
    fp, fn = n_pred - tp, n_true - tp
    union = np.logical_or(true > 0, pred > 0).sum()
    pixel_iou = float(np.logical_and(true > 0, pred > 0).sum() / union) if union else 1.0
    denom = tp + fp + fn
    return SegmentationScores(
        ap=tp / denom if denom else 1.0,
        f1=2 * tp / (2 * tp + fp + fn) if denom else 1.0,
        precision=tp / n_pred if n_pred else float(n_true == 0),
        recall=tp / n_true if n_true else 1.0,
        mean_matched_iou=float(matched.mean()) if tp else 0.0,
        pixel_iou=pixel_iou,
        tp=tp,
        fp=fp,
        fn=fn,
        n_true=n_true,
        n_pred=n_pred,
        threshold=threshold,
        frames=len(parts),
    )


#: a ground truth with larger values than this is an instance map, not a class map (the
#: largest number of scribble classes, ``segmenter.MAX_SCRIBBLE_CLASSES``)
MAX_CLASSES = 32


@dataclass(frozen=True)
class SemanticScores:
    """Class maps compared pixel by pixel (values 1..K as in the scribbles; 0 not scored)."""

    #: IoU of each class value found in the ground truth or the prediction (scored pixels)
    class_iou: dict[int, float]
    mean_iou: float
    accuracy: float
    scored_pixels: int
    #: a doubt about the ground truth (see :func:`zero_based_note`), or None
    note: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["class_iou"] = {str(k): v for k, v in self.class_iou.items()}
        return d

    def summary(self, names: list[str] | None = None) -> str:
        """One line; ``names`` of classes 1..K (a segmenter's) go with their values."""

        def title(k: int) -> str:
            return f"{k} {names[k - 1]}" if names and 0 < k <= len(names) else f"{k}"

        per = "  ".join(f"{title(k)}: {v:.3f}" for k, v in self.class_iou.items())
        return f"mean IoU {self.mean_iou:.3f}  accuracy {self.accuracy:.3f}  class IoU {per}"


def score_semantic(
    true: np.ndarray, pred: np.ndarray, *, n_classes: int | None = None
) -> SemanticScores:
    """Compare a class map to the ground truth: IoU per class, their mean, and accuracy.

    Both hold class values as scribbles do (1 = the first class, often background; k + 1 =
    class k). Pixels whose ground truth is 0 are not scored, so a partly labeled truth works.
    With ``n_classes``, a truth holding larger values (an instance map, one id per object)
    is refused. A truth numbered from 0 cannot be told from a partial one that lacks the
    last class: :func:`zero_based_note` says when it may be.
    """
    true = _label_image(true, "ground truth")
    pred = _label_image(pred, "prediction")
    if true.shape != pred.shape:
        raise InvalidInputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {true.shape}"
        )
    top = int(true.max()) if true.size else 0
    if n_classes is not None and top > n_classes:
        raise InvalidInputError(
            f"the ground truth holds values up to {top} but there are {n_classes} classes: "
            "give a class map of the classes the segmenter learnt (1..K), not an instance map"
        )
    scored = true > 0
    n = int(scored.sum())
    if not n:
        raise InvalidInputError(
            "the ground truth holds no class (all 0); classes are 1, 2, ... as in the scribbles"
        )
    t, p = true[scored].astype(np.int64), pred[scored].astype(np.int64)
    classes = np.union1d(np.unique(t), np.unique(p))
    classes = classes[classes > 0]
    ious = {}
    for k in classes:
        tk, pk = t == k, p == k
        ious[int(k)] = float(np.logical_and(tk, pk).sum() / np.logical_or(tk, pk).sum())
    return SemanticScores(
        class_iou=ious,
        mean_iou=float(np.mean(list(ious.values()))),
        accuracy=float((t == p).mean()),
        scored_pixels=n,
    )


def zero_based_note(true: np.ndarray, n_classes: int) -> str | None:
    """A note when a class map holds 0..K-1 for K classes: perhaps numbered from 0 (then its
    first class is not scored and every other is off by one), perhaps only partial."""
    true = np.asarray(true)
    if not true.size or int(true.max()) != n_classes - 1 or not (true == 0).any():
        return None
    return (
        f"the ground truth holds 0..{n_classes - 1} for {n_classes} classes: if it is "
        "numbered from 0, add 1 to it (classes are 1..K as in the scribbles; 0 is not scored)"
    )


def scattered_values_note(
    labels: np.ndarray, name: str, *, frame_axes: int = 0, max_values: int = 1 << 24
) -> str | None:
    """A note when an instance image does not look like one: its values form far more
    separate pieces than there are values (an image of intensities given as labels).

    Counted frame by frame (``frame_axes`` leading axes; ids may restart in each), with
    diagonal neighbours joined (thin objects stay one piece), on the first frames up to
    ``max_values`` values (a few seconds on large stacks otherwise)."""
    from skimage.measure import label

    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu" or arr.ndim - frame_axes < 2 or not arr.size:
        return None
    frames = arr.reshape(-1, *arr.shape[frame_axes:])
    ids = pieces = seen = 0
    for frame in frames:
        if seen and seen + frame.size > max_values:
            break
        if frame.size > max_values:  # a slab through the middle of one large frame
            rows = max(1, max_values * frame.shape[0] // frame.size)
            start = (frame.shape[0] - rows) // 2
            frame = frame[start : start + rows]
        seen += frame.size
        if not frame.any():
            continue
        ids += len(np.unique(frame)) - int((frame == 0).any())
        pieces += int(label(frame, background=0, connectivity=frame.ndim).max())
    if pieces <= 2 * ids + 10:
        return None
    return (
        f"{name} does not look like a label image: its {ids} values form {pieces} separate "
        "pieces (an image of intensities?); each object should be one region of one value"
    )


def score_segmentation(
    true: np.ndarray,
    labels: np.ndarray,
    *,
    target: str,
    n_classes: int,
    frame_axes: int = 0,
) -> SegmentationScores | SemanticScores:
    """Score a segmenter's labels as they are meant: instances as matched objects (frame by
    frame), semantic classes per class. A semantic result against an instance map (values
    above ``n_classes``) is scored as objects: the connected regions of its classes above
    the first (background), in each frame."""
    if target == "instances":
        return score_instances(true, labels, frame_axes=frame_axes)
    true = np.asarray(true)
    # more values than there can be classes: one id per object
    if true.size and _label_image(true, "ground truth").max() > MAX_CLASSES:
        from scipy import ndimage as ndi

        labels = np.asarray(labels)
        flat = labels.reshape(-1, *labels.shape[frame_axes:])
        objects = np.stack([ndi.label(f >= 2)[0] for f in flat]).reshape(labels.shape)
        return score_instances(true, objects, frame_axes=frame_axes)
    scores = score_semantic(true, labels, n_classes=n_classes)
    note = zero_based_note(true, n_classes)
    return replace(scores, note=note) if note else scores
