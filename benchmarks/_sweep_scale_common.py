"""What the sweep_scale_*.py benchmarks share: made-up trials, statistics, the script's frame.

Each of benchmarks/sweep_scale_{search,tune_state,parent_summary,driver,store}.py times one
thing that grows with a sweep's trials, at several sizes in one run, and prints each figure
with its ratio to the same figure at the smallest size (the baseline, measured in that run).
``--json FILE`` writes every figure: ``{"part", "settings", "figures"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sweeps.records import BINS_KEY
from sweeps.spec import SweepSpec
from sweeps.spec.checks import GP_MAX_TRIALS
from sweeps.spec.limits import Limits
from sweeps.spec.parse import parse_spec, read_document

# The driver's Tune callbacks with and without `sweeps.tune_results.TuneResultTrimmer` (issue 29):
# "untrimmed" is how Tune kept every report before it.
VARIANTS = ("untrimmed", "trimmed")

EXAMPLE = Path(__file__).resolve().parents[1] / "sweeps" / "examples" / "digits-vl-uniform.yaml"
N_BINS = 15


# ---------------------------------------------------------------- the script's frame


def compare_variants(figures: dict[str, Any], sizes: Sequence[int], keys: Sequence[str]) -> None:
    """Each size's ``keys`` trimmed over untrimmed (`VARIANTS`, figures keyed
    ``<trials>/<variant>``), kept as the trimmed row's ``vs_untrimmed`` and printed; nothing
    unless both variants ran. A key either variant lacks a value for is left out."""
    if not all(f"{sizes[0]}/{variant}" in figures for variant in VARIANTS):
        return
    print("  trimmed / untrimmed, same size, this run:")
    for n in sizes:
        trimmed, untrimmed = figures[f"{n}/trimmed"], figures[f"{n}/untrimmed"]
        compared = {
            key: ratio(trimmed[key], untrimmed[key])
            for key in keys
            if trimmed[key] is not None and untrimmed[key] is not None
        }
        trimmed["vs_untrimmed"] = compared
        shown = ", ".join(f"{key} {fmt_ratio(value)}" for key, value in compared.items())
        print(f"  {n:>7} trials: {shown}")


def state_saves(variant: str) -> Callable[[], AbstractContextManager[None]]:
    """`sweeps.driver.compact_saves` as the ``variant`` (`VARIANTS`) has it: before issue 29,
    Tune wrote each trial's state indented."""
    from sweeps.tune_results import compact_saves

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return compact_saves if variant == "trimmed" else contextlib.nullcontext


def driver_callbacks(variant: str) -> Callable[..., list[Any]]:
    """`sweeps.driver.tune_callbacks` as the ``variant`` (`VARIANTS`) has it."""
    from sweeps.driver import tune_callbacks
    from sweeps.tune_results import TuneResultTrimmer

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "trimmed":
        return tune_callbacks

    def untrimmed(sweep: str, spec: SweepSpec) -> list[Any]:
        return [c for c in tune_callbacks(sweep, spec) if not isinstance(c, TuneResultTrimmer)]

    return untrimmed


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a size, a count of repeats)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, with the options every part has (--seed, --json)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    return parser


def header(part: str, packages: Sequence[str]) -> None:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    print(
        f"# {part}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}",
        flush=True,
    )


def write_figures(part: str, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """``figures`` to ``args.json``, with the settings they were measured at."""
    if args.json:
        document = {"part": part, "settings": vars(args), "figures": figures}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\n# figures written to {args.json}")


@contextmanager
def local_ray() -> Iterator[None]:
    """A Ray instance of this process's own, two CPUs; its start-up is printed, not charged."""
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"# Ray start-up (not charged): {time.perf_counter() - started:.1f} s", flush=True)
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1-99), interpolated between the samples as
    `statistics.quantiles` does with the inclusive method; one sample is every percentile."""
    if not values:
        raise ValueError("a percentile of no samples")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Count, p50, p99, max and total of ``samples`` (seconds); the count alone if none."""
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        "max_s": max(samples),
        "total_s": sum(samples),
    }


def power_law(sizes: Sequence[int], seconds: Sequence[float]) -> tuple[float, float] | None:
    """(exponent b, log-intercept a) of the least-squares line log t = a + b log n, or None
    with fewer than two sizes to fit."""
    if len(set(sizes)) < 2:
        return None
    fit = statistics.linear_regression([math.log(n) for n in sizes], [math.log(t) for t in seconds])
    return fit.slope, fit.intercept


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; None where either is missing or the baseline is zero."""
    if value is None or baseline is None or not baseline:
        return None
    return value / baseline


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Timings:
    """Seconds per call of wrapped methods, by label."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    @contextmanager
    def wrapped(
        self,
        owner: Any,
        name: str,
        label: str | None = None,
        observe: Callable[..., None] | None = None,
    ) -> Iterator[None]:
        """``owner.name`` timed while in the context; ``observe`` sees each call's arguments."""
        original = getattr(owner, name)
        samples = self.calls.setdefault(label or name, [])

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if observe is not None:
                observe(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - started)

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


