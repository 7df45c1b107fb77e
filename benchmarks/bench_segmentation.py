"""Segmentation from few labels: AP@0.5 and mean matched IoU against ground truth.

The benchmark of GitHub issue #5. Datasets (each with instance ground truth):

- ``synthetic``: ``synthetic_nuclei((256, 256), seed=1)`` for training and ``seed=2`` as a
  held-out test image; both get Gaussian noise of 0.1 of the [0, 1] range (``add_noise``,
  seeds 11 and 12), since the clean images are noise-free and real microscopy never is.
- ``real``: ``sample_data/real_nuclei_2d.tif`` with its labels (512 x 512, 125 nuclei). The
  LEFT half (columns 0-255) is the training part; every score is on the RIGHT half
  (columns 256-511), which is never used for training (not by the denoiser, the segmenters,
  the classifiers nor the scribble or crop sampling).
- ``real+noise``: the real image with Gaussian noise of 0.2 of its range added (seed 3),
  same split.

Label budgets, drawn from the training part's ground truth only:

- scribbles: ``simulated_scribbles`` (random pixels; 1 = background, 2 = nucleus) on 0.5 %,
  1 % and 5 % of the training pixels, scribble seeds 0 and 1 (``--seeds``);
- crops: 1, 2 and 5 fully labeled 64 x 64 crops of the instance masks, cut at random
  positions (seed 0) that contain at least 2 nuclei; the sets are nested (the 2-crop set
  holds the 1-crop one) and each crop is a separate training image, ``labels_kind=
  'instances'`` (3 classes: background, interior, boundary). With ``--crops-in-context``
  the crops stay in the training image instead: its masks hold the crops' objects and
  ``regions`` marks the crops, outside of which pixels are not annotated (what the Segment
  widget's "Labeled crops" and ``aeseg train-segmenter --regions`` do).

Methods:

- ``a random-init``: ``train_segmenter`` with no encoder;
- ``b AE-pretrained``: ``train_segmenter`` started from an ``n2v2`` denoiser trained once
  per dataset on the unlabeled training part, reused for every budget and seed. By default
  its encoder and decoder are copied (the engine's default since 2026-11-28); the runs
  before took the encoder only (``--transfer encoder``);
- ``c joint``: ``joint_denoising=True``, random init (DenoiSeg-style);
- ``d enc-features RF``: ``encoder_features`` of that denoiser + ``PixelClassifier``
  (scribbles only);
- ``e skimage RF``: ``classic_features`` (``multiscale_basic_features``) + ``PixelClassifier``
  on the same scribbles;
- ``f otsu``: Otsu threshold + distance-transform watershed (``instances_from_probabilities``
  on the binary mask), no labels; raw and after a Gaussian blur (sigma 2).

Networks (a-c) and classifiers (d, e) turn probabilities into instances with the engine's
``instances_from_probabilities``. For the 3-class crop models, alternative post-processing
on the same probabilities is scored too (``--no-postprocess-variants`` to skip).

Noisy input (``real+noise``, 1 % scribbles): (b) and (e) segment the noisy image directly
vs the image denoised first by the ``n2v2`` denoiser trained on the noisy training part
(the same denoiser's encoder initialises (b) in both cases).

Budgets (defaults, stated in the JSON): segmenters 150 steps, batch 4, patch 64, lr 1e-3,
depth 2, 32 base channels; denoisers ``n2v2`` with the engine's (and the Train widget's)
defaults: 2000 steps, batch 16, patch 64, lr 1e-3, depth 2, 32 base channels, so (b)
starts from the encoder a user gets without changing a setting. The earlier runs used a
short denoiser and narrower networks (``--den-steps 300 --den-batch 8 --den-lr 2e-3
--base-channels 16``); every results file records its budgets. ``--den-cache DIR`` keeps
the trained denoisers for later runs with the same settings. ``--quick`` cuts steps and the grid for a smoke test and
writes ``results/segmentation_quick.json``. Follow-ups: ``--investigate`` (why (b) does
not beat (a): same-architecture random init, 3x longer denoiser, encoder fine-tuning
settings; ``results/segmentation_investigation.json``); ``--fractions``, ``--crops`` and
``--tag NAME`` run a sub-grid into ``results/segmentation_NAME.json`` (``--noisy-grid``
runs the budget grid on ``real+noise`` too); ``--plot-only
JSON`` redraws ``docs/segmentation_benchmark.png`` from a results file. ``OMP_WAIT_POLICY=PASSIVE`` is set (before
torch is imported) because OpenMP spin-waits slow a shared CPU down several times.
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

SCRIBBLE_FRACTIONS = (0.005, 0.01, 0.05)
CROP_COUNTS = (1, 2, 5)
CROP_SIZE = 64
DOCS = Path(__file__).resolve().parent.parent / "docs"


# ------------------------------------------------------------------------------ data
def load_datasets(names):
    from napari_aeseg.core.noise import add_noise
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.core.synthetic import synthetic_nuclei

    out = {}
    if "synthetic" in names:
        tr = synthetic_nuclei((256, 256), seed=1)
        te = synthetic_nuclei((256, 256), seed=2)
        out["synthetic"] = dict(
            train=add_noise(tr.clean, gaussian=0.1, seed=11, value_range=(0.0, 1.0)),
            train_gt=tr.labels,
            test=add_noise(te.clean, gaussian=0.1, seed=12, value_range=(0.0, 1.0)),
            test_gt=te.labels,
        )
    if "real" in names or "real+noise" in names:
        img = load_sample("nuclei_2d").astype(np.float32)
        gt = load_sample("nuclei_2d_labels")
        half = img.shape[1] // 2
        if "real" in names:
            out["real"] = dict(
                train=img[:, :half], train_gt=gt[:, :half], test=img[:, half:], test_gt=gt[:, half:]
            )
        if "real+noise" in names:
            noisy = add_noise(img, gaussian=0.2, seed=3)
            out["real+noise"] = dict(
                train=noisy[:, :half],
                train_gt=gt[:, :half],
                test=noisy[:, half:],
                test_gt=gt[:, half:],
            )
    return out


def random_crops(gt, n, *, size=CROP_SIZE, seed=0, min_objects=2):
    """Nested random crops (top-left corners) that hold at least ``min_objects`` nuclei."""
    rng = np.random.default_rng(seed)
    corners = []
    for _ in range(10_000):
        if len(corners) == n:
            break
        y = int(rng.integers(0, gt.shape[0] - size + 1))
        x = int(rng.integers(0, gt.shape[1] - size + 1))
        if len(np.unique(gt[y : y + size, x : x + size])) - 1 >= min_objects:
            corners.append((y, x))
    return corners


# --------------------------------------------------------------------------- methods
def score(gt, labels):
    from napari_aeseg.core.metrics import score_instances

    s = score_instances(gt, labels)
    return {
        "ap": s.ap,
        "mean_iou": s.mean_matched_iou,
        "f1": s.f1,
        "pixel_iou": s.pixel_iou,
        "n_pred": s.n_pred,
        "n_true": s.n_true,
    }


def otsu_watershed(image, sigma):
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from napari_aeseg.core.postprocess import instances_from_probabilities

    x = ndi.gaussian_filter(image, sigma) if sigma else image
    mask = (x > threshold_otsu(x)).astype(np.float32)
    return instances_from_probabilities(np.stack([1 - mask, mask]))


def postprocess_variants(probs):
    """Other ways to turn 3-class (bg / interior / boundary) probabilities into instances."""
    from napari_aeseg.core.postprocess import instances_from_probabilities

    bg, fg, bd = probs
    obj = fg + bd
    return {
        "engine (interior seeds)": instances_from_probabilities(probs),
        "interior > 0.5 seeds": _interior_seeds(probs, 0.5),
        "2-class dist. watershed": instances_from_probabilities(np.stack([bg, obj])),
        "interior dist. peaks": _interior_distance_seeds(probs),
        "interior dist. h-maxima h=1": _interior_distance_seeds(probs, h=1.0),
        "interior dist. h-maxima h=2": _interior_distance_seeds(probs, h=2.0),
    }


def _interior_distance_seeds(probs, h=None):
    """Seeds = maxima of the smoothed distance transform of the interior (fg - bd > 0.25),
    so that touching nuclei whose interiors connect still get one seed each; watershed on
    that distance inside the object mask. With ``h``, seeds are the h-maxima instead (a
    maximum must rise ``h`` pixels above the saddle to its neighbour: fewer splits)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from napari_aeseg.core.postprocess import relabel_sequential

    bg, fg, bd = probs
    mask = ndi.binary_fill_holes((fg + bd) > 0.5)
    interior = (fg - bd) > 0.25
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(interior), 1.0)
    if h is None:
        peaks = (dist == ndi.maximum_filter(dist, size=5)) & (dist > 1.5)
    else:
        from skimage.morphology import h_maxima

        peaks = h_maxima(dist, h).astype(bool) & (dist > 1.5)
    markers, _ = ndi.label(peaks)
    labels = watershed(-dist, markers, mask=mask)
    missed, n_missed = ndi.label(mask & (labels == 0))
    if n_missed:
        labels = np.where(missed > 0, missed + labels.max(), labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < 15
    small[0] = False
    return relabel_sequential(np.where(small[labels], 0, labels))


def _interior_seeds(probs, level):
    """Seeds = interior argmax regions (fg > level), watershed on the object mask."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from napari_aeseg.core.postprocess import relabel_sequential

    bg, fg, bd = probs
    mask = ndi.binary_fill_holes((fg + bd) > 0.5)
    markers, _ = ndi.label(fg > level)
    labels = watershed(bd - fg, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    small = sizes < 15
    small[0] = False
    return relabel_sequential(np.where(small[labels], 0, labels))


class Runner:
    def __init__(self, args):
        self.args = args
        self.rows = []  # dicts
        self.timings = {}

    def seg_opts(self, **extra):
        a = self.args
        return dict(
            steps=a.seg_steps,
            batch_size=a.batch,
            patch_size=64,
            learning_rate=a.lr,
            base_channels=a.base_channels,
            depth=2,
            device="cpu",
            **extra,
        )

    def add(self, dataset, budget_kind, budget, method, seed, scores, seconds, **extra):
        row = dict(
            dataset=dataset,
            budget_kind=budget_kind,
            budget=budget,
            method=method,
            seed=seed,
            seconds=round(seconds, 1),
            **scores,
            **extra,
        )
        self.rows.append(row)
        print(
            f"  {dataset:10s} {budget_kind:9s} {budget!s:6s} {method:22s} seed {seed}: "
            f"AP {scores['ap']:.3f}  IoU {scores['mean_iou']:.3f}  ({seconds:.0f} s)",
            flush=True,
        )

    def train_denoiser(self, image, name=""):
        """The n2v2 denoiser whose encoder (b) starts from, trained on ``image``.

        With ``--den-cache DIR`` a denoiser trained with the same settings on the same
        dataset is loaded from DIR instead (the seconds reported are then the loading time).
        """
        from napari_aeseg.core.denoiser import DenoiserModel
        from napari_aeseg.core.training import train_denoiser

        a = self.args
        t = time.perf_counter()
        cached = None
        if a.den_cache and name:
            key = f"{name}_{a.den_mode}_{a.den_steps}st_b{a.den_batch}_lr{a.den_lr:g}_w{a.base_channels}"
            cached = Path(a.den_cache) / f"{key.replace('+', 'plus')}.safetensors"
            if cached.is_file():
                print(f"  denoiser: loaded {cached}", flush=True)
                return DenoiserModel.load(cached), time.perf_counter() - t
        den = train_denoiser(
            image,
            mode=a.den_mode,
            steps=a.den_steps,
            base_channels=a.base_channels,
            learning_rate=a.den_lr,
            patch_size=64,
            batch_size=a.den_batch,
            device="cpu",
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            den.save(cached)
        return den, time.perf_counter() - t

    def scribbles(self, truth, *, fraction, seed):
        from napari_aeseg.demo import simulated_scribbles, simulated_strokes

        simulate = simulated_strokes if self.args.scribbles == "strokes" else simulated_scribbles
        return simulate(truth, fraction=fraction, seed=seed)

    def network(self, d, images, labels, *, kind, encoder=None, joint=False, test=None, **extra):
        from napari_aeseg.core.segmenter import train_segmenter

        t = time.perf_counter()
        if encoder is not None:
            extra["transfer"] = self.args.transfer
            if self.args.no_step_limit:
                extra["max_labeled_patches"] = None
        model = train_segmenter(
            images,
            labels,
            encoder=encoder,
            labels_kind=kind,
            **self.seg_opts(joint_denoising=joint, **extra),
        )
        result = model.segment(d["test"] if test is None else test, device="cpu")
        self.last_steps = model.trained_steps  # fewer than asked when few labels cut it short
        return result, time.perf_counter() - t

    def classifier(self, feats_train, feats_test, scribbles, seed):
        from napari_aeseg.core.features import PixelClassifier
        from napari_aeseg.core.postprocess import instances_from_probabilities

        t = time.perf_counter()
        clf = PixelClassifier(seed=seed).fit(feats_train, scribbles)
        labels = instances_from_probabilities(clf.predict_proba(feats_test))
        return labels, time.perf_counter() - t

    # ----------------------------------------------------------------------------
    def run_dataset(self, name, d):
        from napari_aeseg.core.features import classic_features, encoder_features

        a = self.args
        gt = d["test_gt"]
        print(f"\n== {name}: train {d['train'].shape}, test {d['test'].shape}", flush=True)
        for sigma in (0, 2):
            t = time.perf_counter()
            lab = otsu_watershed(d["test"], sigma)
            self.add(
                name,
                "none",
                0,
                f"f otsu (blur {sigma})",
                0,
                score(gt, lab),
                time.perf_counter() - t,
            )

        den, secs = self.train_denoiser(d["train"], name)
        self.timings[f"{name} denoiser"] = round(secs, 1)
        print(f"  denoiser: {a.den_steps} steps in {secs:.0f} s", flush=True)
        t = time.perf_counter()
        enc_tr, enc_te = (
            encoder_features(den, d["train"], device="cpu"),
            encoder_features(den, d["test"], device="cpu"),
        )
        cls_tr, cls_te = classic_features(d["train"]), classic_features(d["test"])
        self.timings[f"{name} features"] = round(time.perf_counter() - t, 1)

        for frac in a.fractions:
            for seed in a.seeds:
                sc = self.scribbles(d["train_gt"], fraction=frac, seed=seed)
                budget = f"{frac * 100:g}%"
                for method, feats in (
                    ("d enc-features RF", (enc_tr, enc_te)),
                    ("e skimage RF", (cls_tr, cls_te)),
                ):
                    lab, secs = self.classifier(*feats, sc, seed)
                    self.add(name, "scribbles", budget, method, seed, score(gt, lab), secs)
                if seed not in a.net_seeds:
                    continue
                for method, kw in self.net_methods(den):
                    res, secs = self.network(
                        d, [d["train"]], [sc], kind="scribbles", **kw, seed=seed
                    )
                    self.add(
                        name,
                        "scribbles",
                        budget,
                        method,
                        seed,
                        score(gt, res.labels),
                        secs,
                        steps=self.last_steps,
                    )

        for crop_seed in a.crop_seeds if a.crops else ():
            self.run_crops(name, d, den, crop_seed)
        return den

    def run_corrections(self, name, d):
        """The interactive loop: strokes, then corrections where the result is wrong.

        Round 1 trains on strokes (the smallest ``--fractions`` budget). Its prediction on the
        training part (what the user sees while painting) gets ``--corrections`` of the pixels
        as corrections (``demo.simulated_corrections``), and round 2 trains again on both.
        Both rounds are scored on the test part. For (a), (b) and (d).
        """
        from napari_aeseg.core.features import PixelClassifier, encoder_features
        from napari_aeseg.core.postprocess import instances_from_probabilities
        from napari_aeseg.core.segmenter import train_segmenter
        from napari_aeseg.demo import simulated_corrections

        a = self.args
        gt = d["test_gt"]
        frac = min(a.fractions)
        print(f"\n== {name}: corrections, {frac * 100:g}% strokes + {a.corrections * 100:g}%")
        den, secs = self.train_denoiser(d["train"], name)
        self.timings[f"{name} denoiser"] = round(secs, 1)
        feats = (
            encoder_features(den, d["train"], device="cpu"),
            encoder_features(den, d["test"], device="cpu"),
        )

        def networks(encoder):
            def fit(labels, seed):
                model = train_segmenter(
                    [d["train"]],
                    [labels],
                    encoder=encoder,
                    labels_kind="scribbles",
                    **self.seg_opts(seed=seed),
                )
                return (
                    model.segment(d["train"], device="cpu").labels,
                    model.segment(d["test"], device="cpu").labels,
                )

            return fit

        def forest(labels, seed):
            clf = PixelClassifier(seed=seed).fit(feats[0], labels)
            return tuple(instances_from_probabilities(clf.predict_proba(f)) for f in feats)

        methods = (
            ("a random-init", networks(None)),
            ("b AE-pretrained", networks(den)),
            ("d enc-features RF", forest),
        )
        for seed in a.net_seeds:
            strokes = self.scribbles(d["train_gt"], fraction=frac, seed=seed)
            for method, fit in methods:
                t = time.perf_counter()
                on_train, on_test = fit(strokes, seed)
                self.add(
                    name,
                    "corrections",
                    "round 1",
                    method,
                    seed,
                    score(gt, on_test),
                    time.perf_counter() - t,
                )
                fixes = simulated_corrections(
                    d["train_gt"], on_train, fraction=a.corrections, seed=seed
                )
                t = time.perf_counter()
                _, on_test = fit(np.where(strokes > 0, strokes, fixes).astype(np.uint8), seed)
                self.add(
                    name,
                    "corrections",
                    "round 2",
                    method,
                    seed,
                    score(gt, on_test),
                    time.perf_counter() - t,
                    corrected_pixels=int((fixes > 0).sum()),
                )

    def run_crops(self, name, d, den, crop_seed):
        a = self.args
        gt = d["test_gt"]
        corners = random_crops(d["train_gt"], max(a.crops), seed=crop_seed)
        for n in a.crops:
            imgs = [d["train"][y : y + CROP_SIZE, x : x + CROP_SIZE] for y, x in corners[:n]]
            labs = [d["train_gt"][y : y + CROP_SIZE, x : x + CROP_SIZE] for y, x in corners[:n]]
            labeled = sum(int((lab_ > 0).any()) for lab_ in labs)
            context = {}
            if a.crops_in_context:
                region = np.zeros(d["train_gt"].shape, bool)
                for y, x in corners[:n]:
                    region[y : y + CROP_SIZE, x : x + CROP_SIZE] = True
                imgs, labs = [d["train"]], [np.where(region, d["train_gt"], 0)]
                context = dict(regions=[region])
            for method, kw in self.net_methods(den):
                res, secs = self.network(
                    d, imgs, labs, kind="instances", **kw, **context, seed=crop_seed
                )
                variants = {}
                if a.postprocess_variants:
                    variants = {
                        k: score(gt, v) for k, v in postprocess_variants(res.probabilities).items()
                    }
                self.add(
                    name,
                    "crops",
                    n,
                    method,
                    crop_seed,
                    score(gt, res.labels),
                    secs,
                    steps=self.last_steps,
                    crops=corners[:n],
                    crops_with_nuclei=labeled,
                    postprocess=variants,
                )

    def net_methods(self, den):
        methods = (
            ("a random-init", dict()),
            ("b AE-pretrained", dict(encoder=den)),
            ("c joint", dict(joint=True)),
        )
        return tuple(m for m in methods if m[0][0] in self.args.networks)

    def run_noisy(self, name, d):
        """(b) and (e) on the noisy image directly vs denoised first, 1 % scribbles."""
        from napari_aeseg.core.features import classic_features

        gt = d["test_gt"]
        print(f"\n== {name}: noisy input, direct vs denoised first", flush=True)
        den, secs = self.train_denoiser(d["train"], name)
        self.timings[f"{name} denoiser"] = round(secs, 1)
        clean = dict(
            train=den.denoise(d["train"], device="cpu"), test=den.denoise(d["test"], device="cpu")
        )
        for variant, imgs in (("direct", d), ("denoised first", clean)):
            feats = classic_features(imgs["train"]), classic_features(imgs["test"])
            for seed in self.args.net_seeds:
                sc = self.scribbles(d["train_gt"], fraction=0.01, seed=seed)
                res, secs = self.network(
                    d,
                    [imgs["train"]],
                    [sc],
                    kind="scribbles",
                    encoder=den,
                    test=imgs["test"],
                    seed=seed,
                )
                self.add(
                    name,
                    "scribbles",
                    "1%",
                    f"b AE-pretrained, {variant}",
                    seed,
                    score(gt, res.labels),
                    secs,
                )
                lab, secs = self.classifier(*feats, sc, seed)
                self.add(
                    name, "scribbles", "1%", f"e skimage RF, {variant}", seed, score(gt, lab), secs
                )

    def run_ablation(self, d, den):
        """Encoder fine-tuning settings of (b) at the smallest scribble budget (real data)."""
        gt = d["test_gt"]
        frac = min(self.args.fractions)
        sc = self.scribbles(d["train_gt"], fraction=frac, seed=0)
        print(
            f"\n== ablation: (b) fine-tuning settings, real, {frac * 100:g}% scribbles", flush=True
        )
        for label, kw in (
            ("b freeze 0, enc lr x1", dict(freeze_encoder_steps=0, encoder_lr_factor=1.0)),
            ("b freeze 75, enc lr x0.2", dict(freeze_encoder_steps=75, encoder_lr_factor=0.2)),
            ("b frozen encoder", dict(encoder_lr_factor=0.0)),
        ):
            res, secs = self.network(
                d, [d["train"]], [sc], kind="scribbles", encoder=den, seed=0, **kw
            )
            self.add("real", "ablation", f"{frac * 100:g}%", label, 0, score(gt, res.labels), secs)

    def run_investigation(self, d):
        """Why (b) does or does not beat (a): same architecture, longer denoiser training.

        On the real data at the smallest scribble budget: (a') random init of the very
        architecture (b) gets from the n2v2 denoiser (blur pooling, normalisation of the
        denoiser), (b) with a denoiser trained 3x longer, and (b) with the encoder fine-tuned
        at the full learning rate from the first step or kept frozen throughout.
        """
        from napari_aeseg.core.segmenter import SegmenterTrainer, make_segmenter_config
        from napari_aeseg.core.tiling import run_generator

        a = self.args
        gt = d["test_gt"]
        frac = min(a.fractions)
        budget = f"{frac * 100:g}%"
        dens = {}
        for steps in (a.den_steps, 3 * a.den_steps):
            self.args.den_steps, saved = steps, a.den_steps
            dens[steps], secs = self.train_denoiser(d["train"])
            self.args.den_steps = saved
            self.timings[f"real denoiser {steps} steps"] = round(secs, 1)
            print(f"  denoiser: {steps} steps in {secs:.0f} s", flush=True)
        base = dens[a.den_steps]
        for seed in a.net_seeds:
            sc = self.scribbles(d["train_gt"], fraction=frac, seed=seed)
            t = time.perf_counter()
            cfg = make_segmenter_config(
                d["train"].shape,
                encoder=base,
                labels_kind="scribbles",
                n_classes=2,
                **{k: v for k, v in self.seg_opts(seed=seed).items() if k != "device"},
            )
            trainer = SegmenterTrainer([d["train"]], [sc], cfg, encoder=None, device="cpu")
            model = run_generator(trainer.run())
            res = model.segment(d["test"], device="cpu")
            self.add(
                "real",
                "investigate",
                budget,
                "a' random-init, n2v2 architecture",
                seed,
                score(gt, res.labels),
                time.perf_counter() - t,
            )
            variants = [(f"b, denoiser {steps} steps", den, {}) for steps, den in dens.items()]
            variants += [
                (
                    "b, freeze 0, enc lr x1",
                    base,
                    dict(freeze_encoder_steps=0, encoder_lr_factor=1.0),
                ),
                ("b, frozen encoder", base, dict(encoder_lr_factor=0.0)),
            ]
            for label, den, kw in variants:
                res, secs = self.network(
                    d, [d["train"]], [sc], kind="scribbles", encoder=den, seed=seed, **kw
                )
                self.add(
                    "real",
                    "investigate",
                    budget,
                    label,
                    seed,
                    score(gt, res.labels),
                    secs,
                )


# ----------------------------------------------------------------------------- report
def summarise(rows):
    """Mean over seeds per (dataset, budget kind, budget, method)."""
    groups = {}
    for r in rows:
        key = (r["dataset"], r["budget_kind"], str(r["budget"]), r["method"])
        groups.setdefault(key, []).append(r)
    out = []
    for (ds, kind, budget, method), rs in groups.items():
        out.append(
            dict(
                dataset=ds,
                budget_kind=kind,
                budget=budget,
                method=method,
                ap=float(np.mean([r["ap"] for r in rs])),
                ap_sd=float(np.std([r["ap"] for r in rs])),
                mean_iou=float(np.mean([r["mean_iou"] for r in rs])),
                pixel_iou=float(np.mean([r["pixel_iou"] for r in rs])),
                n_seeds=len(rs),
            )
        )
    return out


def paired(rows, dataset, kind, budget, first, second):
    """Per-seed AP differences ``second - first`` (same labels, same seed)."""
    ap = {}
    for r in rows:
        if (r["dataset"], r["budget_kind"], str(r["budget"])) == (dataset, kind, budget):
            ap[(r["method"], r["seed"])] = r["ap"]
    seeds = sorted(s for m, s in ap if m == first and (second, s) in ap)
    return [ap[(second, s)] - ap[(first, s)] for s in seeds]


def targets(summary, rows, fractions, crops):
    """Issue #5 targets: (b) - (a) >= 0.05 AP at the smallest budgets; (b) > (e) on real.

    (b) - (a) is the mean over seeds of the paired difference (same labels and seed for
    both networks), with its standard error and how many seeds (b) won.
    """
    get = {(s["dataset"], s["budget_kind"], s["budget"], s["method"]): s["ap"] for s in summary}
    out = []
    small = [("scribbles", f"{min(fractions) * 100:g}%")] if fractions else []
    small += [("crops", str(min(crops)))] if crops else []
    for ds in ("synthetic", "real", "real+noise"):
        for kind, budget in small:
            diffs = paired(rows, ds, kind, budget, "a random-init", "b AE-pretrained")
            if not diffs:
                continue
            mean = float(np.mean(diffs))
            se = float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
            out.append(
                dict(
                    target=f"{ds}, {kind} {budget}: b - a >= 0.05 AP",
                    value=round(mean, 3),
                    se=round(se, 3),
                    wins=f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                    met=bool(mean >= 0.05),
                )
            )
    for f in fractions:
        budget = f"{f * 100:g}%"
        b = get.get(("real", "scribbles", budget, "b AE-pretrained"))
        e = get.get(("real", "scribbles", budget, "e skimage RF"))
        if b is not None and e is not None:
            diffs = paired(rows, "real", "scribbles", budget, "e skimage RF", "b AE-pretrained")
            out.append(
                dict(
                    target=f"real, scribbles {budget}: b > e",
                    value=round(b - e, 3),
                    se=round(float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))), 3)
                    if len(diffs) > 1
                    else 0.0,
                    wins=f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                    met=bool(b > e),
                )
            )
    return out


def plot(summary, rows, path, fractions, crops, postprocess="interior dist. h-maxima h=1"):
    """AP vs label budget per method; crop panels also show ``postprocess`` (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [
        ds for ds in ("synthetic", "real", "real+noise") if any(s["dataset"] == ds for s in summary)
    ]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    styles = {
        "a random-init": ("tab:gray", "o"),
        "b AE-pretrained": ("tab:red", "s"),
        "c joint": ("tab:purple", "^"),
        "d enc-features RF": ("tab:orange", "D"),
        "e skimage RF": ("tab:blue", "v"),
    }
    for row, ds in enumerate(datasets):
        for col, (kind, xs, xlabels) in enumerate(
            (
                ("scribbles", [f * 100 for f in fractions], [f"{f * 100:g}%" for f in fractions]),
                ("crops", list(crops), [str(c) for c in crops]),
            )
        ):
            ax = axes[row][col]
            for method, (color, marker) in styles.items():
                pts = [
                    next(
                        (
                            s
                            for s in summary
                            if (s["dataset"], s["budget_kind"], s["budget"], s["method"])
                            == (ds, kind, lab, method)
                        ),
                        None,
                    )
                    for lab in xlabels
                ]
                if all(p is None for p in pts):
                    continue
                x = [xv for xv, p in zip(xs, pts) if p]
                y = [p["ap"] for p in pts if p]
                err = [p["ap_sd"] for p in pts if p]
                ax.errorbar(x, y, yerr=err, color=color, marker=marker, label=method, capsize=3)
                if kind != "crops":
                    continue
                alt = {
                    str(r["budget"]): r["postprocess"][postprocess]["ap"]
                    for r in rows
                    if (r["dataset"], r["budget_kind"], r["method"]) == (ds, kind, method)
                    and postprocess in r.get("postprocess", {})
                }
                if alt:
                    ax.plot(
                        [xv for xv, lab in zip(xs, xlabels) if lab in alt],
                        [alt[lab] for lab in xlabels if lab in alt],
                        color=color,
                        marker=marker,
                        ls="--",
                        mfc="none",
                        label=f"{method}, {postprocess}",
                    )
            for s in summary:
                if s["dataset"] == ds and s["budget_kind"] == "none":
                    ls = ":" if "blur 0" in s["method"] else "--"
                    ax.axhline(s["ap"], color="k", ls=ls, lw=1, label=s["method"])
            if kind == "scribbles":
                ax.set_xscale("log")
                ax.set_xticks(xs, xlabels)
                ax.minorticks_off()
                ax.set_xlabel("scribbled pixels (of the training part)")
            else:
                ax.set_xticks(xs, xlabels)
                ax.set_xlabel(f"fully labeled {CROP_SIZE}x{CROP_SIZE} crops")
            ax.set_ylabel("AP@0.5 (test)")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.set_title(f"{ds}: {kind}")
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(summary) -> str:
    return format_table(
        ["dataset", "labels", "budget", "method", "AP@0.5", "sd", "mean IoU", "pixel IoU", "seeds"],
        [
            [
                s["dataset"],
                s["budget_kind"],
                s["budget"],
                s["method"],
                s["ap"],
                s["ap_sd"],
                s["mean_iou"],
                s["pixel_iou"],
                s["n_seeds"],
            ]
            for s in summary
        ],
        floatfmt=".3f",
    )


def targets_table(tgt) -> str:
    return format_table(
        ["target", "value", "se", "seeds won", "met"],
        [[t["target"], t["value"], t["se"], t["wins"], t["met"]] for t in tgt],
        floatfmt=".3f",
    )


def report(paths) -> int:
    """Summary and targets over the pooled rows of several results files."""
    import json

    rows, fractions, crops = [], set(), set()
    for p in paths:
        res = json.loads(Path(p).read_text())
        rows += res["rows"]
        fractions |= set(res["budgets"]["scribble_fractions"])
        crops |= set(res["budgets"]["crop_counts"])
        print(f"{p}: {len(res['rows'])} rows, code {res['machine'].get('code')}")
    seen, pooled = set(), []
    for r in rows:
        key = (r["dataset"], r["budget_kind"], str(r["budget"]), r["method"], r["seed"])
        if key in seen:
            if r["budget_kind"] == "none":
                continue  # the label-free baselines are the same in every run
            raise SystemExit(f"{key} is in more than one file: pool runs with other seeds")
        seen.add(key)
        pooled.append(r)
    rows = pooled
    summary = summarise(rows)
    print("\n" + summary_table(summary))
    print("\nTargets:\n" + targets_table(targets(summary, rows, sorted(fractions), sorted(crops))))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps, one budget of each kind")
    ap.add_argument("--datasets", default="synthetic,real,real+noise")
    ap.add_argument("--seg-steps", type=int, default=150)
    ap.add_argument(
        "--den-steps",
        type=int,
        default=2000,
        help="denoiser steps (default: the engine's and the Train widget's 2000)",
    )
    ap.add_argument("--den-batch", type=int, default=16, help="denoiser batch (engine: 16)")
    ap.add_argument(
        "--den-mode",
        choices=["n2v2", "n2v"],
        default="n2v2",
        help="blind-spot variant of the denoiser (b) starts from (engine: n2v2)",
    )
    ap.add_argument("--den-lr", type=float, default=1e-3, help="denoiser rate (engine: 1e-3)")
    ap.add_argument(
        "--den-cache",
        metavar="DIR",
        default="",
        help="save each dataset's denoiser in DIR and reuse it in later runs with the same "
        "settings",
    )
    ap.add_argument(
        "--transfer",
        choices=["encoder+decoder", "encoder"],
        default="encoder+decoder",
        help="what (b) takes from the denoiser (engine default: encoder+decoder; runs before "
        "2026-11-28 took the encoder only)",
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--no-step-limit",
        action="store_true",
        help="(b) trains all --seg-steps even when its labels cover a small area (the engine "
        "shortens such runs from a denoiser since 2026-11-28, sixth session)",
    )
    ap.add_argument(
        "--base-channels",
        type=int,
        default=32,
        help="width of the denoisers and segmenters (default: the engine's 32)",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--scribbles",
        choices=["strokes", "pixels"],
        default="strokes",
        help="simulated brush strokes (demo.simulated_strokes) or random pixels "
        "(demo.simulated_scribbles)",
    )
    ap.add_argument("--seeds", default="0,1,2,3", help="scribble seeds for the classifiers (d, e)")
    ap.add_argument(
        "--net-seeds", default="0,1,2,3", help="scribble seeds also used for networks a-c"
    )
    ap.add_argument(
        "--crop-seeds", default="0,1,2", help="crop positions (and network seeds) for crops"
    )
    ap.add_argument(
        "--networks", default="abc", help="which networks to train: letters of a, b and c"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument(
        "--fractions",
        default=",".join(f"{f:g}" for f in SCRIBBLE_FRACTIONS),
        help="scribble budgets as fractions of the training pixels ('' for none)",
    )
    ap.add_argument(
        "--noisy-grid",
        action="store_true",
        help="run the label-budget grid on real+noise instead of direct vs denoised first",
    )
    ap.add_argument("--crops", default=",".join(map(str, CROP_COUNTS)), help="'' for none")
    ap.add_argument(
        "--corrections",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="only the interactive loop: strokes at the smallest budget, then this fraction "
        "of corrections where round 1 is wrong (e.g. 0.0025), for (a), (b), (d)",
    )
    ap.add_argument(
        "--tag",
        default="",
        help="write results/segmentation_<tag>.json (no plot) instead of the main results",
    )
    ap.add_argument(
        "--investigate",
        action="store_true",
        help="only the (a) vs (b) follow-up on real data; writes segmentation_investigation.json",
    )
    ap.add_argument(
        "--crops-in-context",
        action="store_true",
        help="give the crops as marked regions of the training image, not as cut-out images",
    )
    ap.add_argument("--no-postprocess-variants", dest="postprocess_variants", action="store_false")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--plot-only",
        metavar="JSON",
        help="redraw docs/segmentation_benchmark.png from results files (comma-separated; "
        "later files add post-processing variants to the first one's rows) and exit",
    )
    ap.add_argument(
        "--plot-postprocess",
        default="interior dist. h-maxima h=1",
        help="post-processing variant drawn dashed in the crop panels",
    )
    ap.add_argument(
        "--report",
        metavar="JSON",
        help="pool the rows of several results files (comma-separated; e.g. a run with more "
        "seeds), print the summary and the targets over all of them, and exit",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report.split(","))
    if args.plot_only:
        import json

        first, *more = [json.loads(Path(f).read_text()) for f in args.plot_only.split(",")]

        def key(r):
            return r["dataset"], r["budget_kind"], str(r["budget"]), r["method"], r["seed"]

        extra = {key(r): r.get("postprocess", {}) for res in more for r in res["rows"]}
        for r in first["rows"]:
            r.setdefault("postprocess", {}).update(extra.get(key(r), {}))
        b = first["budgets"]
        path = DOCS / "segmentation_benchmark.png"
        plot(
            first["summary"],
            first["rows"],
            path,
            b["scribble_fractions"],
            b["crop_counts"],
            postprocess=args.plot_postprocess,
        )
        print(f"wrote {path}")
        return 0
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.net_seeds = [int(s) for s in args.net_seeds.split(",")]
    args.crop_seeds = [int(s) for s in args.crop_seeds.split(",") if s.strip()]
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    args.crops = [int(c) for c in args.crops.split(",") if c.strip()]
    if args.quick:
        args.seg_steps, args.den_steps = min(args.seg_steps, 30), min(args.den_steps, 30)
        args.fractions, args.crops, args.seeds = [0.01], [2], [0]
        args.net_seeds, args.crop_seeds = [0], [0]

    import torch

    torch.set_num_threads(args.threads)
    machine = machine_info("cpu")
    started = time.perf_counter()
    names = ["real"] if args.investigate else [n.strip() for n in args.datasets.split(",")]
    data = load_datasets(names)
    runner = Runner(args)
    if args.investigate:
        runner.run_investigation(data["real"])
    elif args.corrections:
        for name in names:
            runner.run_corrections(name, data[name])
    else:
        grid = ("synthetic", "real", "real+noise") if args.noisy_grid else ("synthetic", "real")
        for name in grid:
            if name in data:
                den = runner.run_dataset(name, data[name])
                if name == "real" and args.fractions and not (args.no_ablation or args.quick):
                    runner.run_ablation(data[name], den)
        if "real+noise" in data and not args.noisy_grid:
            runner.run_noisy("real+noise", data["real+noise"])
    total = time.perf_counter() - started

    summary = summarise(runner.rows)
    tgt = targets(summary, runner.rows, args.fractions, args.crops)
    table = summary_table(summary)
    print("\n" + table)
    pp_rows = [
        [r["dataset"], r["budget"], r["method"], k, v["ap"], v["mean_iou"]]
        for r in runner.rows
        if r.get("postprocess")
        for k, v in r["postprocess"].items()
    ]
    pp_table = (
        format_table(
            ["dataset", "crops", "method", "post-processing", "AP@0.5", "mean IoU"],
            pp_rows,
            floatfmt=".3f",
        )
        if pp_rows
        else ""
    )
    if pp_table:
        print("\n3-class post-processing on the same probabilities:\n" + pp_table)
    tgt_table = targets_table(tgt)
    print("\nTargets:\n" + tgt_table)
    from napari_aeseg.core.segmenter import PRETRAINED_LABELED_PATCHES, SegTrainingConfig

    print(f"\ntotal {total / 60:.1f} min")

    payload = dict(
        benchmark="segmentation",
        machine=machine,
        notes=args.notes,
        total_seconds=round(total, 1),
        budgets=dict(
            segmenter=dict(
                steps=args.seg_steps,
                batch_size=args.batch,
                patch_size=64,
                learning_rate=args.lr,
                base_channels=args.base_channels,
                depth=2,
                transfer=args.transfer,
                max_labeled_patches_b=None if args.no_step_limit else PRETRAINED_LABELED_PATCHES,
                min_label_passes_b=SegTrainingConfig().min_label_passes,
            ),
            denoiser=dict(
                mode="n2v2",
                steps=args.den_steps,
                batch_size=args.den_batch,
                patch_size=64,
                learning_rate=args.den_lr,
                base_channels=args.base_channels,
                depth=2,
            ),
            scribble_fractions=args.fractions,
            crop_counts=args.crops,
            crop_size=CROP_SIZE,
            crops_in_context=args.crops_in_context,
            scribble_style=args.scribbles,
            classifier_seeds=args.seeds,
            network_seeds=args.net_seeds,
            crop_seeds=args.crop_seeds,
            torch_threads=args.threads,
        ),
        split=dict(
            synthetic="train: synthetic_nuclei((256,256), seed=1); test: seed=2; Gaussian noise 0.1 on both",
            real="train: left half (columns 0-255); test: right half (columns 256-511), never used for training",
            noisy="real image + Gaussian noise 0.2 of range (seed 3), same split",
        ),
        timings=runner.timings,
        summary=summary,
        targets=tgt,
        rows=runner.rows,
        table=table,
        postprocess_table=pp_table,
    )
    stem = "segmentation"
    if args.investigate:
        stem = "segmentation_investigation"
    elif args.tag:
        stem = f"segmentation_{args.tag}"
    path = write_json(stem + ("_quick" if args.quick else ""), payload, args.out)
    print(f"wrote {path}")
    if not (args.no_plot or args.quick or args.investigate or args.tag):
        DOCS.mkdir(exist_ok=True)
        plot(
            summary,
            runner.rows,
            DOCS / "segmentation_benchmark.png",
            args.fractions,
            args.crops,
            postprocess=args.plot_postprocess,
        )
        print(f"wrote {DOCS / 'segmentation_benchmark.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
