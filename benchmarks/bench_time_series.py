"""Instance segmentation of a movie (axes TYX) from instance masks: frame by frame or not.

A movie of 6 frames (128 x 128, synthetic nuclei drifting 9 pixels a frame, Gaussian noise of
0.15; ids follow the nuclei from frame to frame, as a tracker writes them) is segmented by a
network (random init, 3 classes) fine-tuned on its instance masks, then scored against the
truth. Two label sets: masks of all 6 frames, and of frames 0 and 3 only (the others 0).

- ``targets``: how the masks become classes. ``frames`` (now): each frame on its own,
  unlabeled frames ignored. ``volume`` (before 2026-11-29): the whole movie as one volume,
  so an object's outline continued into the neighbouring frames and a labeled frame next to
  an empty one became all "boundary". The old way is reproduced by patching
  ``segmenter.frame_targets``.
- ``AP by frame``: objects matched within each frame (``score_instances(frame_axes=1)``,
  now); ``AP as volume``: the whole movie matched as one volume (what ``aeseg evaluate``,
  ``segment --truth`` and the Segment widget reported for movies before), where a track
  is one object.

    python benchmarks/bench_time_series.py            # 3 seeds, ~4 min on 2 cores
    python benchmarks/bench_time_series.py --quick    # 1 seed, 30 steps
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_version, format_table, machine_info, write_json  # noqa: E402

FRAMES, SIZE, DRIFT = 6, 128, 9
HEADERS = ["masks of", "targets", "AP by frame", "AP as volume", "mean IoU", "seconds"]


def movie(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.synthetic import synthetic_nuclei

    s = synthetic_nuclei((SIZE, SIZE + DRIFT * FRAMES), seed=seed)
    clean = np.stack([s.clean[:, DRIFT * t : DRIFT * t + SIZE] for t in range(FRAMES)])
    truth = np.stack([s.labels[:, DRIFT * t : DRIFT * t + SIZE] for t in range(FRAMES)])
    noisy = add_noise(clean, gaussian=0.15, seed=seed + 100, value_range=(0.0, 1.0))
    return noisy.astype(np.float32), truth


def volume_targets(labels, kind, n_classes=None, *, region=None, spatial_dims):
    """The conversion of before: the whole movie at once, then one row per frame."""
    from napari_aeseg.core.segmenter import labels_to_target

    target = labels_to_target(labels, kind, n_classes, region=region)
    return target.reshape(-1, *target.shape[target.ndim - spatial_dims :])


def run(seed: int, frames_labeled: list[int], targets: str, steps: int) -> dict:
    from napari_aeseg.core import segmenter
    from napari_aeseg.core.metrics import score_instances

    image, truth = movie(seed)
    masks = np.zeros_like(truth)
    masks[frames_labeled] = truth[frames_labeled]
    original = segmenter.frame_targets
    if targets == "volume":
        segmenter.frame_targets = volume_targets
    try:
        t = time.perf_counter()
        model = segmenter.train_segmenter(
            image,
            masks,
            axes="TYX",
            labels_kind="instances",
            steps=steps,
            batch_size=8,
            patch_size=64,
            base_channels=16,
            device="cpu",
            seed=seed,
        )
        seconds = time.perf_counter() - t
    finally:
        segmenter.frame_targets = original
    labels = model.segment(image, axes="TYX", device="cpu").labels
    by_frame = score_instances(truth, labels, frame_axes=1)
    volume = score_instances(truth, labels)
    return {
        "seed": seed,
        "ap_by_frame": by_frame.ap,
        "ap_as_volume": volume.ap,
        "mean_iou": by_frame.mean_matched_iou,
        "per_frame_ap": [score_instances(truth[k], labels[k]).ap for k in range(FRAMES)],
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one seed, 30 steps")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = "0", 30

    import torch

    torch.set_num_threads(args.threads)
    rows, table = [], []
    for name, labeled in (("all 6 frames", list(range(FRAMES))), ("frames 0 and 3", [0, 3])):
        for targets in ("volume", "frames"):
            runs = [run(int(s), labeled, targets, args.steps) for s in args.seeds.split(",")]
            rows.append({"masks_of": name, "targets": targets, "runs": runs})
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "seed"
                    and k != "per_frame_ap"}  # fmt: skip
            table.append(
                [name, targets, mean["ap_by_frame"], mean["ap_as_volume"], mean["mean_iou"],
                 mean["seconds"]]
            )  # fmt: skip
            print(format_table(HEADERS, [table[-1]], floatfmt=".3f").splitlines()[-1], flush=True)
    print()
    print(format_table(HEADERS, table, floatfmt=".3f"))
    path = write_json(
        "time_series_quick" if args.quick else "time_series",
        {"machine": machine_info(), "code": code_version(), "args": vars(args), "rows": rows},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
