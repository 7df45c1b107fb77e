"""Peak memory of ``DenoiserModel.denoise`` on a large 2D image, on the CPU.

Each case runs in a fresh Python subprocess: imports, the model (default architecture,
random initialisation; weights do not change memory use) and the input image are made
first, then the resident set size (RSS) is read as the baseline, the kernel's peak RSS
counter (VmHWM) is reset to it (``/proc/self/clear_refs``), and the image is denoised.
The peak is the larger of VmHWM and a 2 ms sampling of VmRSS from a thread. The extra
memory (peak - baseline) is compared with the target

    3 x (input bytes + output bytes) + model bytes

(output: float32, the size of the input). Linux only (``/proc``).

Run ``python benchmarks/bench_memory.py --quick`` for a short check (2048 x 2048).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

MiB = 1024**2
TARGET_FACTOR = 3.0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(size: int, dtype: str, tile: str, mode: str) -> dict:
    """Runs in the subprocess: one denoise, memory measured around it."""
    import gc
    import threading
    import time

    import numpy as np
    import torch

    from napari_aeseg.core.config import Normalization
    from napari_aeseg.core.denoiser import DenoiserModel
    from napari_aeseg.core.devices import resolve_device
    from napari_aeseg.core.models import build_network
    from napari_aeseg.core.samples import load_sample
    from napari_aeseg.core.training import make_denoiser_config

    device = resolve_device("cpu")
    real = load_sample("nuclei_2d")  # uint16, 0..235
    reps = -(-size // real.shape[0])
    image = np.ascontiguousarray(np.tile(real, (reps, reps))[:size, :size]).astype(dtype)
    cfg = make_denoiser_config(image.shape, mode=mode)
    cfg.normalization = Normalization(low=[0.0], high=[float(real.max())])
    torch.manual_seed(0)
    model = DenoiserModel(config=cfg, network=build_network(cfg.architecture).eval())
    model_bytes = sum(t.numel() * t.element_size() for t in model.network.state_dict().values())
    # warm-up on a small crop: oneDNN kernels, allocator, thread pool
    model.denoise(image[:128, :128], device=device)
    del real
    gc.collect()

    baseline_kib = _status_kib("VmRSS")
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    peak_sampled = [baseline_kib]
    running = True

    def sample():
        while running:
            peak_sampled[0] = max(peak_sampled[0], _status_kib("VmRSS"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    out = model.denoise(image, tile=tile if tile == "auto" else int(tile), device=device)
    seconds = time.perf_counter() - t0
    running = False
    sampler.join()
    hwm_kib = _status_kib("VmHWM") if reset else 0
    after_kib = _status_kib("VmRSS")
    peak_kib = max(hwm_kib, peak_sampled[0])
    in_bytes = image.nbytes
    out_bytes = out.nbytes
    extra = (peak_kib - baseline_kib) * 1024
    budget = TARGET_FACTOR * (in_bytes + out_bytes) + model_bytes
    return {
        "size": size,
        "dtype": dtype,
        "tile": tile,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "input_bytes": in_bytes,
        "output_bytes": out_bytes,
        "output_dtype": str(out.dtype),
        "model_bytes": model_bytes,
        "baseline_rss_bytes": baseline_kib * 1024,
        "peak_rss_bytes": peak_kib * 1024,
        "peak_from": "VmHWM" if hwm_kib >= peak_sampled[0] else "sampled VmRSS",
        "vmhwm_reset": reset,
        "rss_after_bytes": after_kib * 1024,
        "extra_peak_bytes": extra,
        "budget_bytes": budget,
        "extra_over_in_plus_out": extra / (in_bytes + out_bytes),
        "fraction_of_budget": extra / budget,
        "met": extra <= budget,
        "seconds": seconds,
    }


def run_case(size: int, dtype: str, tile: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), dtype, tile, mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"child failed ({' '.join(cmd)}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        size, dtype, tile, mode = sys.argv[2:6]
        print(json.dumps(child(int(size), dtype, tile, mode)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2048 x 2048 instead of 4096 x 4096")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dtypes", default="float32,uint16")
    ap.add_argument("--tiles", default="auto", help="comma-separated: auto or pixels")
    ap.add_argument("--mode", default="n2v2", choices=["n2v2", "n2v", "dae"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.size = 2048
    machine = machine_info("cpu")
    rows = []
    for tile in args.tiles.split(","):
        for dtype in args.dtypes.split(","):
            print(f"denoising {args.size}x{args.size} {dtype}, tile={tile} ...", flush=True)
            rows.append(run_case(args.size, dtype, tile, args.mode))
    headers = [
        "input",
        "tile",
        "in MiB",
        "out MiB",
        "model MiB",
        "peak-baseline MiB",
        "budget MiB",
        "extra/(in+out)",
        "met",
        "s",
    ]
    table = format_table(
        headers,
        [
            [
                f"{r['size']}x{r['size']} {r['dtype']}",
                r["tile"],
                r["input_bytes"] / MiB,
                r["output_bytes"] / MiB,
                r["model_bytes"] / MiB,
                r["extra_peak_bytes"] / MiB,
                r["budget_bytes"] / MiB,
                r["extra_over_in_plus_out"],
                "yes" if r["met"] else "NO",
                r["seconds"],
            ]
            for r in rows
        ],
    )
    print()
    print(table)
    print(f"target: peak - baseline <= {TARGET_FACTOR:g} x (input + output) + model")
    result = {
        "benchmark": "memory",
        "machine": machine,
        "quick": args.quick,
        "notes": args.notes,
        "target": f"peak RSS - baseline <= {TARGET_FACTOR:g} x (input + output bytes) + model",
        "rows": rows,
        "load_average_at_end": list(os.getloadavg()),
    }
    path = write_json("bench_memory" + ("_quick" if args.quick else ""), result, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
