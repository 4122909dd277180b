"""What a warm start buys (issue 27): a 16-trial sweep seeded from an earlier 16-trial sweep,
against a fresh 16-trial sweep and a fresh 32-trial sweep, in the same run.

    python benchmarks/warm_start.py --json warm_start.json

For each setting (digits and MNIST-1D, VL-uniform, TPE with the spec's default startup) and each
seed: the earlier sweep (seed 1000 + seed), then a fresh sweep of 32 trials (seed), whose first
16 are the fresh 16-trial sweep (TPE asks one trial at a time, so they are the same trials),
then the warm-started sweep (seed), its study seeded by `sweeps.warm_start.seed_study` from the
earlier sweep's study. Trials run the sweep's real trial (`sweeps.spec.resolve.trial_config`,
`gradreg.train.fit`) in this process, one after another, without Ray or MLflow: what is
compared is the search, not the engine around it.

Printed for each setting: the best validation NLL among a sweep's own first k trials, and the
test NLL of that trial (chosen on validation only), averaged over seeds; then the paired
differences (warm minus fresh) with their standard errors over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from gradreg.train import fit
from sweeps import parse_spec
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec import SweepSpec
from sweeps.spec.resolve import trial_config
from sweeps.study import TUNE_TRIAL_ATTR
from sweeps.warm_start import SourceSweep, seed_study

SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": {"name": "digits"}, "fixed": {"epochs": 10, "batch_size": 128}},
    "mnist1d": {"dataset": {"name": "mnist1d"}, "fixed": {"epochs": 10, "batch_size": 128}},
}
SMOKE: dict[str, dict[str, Any]] = {
    "iris": {"dataset": {"name": "iris"}, "fixed": {"epochs": 2, "batch_size": 64}},
}
CHECKPOINTS = (4, 8, 16)


def sweep_spec(name: str, setting: dict[str, Any], seed: int) -> SweepSpec:
    return parse_spec(
        {
            "name": name,
            "dataset": setting["dataset"],
            "model": {"name": "mlp", "options": {"hidden": [64]}},
            "method": "vl-uniform",
            "fixed": {**setting["fixed"], "lr": 0.003, "device": "cpu"},
            "parameters": {
                "noise_scale": {"type": "float", "low": 1e-3, "high": 0.3, "scale": "log"},
                "prior_variance": {"type": "float", "low": 1e-3, "high": 10.0, "scale": "log"},
            },
            "objectives": [{"metric": "val_nll", "goal": "minimize"}],
            "search": {"algorithm": "tpe", "seed": seed},
        }
    )


def run_trials(spec: SweepSpec, study: optuna.Study, count: int) -> list[dict[str, float]]:
    """``count`` trials of ``spec`` asked of ``study`` one at a time, as the sweep asks them;
    each trial's final val_nll is told, and its final metrics returned in order."""
    space = SearchSpace(spec)
    finished = []
    for _ in range(count):
        trial = study.ask()
        space(trial)
        metrics = fit(trial_config(spec, trial.params)).metrics
        value = metrics["val_nll"]
        if not math.isfinite(value):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        trial.set_user_attr(TUNE_TRIAL_ATTR, f"t{trial.number}")
        study.tell(trial, value)
        finished.append({"val_nll": value, "test_nll": metrics["test_nll"]})
    return finished


def best_after(trials: list[dict[str, float]], k: int) -> tuple[float, float]:
    """The best val_nll among the first ``k`` trials, and that trial's test_nll."""
    chosen = min(trials[:k], key=lambda t: t["val_nll"])
    return chosen["val_nll"], chosen["test_nll"]


def one_seed(setting: dict[str, Any], seed: int, trials: int) -> dict[str, Any]:
    earlier_spec = sweep_spec("earlier", setting, 1000 + seed)
    earlier_study = optuna.create_study(sampler=make_sampler(earlier_spec))
    earlier = run_trials(earlier_spec, earlier_study, trials)
    spec = sweep_spec("new", setting, seed)
    fresh = run_trials(spec, optuna.create_study(sampler=make_sampler(spec)), 2 * trials)
    warm_study = optuna.create_study(sampler=make_sampler(spec))
    states = {t.user_attrs[TUNE_TRIAL_ATTR]: "succeeded" for t in earlier_study.get_trials()}
    source = SourceSweep("earlier", earlier_spec, earlier_study.get_trials(), states)
    report = seed_study(warm_study, spec, [source])
    warm = run_trials(spec, warm_study, trials)
    return {"earlier": earlier, "fresh": fresh, "warm": warm, "seeded": report.trials_seeded}


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def summarise(runs: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    checkpoints = [k for k in CHECKPOINTS if k <= trials] or [trials]
    rows: dict[str, Any] = {}
    for metric, index in (("val_nll", 0), ("test_nll", 1)):
        table: dict[str, Any] = {}
        for k in checkpoints:
            warm = [best_after(r["warm"], k)[index] for r in runs]
            fresh = [best_after(r["fresh"], k)[index] for r in runs]
            table[f"k={k}"] = {
                "warm": mean_se(warm),
                "fresh": mean_se(fresh),
                "warm_minus_fresh": mean_se([w - f for w, f in zip(warm, fresh, strict=True)]),
            }
        warm_all = [best_after(r["warm"], trials)[index] for r in runs]
        fresh_double = [best_after(r["fresh"], 2 * trials)[index] for r in runs]
        table[f"warm {trials} vs fresh {2 * trials}"] = {
            "warm": mean_se(warm_all),
            "fresh": mean_se(fresh_double),
            "warm_minus_fresh": mean_se(
                [w - f for w, f in zip(warm_all, fresh_double, strict=True)]
            ),
        }
        rows[metric] = table
    return rows


def print_setting(name: str, summary: dict[str, Any], seeds: int, seeded: list[int]) -> None:
    print(f"\n{name}: {seeds} seeds, {statistics.fmean(seeded):.1f} trials seeded on average")
    for metric, table in summary.items():
        what = "best val_nll" if metric == "val_nll" else "test_nll of the trial best on val_nll"
        print(f"  {what} among the first k trials, mean ± standard error over seeds")
        print(f"    {'':>22} {'warm':>16} {'fresh':>16} {'warm - fresh':>18}")
        for row, cells in table.items():
            w, f, d = cells["warm"], cells["fresh"], cells["warm_minus_fresh"]
            print(
                f"    {row:>22} {w[0]:>8.4f} ± {w[1]:.4f} {f[0]:>8.4f} ± {f[1]:.4f} "
                f"{d[0]:>+9.4f} ± {d[1]:.4f}"
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--settings", nargs="*", choices=sorted(SETTINGS), default=None)
    parser.add_argument("--smoke", action="store_true", help="iris, 2 epochs: seconds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.trials < 1:
        parser.error("--seeds must be at least 2 (a standard error needs two) and --trials >= 1")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = SMOKE if args.smoke else {k: SETTINGS[k] for k in args.settings or SETTINGS}
    results: dict[str, Any] = {}
    for name, setting in chosen.items():
        started = time.perf_counter()
        runs = [one_seed(setting, seed, args.trials) for seed in range(args.seeds)]
        summary = summarise(runs, args.trials)
        seeded = [r["seeded"] for r in runs]
        print_setting(name, summary, args.seeds, seeded)
        print(f"  ({time.perf_counter() - started:.0f} s)")
        results[name] = {"summary": summary, "seeded": seeded, "runs": runs}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
