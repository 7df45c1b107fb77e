import numpy as np
import pytest

from napari_aeseg.core.errors import InvalidInputError
from napari_aeseg.core.metrics import score_instances


def _two_squares():
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8] = 1
    gt[10:18, 10:18] = 2
    return gt


def test_perfect_and_permuted_ids():
    gt = _two_squares()
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    s = score_instances(gt, pred)
    assert (s.ap, s.f1, s.mean_matched_iou, s.pixel_iou) == (1.0, 1.0, 1.0, 1.0)


def test_counts_fp_fn_and_iou_threshold():
    gt = _two_squares()
    pred = np.zeros_like(gt)
    pred[2:8, 2:5] = 1  # IoU 0.5 with object 1 -> a match at 0.5
    pred[0:2, 15:20] = 2  # a false positive
    s = score_instances(gt, pred)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    assert s.ap == pytest.approx(1 / 3) and s.f1 == pytest.approx(0.5)
    assert s.mean_matched_iou == pytest.approx(0.5)
    assert score_instances(gt, pred, threshold=0.6).tp == 0


def test_hungarian_prevents_double_matching():
    gt = np.zeros((10, 10), np.uint16)
    gt[:, :3] = 1
    gt[:, 3:] = 2
    merged = (gt > 0).astype(np.uint16)  # one object covering both: IoU 0.3 and 0.7
    s = score_instances(gt, merged)
    assert (s.tp, s.fn, s.fp) == (1, 1, 0)


def test_shape_mismatch():
    with pytest.raises(InvalidInputError, match="differs"):
        score_instances(np.zeros((4, 4)), np.zeros((5, 4)))


def test_scores_refuse_what_is_not_labels():
    truth = np.zeros((8, 8), np.uint16)
    truth[2:5, 2:5] = 1
    for pred, message in [
        (truth * 0.5, "fractional"),
        (np.where(truth > 0, np.nan, 0.0), "NaN"),
        (truth.astype(np.int32) - 1, "negative"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            score_instances(truth, pred)
    for threshold in (0.0, 2.0, float("nan")):
        with pytest.raises(InvalidInputError, match="threshold"):
            score_instances(truth, truth, threshold=threshold)
    # whole-number floats and boolean masks are labels
    assert score_instances(truth, truth.astype(np.float32)).ap == 1.0
    assert score_instances(truth, truth > 0).ap == 1.0


def test_frames_are_matched_one_by_one():
    # a movie of 3 frames with the same two objects: tracks keep their ids across frames
    frame = np.zeros((20, 20), np.uint16)
    frame[2:8, 2:8], frame[12:18, 12:18] = 1, 2
    truth = np.stack([frame] * 3)
    pred = truth.copy()
    pred[1] = np.where(frame > 0, frame + 10, 0)  # other ids in one frame: still right
    pred[2][pred[2] == 2] = 0  # one object missed in one frame
    as_volume = score_instances(truth, pred)
    by_frame = score_instances(truth, pred, frame_axes=1)
    assert (by_frame.tp, by_frame.fp, by_frame.fn, by_frame.frames) == (5, 0, 1, 3)
    assert by_frame.ap == pytest.approx(5 / 6) and by_frame.mean_matched_iou == 1.0
    assert "in 3 frames" in by_frame.summary()
    # as one volume, objects are whole tracks: one pair of ids matches, not frames
    assert as_volume.n_true == 2 and as_volume.n_pred == 4 and as_volume.frames == 1
    with pytest.raises(InvalidInputError, match="frame axes"):
        score_instances(truth, pred, frame_axes=3)


def test_semantic_scores_per_class():
    from napari_aeseg.core.metrics import score_semantic

    truth = np.zeros((10, 10), np.uint8)
    truth[:, :5], truth[:, 5:] = 1, 2
    truth[0] = 0  # not scored
    pred = truth.copy()
    pred[0] = 3  # wrong, but where the truth is not scored
    pred[1:, 4] = 2  # one column of class 1 called 2
    s = score_semantic(truth, pred)
    assert s.scored_pixels == 90
    assert s.class_iou == {1: pytest.approx(36 / 45), 2: pytest.approx(45 / 54)}
    assert s.mean_iou == pytest.approx((36 / 45 + 45 / 54) / 2)
    assert s.accuracy == pytest.approx(81 / 90)
    assert "class IoU 1: 0.800  2: 0.833" in s.summary()
    # a class only predicted counts, with IoU 0
    pred[5, 5] = 3
    assert score_semantic(truth, pred).class_iou[3] == 0.0
    # the instance scores of the same maps said nothing useful (one "object" per class)
    assert score_semantic(truth, truth).mean_iou == 1.0
    with pytest.raises(InvalidInputError, match="no class"):
        score_semantic(np.zeros_like(truth), pred)


def test_semantic_scores_refuse_instance_maps_and_zero_based_truths():
    from napari_aeseg.core.metrics import score_semantic

    pred = np.ones((12, 12), np.uint8)
    pred[2:5, 2:5] = pred[7:10, 7:10] = 2
    instances = np.zeros((12, 12), np.uint16)
    instances[2:5, 2:5], instances[7:10, 7:10] = 1, 2
    with pytest.raises(InvalidInputError, match="instance map"):
        score_semantic(instances + 1, pred, n_classes=2)
    # numbered from 0 (its background not scored, class 1 meeting class 2), or partial:
    # scored, with a note
    from napari_aeseg.core.metrics import score_segmentation

    zero = score_segmentation((pred - 1).astype(np.uint8), pred, target="semantic", n_classes=2)
    assert zero.mean_iou < 0.5 and "add 1" in zero.note
    full = score_segmentation(pred, pred, target="semantic", n_classes=2)
    assert full.mean_iou == 1.0 and full.note is None


def test_no_frames_scores_like_an_empty_image():
    s = score_instances(np.zeros((0, 8, 8), np.uint8), np.zeros((0, 8, 8), np.uint8), frame_axes=1)
    assert (s.tp, s.fp, s.fn, s.ap, s.frames) == (0, 0, 0, 1.0, 0)
