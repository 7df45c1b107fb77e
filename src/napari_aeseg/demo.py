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
    device: str = "auto",
    seed: int = 0,
    open_viewer: bool = True,
    quiet: bool = False,
) -> dict:
    """Train an ``n2v2`` denoiser on the bundled real nuclei image, denoise it, write results.

    Writes ``denoised.tif``, ``denoiser.aeseg`` and ``side_by_side.png`` to ``out`` and
    returns a summary (also written as ``summary.json``). Opens napari with the layers when
    a display is present, napari is installed and ``open_viewer`` is true.
    """
    import json

    from skimage.restoration import estimate_sigma
    from tqdm.auto import tqdm

    from .core.image_io import ensure_output_dir, write_png, write_tiff
    from .core.samples import load_sample
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
    if not quiet:
        print(
            f"demo: training an n2v2 denoiser on the bundled nuclei image "
            f"({noisy.shape[1]}x{noisy.shape[0]}) for {steps} steps on {trainer.device.type}",
            file=log,
        )
    bar = tqdm(total=steps, desc="train", unit="step", disable=quiet, file=log)
    gen = trainer.run()
    while True:
        try:
            p = next(gen)
        except StopIteration as done:
            model = done.value
            break
        bar.update(1)
        bar.set_postfix(loss=f"{p.train_loss:.4g}", refresh=False)
    bar.close()
    denoised = model.denoise(noisy, device=device)
    model.save(out_dir / "denoiser.aeseg")
    write_tiff(out_dir / "denoised.tif", denoised, axes="YX")
    write_png(out_dir / "side_by_side.png", side_by_side(noisy, denoised))
    summary = {
        "image": "sample_data/real_nuclei_2d.tif",
        "steps": model.trained_steps,
        "device": trainer.device.type,
        "noise_sigma_estimate_input": float(estimate_sigma(noisy.astype(np.float32))),
        "noise_sigma_estimate_output": float(estimate_sigma(denoised)),
        "outputs": ["denoised.tif", "denoiser.aeseg", "side_by_side.png"],
    }
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        print(
            f"demo: estimated noise sigma {summary['noise_sigma_estimate_input']:.2f} -> "
            f"{summary['noise_sigma_estimate_output']:.2f}; results in {out_dir}/",
            file=log,
        )
    if open_viewer:
        _show(noisy, denoised, model, quiet)
    return summary


def _show(noisy, denoised, model, quiet: bool) -> None:
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
    viewer.grid.enabled = True
    try:
        from ._widgets.session import SESSION

        SESSION.add_model(model)
        viewer.window.add_plugin_dock_widget("napari-aeseg", "Denoise")
    except (ImportError, KeyError, ValueError):
        pass
    napari.run()
