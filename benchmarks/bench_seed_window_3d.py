"""Two-class instance seeds in 3D (and 2D): one seed box for all objects, or one per piece.

``instances_from_probabilities`` turns two-class (background / object) probabilities, what
the instant classifier and scribble-trained networks give, into instances: seeds are the
highest points of the smoothed distance to the mask's edge within a box whose side follows
the objects' typical radius (``postprocess.typical_radius``, ``default_seed_window``).

Two rules are compared on the same probabilities:

- **before** (until 2026-11-29): one box for the whole image, from the median depth (largest
  distance to the edge) over the mask's pieces of at least ``min_size`` voxels; its
  half-width is a quarter of it in 2D and a sixth in 3D;
- **now**: each piece of the mask gets its own box, a quarter of its own depth in 2D and 3D
  (a clump of touching objects is about one object deep).

Probabilities come from the instant classifier (``PixelClassifier`` on
``classic_features``, no network to train) fitted on brush strokes
(``demo.simulated_strokes``) in two planes of each stack (in 2D: 2 % of the pixels):

- ``synthetic 3D``: ``synthetic_nuclei((48, 128, 128))`` (radius 6-12), Gaussian noise 0.1;
- ``synthetic 3D, Z step 3``: the same, every third plane, voxel size (3, 1, 1);
- ``large synthetic 3D``: radius 14-20 in (64, 160, 160), about the size of the real
  sample's nuclei;
- ``real 3D (pseudo truth)``: ``sample_data/real_3d_stack.tif`` (voxel size 0.29 x 0.26 x
  0.26), scored against an Otsu + distance-watershed segmentation (``peak_local_max`` at
  least 12 voxels apart), which is only a rough reference: read its numbers as relative;
- ``synthetic 2D`` / ``real 2D``: ``synthetic_nuclei((256, 256))`` with noise 0.1, and
  ``sample_data/real_nuclei_2d.tif`` with its ground truth, to check 2D is left as it was;
- ``mixed sizes 2D``: 50 touching pairs of small cells (radius 6-7) and 3 large discs
  (radius 50), blurred, noise 0.1: one box for all cannot fit both sizes.

Writes ``results/seed_window_3d.json``.

    python benchmarks/bench_seed_window_3d.py            # about 5 min here
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

MIN_SIZE = 15  # the widget's and the engine's default minimum object size


def old_typical_radius(mask, edt, min_size=0) -> float:
    """The rule before: median depth over all pieces of at least ``min_size`` pixels."""
    pieces, n = ndi.label(mask)
    if not n:
        return 0.0
    inside = pieces > 0
    deepest = np.zeros(n + 1)
    np.maximum.at(deepest, pieces[inside], edt[inside])
    deepest = deepest[1:]
    if min_size > 0:
        deepest = deepest[np.bincount(pieces[inside], minlength=n + 1)[1:] >= min_size]
        if not len(deepest):
            return 0.0
    return float(np.median(deepest))


def old_seed_window(radius, ndim, spacing=None):
    half = max(2, int(radius / 4)) if ndim == 2 else max(1, int(radius / 6))
    if spacing is None:
        return 2 * half + 1
    return tuple(2 * max(1, int(half / s)) + 1 for s in spacing)


def labels_by(rule: str, prob, spacing):
    from napari_aeseg.core.postprocess import instances_from_probabilities

    window = None  # now: a box per piece of the mask
    if rule == "before":
        window = old_seed_window(old_radius(prob, spacing), prob.ndim - 1, rel_spacing(spacing))
    return instances_from_probabilities(
        prob, spacing=spacing, min_size=MIN_SIZE, seed_window=window
    )


def rel_spacing(spacing):
    from napari_aeseg.core.postprocess import relative_spacing

    return None if spacing is None else relative_spacing(spacing, len(spacing))


def old_radius(prob, spacing) -> float:
    mask = prob[1] > 0.5
    edt = ndi.distance_transform_edt(mask, sampling=rel_spacing(spacing))
    return old_typical_radius(mask, edt, MIN_SIZE)


def mixed_sizes(seed: int):
    """Touching pairs of small cells and three large discs (labels, blurred noisy image)."""
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.synthetic import small_pairs_and_large_discs

    truth = small_pairs_and_large_discs()[0]
    clean = ndi.gaussian_filter((truth > 0).astype(np.float32), 1.0)
    return add_noise(clean, gaussian=0.1, seed=seed, value_range=(0.0, 1.0)), truth


def strokes_in_planes(truth, seed: int):
    from napari_aeseg.demo import simulated_strokes

    if truth.ndim == 2:
        return simulated_strokes(truth, fraction=0.02, seed=seed)
    scribbles = np.zeros(truth.shape, np.uint8)
    nz = truth.shape[0]
    for z in (nz // 3, 2 * nz // 3):
        scribbles[z] = simulated_strokes(truth[z], fraction=0.02, seed=seed + z)
    return scribbles


def pseudo_truth(image, spacing):
    from skimage import feature, filters, measure, segmentation

    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0)
    fg = smooth > filters.threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(fg, sampling=np.asarray(spacing) / min(spacing))
    peaks = feature.peak_local_max(
        dist, min_distance=12, labels=measure.label(fg), exclude_border=False
    )
    markers = np.zeros(fg.shape, int)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-dist, markers, mask=fg).astype(np.uint16)


def datasets(seeds):
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.core.synthetic import synthetic_nuclei

    for seed in seeds:
        s = synthetic_nuclei((48, 128, 128), seed=seed)
        noisy = add_noise(s.clean, gaussian=0.1, seed=seed, value_range=(0.0, 1.0))
        yield "synthetic 3D", seed, noisy, s.labels, None, "ZYX"
        yield "synthetic 3D, Z step 3", seed, noisy[::3], s.labels[::3], (3.0, 1.0, 1.0), "ZYX"
        big = synthetic_nuclei((64, 160, 160), radius=(14.0, 20.0), seed=seed)
        noisy = add_noise(big.clean, gaussian=0.1, seed=seed, value_range=(0.0, 1.0))
        yield "large synthetic 3D", seed, noisy, big.labels, None, "ZYX"
        s2 = synthetic_nuclei((256, 256), seed=seed)
        noisy = add_noise(s2.clean, gaussian=0.1, seed=seed, value_range=(0.0, 1.0))
        yield "synthetic 2D", seed, noisy, s2.labels, None, "YX"
        yield "mixed sizes 2D", seed, *mixed_sizes(seed), None, "YX"
    real3d = load_sample("nuclei_3d").astype(np.float32)
    spacing = (0.29, 0.26, 0.26)
    truth3d = pseudo_truth(real3d, spacing)
    real2d = load_sample("nuclei_2d").astype(np.float32)
    truth2d = load_sample("nuclei_2d_labels")
    for seed in seeds:  # (one image's features are kept: its seeds one after the other)
        yield "real 3D (pseudo truth)", seed, real3d, truth3d, spacing, "ZYX"
    for seed in seeds:
        yield "real 2D", seed, real2d, truth2d, None, "YX"


def main(argv=None) -> int:
    from napari_aeseg.core.features import PixelClassifier, classic_features
    from napari_aeseg.core.metrics import score_instances

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", help="JSON path (default results/seed_window_3d.json)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    rows, features = [], {}
    for name, seed, image, truth, spacing, axes in datasets(seeds):
        key = (name, id(image)) if name.startswith("real") else (name, seed)
        if key not in features:
            features = {key: classic_features(image, axes=axes)}  # one image's at a time
        feats = features[key]
        prob = PixelClassifier(seed=seed).fit(feats, strokes_in_planes(truth, seed))
        prob = prob.predict_proba(feats)
        r_old = old_radius(prob, spacing)
        row = {"dataset": name, "seed": seed, "radius_before": r_old}
        for rule in ("before", "now"):
            labels = labels_by(rule, prob, spacing)
            sc = score_instances(truth, labels)
            row[f"ap_{rule}"] = sc.ap
            row[f"objects_{rule}"] = int(labels.max())
            row[f"labels_{rule}"] = labels
        row["identical"] = bool(np.array_equal(row.pop("labels_before"), row.pop("labels_now")))
        row["truth_objects"] = int(len(np.unique(truth)) - 1)
        rows.append(row)
        print(
            f"{name:24s} seed {seed}: one box from radius {r_old:.1f}, AP "
            f"{row['ap_before']:.3f} -> {row['ap_now']:.3f}, objects {row['objects_before']} "
            f"-> {row['objects_now']} (truth {row['truth_objects']})",
            flush=True,
        )
    table = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        gain = np.array([r["ap_now"] - r["ap_before"] for r in mine])
        table.append(
            [
                name,
                len(mine),
                np.mean([r["truth_objects"] for r in mine]),
                np.mean([r["radius_before"] for r in mine]),
                np.mean([r["objects_before"] for r in mine]),
                np.mean([r["objects_now"] for r in mine]),
                np.mean([r["ap_before"] for r in mine]),
                np.mean([r["ap_now"] for r in mine]),
                f"{gain.mean():+.3f}",
                sum(r["identical"] for r in mine),
            ]
        )
    headers = [
        "dataset", "runs", "objects (truth)", "median depth", "objects before",
        "objects now", "AP before", "AP now", "gain", "identical labels",
    ]  # fmt: skip
    print(format_table(headers, table, floatfmt=".3f"))
    path = write_json(
        "seed_window_3d",
        {
            "machine": machine_info(),
            "seeds": seeds,
            "min_size": MIN_SIZE,
            "rows": rows,
            "table": dict(headers=headers, rows=table),
            "seconds": time.time() - t0,
        },
        args.out,
    )
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
