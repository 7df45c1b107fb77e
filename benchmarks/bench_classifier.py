"""Instant pixel classifier: time per update on a 512 x 512 image (issue #5 target:
"trained on the scribbles in well under a second per update on a 512x512 image").

The "paint a little, see the result, paint more" loop of the Segment widget computes the
features once per image (cached by the widget) and then, after every stroke, fits the
random forest on the scribbled pixels, predicts every pixel and turns the probabilities
into instances. This script times both parts separately, on the real nuclei sample
(512 x 512) with brush-stroke scribbles (``demo.simulated_strokes``) at several budgets,
for the encoder's features (an ``n2v2`` denoiser of the engine's default architecture;
the time does not depend on how well it is trained) and for the scikit-image features
used when there is no encoder. Each update is repeated ``--repeats`` times; the median is
reported, and the update target is checked against it. Writes
``results/classifier.json``.

``--stack`` also times the loop on the bundled 3D stack (60 x 256 x 256), with scribbles on
two planes: once predicting the whole stack (what Segment does) and once predicting one
plane (what Live update does in a 2D view of a stack since 2026-11-29).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

TARGET_SECONDS = 1.0


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.005,0.01,0.05")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: engine)")
    ap.add_argument("--quick", action="store_true", help="one budget, two repeats")
    ap.add_argument("--stack", action="store_true", help="also the 3D stack: whole vs plane")
    ap.add_argument("--out", default=None)
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.fractions, args.repeats = "0.01", 2

    import torch

    from napari_aeseg.core.features import PixelClassifier, classic_features, encoder_features
    from napari_aeseg.core.metrics import score_instances
    from napari_aeseg.core.postprocess import entropy, instances_from_probabilities
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.core.training import train_denoiser
    from napari_aeseg.demo import simulated_strokes

    if args.threads:
        torch.set_num_threads(args.threads)
    image = load_sample("nuclei_2d").astype(np.float32)
    truth = load_sample("nuclei_2d_labels")
    denoiser = train_denoiser(image, mode="n2v2", steps=5, device="cpu")
    machine = machine_info("cpu")

    feature_sets = {}
    for name, compute in (
        ("encoder", lambda: encoder_features(denoiser, image, device="cpu")),
        ("scikit-image", lambda: classic_features(image)),
    ):
        compute()  # warm-up (imports, allocator)
        feats, secs = timed(compute)
        feature_sets[name] = (feats, secs)
        print(f"{name} features: {feats.shape[0]} x {image.shape}, {secs:.2f} s", flush=True)

    rows = []
    if args.stack:
        rows += stack_rows(args, denoiser)
    for name, (feats, feat_secs) in feature_sets.items():
        for frac in (float(f) for f in args.fractions.split(",")):
            scribbles = simulated_strokes(truth, fraction=frac, seed=0)
            parts = {"fit": [], "predict": [], "instances": [], "total": []}
            for _ in range(args.repeats):
                clf, fit = timed(PixelClassifier().fit, feats, scribbles)
                probs, predict = timed(clf.predict_proba, feats)

                def post(p=probs):
                    labels = instances_from_probabilities(p)
                    entropy(p)
                    return labels

                labels, inst = timed(post)
                for k, v in (("fit", fit), ("predict", predict), ("instances", inst)):
                    parts[k].append(v)
                parts["total"].append(fit + predict + inst)
            med = {k: statistics.median(v) for k, v in parts.items()}
            scores = score_instances(truth, labels)
            rows.append(
                dict(
                    image="512 x 512",
                    predicted="image",
                    features=name,
                    n_features=int(feats.shape[0]),
                    feature_seconds=round(feat_secs, 3),
                    fraction=frac,
                    scribbled_pixels=int((scribbles > 0).sum()),
                    **{f"{k}_seconds": round(v, 3) for k, v in med.items()},
                    ap=round(scores.ap, 3),
                    met=med["total"] < TARGET_SECONDS,
                )
            )
            print(
                f"  {name:12s} {frac * 100:g}%: update {med['total']:.3f} s "
                f"(fit {med['fit']:.3f}, predict {med['predict']:.3f}, "
                f"instances {med['instances']:.3f}); AP@0.5 {scores.ap:.3f}",
                flush=True,
            )
    table = format_table(
        [
            "image",
            "predicted",
            "features",
            "F",
            "features once (s)",
            "scribbles",
            "pixels",
            "fit (s)",
            "predict (s)",
            "instances + entropy (s)",
            "update (s)",
            f"< {TARGET_SECONDS:g} s",
            "AP@0.5",
        ],
        [
            [
                r["image"],
                r["predicted"],
                r["features"],
                r["n_features"],
                r["feature_seconds"],
                f"{r['fraction'] * 100:.2g}%",
                r["scribbled_pixels"],
                r["fit_seconds"],
                r["predict_seconds"],
                r["instances_seconds"],
                r["total_seconds"],
                "yes" if r["met"] else "NO",
                r.get("ap", "-"),
            ]
            for r in rows
        ],
    )
    print("\n" + table)
    path = write_json(
        "classifier" + ("_quick" if args.quick else ""),
        dict(
            benchmark="instant pixel classifier update time",
            machine=machine,
            notes=args.notes,
            image="sample_data/real_nuclei_2d.tif (512 x 512)"
            + (", sample_data/real_3d_stack.tif (60 x 256 x 256)" if args.stack else ""),
            target_seconds=TARGET_SECONDS,
            repeats=args.repeats,
            rows=rows,
            table=table,
        ),
        args.out,
    )
    print(f"wrote {path}")
    return 0


def stack_scribbles(stack: np.ndarray, planes=(20, 40), share=0.03, seed=0) -> np.ndarray:
    """Scribbles on a few planes of the 3D sample (no ground truth): random pixels well
    inside (2) and well outside (1) its Otsu mask."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    smooth = gaussian(stack.astype(np.float32), 1)
    mask = smooth > threshold_otsu(smooth)
    out = np.zeros(stack.shape, np.uint8)
    rng = np.random.default_rng(seed)
    for z in planes:
        pick = rng.random(mask[z].shape) < share
        out[z][ndi.binary_erosion(mask[z], iterations=4) & pick] = 2
        out[z][~ndi.binary_dilation(mask[z], iterations=4) & pick] = 1
    return out


