"""How many trials per GPU: k concurrent trial processes on one GPU, each a real `gradreg.fit`.

    python benchmarks/gpu_packing.py                        # on a CUDA machine
    python benchmarks/gpu_packing.py --device cpu --counts 1,2 --train-size 64 \\
        --epochs 1 --width 2                                # a smoke run anywhere

Each trial is what a Ray trial runs, without Ray: a fresh process that trains `gradreg.fit` of
ResNet-20 (or `--model resnet18`) with VL-uniform (sampled Fisher) on CIFAR-10-shaped
synthetic data, written once in CIFAR-10's own file format and read through the `cifar10`
dataset. For each k in `--counts`,
k processes start together; the script reports each one's time to train (start-up excluded,
from `fit`'s own epoch times), the aggregate trials per hour, the slowdown of a trial against
k = 1 measured in the same run, and each process's peak GPU memory. `resources.gpu: 1/k` in a
sweep spec packs k trials on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRIAL = r"""
import json, sys, time, torch
from gradreg import fit
settings = json.loads(sys.argv[1])
started = time.perf_counter()
result = fit(settings)
cuda = torch.cuda.is_available() and settings["device"].startswith("cuda")
print(json.dumps({
    "train_s": sum(h["train_seconds"] for h in result.history),
    "wall_s": time.perf_counter() - started,
    "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    "val_accuracy": result.history[-1]["val_accuracy"],
}))
"""


def write_synthetic_cifar(root: Path, train_size: int, test_size: int, seed: int = 0) -> None:
    """CIFAR-10's python batches (5 train batches and a test batch) of random images."""
    batches = root / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = max(1, train_size // 5)
    sizes = {f"data_batch_{k}": per_batch for k in range(1, 6)} | {"test_batch": test_size}
    for name, size in sizes.items():
        data = rng.integers(0, 256, size=(size, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=size)]
        with open(batches / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle)


def run_together(count: int, settings: dict, env: dict[str, str]) -> list[dict]:
    """Start ``count`` trial processes at once; wait for all; return what each printed."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TRIAL, json.dumps({**settings, "seed": seed})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(count)
    ]
    results = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a trial process failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--counts", default="1,2,4,8", help="processes per GPU, comma-separated")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet18"])
    parser.add_argument("--width", type=int, help="default: the model's own (16, 64)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    width = args.width or (16 if args.model == "resnet20" else 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_synthetic_cifar(Path(data_dir), args.train_size, max(100, args.train_size // 10))
        settings = {
            "dataset": "cifar10",
            "dataset_options": {"data_dir": data_dir},
            "model": args.model,
            "model_options": {"width": width},
            "method": "vl",
            "variance": "uniform",
            "noise_scale": 0.01,
            "fisher": "sampled",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "n_samples": 4,
            "device": args.device,
            "bf16": args.bf16,
        }
        print(
            f"# {args.model} width {width}, VL-uniform sampled, {args.train_size} CIFAR-shaped "
            f"synthetic images, {args.epochs} epochs, batch {args.batch_size}, "
            f"bf16 {args.bf16}, {args.device}"
        )
        print(
            f"{'k':>3} {'train s/trial':>14} {'slowdown':>9} {'trials/hour':>12} "
            f"{'× k=1':>7} {'peak MiB/proc':>14} {'wall s':>7}"
        )
        base_train = base_rate = None
        for count in counts:
            started = time.perf_counter()
            results = run_together(count, settings, env)
            wall = time.perf_counter() - started
            train_s = statistics.median(r["train_s"] for r in results)
            # The whole batch of k trials finished within `wall`, start-up included.
            rate = count * 3600 / max(r["wall_s"] for r in results)
            base_train = base_train or train_s
            base_rate = base_rate or rate
            peaks = [r["peak_mib"] for r in results if r["peak_mib"] is not None]
            peak = max(peaks) if peaks else None
            row = {
                "k": count,
                "train_s_per_trial": train_s,
                "slowdown": train_s / base_train,
                "trials_per_hour": rate,
                "rate_vs_k1": rate / base_rate,
                "peak_mib_per_process": peak,
                "wall_s": wall,
            }
            rows.append(row)
            peak_cell = f"{peak:>14.0f}" if peak is not None else f"{'-':>14}"
            print(
                f"{count:>3} {train_s:>14.1f} {row['slowdown']:>9.2f} {rate:>12.0f} "
                f"{row['rate_vs_k1']:>7.2f} {peak_cell} {wall:>7.1f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
