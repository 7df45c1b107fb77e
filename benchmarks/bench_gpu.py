"""GPU speed of the engine: training steps/s and tiled inference throughput on CUDA.

What a user with a GPU waits for, measured through the public engine only:

- denoiser training (``DenoiserTrainer``, ``n2v2``, mixed precision where the device has
  it) at the default batch of 16 and at 128, 64 x 64 patches, width 32;
- segmenter fine-tuning (``SegmenterTrainer``, 3 classes from the real nuclei sample's
  instance masks) at batch 8;
- tiled denoising and segmentation (``tile='auto'``) of the real nuclei sample tiled to
  2048 x 2048 and 4096 x 4096, with the CPU's 2048 x 2048 time beside it for scale; and
  the share of segmentation spent in the CPU post-processing
  (``instances_from_probabilities``, the seeded watershed), timed on its own.

Each case is timed after a warm-up; steps/s is the median of ``--rounds`` blocks. A case
that fails is recorded with its error instead of stopping the run. Prints a table and
writes ``results/bench_gpu.json`` (``--out``). Needs CUDA (exits with 2 otherwise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps_per_s(gen, device, warmup: int, steps: int, rounds: int) -> list[float]:
    for _ in range(warmup):
        next(gen)
    rates = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(gen)
        _sync(device)
        rates.append(steps / (time.perf_counter() - t0))
    return rates


def _image(size: int) -> np.ndarray:
    from napari_aeseg.core.samples import load_sample

    real = load_sample("nuclei_2d").astype(np.float32)
    reps = -(-size // real.shape[0])
    return np.ascontiguousarray(np.tile(real, (reps, reps))[:size, :size])


def bench(args, device) -> list[dict]:
    from napari_aeseg.core.segmenter import SegmenterTrainer, make_segmenter_config
    from napari_aeseg.core.synthetic import synthetic_nuclei
    from napari_aeseg.core.training import DenoiserTrainer, make_denoiser_config

    rows = []
    train = synthetic_nuclei((512, 512), seed=0)

    def case(name, fn):
        try:
            row = fn()
        except Exception as exc:  # noqa: BLE001 - recorded, the other cases still run
            traceback.print_exc()
            row = {"error": f"{type(exc).__name__}: {exc}"}
        row = {"case": name, **row}
        print("  ", row, flush=True)
        rows.append(row)

    den_model = {}

    def denoiser(batch):
        def run():
            cfg = make_denoiser_config(
                train.clean.shape, steps=10**6, batch_size=batch, val_interval=10**7
            )
            trainer = DenoiserTrainer([train.clean], cfg, device=device)
            rates = _steps_per_s(trainer.run(), device, args.warmup, args.steps, args.rounds)
            den_model["model"] = trainer.result()
            med = statistics.median(rates)
            return {
                "steps_per_s": round(med, 2),
                "patches_per_s": round(med * batch, 1),
                "rounds": [round(r, 2) for r in rates],
                "amp": str(trainer.amp_dtype),
            }

        return run

    case("train denoiser n2v2, batch 16", denoiser(16))
    case("train denoiser n2v2, batch 128", denoiser(128))

    def segmenter():
        from napari_aeseg.core.samples import load_sample

        real = load_sample("nuclei_2d").astype(np.float32)
        cfg = make_segmenter_config(real.shape, labels_kind="instances", steps=10**6, batch_size=8)
        labels = load_sample("nuclei_2d_labels")
        trainer = SegmenterTrainer([real], [labels], cfg, device=device)
        rates = _steps_per_s(trainer.run(), device, args.warmup, args.steps, args.rounds)
        den_model["segmenter"] = trainer.result()
        med = statistics.median(rates)
        return {"steps_per_s": round(med, 2), "rounds": [round(r, 2) for r in rates]}

    case("train segmenter (3 classes), batch 8", segmenter)

    def infer(kind, size, dev):
        def run():
            image = _image(size)
            model = den_model["model" if kind == "denoise" else "segmenter"]
            fn = model.denoise if kind == "denoise" else model.segment
            fn(image[:256, :256], device=dev)  # warm-up
            times = []
            for _ in range(args.repeats):
                _sync(torch.device(dev))
                t0 = time.perf_counter()
                fn(image, device=dev)
                _sync(torch.device(dev))
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            return {"seconds": round(med, 3), "mpix_per_s": round(size * size / 1e6 / med, 2)}

        return run

    def postprocess(size):
        from napari_aeseg.core.postprocess import instances_from_probabilities

        def run():
            probs = den_model["segmenter"].segment(_image(size), device=device).probabilities
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                labels = instances_from_probabilities(probs)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            return {
                "seconds": round(med, 3),
                "mpix_per_s": round(size * size / 1e6 / med, 2),
                "objects": int(labels.max()),
            }

        return run

    for kind in ("denoise", "segment"):
        for size in args.sizes:
            case(f"{kind} {size}x{size}, {device.type}", infer(kind, size, device.type))
        if device.type != "cpu":
            size = args.sizes[0]
            case(f"{kind} {size}x{size}, cpu", infer(kind, size, "cpu"))
    case(f"post-processing alone {args.sizes[0]}, cpu", postprocess(args.sizes[0]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of inference")
    ap.add_argument("--sizes", default="2048,4096", help="inference image sides")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test here")
    ap.add_argument("--quick", action="store_true", help="a few steps, small images")
    ap.add_argument("--out", default=None)
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.rounds, args.repeats, args.sizes = 2, 3, 1, 1, "256"
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    started = time.perf_counter()
    rows = bench(args, device)
    keys = ["steps_per_s", "patches_per_s", "seconds", "mpix_per_s", "objects", "error"]
    print()
    print(format_table(["case", *keys], [[r["case"], *(r.get(k, "") for k in keys)] for r in rows]))
    payload = {
        "benchmark": "gpu",
        "machine": machine_info(device.type),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "notes": args.notes,
        "total_seconds": round(time.perf_counter() - started, 1),
        "settings": vars(args),
        "rows": rows,
    }
    print(f"wrote {write_json('bench_gpu', payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
