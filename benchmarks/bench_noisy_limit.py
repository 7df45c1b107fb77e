"""The labeled-patch limit on noisy crops: a fixed limit vs one that grows with the noise.

A segmenter started from a denoiser ends its fine-tuning once its patches have held 1200
patches' worth of labeled pixels (150 steps of 8 for a few 64 x 64 crops), because on clean
images a longer run overfits the crops. On noisy crops the networks keep improving for
longer, so the limit now moves toward 1200 passes over each labeled pixel (the rule before
the labeled-patch limit), by the labeled area's noise-to-signal ratio minus 1
(``noise.noise_to_signal``: noise std over the signal's std; none of the way at 1, all of
it from 2 on; ``SegTrainingConfig.noisy_label_passes``). For two crops that is 150 steps
times the ratio, up to 300.

This script fine-tunes at the product's defaults (``train_segmenter`` with 400 steps of 8
asked, cut-out 64 x 64 crops of the training half, crop seed = network seed) from the
cached ``n2v2`` denoiser of each dataset, with the fixed limit (``noisy_label_passes=None``,
the rule before), with the noise-aware limit (the default now) and, with ``--double``,
with twice the fixed limit, and scores the held-out half (AP@0.5). Datasets are the
benchmark's real and synthetic nuclei with Gaussian noise of a given fraction of their
range added: ``real+noise0.1``, ``synthetic+noise0.4``... (``real+noise0.2`` is the
benchmark's ``real+noise``, ``synthetic+noise0.1`` its ``synthetic``), or with shot noise:
``real+poisson5`` (5 photons at the top of the range). Writes
``results/noisy_limit.json`` (``--quick``: ``noisy_limit_quick.json``); rows already in the
file are kept and not run again; ``--report`` prints the table of the file.

    python benchmarks/bench_noisy_limit.py --den-cache /tmp/den \\
        --datasets real+noise0.3,synthetic+noise0.4 --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, format_table, machine_info, write_json  # noqa: E402
from bench_seed_window import denoiser_for  # noqa: E402
from bench_segmentation import CROP_SIZE, load_datasets, random_crops, score  # noqa: E402

METHODS = ("fixed limit", "noise-aware limit", "fixed limit x2")


def method_options(method: str, patches: float, passes: float) -> dict:
    """``train_segmenter`` options of a method around a limit of ``patches`` labeled patches
    (and ``passes`` over each labeled pixel for noisy labels)."""
    return {
        "fixed limit": {"noisy_label_passes": None, "max_labeled_patches": patches},
        "noise-aware limit": {"max_labeled_patches": patches, "noisy_label_passes": passes},
        "fixed limit x2": {"noisy_label_passes": None, "max_labeled_patches": 2 * patches},
    }[method]


ALIASES = {"real+noise0.2": "real+noise", "synthetic+noise0.1": "synthetic"}


def load(name: str) -> dict:
    """``real``, ``synthetic``, or either with ``+noiseS`` (Gaussian noise, S of the range) or
    ``+poissonP`` (shot noise, P photons at the top of the range)."""
    name = ALIASES.get(name, name)
    if name in ("real", "real+noise", "synthetic"):
        return load_datasets([name])[name]
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.core.synthetic import synthetic_nuclei

    base, _, kind = name.partition("+")
    if kind.startswith("noise"):
        noise = {"gaussian": float(kind[len("noise") :])}
    elif kind.startswith("poisson"):
        noise = {"poisson": float(kind[len("poisson") :])}
    else:
        raise SystemExit(f"unknown dataset {name!r}")
    if base == "real":
        img = load_sample("nuclei_2d").astype(np.float32)
        gt = load_sample("nuclei_2d_labels")
        half = img.shape[1] // 2
        noisy = add_noise(img, seed=3, **noise)
        return dict(
            train=noisy[:, :half], train_gt=gt[:, :half], test=noisy[:, half:], test_gt=gt[:, half:]
        )
    if base != "synthetic":
        raise SystemExit(f"unknown dataset {name!r}")
    tr, te = synthetic_nuclei((256, 256), seed=1), synthetic_nuclei((256, 256), seed=2)
    return dict(
        train=add_noise(tr.clean, seed=11, value_range=(0.0, 1.0), **noise),
        train_gt=tr.labels,
        test=add_noise(te.clean, seed=12, value_range=(0.0, 1.0), **noise),
        test_gt=te.labels,
    )


def run(args) -> list[dict]:
    import torch

    from napari_aeseg.core.segmenter import train_segmenter

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    done = {(r["dataset"], r["method"], r["crops"], r["seed"]) for r in rows}
    methods = [m for m in METHODS if m != "fixed limit x2" or args.double]
    for name in args.datasets.split(","):
        d = load(name)
        den = denoiser_for(ALIASES.get(name, name), d["train"], args.den_cache, args.den_steps)
        for n in [int(c) for c in args.crops.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                images, labels = crops_of(d, n, seed)
                for method in methods:
                    if (name, method, n, seed) in done:
                        continue
                    started = time.perf_counter()
                    model = train_segmenter(
                        images,
                        labels,
                        encoder=den,
                        labels_kind="instances",
                        steps=args.steps,
                        batch_size=8,
                        device="cpu",
                        seed=seed,
                        **method_options(method, args.labeled_patches, args.noisy_passes),
                    )
                    scores = score(d["test_gt"], model.segment(d["test"], device="cpu").labels)
                    rows.append(
                        dict(
                            dataset=name,
                            method=method,
                            crops=n,
                            seed=seed,
                            steps=model.trained_steps,
                            seconds=round(time.perf_counter() - started, 1),
                            **scores,
                        )
                    )
                    print(f"{name} {n} crop(s) seed {seed} {method}: {rows[-1]['steps']} steps, "
                          f"AP {scores['ap']:.3f}", flush=True)  # fmt: skip
                    write_json("noisy_limit", {"machine": machine_info(), "rows": rows}, out)
    return rows


def crops_of(d: dict, n: int, seed: int) -> tuple[list, list]:
    corners = random_crops(d["train_gt"], n, seed=seed)
    images = [d["train"][y : y + CROP_SIZE, x : x + CROP_SIZE] for y, x in corners]
    labels = [d["train_gt"][y : y + CROP_SIZE, x : x + CROP_SIZE] for y, x in corners]
    return images, labels


def summary(rows: list[dict]) -> list[list]:
    from napari_aeseg.core.noise import noise_to_signal

    table = []
    keys = sorted({(r["dataset"], r["crops"]) for r in rows})
    for name, n in keys:
        d = load(name)
        seeds = sorted({r["seed"] for r in rows if (r["dataset"], r["crops"]) == (name, n)})
        ratios = [noise_to_signal(crops_of(d, n, s)[0]) for s in seeds]
        ratio = f"{min(ratios):.2f}-{max(ratios):.2f}"
        by = {}
        for r in rows:
            if (r["dataset"], r["crops"]) == (name, n):
                by.setdefault(r["method"], {})[r["seed"]] = r
        base = by.get("fixed limit", {})
        for method, runs in by.items():
            seeds = sorted(runs)
            ap = np.mean([runs[s]["ap"] for s in seeds])
            steps = [runs[s]["steps"] for s in seeds]
            gain = ""
            common = [s for s in seeds if s in base]
            if method != "fixed limit" and common:
                diff = np.array([runs[s]["ap"] - base[s]["ap"] for s in common])
                sem = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                gain = (
                    f"{diff.mean():+.3f} ± {sem:.3f} (won {int((diff > 0).sum())} of {len(diff)})"
                )
            table.append(
                [
                    name,
                    ratio,
                    n,
                    method,
                    len(seeds),
                    f"{min(steps)}-{max(steps)}",
                    f"{ap:.3f}",
                    gain,
                ]
            )
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="real+noise0.1,real+noise0.3,synthetic+noise0.4")
    p.add_argument("--crops", default="2")
    p.add_argument("--seeds", default="0,1,2,3,4,5")
    p.add_argument("--steps", type=int, default=400, help="steps asked for (the limit cuts them)")
    p.add_argument("--double", action="store_true", help="also run twice the fixed limit")
    p.add_argument(
        "--labeled-patches", type=float, default=None, help="the fixed limit (default: 1200)"
    )
    p.add_argument(
        "--noisy-passes", type=float, default=None, help="passes for noisy labels (default: 1200)"
    )
    p.add_argument("--den-cache", default=None, help="folder of cached denoisers")
    p.add_argument("--den-steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="smoke test: one seed, short runs")
    p.add_argument("--report", action="store_true", help="print the table of --out, run nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.den_steps = "real+noise0.3", "0", 50
        # two crops: 30 steps of 8 (the floor of 120 passes), up to 60 when noisy
        args.crops, args.labeled_patches, args.noisy_passes = "2", 160, 240
    from napari_aeseg.core.segmenter import (
        PRETRAINED_LABELED_PATCHES,
        PRETRAINED_NOISY_LABEL_PASSES,
    )

    args.labeled_patches = args.labeled_patches or PRETRAINED_LABELED_PATCHES
    args.noisy_passes = args.noisy_passes or PRETRAINED_NOISY_LABEL_PASSES
    args.out = args.out or str(
        RESULTS_DIR / ("noisy_limit_quick.json" if args.quick else "noisy_limit.json")
    )
    if args.report:
        rows = json.loads(Path(args.out).read_text())["rows"]
    else:
        rows = run(args)
    head = [
        "dataset",
        "noise/signal",
        "crops",
        "limit",
        "seeds",
        "steps",
        "AP@0.5",
        "vs fixed limit (paired)",
    ]
    print(format_table(head, summary(rows)))
    if not args.report:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
