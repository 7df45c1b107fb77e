"""How well ``noise.noise_to_signal`` reads the noise of an image, Gaussian and shot noise.

The real nuclei sample's training half (columns 0-255) gets Gaussian noise (a fraction of
its range) or Poisson noise (photons at the top of its range) added, and three ratios of
noise std over signal std are printed: the added noise's own ("true"; the image's own noise
is left out, so it is a lower bound), the one-median wavelet estimate used before the tenth
session (``skimage.restoration.estimate_sigma``: the median over all pixels), and the
product's (medians in bands of local brightness). On the whole half, and on the two 64 x 64
crops of ``bench_segmentation.random_crops`` for seeds 0-5 (the step limit of noisy crops
reads them). Writes ``results/noise_estimate.json``; a few seconds.

    python benchmarks/bench_noise_estimate.py
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402
from bench_segmentation import CROP_SIZE, random_crops  # noqa: E402

NOISES = [
    ("none", {}),
    ("Gaussian 0.1", {"gaussian": 0.1}),
    ("Gaussian 0.2", {"gaussian": 0.2}),
    ("Gaussian 0.3", {"gaussian": 0.3}),
    ("Poisson 20 photons", {"poisson": 20}),
    ("Poisson 10 photons", {"poisson": 10}),
    ("Poisson 5 photons", {"poisson": 5}),
]


def one_median(images) -> float:
    """The estimate before the tenth session: one wavelet median over all pixels."""
    from skimage.restoration import estimate_sigma

    noise = np.average(
        [float(estimate_sigma(np.asarray(x, np.float32))) ** 2 for x in images],
        weights=[np.size(x) for x in images],
    )
    signal = float(np.var(np.concatenate([np.ravel(x) for x in images]))) - noise
    return math.sqrt(noise / signal) if signal > 0 else math.inf


def true_ratio(noisy, clean) -> float | None:
    residual = np.concatenate([(a - b).ravel() for a, b in zip(noisy, clean, strict=True)])
    if not residual.any():
        return None
    return float(residual.std() / np.concatenate([b.ravel() for b in clean]).std())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4,5", help="crop seeds")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from napari_aeseg.core.noise import add_noise, noise_to_signal
    from napari_aeseg.core.samples import load_sample

    image = load_sample("nuclei_2d").astype(np.float32)
    truth = load_sample("nuclei_2d_labels")
    half = image.shape[1] // 2
    lo, hi = float(image.min()), float(image.max())
    clean = ((image - lo) / (hi - lo))[:, :half]
    seeds = [int(s) for s in args.seeds.split(",")]
    corners = {s: random_crops(truth[:, :half], 2, seed=s) for s in seeds}

    def crops(x, s):
        return [x[y : y + CROP_SIZE, c : c + CROP_SIZE] for y, c in corners[s]]

    rows, table = [], []
    for name, noise in NOISES:
        noisy = add_noise(image, seed=3, **noise) if noise else image
        noisy = ((noisy - lo) / (hi - lo))[:, :half]
        whole = {
            "true": true_ratio([noisy], [clean]),
            "one_median": one_median([noisy]),
            "bands": noise_to_signal([noisy]),
        }
        per_seed = [
            {
                "seed": s,
                "true": true_ratio(crops(noisy, s), crops(clean, s)),
                "one_median": one_median(crops(noisy, s)),
                "bands": noise_to_signal(crops(noisy, s)),
            }
            for s in seeds
        ]

        def mean(key, per_seed=per_seed):
            values = [r[key] for r in per_seed if r[key] is not None]
            return float(np.mean(values)) if values else None

        rows.append({"noise": name, "whole": whole, "crops": per_seed})
        table.append(
            [name, whole["true"], whole["one_median"], whole["bands"]]
            + [mean("true"), mean("one_median"), mean("bands")]
        )
    headers = [
        "noise added",
        "half: true",
        "one median",
        "bands",
        "2 crops: true",
        "one median",
        "bands",
    ]
    print(format_table(headers, table, floatfmt=".2f"))
    path = write_json(
        "noise_estimate",
        {"machine": machine_info(), "seeds": seeds, "rows": rows},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
