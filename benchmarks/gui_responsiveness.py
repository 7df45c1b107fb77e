"""GUI responsiveness: how long the napari main thread stalls while the Train widget trains.

A 10 ms ``QTimer`` ticks on the main thread of a real, shown viewer while the *Train
denoiser* widget trains (Start button, thread worker, live loss plot, previews). The gap
between consecutive ticks is the time the main thread could not process events; the
target is a largest gap under 200 ms. Each configuration runs for ``--seconds``; the table
gives the tick-gap percentiles, the largest gaps and whether a preview was drawn then.

Run under a display (``xvfb-run -a python benchmarks/gui_responsiveness.py``); writes
``benchmarks/results/gui_responsiveness.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_json  # noqa: E402

CONFIGS = {
    "tiny": {
        "image": "synthetic 256x256",
        "options": {
            "mode": "n2v",
            "depth": 1,
            "base_channels": 8,
            "patch_size": 32,
            "batch_size": 4,
        },
    },
    "default": {
        "image": "nuclei_2d 512x512",
        "options": {
            "mode": "n2v2",
            "depth": 2,
            "base_channels": 32,
            "patch_size": 64,
            "batch_size": 16,
        },
    },
}


def load_image(name: str) -> np.ndarray:
    if name.startswith("synthetic"):
        from napari_aeseg.core.noise import add_noise
        from napari_aeseg.core.synthetic import synthetic_nuclei

        clean = synthetic_nuclei((256, 256), seed=0).clean
        return add_noise(clean, gaussian=0.15, seed=1, value_range=(0.0, 1.0))
    from napari_aeseg.core.samples import load_sample

    return load_sample("nuclei_2d")


def measure(viewer, train, seconds: float, preview_every: int) -> dict:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    ticks: list[float] = []
    previews: list[float] = []
    show_preview = train._show_preview

    def timed_preview(item):
        t0 = time.perf_counter()
        show_preview(item)
        previews.append((t0, time.perf_counter() - t0))

    train._show_preview = timed_preview
    train.set_options(steps=10_000_000, preview_every=preview_every)
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    train.start_button.click()
    while not train.loss_plot.train_points:  # the first step: data prepared, worker running
        app.processEvents()
        time.sleep(0.005)
    first_step = len(train.loss_plot.train_points)
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    steps = len(train.loss_plot.train_points) - first_step
    train.stop_button.click()
    while train.running:
        app.processEvents()
        time.sleep(0.005)
    train._show_preview = show_preview
    gaps = np.diff(np.asarray(ticks)) * 1000
    order = np.argsort(gaps)[::-1][:5]
    worst = []
    for i in order:
        start = ticks[i]
        stop = ticks[i + 1]
        during = [d * 1000 for t, d in previews if start - 0.01 <= t <= stop]
        worst.append(
            {"gap_ms": round(float(gaps[i]), 1), "preview_ms": [round(d, 1) for d in during]}
        )
    return {
        "seconds": seconds,
        "steps": steps,
        "steps_per_second": round(steps / seconds, 2),
        "ticks": len(ticks),
        "gap_p50_ms": round(float(np.percentile(gaps, 50)), 1),
        "gap_p99_ms": round(float(np.percentile(gaps, 99)), 1),
        "gap_max_ms": round(float(gaps.max()), 1),
        "gaps_over_100ms": int((gaps > 100).sum()),
        "previews": len(previews),
        "preview_update_max_ms": round(max((d for _, d in previews), default=0.0) * 1000, 1),
        "worst_gaps": worst,
    }


def run_child(name: str, threads: str, seconds: float, preview_every: int, hidden: bool) -> dict:
    """One configuration in this (fresh) process: a shown viewer, the widget, one run."""
    import napari
    import torch

    from napari_aeseg.core import devices

    if threads != "engine":
        devices._configure_cpu_threads = lambda: None
        torch.set_num_threads(int(threads))
    cfg = CONFIGS[name]
    viewer = napari.Viewer(title="gui responsiveness", show=not hidden)
    viewer.window.resize(1400, 900)
    viewer.add_image(load_image(cfg["image"]), name=name)
    _, train = viewer.window.add_plugin_dock_widget("napari-aeseg", "Train denoiser")
    train.layer_list.select(name)
    train.set_options(**cfg["options"], device="cpu")
    result = measure(viewer, train, seconds, preview_every)
    row = {"config": name, "image": cfg["image"], **cfg["options"]}
    row.update(torch_threads=torch.get_num_threads(), **result)
    viewer.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["engine", "1"],
        help="torch CPU threads per run: 'engine' (the engine's choice, all cores) or a number",
    )
    parser.add_argument("--preview-every", type=int, default=25)
    parser.add_argument("--out", default=None)
    parser.add_argument("--hidden", action="store_true", help="do not show the window")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        row = run_child(*args.child, args.seconds, args.preview_every, args.hidden)
        print("RESULT " + json.dumps(row), flush=True)
        return

    rows = []
    for name in args.configs:
        for threads in args.threads:
            # a fresh process per run: thread pools and GL state do not carry over
            cmd = [sys.executable, __file__, "--child", name, threads]
            cmd += ["--seconds", str(args.seconds), "--preview-every", str(args.preview_every)]
            cmd += ["--hidden"] * args.hidden
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"{name} threads={threads}: failed (exit {proc.returncode}): {tail}")
                rows.append({"config": name, "threads": threads, "failed": proc.returncode})
                continue
            row = json.loads(lines[-1][len("RESULT ") :])
            rows.append(row)
            print(
                f"{name:8s} threads={row['torch_threads']}: {row['steps_per_second']:6.1f} steps/s, "
                f"max gap {row['gap_max_ms']:.0f} ms, p99 {row['gap_p99_ms']:.0f} ms",
                flush=True,
            )

    header = (
        f"{'config':8s} {'threads':>7s} {'steps/s':>8s} {'ticks':>6s} {'p50 ms':>7s} "
        f"{'p99 ms':>7s} {'max ms':>7s} {'>100ms':>7s} {'previews':>8s} {'preview ms':>10s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "failed" in r:
            print(f"{r['config']:8s} {r['threads']:>7s} failed (exit {r['failed']})")
            continue
        print(
            f"{r['config']:8s} {r['torch_threads']:7d} {r['steps_per_second']:8.1f} {r['ticks']:6d} "
            f"{r['gap_p50_ms']:7.1f} {r['gap_p99_ms']:7.1f} {r['gap_max_ms']:7.1f} "
            f"{r['gaps_over_100ms']:7d} {r['previews']:8d} {r['preview_update_max_ms']:10.1f}"
        )
    path = write_json(
        "gui_responsiveness",
        {
            "benchmark": "gui_responsiveness",
            "target_max_gap_ms": 200,
            "timer_interval_ms": 10,
            "seconds_per_run": args.seconds,
            "preview_every": args.preview_every,
            "window_shown": not args.hidden,
            "machine": machine_info("cpu"),
            "results": rows,
        },
        args.out,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
