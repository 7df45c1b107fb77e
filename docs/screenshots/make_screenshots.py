"""Screenshots of the napari-aeseg widgets in use, for the docs.

Run under a (virtual) display::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/make_screenshots.py

Writes ``train_running.png``, ``train_finished.png`` and ``denoise_result.png`` next to
this script: the real 2D nuclei sample, an n2v2 denoiser trained in the Train widget (loss
curve and preview), then the Denoise widget's result beside the input. Then, in the same
session, the Segment widget with that denoiser as encoder, on simulated brush strokes over
1% of the pixels, scored against the sample's ground truth: ``segment.png`` (instant
feature classifier), ``segment_training.png`` (fine-tuning, mid-run),
``segment_finetuned.png`` (fine-tuned result) and ``segment_uncertainty.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent


def wait(condition, timeout: float = 600.0) -> None:
    app = QApplication.instance()
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(viewer, name: str, out: Path) -> None:
    settle()
    path = out / name
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="denoiser training steps")
    parser.add_argument(
        "--seg-steps", type=int, default=150, help="segmenter fine-tuning steps (default 150)"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the engine's)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        from napari_aeseg.core import devices

        devices._configure_cpu_threads = lambda: None
        torch.set_num_threads(args.threads)

    start = time.monotonic()
    viewer = napari.Viewer(title="napari-aeseg")
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-aeseg", "nuclei_2d")
    viewer.layers["nuclei ground truth"].visible = False
    viewer.layers.selection.active = viewer.layers["nuclei"]
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    train.set_options(
        mode="n2v2",
        steps=args.steps,
        patch_size=64,
        batch_size=8,
        base_channels=16,
        learning_rate=1e-3,
        preview_every=max(1, args.steps // 8),
        name="nuclei-n2v2",
    )
    train.layer_list.select("nuclei")
    settle()

    train.start_button.click()
    wait(lambda: "nuclei preview" in viewer.layers and train.progress.value() >= args.steps // 3)
    save(viewer, "train_running.png", args.out)

    wait(lambda: not train.running)
    viewer.layers["nuclei preview"].visible = False
    save(viewer, "train_finished.png", args.out)

    viewer.window.remove_dock_widget(train_dock)
    denoise_dock, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    denoise.layer_combo.setCurrentText("nuclei")
    denoise.run_button.click()
    wait(lambda: not denoise.running)
    viewer.layers.remove("nuclei preview")
    # napari 0.9 moved grid and camera to viewer.canvas / viewer.scene
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    grid.enabled = True
    grid.stride = -1
    viewer.reset_view()
    camera.zoom *= 2.0  # close enough to see the noise, both panels in view
    save(viewer, "denoise_result.png", args.out)

    viewer.layers.remove("nuclei denoised (nuclei-n2v2)")
    grid.enabled = False
    viewer.reset_view()
    viewer.window.remove_dock_widget(denoise_dock)
    segment_screenshots(viewer, args)
    viewer.close()
    print(f"done in {time.monotonic() - start:.0f} s")


def segment_screenshots(viewer, args) -> None:
    """Instant classifier, then fine-tuning (mid-run and finished), then the uncertainty."""
    from napari_aeseg._widgets.segment import FINE_TUNE, INSTANT, class_colormap
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.demo import simulated_strokes

    truth = load_sample("nuclei_2d_labels")
    # the sample's "nuclei ground truth" layer (hidden) is the same array: score against it
    viewer.add_labels(
        simulated_strokes(truth, fraction=0.01, seed=0),
        name="scribbles",
        colormap=class_colormap(),  # 1 = background orange, 2 = nucleus cyan, as the hint says
        opacity=1.0,
    )
    _, segment = viewer.window.add_plugin_dock_widget("napari-aeseg", "Segment")
    segment.set_options(
        image="nuclei",
        labels="scribbles",
        labels_kind="scribbles",
        target="instances",
        ground_truth="nuclei ground truth",
        mode=INSTANT,
    )
    settle()

    segment.run_button.click()
    wait(lambda: not segment.running)
    print(f"instant: {segment.status.text()} | {segment.metrics.text()}")
    save(viewer, "segment.png", args.out)

    segment.set_options(mode=FINE_TUNE, steps=args.seg_steps)
    settle()
    segment.run_button.click()
    wait(lambda: segment.progress.value() >= args.seg_steps // 3 or not segment.running)
    save(viewer, "segment_training.png", args.out)
    if not segment.running:
        print("warning: fine-tuning ended before segment_training.png; raise --seg-steps")

    wait(lambda: not segment.running)
    print(f"fine-tuned: {segment.status.text()} | {segment.metrics.text()}")
    save(viewer, "segment_finetuned.png", args.out)

    viewer.layers["nuclei segmentation"].visible = False
    viewer.layers["nuclei uncertainty"].visible = True
    save(viewer, "segment_uncertainty.png", args.out)


if __name__ == "__main__":
    main()
