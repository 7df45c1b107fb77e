"""Two-class instance seeds at other magnifications: a fixed 5 x 5 box vs one that scales.

``instances_from_probabilities`` turns two-class (background / object) probabilities, what
scribble-trained networks and the pixel classifiers give, into instances: seeds are the
highest points of the smoothed distance to the mask's edge within a box, and a watershed
floods the mask from them. The box used to be 5 x 5 pixels at any object size; now its side
follows the objects' typical radius (``postprocess.default_seed_window``; the same 5 x 5 up
to a radius of 12).

This script trains the benchmark's networks on brush strokes (the setup of
``bench_segmentation.py``: 150 steps of 4, (a) random init and (b) from the cached ``n2v2``
denoiser, strokes on 0.5 % and 1 % of the training part), keeps their probabilities on the
held-out test part, and then scales those probabilities and the ground truth by 0.5-3x
(linear / nearest interpolation) to stand for the same nuclei seen at another magnification.
Each scaled map is turned into instances both ways and scored (AP@0.5). Writes
``results/seed_window.json`` (``--quick``: ``seed_window_quick.json``).

    python benchmarks/bench_seed_window.py --den-cache /tmp/den      # 24 networks per dataset
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402
from bench_segmentation import load_datasets, score  # noqa: E402

FIXED_WINDOW = 5  # the rule before: a 5 x 5 box at any object size


def denoiser_for(name: str, image, cache: str | None, steps: int):
    """The ``n2v2`` denoiser of ``bench_segmentation.py`` (same cache file names)."""
    from napari_aeseg.core.denoiser import DenoiserModel
    from napari_aeseg.core.training import train_denoiser

    path = None
    if cache:
        key = f"{name}_n2v2_{steps}st_b16_lr0.001_w32".replace("+", "plus")
        path = Path(cache) / f"{key}.safetensors"
        if path.is_file():
            return DenoiserModel.load(path)
    den = train_denoiser(
        image, mode="n2v2", steps=steps, base_channels=32, patch_size=64, batch_size=16,
        learning_rate=1e-3, device="cpu",
    )  # fmt: skip
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        den.save(path)
    return den


def probability_maps(name, d, args):
    """(label, probabilities) of (a) and (b) for each stroke budget and seed."""
    from napari_aeseg.core.segmenter import train_segmenter
    from napari_aeseg.demo import simulated_strokes

    den = denoiser_for(name, d["train"], args.den_cache, args.den_steps)
    for fraction in args.fractions:
        for seed in args.seeds:
            strokes = simulated_strokes(d["train_gt"], fraction=fraction, seed=seed)
            for net, encoder in (("a", None), ("b", den)):
                t = time.perf_counter()
                model = train_segmenter(
                    [d["train"]], [strokes], encoder=encoder, labels_kind="scribbles",
                    steps=args.steps, batch_size=4, patch_size=64, learning_rate=1e-3,
                    base_channels=32, depth=2, device="cpu", seed=seed,
                )  # fmt: skip
                probs = model.segment(d["test"], device="cpu").probabilities
                print(
                    f"  {name} {fraction:.1%} {net} seed {seed}: {time.perf_counter() - t:.0f} s",
                    flush=True,
                )
                yield f"{net} {fraction:.1%} seed {seed}", probs


def scaled(probs, truth, factor):
    from scipy import ndimage as ndi

    if factor == 1:
        return probs, truth
    p = np.stack([ndi.zoom(c, factor, order=1) for c in probs])
    return p, ndi.zoom(truth, factor, order=0)


def main(argv=None) -> int:
    from napari_aeseg.core.postprocess import instances_from_probabilities

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="real,synthetic")
    ap.add_argument("--fractions", default="0.005,0.01")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--scales", default="0.5,1,2,3")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--den-steps", type=int, default=2000)
    ap.add_argument("--den-cache", default=None, help="folder of trained denoisers to reuse")
    ap.add_argument("--quick", action="store_true", help="tiny run: a smoke test")
    ap.add_argument("--out", default=None, help="write the JSON here instead")
    ap.add_argument("--notes", default="", help="a free-text note for the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets, args.fractions, args.seeds = "real", "0.01", "0"
        args.scales, args.steps, args.den_steps = "1,2", 20, 50
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.perf_counter()
    rows = []
    for name, d in load_datasets(args.datasets.split(",")).items():
        for run, probs in probability_maps(name, d, args):
            for factor in scales:
                p, truth = scaled(probs, d["test_gt"], factor)
                fixed = instances_from_probabilities(p, seed_window=FIXED_WINDOW)
                scaling = instances_from_probabilities(p)
                rows.append(
                    dict(
                        dataset=name,
                        run=run,
                        scale=factor,
                        ap_fixed=score(truth, fixed)["ap"],
                        ap_scaled=score(truth, scaling)["ap"],
                        identical=bool(np.array_equal(fixed, scaling)),
                    )
                )
    table = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for factor in scales:
            sel = [r for r in rows if r["dataset"] == name and r["scale"] == factor]
            table.append(
                [
                    name,
                    f"{factor:g}x",
                    len(sel),
                    float(np.mean([r["ap_fixed"] for r in sel])),
                    float(np.mean([r["ap_scaled"] for r in sel])),
                    sum(r["identical"] for r in sel),
                ]
            )
    headers = ["dataset", "scale", "maps", "AP fixed 5x5", "AP scaled box", "identical"]
    text = format_table(headers, table, floatfmt=".3f")
    print(text)
    path = write_json(
        "seed_window_quick" if args.quick else "seed_window",
        dict(
            benchmark="seed_window",
            machine=machine_info(),
            notes=args.notes,
            total_seconds=round(time.perf_counter() - started, 1),
            settings=dict(
                fractions=args.fractions,
                seeds=args.seeds,
                scales=scales,
                steps=args.steps,
                batch_size=4,
                den_steps=args.den_steps,
                fixed_window=FIXED_WINDOW,
            ),  # fmt: skip
            table=text,
            rows=rows,
        ),
        out=args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
