"""The demo behind ``aeseg demo``: train a denoiser on a bundled real image and show the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def side_by_side(*images: np.ndarray, gap: int = 6) -> np.ndarray:
    """8-bit panels scaled with the first image's 0.5-99.8 percentiles, with a white gap."""
    lo, hi = np.percentile(images[0], (0.5, 99.8))
    panels = [np.clip((np.asarray(im, np.float32) - lo) / (hi - lo + 1e-12), 0, 1) for im in images]
    sep = np.ones((panels[0].shape[0], gap), np.float32)
    row = [panels[0]]
    for p in panels[1:]:
        row += [sep, p]
    return (np.concatenate(row, axis=1) * 255).astype(np.uint8)


def display_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_demo(
    *,
    out: str | os.PathLike = "aeseg-demo",
    steps: int = 400,
    seg_steps: int = 200,
    device: str = "auto",
    seed: int = 0,
    correction_rounds: bool = True,
    open_viewer: bool = True,
    quiet: bool = False,
) -> dict:
    """The whole pipeline on the bundled real nuclei image.

    Trains an ``n2v2`` denoiser on the noisy image alone, denoises it, trains a segmenter
    started from the denoiser's network on brush strokes covering 1% of the pixels
    (:func:`simulated_strokes`), segments the nuclei and scores them against the sample's
    ground truth. With ``correction_rounds``, a second round adds corrections on 0.5% of the
    pixels where the first result is wrong (:func:`simulated_corrections`), as a user does
    after seeing it, and trains again; ``scribbles.tif`` holds all the labels used. Writes the images, both
    models and ``side_by_side.png`` (noisy | denoised | outlines) to ``out`` and returns a
    summary (also written as ``summary.json``). Opens napari with the layers when
    a display is present, napari is installed and ``open_viewer`` is true.
    """
    import json

    from skimage.restoration import estimate_sigma

    from ._console import progress_bar
    from .core.image_io import ensure_output_dir, write_png, write_tiff
    from .core.metrics import score_instances
    from .core.samples import load_sample
    from .core.segmenter import SegmenterTrainer, make_segmenter_config
    from .core.training import DenoiserTrainer, make_denoiser_config

    out_dir = ensure_output_dir(out)
    noisy = load_sample("nuclei_2d")
    config = make_denoiser_config(
        noisy.shape,
        mode="n2v2",
        axes="YX",
        steps=steps,
        patch_size=64,
        batch_size=16,
        base_channels=16,
        learning_rate=1e-3,
        seed=seed,
    )
    trainer = DenoiserTrainer([noisy], config, device=device, name="demo-n2v2")
    log = sys.stderr

    def run_with_bar(trainer, total, desc, message):
        """Run a trainer's generator with a progress bar; returns its model."""
        if not quiet:
            print(f"demo: {message}", file=log)
        bar = progress_bar(total, desc, quiet=quiet, file=log)
        gen = trainer.run()
        while True:
            try:
                p = next(gen)
            except StopIteration as done:
                bar.close()
                return done.value
            bar.update(1)
            bar.set_postfix(loss=f"{p.train_loss:.4g}", refresh=False)

    model = run_with_bar(
        trainer,
        steps,
        "train",
        f"training an n2v2 denoiser on the bundled nuclei image "
        f"({noisy.shape[1]}x{noisy.shape[0]}) for {steps} steps on {trainer.device.type}",
    )
    denoised = model.denoise(noisy, device=device)
    model.save(out_dir / "denoiser.aeseg")
    write_tiff(out_dir / "denoised.tif", denoised, axes="YX")

    # segmentation from a few labels: brush strokes across a few nuclei and the background
    # (1% of the pixels), simulated from the sample's ground truth as a user would paint
    # them (1 = background, 2 = nucleus); then, as a user does after seeing the result, a
    # second round with corrections where the first result is wrong
    truth = load_sample("nuclei_2d_labels")
    scribbles = simulated_strokes(truth, fraction=0.01, seed=seed)
    stroked_nuclei = len(np.unique(truth[scribbles == 2]))

    def train_and_segment(labels, what):
        config = make_segmenter_config(
            noisy.shape,
            encoder=model,
            labels_kind="scribbles",
            n_classes=2,
            steps=seg_steps,
            batch_size=8,
            learning_rate=1e-3,
            seed=seed,
        )
        trainer = SegmenterTrainer(
            [noisy], [labels], config, encoder=model, device=device, name="demo-segmenter"
        )
        segmenter = run_with_bar(
            trainer,
            seg_steps,
            "segmenter",
            f"training a segmenter from the denoiser's network on {what} for {seg_steps} steps",
        )
        result = segmenter.segment(noisy, device=device)
        scores = score_instances(truth, result.labels)
        if not quiet:
            print(f"demo: {scores.summary()}", file=log)
        return segmenter, result, scores

    segmenter, result, scores = train_and_segment(
        scribbles,
        f"{int((scribbles > 0).sum())} scribbled pixels ({stroked_nuclei} nuclei)",
    )
    rounds = [{"scribbled_pixels": int((scribbles > 0).sum()), **scores.as_dict()}]
    if correction_rounds:
        fixes = simulated_corrections(truth, result.labels, fraction=0.005, seed=seed)
        scribbles = np.where(scribbles > 0, scribbles, fixes).astype(np.uint8)
        segmenter, result, scores = train_and_segment(
            scribbles, f"those and {int((fixes > 0).sum())} correction pixels"
        )
        rounds.append({"scribbled_pixels": int((scribbles > 0).sum()), **scores.as_dict()})
    write_tiff(out_dir / "scribbles.tif", scribbles, axes="YX")
    segmenter.save(out_dir / "segmenter.aeseg")
    write_tiff(out_dir / "labels.tif", result.labels, axes="YX")
    write_tiff(out_dir / "probabilities.tif", result.probabilities, axes="CYX")
    outline = _outlines(result.labels)
    write_png(
        out_dir / "side_by_side.png",
        side_by_side(noisy, denoised, np.where(outline, np.percentile(noisy, 99.8), denoised)),
    )
    summary = {
        "image": "sample_data/real_nuclei_2d.tif",
        "steps": model.trained_steps,
        "device": trainer.device.type,
        "noise_sigma_estimate_input": float(estimate_sigma(noisy.astype(np.float32))),
        "noise_sigma_estimate_output": float(estimate_sigma(denoised)),
        "segmentation": {
            "scribbled_pixels": int((scribbles > 0).sum()),
            "stroked_nuclei": stroked_nuclei,
            "rounds": rounds,
            "steps": segmenter.trained_steps,
            **{k: v for k, v in scores.as_dict().items()},
        },
        "outputs": [
            "denoised.tif",
            "denoiser.aeseg",
            "segmenter.aeseg",
            "scribbles.tif",
            "labels.tif",
            "probabilities.tif",
            "side_by_side.png",
        ],
    }
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        print(
            f"demo: noise (estimated standard deviation, in the image's units) "
            f"{summary['noise_sigma_estimate_input']:.2f} before denoising, "
            f"{summary['noise_sigma_estimate_output']:.2f} after; segmentation vs ground truth: "
            f"{scores.summary()}; results in {out_dir}/",
            file=log,
        )
    if open_viewer:
        _show(noisy, denoised, model, result, truth, scribbles, quiet)
    return summary


