"""How Optuna's suggestion and its saved study grow with a sweep's finished trials.

    python benchmarks/sweep_scale_search.py --json search.json

Optuna's suggestion (``study.ask(distributions)`` + ``tell``) for each sampler
`sweeps.space.make_sampler` builds from the digits-vl-uniform example spec, on a study filled
with 100, 1,000 and 10,000 finished trials (``add_trials``; each has an intermediate value per
epoch, as Tune's reports leave them). GP is timed at its own sizes (``--gp-trials``) and
extrapolated to the others with the power law fitted to them. Then what Tune does with that
study at every save of the experiment state: `OptunaSearch.save_to_dir` (it pickles the whole
study). Each figure is printed with its ratio to the sampler's smallest size, in this run.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from _sweep_scale_common import (
    directory_bytes,
    filled_searcher,
    fmt_ms,
    fmt_ratio,
    header,
    parser,
    positive_int,
    power_law,
    quality,
    ratio,
    write_figures,
)

SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")


def time_suggestions(
    study: optuna.Study, distributions: dict[str, Any], warmup: int, count: int, seed: int
) -> list[float]:
    """Seconds per ``ask`` + ``tell``; the first ``warmup`` are not kept (CMA-ES, for one,
    starts its optimizer from the study's first generation there)."""
    rng = random.Random(seed)
    samples = []
    for i in range(warmup + count):
        started = time.perf_counter()
        trial = study.ask(distributions)
        study.tell(trial, quality(trial.params) + rng.gauss(0.0, 0.01))
        if i >= warmup:
            samples.append(time.perf_counter() - started)
    return samples


def time_searcher_save(searcher: Any, repeats: int) -> tuple[list[float], int]:
    """Seconds per `OptunaSearch.save_to_dir`, and the bytes it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            searcher.save_to_dir(tmp, session_str="bench")
            samples.append(time.perf_counter() - started)
        return samples, directory_bytes(Path(tmp))


def sampler_figures(algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(set(args.search_trials))
    asked_sizes = sorted(set(args.gp_trials)) if algorithm == "gp" else sizes
    rows: dict[str, Any] = {}
    measured: dict[int, float] = {}
    for n in sorted(set(sizes) | set(asked_sizes)):
        searcher, distributions = filled_searcher(algorithm, n, args.search_epochs, args.seed)
        row: dict[str, Any] = {"trials": n}
        saves, size = time_searcher_save(searcher, args.save_repeats)  # n trials exactly
        row.update(save_median_s=statistics.median(saves), save_bytes=size)
        if n in asked_sizes:
            # GP needs no warm-up, and each suggestion costs seconds at 1,000 trials.
            warmup = (
                min(1, args.warmup_suggestions) if algorithm == "gp" else args.warmup_suggestions
            )
            samples = time_suggestions(
                searcher._ot_study, distributions, warmup, args.suggestions, args.seed
            )
            row.update(
                run=True, ask_tell_median_s=statistics.median(samples), ask_tell_max_s=max(samples)
            )
            measured[n] = row["ask_tell_median_s"]
        else:
            row["run"] = False
        rows[str(n)] = row
        del searcher
    fit = power_law(list(measured), list(measured.values()))
    base_ask = measured[min(measured)]
    base_save = rows[str(min(int(k) for k in rows))]["save_median_s"]
    for key, row in rows.items():
        row["save_ratio"] = ratio(row["save_median_s"], base_save)
        if row["run"]:
            row["ask_tell_ratio"] = ratio(row["ask_tell_median_s"], base_ask)
        elif fit is not None:
            exponent, intercept = fit
            row["exponent"] = exponent
            row["extrapolated_s"] = math.exp(intercept + exponent * math.log(int(key)))
            row["ask_tell_ratio"] = ratio(row["extrapolated_s"], base_ask)
    return {
        "sizes": rows,
        "fitted_exponent": fit[0] if fit else None,
        "fitted_on": sorted(measured),
    }


def search_level(args: argparse.Namespace) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict[str, Any] = {}
    print(
        f"\n== search: ask + tell per suggestion (median [max] over {args.suggestions}, after "
        f"{args.warmup_suggestions} untimed), and OptunaSearch.save_to_dir (median of "
        f"{args.save_repeats}); ratios to each sampler's smallest size",
        flush=True,
    )
    print(
        f"{'sampler':<8}{'trials':>8}{'ask+tell ms':>22}{'ratio':>9}"
        f"{'save ms':>11}{'state MB':>10}{'ratio':>9}"
    )
    for algorithm in args.samplers:
        found = figures[algorithm] = sampler_figures(algorithm, args)
        for key, row in found["sizes"].items():
            if row["run"]:
                timing = f"{fmt_ms(row['ask_tell_median_s'])} [{fmt_ms(row['ask_tell_max_s'])}]"
            else:
                timing = "not run"
            print(
                f"{algorithm:<8}{key:>8}{timing:>22}{fmt_ratio(row.get('ask_tell_ratio')):>9}"
                f"{fmt_ms(row['save_median_s']):>11}{row['save_bytes'] / 1e6:>10.2f}"
                f"{fmt_ratio(row['save_ratio']):>9}",
                flush=True,
            )
            if not row["run"] and "extrapolated_s" in row:
                print(
                    f"{'':<16}not run (GP cost grows as n^3; extrapolated "
                    f"{row['extrapolated_s']:.3g} s from the fitted exponent "
                    f"{row['exponent']:.2f} over {found['fitted_on']} trials)"
                )
            elif not row["run"]:
                print(f"{'':<16}not run (GP cost grows as n^3; too few sizes to fit one)")
    return figures


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    options.add_argument(
        "--search-trials", nargs="+", type=positive_int, default=[100, 1000, 10000]
    )
    options.add_argument(
        "--gp-trials", nargs="+", type=positive_int, default=[100, 300, 1000], help="GP's own sizes"
    )
    options.add_argument(
        "--search-epochs", type=positive_int, default=20, help="intermediate values"
    )
    options.add_argument(
        "--suggestions", type=positive_int, default=5, help="timed ask+tell per size"
    )
    options.add_argument(
        "--warmup-suggestions", type=int, default=8, help="untimed first (GP: at most 1)"
    )
    options.add_argument("--save-repeats", type=positive_int, default=3)
    args = options.parse_args()
    header("search", ["optuna", "ray"])
    write_figures("search", args, search_level(args))


if __name__ == "__main__":
    main()