def stack_rows(args, denoiser) -> list[dict]:
    """One update on the 3D sample: the forest fitted on the whole stack's scribbles, then
    the whole stack predicted and split in 3D, or one plane predicted and split in 2D."""
    from napari_aeseg.core.features import PixelClassifier, classic_features
    from napari_aeseg.core.postprocess import entropy, instances_from_probabilities
    from napari_aeseg.core.samples import load_sample

    stack = load_sample("nuclei_3d").astype(np.float32)
    scribbles = stack_scribbles(stack)
    feats, feat_secs = timed(classic_features, stack, axes="ZYX")
    print(f"3D scikit-image features: {feats.shape}, {feat_secs:.1f} s", flush=True)
    rows = []
    z = stack.shape[0] // 2
    for predicted in ("stack", "plane"):
        parts = {"fit": [], "predict": [], "instances": [], "total": []}
        for _ in range(args.repeats):
            clf, fit = timed(PixelClassifier().fit, feats, scribbles)
            shown = feats if predicted == "stack" else feats[:, z]
            probs, predict = timed(clf.predict_proba, shown)

            def post(p=probs):
                two = np.stack([p[0], p[1:].sum(axis=0)])
                entropy(two)
                return instances_from_probabilities(two)

            labels, inst = timed(post)
            for k, v in (("fit", fit), ("predict", predict), ("instances", inst)):
                parts[k].append(v)
            parts["total"].append(fit + predict + inst)
        med = {k: statistics.median(v) for k, v in parts.items()}
        rows.append(
            dict(
                image=" x ".join(map(str, stack.shape)),
                predicted=predicted if predicted == "stack" else f"plane {z}",
                features="scikit-image",
                n_features=int(feats.shape[0]),
                feature_seconds=round(feat_secs, 3),
                fraction=float((scribbles > 0).mean()),
                scribbled_pixels=int((scribbles > 0).sum()),
                **{f"{k}_seconds": round(v, 3) for k, v in med.items()},
                objects=int(labels.max()),
                met=med["total"] < TARGET_SECONDS,
            )
        )
        print(
            f"  stack, predicting the {predicted}: update {med['total']:.3f} s (fit "
            f"{med['fit']:.3f}, predict {med['predict']:.3f}, instances {med['instances']:.3f})",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
