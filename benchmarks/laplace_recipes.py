"""Which post-hoc Laplace recipe wins on validation: prior precision × predictive.

    .venv/bin/python benchmarks/laplace_recipes.py --datasets digits,wine,breast_cancer,mnist1d

For each dataset and seed, one MAP network is trained (the same for every recipe: Laplace
trains exactly as MAP), then each recipe is fitted after its last epoch:
- the prior precision: chosen by validation NLL (`val_nll`), by the diagonal Laplace's marginal
  likelihood (`marglik`), or the training prior (`fixed`);
- the predictive: the linearised model with the probit approximation (`glm_probit`) or Monte
  Carlo (`glm_mc`), or the sampled network (`sample`).
The table gives validation and test NLL, test ECE and accuracy (mean ± standard error over
seeds), and each recipe's test NLL minus MAP's, measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics

from gradreg.train import fit

PRIOR_FITS = ("val_nll", "marglik", "fixed")
PREDICTIVES = ("glm_probit", "glm_mc", "sample")
COMMON = {"model_options": {"hidden": [128, 128]}, "epochs": 30, "device": "cpu", "n_samples": 32}


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,wine,breast_cancer,mnist1d")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=COMMON["epochs"])
    args = parser.parse_args()
    common = {**COMMON, "epochs": args.epochs}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        rows: dict[str, dict[str, list[float]]] = {}
        for seed in range(args.seeds):
            base = {**common, "dataset": dataset, "seed": seed, "split_seed": seed}
            runs = {"map": fit({**base, "method": "map"}).metrics}
            for prior_fit, predict in itertools.product(PRIOR_FITS, PREDICTIVES):
                config = {**base, "method": "laplace", "prior_fit": prior_fit, "predict": predict}
                try:
                    runs[f"{prior_fit} + {predict}"] = fit(config).metrics
                except ValueError as error:  # marglik without an interior maximum says so
                    print(f"  {dataset} seed {seed} {prior_fit} + {predict}: {error}")
            for name, metrics in runs.items():
                row = rows.setdefault(name, {k: [] for k in ("val", "test", "ece", "acc", "d")})
                row["val"].append(metrics["val_nll"])
                row["test"].append(metrics["test_nll"])
                row["ece"].append(metrics["test_ece"])
                row["acc"].append(metrics["test_accuracy"])
                row["d"].append(metrics["test_nll"] - runs["map"]["test_nll"])
        best = min((n for n in rows if n != "map"), key=lambda n: statistics.fmean(rows[n]["val"]))
        print(f"== {dataset}: {args.seeds} seeds, MLP 128-128, {args.epochs} epochs")
        print("| recipe | val NLL | test NLL | test ECE | test accuracy | test NLL − MAP's |")
        print("|---|---|---|---|---|---|")
        for name, row in rows.items():
            mark = " **(best val)**" if name == best else ""
            print(
                f"| {name}{mark} | {mean_se(row['val'])} | {mean_se(row['test'])} | "
                f"{mean_se(row['ece'])} | {mean_se(row['acc'])} | {mean_se(row['d'])} |"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