def simulated_scribbles(truth: np.ndarray, *, fraction: float, seed: int = 0) -> np.ndarray:
    """Scribbles on a random ``fraction`` of pixels: 1 = background, 2 = object."""
    rng = np.random.default_rng(seed)
    picked = rng.random(truth.shape) < fraction
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[picked] = np.where(truth[picked] > 0, 2, 1)
    return scribbles


def simulated_strokes(
    truth: np.ndarray,
    *,
    fraction: float,
    seed: int = 0,
    width: int = 3,
    object_share: float = 0.4,
    background_length: int = 40,
) -> np.ndarray:
    """Brush strokes as a user paints them: 1 = background, 2 = object.

    Scribbles on random pixels (:func:`simulated_scribbles`) touch nearly every object and
    every corner of the image, which no user does. Here each object stroke is a straight
    line of ``width`` pixels across one object (through its centre, at a random angle,
    kept off its border), and each background stroke a gently curving line of up to
    ``background_length`` pixels, kept 3 pixels away from every object. Strokes are added,
    one object at a time and ``object_share`` of the pixels on objects, until ``fraction``
    of the pixels are annotated. ``truth`` is an instance (or binary) mask, 2D or 3D; in
    3D the strokes are painted in single z planes, as in napari.
    """
    from scipy import ndimage as ndi
    from skimage.draw import line

    truth = np.asarray(truth)
    if truth.ndim not in (2, 3):
        raise ValueError(f"strokes need a 2D or 3D mask, not {truth.ndim}D")
    vol = truth if truth.ndim == 3 else truth[None]
    rng = np.random.default_rng(seed)
    out = np.zeros(vol.shape, np.uint8)
    budget = max(2, int(round(fraction * truth.size)))
    objects = ndi.label(vol)[0] if truth.dtype == bool else vol
    slices = ndi.find_objects(objects)
    ids = [i + 1 for i, sl in enumerate(slices) if sl is not None]
    rng.shuffle(ids)
    plane_struct = np.zeros((3, 3, 3), bool)
    plane_struct[1] = True
    background = ~ndi.binary_dilation(vol > 0, plane_struct, iterations=3)
    brush = np.ones((width, width), bool)
    next_object, annotated = 0, 0
    for _ in range(20 * budget):
        if annotated >= budget:
            break
        on_object = (out == 2).sum() < object_share * budget and next_object < len(ids)
        if on_object:
            i = ids[next_object]
            next_object += 1
            sl = slices[i - 1]
            z = (sl[0].start + sl[0].stop) // 2
            box = (z, sl[1], sl[2])
            inside = ndi.binary_erosion(objects[box] == i, iterations=width // 2 + 1)
            if inside.sum() < 2 * width:
                continue
            cy, cx = ndi.center_of_mass(inside)
            angle = rng.uniform(0, np.pi)
            reach = max(inside.shape)
            dy, dx = reach * np.sin(angle), reach * np.cos(angle)
            rr, cc = line(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
            keep = (rr >= 0) & (rr < inside.shape[0]) & (cc >= 0) & (cc < inside.shape[1])
            stroke = np.zeros(inside.shape, bool)
            stroke[rr[keep], cc[keep]] = True
            stroke = ndi.binary_dilation(stroke, brush) & inside
            plane = out[box]
            plane[stroke & (plane == 0)] = 2
        else:
            zs, ys, xs = np.nonzero(background)
            if len(zs) == 0:
                break
            j = rng.integers(len(zs))
            z, y, x = int(zs[j]), float(ys[j]), float(xs[j])
            angle = rng.uniform(0, 2 * np.pi)
            stroke = np.zeros(vol.shape[1:], bool)
            for _ in range(background_length):
                angle += rng.normal(0, 0.25)
                y, x = y + np.sin(angle), x + np.cos(angle)
                yi, xi = int(round(y)), int(round(x))
                inside = 0 <= yi < vol.shape[1] and 0 <= xi < vol.shape[2]
                if not inside or not background[z, yi, xi]:
                    break
                stroke[yi, xi] = True
            if stroke.sum() < 3:
                continue
            stroke = ndi.binary_dilation(stroke, brush) & background[z]
            plane = out[z]
            plane[stroke & (plane == 0)] = 1
        annotated = int((out > 0).sum())
    return out if truth.ndim == 3 else out[0]


def simulated_corrections(
    truth: np.ndarray, prediction: np.ndarray, *, fraction: float, seed: int = 0
) -> np.ndarray:
    """Corrections a user paints after seeing a result: 1 = background, 2 = object.

    Users fix what changes the objects, not a pixel more or less at a border. The errors
    considered are: background between two touching objects that the prediction merged
    (within 3 pixels of two different objects), object where there is none (more than 2
    pixels from every object), and missed parts of objects (more than 2 pixels inside
    one). Small dabs of a 3-pixel brush go on random pixels of these errors, painted with
    the true class and kept on pixels of that class: 70 % of ``fraction`` on background,
    30 % on objects.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    objects = truth > 0
    dist = ndi.distance_transform_edt(~objects)  # to the nearest object
    other = _second_object_distance(truth)  # to the nearest object after that one
    merged_gap = ~objects & (dist <= 3) & (other <= 3)
    false_object = ~objects & (dist > 2)
    missed = objects & (ndi.distance_transform_edt(objects) > 2)
    wrong = (
        (1, (prediction > 0) & (merged_gap | false_object), 0.7),
        (2, (prediction == 0) & missed, 0.3),
    )
    out = np.zeros(truth.shape, np.uint8)
    budget = max(1, int(round(fraction * truth.size)))
    for value, mask, share in wrong:
        painted = 0
        for flat in rng.permutation(np.flatnonzero(mask)):
            if painted >= share * budget:
                break
            centre = np.unravel_index(flat, truth.shape)
            box = tuple(slice(max(0, c - 1), c + 2) for c in centre)
            right = objects[box] if value == 2 else ~objects[box]
            new = right & (out[box] == 0)
            out[box][new] = value
            painted += int(new.sum())
    return out


def _second_object_distance(truth: np.ndarray) -> np.ndarray:
    """Per background pixel, the distance to the second-nearest object (inf if none)."""
    from scipy import ndimage as ndi

    objects = truth > 0
    _, nearest = ndi.distance_transform_edt(~objects, return_indices=True)
    owner = truth[tuple(nearest)]
    # with the nearest object left out, the distance to what is left is to another one;
    # computed per object in its box grown by 7 pixels, enough for pixels within 3 of it
    second = np.full(truth.shape, np.inf)
    for sl_index, sl in enumerate(ndi.find_objects(truth), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - 7), s.stop + 7) for s in sl)
        local = truth[box]
        others = (local > 0) & (local != sl_index)
        if not others.any():
            continue
        d_other = ndi.distance_transform_edt(~others)
        mine = owner[box] == sl_index
        second[box][mine] = np.minimum(second[box][mine], d_other[mine])
    return second


def _outlines(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def _show(noisy, denoised, model, result, truth, scribbles, quiet: bool) -> None:
    if not display_available():
        if not quiet:
            print(
                "demo: no display found, not opening napari (results are on disk)", file=sys.stderr
            )
        return
    try:
        import napari
    except ImportError:
        print(
            "demo: napari is not installed; pip install 'napari-aeseg[napari]' to see the "
            "results in the viewer",
            file=sys.stderr,
        )
        return
    viewer = napari.Viewer(title="napari-aeseg demo")
    viewer.add_image(noisy, name="nuclei (noisy)")
    viewer.add_image(denoised, name="nuclei (denoised)")
    viewer.add_image(
        result.probabilities[1], name="nucleus probability", colormap="magma", visible=False
    )
    viewer.add_labels(result.labels, name="nuclei (segmented)", opacity=0.5)
    from ._sample_data import GROUND_TRUTH_METADATA

    viewer.add_labels(
        truth, name="ground truth", visible=False, metadata=dict(GROUND_TRUTH_METADATA)
    )
    viewer.add_labels(scribbles, name="scribbles")
    try:
        from ._widgets.segment import class_colormap
        from ._widgets.session import SESSION

        viewer.layers["scribbles"].colormap = class_colormap()  # the widget's colours

        SESSION.add_model(model)
        viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
        _, segment = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
        # ready to paint more strokes and press Train & Segment (or switch to the instant
        # classifier); scored against the ground truth as it goes
        segment.set_options(image="nuclei (noisy)", labels="scribbles", ground_truth="ground truth")
    except (ImportError, KeyError, ValueError, TypeError):
        pass
    napari.run()
