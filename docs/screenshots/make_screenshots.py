"""Screenshots of the napari-aeseg widgets in use, for the docs.

Run under a (virtual) display::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/make_screenshots.py

Writes ``train_running.png``, ``train_finished.png`` and ``denoise_result.png`` next to
this script: the real 2D nuclei sample, an n2v2 denoiser trained in the Train widget (loss
curve and preview), then the Denoise widget's result beside the input.
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
    parser.add_argument("--steps", type=int, default=400)
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
    _, denoise = viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
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
    viewer.close()


if __name__ == "__main__":
    main()
