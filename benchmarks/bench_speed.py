"""Speed: training steps/s of DenoiserTrainer against a bare PyTorch loop, and tiled
inference throughput against one untiled forward pass of the same network.

(a) Training. The same network (``build_network``), batch, patch size, blind-spot masking
and loss (``core/noise.py``), Adam, random crops cut from the same normalised tensor. The
trainer runs with validation moved out of the timed window (``val_interval`` very large);
the cost of one validation pass is timed on its own and reported as the overhead it adds at
the default interval. The engine and the bare loop run in alternation (rounds), and the
median steps/s over the rounds is reported, which limits the noise of a shared CPU.

(b) Inference. ``DenoiserModel.denoise`` (tiling, blending, normalisation, layout) against
``network(x)`` on the whole normalised image under ``torch.inference_mode``, on the same
image, in alternation; median MPix/s.

Run ``python benchmarks/bench_speed.py --quick`` for a short check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

from napari_aeseg.core.config import Normalization  # noqa: E402
from napari_aeseg.core.denoiser import DenoiserModel  # noqa: E402
from napari_aeseg.core.devices import resolve_device  # noqa: E402
from napari_aeseg.core.models import build_network, count_parameters  # noqa: E402
from napari_aeseg.core.noise import (  # noqa: E402
    apply_blind_spot,
    blind_spot_coordinates,
    masked_gather,
)
from napari_aeseg.core.samples import load_sample  # noqa: E402
from napari_aeseg.core.synthetic import synthetic_nuclei  # noqa: E402
from napari_aeseg.core.training import DenoiserTrainer, make_denoiser_config  # noqa: E402

#: the engine's run loop must keep at least this fraction of the bare loop's steps/s
TRAIN_TARGET = 0.95
#: tiled inference must keep at least this fraction of an untiled pass's throughput
INFER_TARGET = 0.85


# --------------------------------------------------------------------------- training
class BareLoop:
    """The minimal training loop the engine is measured against."""

    def __init__(self, data: torch.Tensor, config, seed: int):
        t = config.training
        self.data = data  # (C, Y, X), normalised
        self.patch = t.patch_size
        self.batch = t.batch_size
        self.fraction = t.masked_fraction
        self.radius = t.blind_spot_radius
        self.replacement = "median" if config.mode == "n2v2" else "random"
        torch.manual_seed(seed)
        self.network = build_network(config.architecture).train()
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=t.learning_rate)
        self.gen = torch.Generator().manual_seed(seed + 100)

    def step(self) -> float:
        p, b = self.patch, self.batch
        _, h, w = self.data.shape
        ys = torch.randint(0, h - p + 1, (b,), generator=self.gen).tolist()
        xs = torch.randint(0, w - p + 1, (b,), generator=self.gen).tolist()
        clean = torch.stack([self.data[:, y : y + p, x : x + p] for y, x in zip(ys, xs)])
        coords = blind_spot_coordinates(clean.shape, self.fraction, self.gen)
        x = apply_blind_spot(
            clean, coords, radius=self.radius, replacement=self.replacement, generator=self.gen
        )
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.network(x)
        loss = F.mse_loss(masked_gather(pred, coords), masked_gather(clean, coords))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _timed(step_fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step_fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return steps / (time.perf_counter() - t0)


def bench_training(args) -> dict:
    image = synthetic_nuclei((args.train_size, args.train_size), seed=0).clean
    common = dict(
        mode=args.mode,
        axes="YX",
        steps=1_000_000,
        patch_size=args.patch,
        batch_size=args.batch,
        base_channels=args.base_channels,
        depth=args.depth,
        learning_rate=4e-4,
        seed=0,
        val_interval=10**7,  # validation is timed separately below
    )
    variants = {}
    for augment in (True, False):
        cfg = make_denoiser_config(image.shape, augment=augment, **common)
        trainer = DenoiserTrainer([image], cfg, device="cpu")
        gen = trainer.run()
        variants[f"engine (augment={augment})"] = (trainer, lambda g=gen: next(g))
    trainer0 = next(iter(variants.values()))[0]
    data = trainer0.sampler.arrays[0][0]  # (C, Y, X), the engine's own normalised tensor
    bare = BareLoop(data, trainer0.config, seed=0)
    variants["bare PyTorch loop"] = (None, bare.step)

    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (_, fn) in variants.items():
            rate = _timed(fn, args.warmup if r == 0 else 0, args.timed_steps)
            rates[name].append(rate)
            print(f"  round {r + 1}/{args.rounds}: {name}: {rate:.3f} steps/s", flush=True)

    # one validation pass (default 32 patches), timed on its own, median of 3
    val_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        trainer0.validate()
        val_times.append(time.perf_counter() - t0)
    val_s = statistics.median(val_times)

    bare_med = statistics.median(rates["bare PyTorch loop"])
    rows = []
    for name, rs in rates.items():
        med = statistics.median(rs)
        rows.append(
            {
                "loop": name,
                "steps_per_s_median": med,
                "steps_per_s_rounds": rs,
                "ratio_to_bare": med / bare_med,
            }
        )
    step_s = 1.0 / statistics.median(rates["engine (augment=True)"])
    return {
        "settings": {
            "mode": args.mode,
            "image": f"synthetic_nuclei({args.train_size}x{args.train_size}, seed 0)",
            "batch_size": args.batch,
            "patch_size": args.patch,
            "base_channels": args.base_channels,
            "depth": args.depth,
            "parameters": count_parameters(bare.network),
            "warmup_steps": args.warmup,
            "timed_steps": args.timed_steps,
            "rounds": args.rounds,
        },
        "rows": rows,
        "validation_pass_s": val_s,
        # the engine validates every min(250, steps // 10) steps by default
        "validation_cost_per_100_steps": val_s / (100 * step_s),
        "target_ratio": TRAIN_TARGET,
        "ratio": next(r["ratio_to_bare"] for r in rows if r["loop"] == "engine (augment=True)"),
    }


# -------------------------------------------------------------------------- inference
def _inference_image(size: int) -> np.ndarray:
    real = load_sample("nuclei_2d").astype(np.float32)
    reps = -(-size // real.shape[0])
    return np.ascontiguousarray(np.tile(real, (reps, reps))[:size, :size])


def bench_inference(args) -> dict:
    device = resolve_device("cpu")
    image = _inference_image(args.infer_size)
    cfg = make_denoiser_config(
        image.shape, mode=args.mode, base_channels=args.base_channels, depth=args.depth
    )
    cfg.normalization = Normalization(
        low=[float(np.percentile(image, 0.5))], high=[float(np.percentile(image, 99.5))]
    )
    torch.manual_seed(0)
    network = build_network(cfg.architecture).eval()
    model = DenoiserModel(config=cfg, network=network)
    lo, hi = cfg.normalization.low[0], cfg.normalization.high[0]
    x = torch.from_numpy((image - lo) / (hi - lo))[None, None]
    mpix = image.size / 1e6

    def untiled():
        with torch.inference_mode():
            network(x)

    cases = {"untiled forward (network(x))": untiled}
    for tile in args.tiles:
        label = f"denoise(tile={tile!r})"
        cases[label] = lambda t=tile: model.denoise(image, tile=t, device=device)
    # warm-up (allocator, oneDNN kernels) on a small crop
    model.denoise(image[:256, :256], device=device)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.infer_repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            print(f"  repeat {r + 1}/{args.infer_repeats}: {name}: {dt:.2f} s", flush=True)
    from napari_aeseg.core.tiling import count_tiles, resolve_tiling

    patch = model.training_patch(image.ndim)

    base = statistics.median(times["untiled forward (network(x))"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        row = {
            "case": name,
            "seconds_median": med,
            "seconds_repeats": ts,
            "mpix_per_s": mpix / med,
            "ratio_to_untiled": base / med,
        }
        for tile in args.tiles:
            if name == f"denoise(tile={tile!r})":
                tiles, overlaps = resolve_tiling(
                    image.shape,
                    tile=tile,
                    overlap="auto",
                    divisor=cfg.architecture.divisor,
                    device=device,
                    patch=patch,
                )
                row["tiles"] = count_tiles(
                    image.shape,
                    tile=tile,
                    overlap="auto",
                    divisor=cfg.architecture.divisor,
                    device=device,
                    patch=patch,
                )
                row["max_tile"], row["overlap"] = list(tiles), list(overlaps)
        rows.append(row)
    auto = next(r for r in rows if r["case"] == "denoise(tile='auto')")
    return {
        "settings": {
            "image": f"real_nuclei_2d tiled to {args.infer_size}x{args.infer_size} float32",
            "mode": args.mode,
            "base_channels": args.base_channels,
            "depth": args.depth,
            "repeats": args.infer_repeats,
        },
        "rows": rows,
        "target_ratio": INFER_TARGET,
        "ratio": auto["ratio_to_untiled"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (fewer steps, smaller image)")
    ap.add_argument("--mode", default="n2v2", choices=["n2v2", "n2v"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timed-steps", type=int, default=30, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=4, help="alternating timed blocks per loop")
    ap.add_argument("--infer-size", type=int, default=2048)
    ap.add_argument("--infer-repeats", type=int, default=3)
    ap.add_argument("--tiles", default="auto,1024,2048", help="comma-separated tile sizes")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench_speed.json)")
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup, args.timed_steps, args.rounds = 3, 15, 2
        args.infer_size, args.infer_repeats = 1024, 1
        args.tiles = "auto,256"
    args.tiles = [t if t == "auto" else int(t) for t in args.tiles.split(",")]

    resolve_device("cpu")  # the engine's thread setting, used by both sides
    info = machine_info("cpu")
    result = {"benchmark": "speed", "machine": info, "quick": args.quick, "notes": args.notes}
    if not args.skip_training:
        print("training: engine vs bare loop", flush=True)
        tr = bench_training(args)
        result["training"] = tr
        print()
        print(
            format_table(
                ["loop", "steps/s (median)", "rounds", "ratio to bare"],
                [
                    [
                        r["loop"],
                        r["steps_per_s_median"],
                        ", ".join(f"{v:.3f}" for v in r["steps_per_s_rounds"]),
                        r["ratio_to_bare"],
                    ]
                    for r in tr["rows"]
                ],
            )
        )
        ok = "met" if tr["ratio"] >= TRAIN_TARGET else "MISSED"
        print(
            f"validation pass: {tr['validation_pass_s']:.2f} s = "
            f"{100 * tr['validation_cost_per_100_steps']:.1f}% of the time of 100 steps"
        )
        print(f"target engine/bare >= {TRAIN_TARGET}: {tr['ratio']:.3f} ({ok})\n", flush=True)
    if not args.skip_inference:
        print("inference: tiled denoise vs untiled forward", flush=True)
        inf = bench_inference(args)
        result["inference"] = inf
        print()
        print(
            format_table(
                ["case", "tiles", "s (median)", "MPix/s", "ratio to untiled"],
                [
                    [
                        r["case"],
                        r.get("tiles", 1),
                        r["seconds_median"],
                        r["mpix_per_s"],
                        r["ratio_to_untiled"],
                    ]
                    for r in inf["rows"]
                ],
            )
        )
        ok = "met" if inf["ratio"] >= INFER_TARGET else "MISSED"
        print(f"target tiled(auto)/untiled >= {INFER_TARGET}: {inf['ratio']:.3f} ({ok})")
    result["load_average_at_end"] = list(__import__("os").getloadavg())
    path = write_json("bench_speed" + ("_quick" if args.quick else ""), result, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