# ---------------------------------------------------------------- made-up trials


def example_document(**changes: Any) -> dict[str, Any]:
    """The digits-vl-uniform example spec, with top-level sections replaced by ``changes``."""
    document = read_document(EXAMPLE.read_text())
    document.update(changes)
    return document


def search_spec(algorithm: str, max_trials: int) -> SweepSpec:
    """The example spec searched by ``algorithm`` with a budget of ``max_trials``."""
    search = {"algorithm": algorithm, "seed": 0, "n_startup_trials": 10}
    if algorithm == "gp":  # a spec refuses more (the sampler itself does not read the budget)
        max_trials = min(max_trials, GP_MAX_TRIALS)
    budget = {"max_trials": max_trials, "max_concurrent_trials": 4}
    return parse_spec(example_document(search=search, budget=budget), Limits(max_trials=max_trials))


def quality(params: dict[str, Any]) -> float:
    """A smooth validation NLL over the usual (noise_scale, prior_variance) plane."""
    noise = math.log10(params.get("noise_scale", 0.01)) + 2.0
    prior = math.log10(params.get("prior_variance", 1.0))
    return 0.1 + 0.05 * noise**2 + 0.03 * prior**2


def random_params(rng: random.Random) -> dict[str, float]:
    return {
        "noise_scale": 10 ** rng.uniform(-3, -1),
        "prior_variance": 10 ** rng.uniform(-2, 1),
    }


def epoch_metrics(epoch: int, epochs: int, base: float, rng: random.Random) -> dict[str, Any]:
    """One epoch's report as a trial sends it to Tune: gradreg's metrics and the test bins."""
    progress = epoch / epochs
    val_nll = base + 0.4 * (1.0 - progress) + rng.gauss(0.0, 0.005)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": val_nll * 0.9 + 0.01,
        "train_nll": val_nll * 0.85,
        "train_sqgrad": rng.uniform(0.1, 1.0),
        "train_kl": rng.uniform(0.01, 0.1),
        "train_seconds": rng.uniform(0.5, 2.0),
        "posterior_std_mean": rng.uniform(0.001, 0.1),
    }
    for split in ("val", "test"):
        nll = val_nll if split == "val" else val_nll + rng.gauss(0.0, 0.01)
        metrics.update(
            {
                f"{split}_nll": nll,
                f"{split}_accuracy": max(0.0, 1.0 - nll / 2),
                f"{split}_ece": rng.uniform(0.005, 0.05),
                f"{split}_aece": rng.uniform(0.005, 0.05),
                f"{split}_brier": rng.uniform(0.02, 0.2),
            }
        )
    upper = [(k + 1) / N_BINS for k in range(N_BINS)]
    metrics[BINS_KEY] = {
        "lower": [k / N_BINS for k in range(N_BINS)],
        "upper": upper,
        "count": [rng.randrange(0, 60) for _ in range(N_BINS)],
        "confidence": [u - 0.5 / N_BINS for u in upper],
        "accuracy": [min(1.0, u - rng.uniform(0.0, 0.1)) for u in upper],
    }
    return metrics


def filled_searcher(algorithm: str, n: int, epochs: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """The driver's `OptunaSearch` for ``algorithm`` whose study holds ``n`` finished trials,
    as Tune leaves them: one Optuna trial per Tune trial, an intermediate value per epoch;
    and the search space's distributions."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.space import SearchSpace, make_sampler

    spec = search_spec(algorithm, max(n, 1))
    sampler = make_sampler(spec)
    searcher = OptunaSearch(
        space=SearchSpace(spec),
        metric=spec.objectives[0].metric,
        mode="min",
        sampler=sampler,
    )
    study = searcher._ot_study
    distributions = SearchSpace(spec).distributions()
    population = getattr(sampler, "_population_size", None)
    generation_key = (
        sampler._get_generation_key() if hasattr(sampler, "_get_generation_key") else None
    )
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        params = random_params(rng)
        final = quality(params) + rng.gauss(0.0, 0.01)
        intermediate = {step: final + 0.4 * (1 - step / epochs) for step in range(1, epochs + 1)}
        system_attrs = {}
        if generation_key is not None and population:
            system_attrs[generation_key] = i // population  # the GA samplers' generations
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=final,
                intermediate_values=intermediate,
                system_attrs=system_attrs,
            )
        )
    study.add_trials(trials)
    # OptunaSearch keeps every Tune trial's Optuna trial (and pickles them all at each save).
    for frozen in study.get_trials(deepcopy=False):
        tune_id = f"{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}_{frozen.number:05d}"
        searcher._ot_trials[tune_id] = optuna.Trial(study, frozen._trial_id)
        searcher._completed_trials.add(tune_id)
    return searcher, distributions
