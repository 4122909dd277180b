"""Does training end in the same place with the finite-difference regulariser gradient?

    python benchmarks/regulariser_grad_training.py [--seeds 5] [--epochs 50]

Paired seeds: for each dataset, variance family and seed, VL (sampled Fisher) trains twice
from the same initialisation, split and label draws, once with `regulariser_grad=autograd` and
once with `finite_difference`. Prints each path's mean validation NLL and ECE (the method's own
sample predictive) and the paired difference finite_difference − autograd with its standard
error, and the training time per epoch of each, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from gradreg import fit
from gradreg.comparison.runs import mean_and_se

SETTINGS = {
    "digits": {"dataset": "digits"},
    "mnist1d": {"dataset": "mnist1d"},
}
FAMILIES = {
    "vl-uniform": {"variance": "uniform", "noise_scale": 0.01, "prior_variance": 1.0},
    "vl-diagonal": {"variance": "diagonal", "prior_variance": 1.0, "variance_lr": 1e-3},
}
METRICS = ("val_nll", "val_ece", "test_nll", "test_ece", "test_accuracy")


def run(dataset: dict, family: dict, seed: int, path: str, epochs: int) -> dict[str, float]:
    result = fit(
        {
            **dataset,
            **family,
            "method": "vl",
            "fisher": "sampled",
            "regulariser_grad": path,
            "epochs": epochs,
            "seed": seed,
            "split_seed": seed,
            "n_samples": 16,
            "device": "cpu",
        }
    )
    last = result.metrics
    seconds = statistics.fmean(h["train_seconds"] for h in result.history)
    return {**{m: last[m] for m in METRICS}, "s_per_epoch": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--datasets", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {args.seeds} paired seeds, {args.epochs} epochs, MLP, CPU, {args.threads} thread(s)")
    print(
        "| dataset | method | metric | autograd | finite_difference | difference (FD − AG) "
        "| FD better |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in [n for n in args.datasets.split(",") if n]:
        for method, family in FAMILIES.items():
            runs = {
                path: [
                    run(SETTINGS[name], family, seed, path, args.epochs)
                    for seed in range(args.seeds)
                ]
                for path in ("autograd", "finite_difference")
            }
            for metric in (*METRICS, "s_per_epoch"):
                a = [r[metric] for r in runs["autograd"]]
                f = [r[metric] for r in runs["finite_difference"]]
                diff_mean, diff_se = mean_and_se([y - x for x, y in zip(a, f, strict=True)])
                a_mean, a_se = mean_and_se(a)
                f_mean, f_se = mean_and_se(f)
                better = sum(
                    (y > x) if metric == "test_accuracy" else (y < x)
                    for x, y in zip(a, f, strict=True)
                )
                print(
                    f"| {name} | {method} | {metric} | {a_mean:.4f} ± {a_se:.4f} | "
                    f"{f_mean:.4f} ± {f_se:.4f} | {diff_mean:+.4f} ± {diff_se:.4f} | "
                    f"{better}/{args.seeds} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
