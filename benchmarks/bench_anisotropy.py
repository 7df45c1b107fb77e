"""Instances of anisotropic 3D stacks: split by distances in voxels or in space.

Microscopes often step further in Z than the pixel size. Synthetic nuclei (isotropic,
``synthetic_nuclei((96, 128, 128))``) are kept every ``k``-th plane, so their Z step is
``k`` times the pixel, and the same class probabilities are turned into instances twice: as
before (distances, smoothing and seed boxes in voxels) and with the voxel size
(``spacing=(k, 1, 1)``, what the Segment widget takes from the layer's scale and
``aeseg segment`` from the file or ``--spacing``). AP@0.5 against the subsampled truth.

- ``truth``: probabilities made from the truth (blurred in plane, noise of 0.1): only the
  post-processing differs. Three classes (object / boundary / background, as networks
  trained on instance masks give) and two (object / background, as scribbles give);
  volumes of seeds 1-4.
- ``network``: a 3-class network (random init, 300 steps of 2, patches 16 x 64 x 64) trained
  on the dense instance masks of one noisy subsampled volume (seed ``10 + 2k``), segmenting
  another (seed ``11 + 2k``), for network seeds ``k`` = 0-2; and the instant classifier
  (``classic_features`` + ``PixelClassifier``) on random-pixel scribbles over 2 % of that
  second volume.

    python benchmarks/bench_anisotropy.py            # both parts, ~14 min on 2 cores
    python benchmarks/bench_anisotropy.py --parts truth   # ~1 min
    python benchmarks/bench_anisotropy.py --quick    # ~30 s
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_version, format_table, machine_info, write_json  # noqa: E402

SHAPE = (96, 128, 128)
RADIUS = (8.0, 14.0)


def subsampled(seed: int, step: int, noise: float = 0.0):
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.postprocess import relabel_sequential
    from napari_aeseg.core.synthetic import synthetic_nuclei

    s = synthetic_nuclei(SHAPE, radius=RADIUS, seed=seed)
    image = s.clean[::step]
    if noise:
        image = add_noise(image, gaussian=noise, seed=seed + 100, value_range=(0.0, 1.0))
    return image, relabel_sequential(s.labels[::step])


def truth_probabilities(truth, classes: int, seed: int, step: int) -> np.ndarray:
    from scipy import ndimage as ndi

    from napari_aeseg.core.postprocess import instances_to_classes

    if classes == 3:
        target = instances_to_classes(truth)
        planes = [target == k for k in range(3)]
    else:
        planes = [truth == 0, truth > 0]
    rng = np.random.default_rng(seed)
    sigma = (0.7 / step, 0.7, 0.7)
    prob = np.stack([ndi.gaussian_filter(p.astype(np.float32), sigma) for p in planes])
    prob = np.clip(prob + rng.normal(0, 0.1, prob.shape).astype(np.float32), 0, None)
    return prob / prob.sum(axis=0, keepdims=True)


def both_ways(truth, prob, step: int) -> dict:
    from napari_aeseg.core.metrics import score_instances
    from napari_aeseg.core.postprocess import instances_from_probabilities

    out = {}
    for way, spacing in (("voxels", None), ("space", (step, 1, 1))):
        t = time.perf_counter()
        labels = instances_from_probabilities(prob, spacing=spacing)
        s = score_instances(truth, labels)
        out[way] = {
            "ap": s.ap,
            "mean_matched_iou": s.mean_matched_iou,
            "objects": int(labels.max()),
            "seconds": time.perf_counter() - t,
        }
    out["true_objects"] = int(truth.max())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="truth,network")
    p.add_argument("--z-steps", default="1,2,3,4,5", help="Z steps of the truth part")
    p.add_argument("--net-z-steps", default="2,3,4", help="Z steps of the network part")
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--net-seeds", default="0,1,2", help="network seeds k: volumes 10+2k, 11+2k")
    p.add_argument("--net-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Z step 3, one volume, 30 steps")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.z_steps = args.net_z_steps = "3"
        args.seeds, args.net_seeds, args.net_steps = "1", "0", 30

    import torch

    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    rows, table = [], []
    if "truth" in parts:
        for step in [int(v) for v in args.z_steps.split(",")]:
            for classes in (3, 2):
                runs = []
                for seed in [int(v) for v in args.seeds.split(",")]:
                    _, truth = subsampled(seed, step)
                    prob = truth_probabilities(truth, classes, seed, step)
                    runs.append({"seed": seed, **both_ways(truth, prob, step)})
                rows.append({"part": "truth", "z_step": step, "classes": classes, "runs": runs})
                table.append(summary_row(f"truth, {classes} classes", step, runs))
                print(format_table(HEADERS, [table[-1]]).splitlines()[-1], flush=True)
    if "network" in parts:
        from napari_aeseg.core.features import PixelClassifier, classic_features
        from napari_aeseg.core.segmenter import train_segmenter
        from napari_aeseg.demo import simulated_scribbles

        for step in [int(v) for v in args.net_z_steps.split(",")]:
            nets, instant = [], []
            for k in [int(v) for v in args.net_seeds.split(",")]:
                train_image, train_truth = subsampled(10 + 2 * k, step, noise=0.1)
                test_image, test_truth = subsampled(11 + 2 * k, step, noise=0.1)
                t = time.perf_counter()
                model = train_segmenter(
                    train_image,
                    train_truth,
                    axes="ZYX",
                    labels_kind="instances",
                    steps=args.net_steps,
                    batch_size=2,
                    patch_size=64,
                    patch_size_z=16,
                    base_channels=16,
                    device="cpu",
                    seed=k,
                )
                train_s = time.perf_counter() - t
                prob = model.segment(test_image, axes="ZYX", device="cpu").probabilities
                nets.append(
                    {"seed": k, "train_seconds": train_s, **both_ways(test_truth, prob, step)}
                )
                features = classic_features(test_image, axes="ZYX")
                scribbles = simulated_scribbles(test_truth, fraction=0.02, seed=k)
                probs = PixelClassifier().fit(features, scribbles).predict_proba(features)
                instant.append({"seed": k, **both_ways(test_truth, probs, step)})
            for part, name, classes, runs in (
                ("network", "network, 3 classes", 3, nets),
                ("instant", "instant classifier, 2 classes", 2, instant),
            ):
                rows.append({"part": part, "z_step": step, "classes": classes, "runs": runs})
                table.append(summary_row(name, step, runs))
                print(format_table(HEADERS, [table[-1]]).splitlines()[-1], flush=True)
    print()
    print(format_table(HEADERS, table, floatfmt=".3f"))
    path = write_json(
        "anisotropy_quick" if args.quick else "anisotropy",
        {"machine": machine_info(), "code": code_version(), "args": vars(args), "rows": rows},
        args.out,
    )
    print(f"wrote {path}")
    return 0


HEADERS = ["probabilities", "Z step", "volumes", "AP voxels", "AP space", "gain", "won"]


def summary_row(name: str, step: int, runs: list[dict]) -> list:
    v = np.array([r["voxels"]["ap"] for r in runs])
    s = np.array([r["space"]["ap"] for r in runs])
    won = f"{int((s > v).sum())}/{len(runs)}"
    return [name, step, len(runs), float(v.mean()), float(s.mean()), float((s - v).mean()), won]


if __name__ == "__main__":
    sys.exit(main())
