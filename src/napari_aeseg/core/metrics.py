"""Instance segmentation metrics: AP at an IoU threshold, F1, mean matched IoU, pixel IoU.

Predicted and true objects are matched one-to-one by the Hungarian algorithm on their IoU;
a match counts as a true positive when its IoU reaches the threshold. AP here is the
definition used by the 2018 Data Science Bowl and StarDist: ``TP / (TP + FP + FN)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"AP@{self.threshold:g} {self.ap:.3f}  F1 {self.f1:.3f}  mean IoU {self.mean_matched_iou:.3f}  "
            f"pixel IoU {self.pixel_iou:.3f}  ({self.n_pred} predicted, {self.n_true} true)"
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


def score_instances(
    true: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5
) -> SegmentationScores:
    """Compare an instance prediction to the ground truth (same shape, 0 = background)."""
    if not 0.0 < threshold <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"the IoU threshold must lie in (0, 1], got {threshold}")
    true = _label_image(true, "ground truth")
    pred = _label_image(pred, "prediction")
    if true.shape != pred.shape:
        raise InvalidInputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {true.shape}"
        )
    iou, t_ids, p_ids = iou_matrix(true, pred)
    n_true, n_pred = len(t_ids), len(p_ids)
    matched = np.zeros(0)
    if n_true and n_pred:
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols]
        matched = matched[matched >= threshold]
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
    )
