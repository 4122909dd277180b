"""How one save of Tune's experiment state grows with a sweep's trials.

    python benchmarks/sweep_scale_tune_state.py --json tune_state.json

One save of Tune's experiment state at 1,000 and 10,000 trials, with Ray 2.60's own objects: a
`TuneController` holding N `Trial`s (each with its last result, metric analysis and
checkpoints, and result.json written by the driver's `LatestResultLogger`), the driver's
callbacks and an `OptunaSearch` whose study holds N trials. Timed: `TuneController.save_to_dir`
(the driver's loop waits for it; split into trials' JSON, the state file, the searcher and the
callbacks' state) after the ``--tune-running`` running trials reported once more, and the
background upload of the staging directory that follows each save. Its share of the driver's
time: save / (period + save), at the old fixed 1 s period and at the period the driver's
`sweeps.checkpoints.adaptive_state_saves` gives Tune's checkpoint manager after a save that
long. Each figure is printed with its ratio to the smallest size, in this run.

Each size is built twice (``--variants``): with the driver's callbacks as they are
(``trimmed``: `sweeps.tune_results.TuneResultTrimmer` keeps only what Tune reads of each report)
and without the trimmer (``untrimmed``: how Tune kept every report before issue 29); the state
per trial is printed for both, with their ratio, in the same run.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from _sweep_scale_common import (
    VARIANTS,
    Timings,
    compare_variants,
    directory_bytes,
    driver_callbacks,
    epoch_metrics,
    filled_searcher,
    fmt_ms,
    fmt_ratio,
    header,
    local_ray,
    parser,
    positive_int,
    quality,
    random_params,
    ratio,
    search_spec,
    state_saves,
    write_figures,
)

from sweeps.checkpoints import adaptive_state_saves

GLOBAL_CHECKPOINT_S = 1.0  # the driver's fixed period before adaptive_state_saves


def build_controller(
    root: Path,
    n: int,
    running: int,
    epochs: int,
    checkpoint_every: int,
    seed: int,
    variant: str = "trimmed",
) -> tuple[Any, list[Any], Any]:
    """A `TuneController` with ``n`` trials of a digits sweep, the last ``running`` of them
    still running, the rest finished; callbacks (as ``variant`` has them), searcher and save
    period as the driver sets them up (``TUNE_GLOBAL_CHECKPOINT_S=auto``)."""
    from ray import tune
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from sweeps.driver import _trial_name

    sweep = f"scale-{n}"
    spec = search_spec("tpe", n)
    searcher, _ = filled_searcher("tpe", n, epochs, seed)
    storage = StorageContext(storage_path=str(root / "tune"), experiment_dir_name=sweep)
    controller = TuneController(
        search_alg=SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=running)),
        callbacks=driver_callbacks(variant)(sweep, spec),
        storage=storage,
        reuse_actors=True,
        checkpoint_period="auto",
    )
    callbacks = controller._callbacks
    prefix = uuid.UUID(int=random.Random(seed).getrandbits(128)).hex[:5]
    rng = random.Random(seed)
    live = []
    for i in range(n):
        params = random_params(rng)
        trial = Trial(
            "run_trial",
            config=params,
            trial_id=f"{prefix}_{i + 1:05d}",
            storage=storage,
            evaluated_params=params,
            experiment_tag=f"{i + 1}_noise_scale={params['noise_scale']:.4g},"
            f"prior_variance={params['prior_variance']:.4g}",
            placement_group_factory=PlacementGroupFactory([{"CPU": 0.5}]),
            stopping_criterion={},
            checkpoint_config=tune.CheckpointConfig(),
            trial_name_creator=functools.partial(_trial_name, sweep),
            trial_dirname_creator=functools.partial(_trial_name, sweep),
            stub=True,
        )
        trial.init_local_path()
        is_running = i >= n - running
        trial.set_status(Trial.RUNNING if is_running else Trial.TERMINATED)
        controller.add_trial(trial)
        callbacks.on_trial_start(iteration=i, trials=controller._trials, trial=trial)
        base = quality(params)
        last = epochs // 2 if is_running else epochs
        for epoch in range(1, last + 1):
            result = tune_result(trial, epoch_metrics(epoch, epochs, base, rng), epoch)
            callbacks.on_trial_result(
                iteration=i, trials=controller._trials, trial=trial, result=result
            )
            trial.update_last_result(result)
            if epoch % checkpoint_every == 0 or epoch == epochs:
                directory = Path(trial.storage.trial_fs_path, f"checkpoint_{epoch:06d}")
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "state.json").write_text("{}")
                checkpoint = tune.Checkpoint(str(directory))
                trial.on_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=result))
                callbacks.on_checkpoint(
                    iteration=i, trials=controller._trials, trial=trial, checkpoint=checkpoint
                )
        if is_running:
            live.append(trial)
        else:
            callbacks.on_trial_complete(iteration=i, trials=controller._trials, trial=trial)
    return controller, live, storage


def tune_result(trial: Any, metrics: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``metrics`` with the keys Tune adds to every report."""
    now = time.time()
    return {
        **metrics,
        "timestamp": int(now),
        "checkpoint_dir_name": None,
        "done": False,
        "training_iteration": epoch,
        "trial_id": trial.trial_id,
        "date": time.strftime("%Y-%m-%d_%H-%M-%S"),
        "time_this_iter_s": 0.5,
        "time_total_s": 0.5 * epoch,
        "pid": os.getpid(),
        "hostname": platform.node(),
        "node_ip": "127.0.0.1",
        "config": dict(trial.config),
        "time_since_restore": 0.5 * epoch,
        "iterations_since_restore": epoch,
        "experiment_tag": trial.experiment_tag,
    }


def time_saves(
    controller: Any,
    live: list[Any],
    storage: Any,
    repeats: int,
    epochs: int,
    seed: int,
    variant: str = "trimmed",
) -> dict[str, list[float]]:
    """Steady-state saves: before each, every running trial reports one more epoch."""
    rng = random.Random(seed)
    timings = Timings()
    staging = storage.experiment_driver_staging_path
    samples: dict[str, list[float]] = {"save": [], "sync": []}
    with (
        # First: the timer wraps the method as this variant has it.
        state_saves(variant)(),
        timings.wrapped(controller, "_get_trial_checkpoints", "trials_json"),
        timings.wrapped(controller._search_alg, "save_to_dir", "searcher"),
        timings.wrapped(controller._callbacks, "save_to_dir", "callbacks"),
    ):
        for repeat in range(repeats + 1):
            for trial in live:
                epoch = int(trial.last_result.get("training_iteration", 0)) + 1
                metrics = epoch_metrics(min(epoch, epochs), epochs, quality(trial.config), rng)
                result = tune_result(trial, metrics, epoch)
                controller._callbacks.on_trial_result(
                    iteration=repeat, trials=controller._trials, trial=trial, result=result
                )
                trial.update_last_result(result)
                controller._mark_trial_to_checkpoint(trial)
            started = time.perf_counter()
            controller.save_to_dir()
            saved = time.perf_counter()
            storage.syncer.sync_up(staging, storage.experiment_fs_path)
            storage.syncer.wait()
            samples["save"].append(saved - started)
            samples["sync"].append(time.perf_counter() - saved)
    samples.update(timings.calls)
    return samples


def driver_period(controller: Any, save_s: float) -> float:
    """The period between state saves the driver runs at after a save of ``save_s``: what
    `adaptive_state_saves` makes Tune's own checkpoint manager set."""
    manager = controller._checkpoint_manager
    with adaptive_state_saves():
        manager._update_auto_checkpoint_time(save_s)
    return float(manager._checkpoint_period)


def size_figures(n: int, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        controller, live, storage = build_controller(
            Path(tmp),
            n,
            args.tune_running,
            args.tune_epochs,
            args.tune_checkpoint_every,
            args.seed,
            variant,
        )
        built = time.perf_counter() - started
        samples = time_saves(
            controller, live, storage, args.tune_repeats, args.tune_epochs, args.seed, variant
        )
        staging = Path(storage.experiment_driver_staging_path)
        state_bytes = sum(
            f.stat().st_size for f in staging.glob("experiment_state-*.json") if f.is_file()
        )
        staged_bytes = directory_bytes(staging)
        # The staging copy lives in Ray's session directory, not under tmp.
        shutil.rmtree(staging.parent, ignore_errors=True)
    steady = {key: statistics.median(values[1:]) for key, values in samples.items()}
    part = {key: steady[key] for key in ("trials_json", "searcher", "callbacks") if key in steady}
    part["state_file"] = steady["save"] - sum(part.values())
    period = driver_period(controller, steady["save"])
    return {
        "trials": n,
        "variant": variant,
        "build_s": built,
        "cold_save_s": samples["save"][0],
        "save_s": steady["save"],
        "save_max_s": max(samples["save"][1:]),
        "parts_s": part,
        "driver_share_at_1s": steady["save"] / (GLOBAL_CHECKPOINT_S + steady["save"]),
        "adaptive_period_s": period,
        "driver_share_adaptive": steady["save"] / (period + steady["save"]),
        "upload_s": steady["sync"],
        "upload_share_at_1s": min(1.0, steady["sync"] / (GLOBAL_CHECKPOINT_S + steady["save"])),
        "state_file_bytes": state_bytes,
        "state_bytes_per_trial": state_bytes / n,
        "staged_bytes": staged_bytes,
    }


def tune_state_level(args: argparse.Namespace) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict[str, Any] = {}
    sizes = sorted(set(args.tune_trials))
    print(
        f"\n== tune_state: one save of Tune's experiment state, {args.tune_running} trials "
        f"running ({args.tune_epochs} epochs, a checkpoint every {args.tune_checkpoint_every});"
        f" median over {args.tune_repeats} saves after a first (cold) one; ratios to "
        f"{sizes[0]} trials",
        flush=True,
    )
    print(
        f"{'trials':>7}{'variant':>10}{'build s':>9}{'cold ms':>10}{'save ms':>10}{'ratio':>8}"
        f"{'trials':>9}{'state':>9}{'searcher':>10}{'callbks':>9}{'share@1s':>10}"
        f"{'period, share':>15}{'upload ms':>11}{'ratio':>8}{'state MB':>10}{'KB/trial':>10}"
        f"{'staged MB':>11}"
    )
    baselines: dict[str, dict[str, Any]] = {}
    for n in sizes:
        for variant in args.variants:
            row = size_figures(n, args, variant)
            baseline = baselines.setdefault(variant, row)
            row["save_ratio"] = ratio(row["save_s"], baseline["save_s"])
            row["upload_ratio"] = ratio(row["upload_s"], baseline["upload_s"])
            figures[f"{n}/{variant}"] = row
            part = row["parts_s"]
            print(
                f"{n:>7}{variant:>10}{row['build_s']:>9.1f}{fmt_ms(row['cold_save_s']):>10}"
                f"{fmt_ms(row['save_s']):>10}{fmt_ratio(row['save_ratio']):>8}"
                f"{fmt_ms(part.get('trials_json')):>9}{fmt_ms(part['state_file']):>9}"
                f"{fmt_ms(part.get('searcher')):>10}{fmt_ms(part.get('callbacks')):>9}"
                f"{row['driver_share_at_1s']:>9.1%} {row['adaptive_period_s']:>8.1f}s"
                f"{row['driver_share_adaptive']:>6.1%}{fmt_ms(row['upload_s']):>11}"
                f"{fmt_ratio(row['upload_ratio']):>8}{row['state_file_bytes'] / 1e6:>10.2f}"
                f"{row['state_bytes_per_trial'] / 1e3:>10.1f}{row['staged_bytes'] / 1e6:>11.2f}",
                flush=True,
            )
    compare_variants(
        figures, sizes, ("state_bytes_per_trial", "staged_bytes", "save_s", "upload_s")
    )
    print(
        "  save: TuneController.save_to_dir, in the driver's loop (trials: the changed trials' "
        "JSON; state: the experiment-state file; searcher: SearchGenerator.save_to_dir; "
        "callbks: the callbacks' get_state, CheckpointPruner's deletions among them)\n"
        "  share@1s: save / (1 s + save), the loop's time spent saving at "
        "TUNE_GLOBAL_CHECKPOINT_S=1 (the driver's setting before adaptive_state_saves); period "
        "and share: the period adaptive_state_saves gives Tune after a save that long, and "
        "save / (period + save)\n"
        "  upload: the staging directory's copy to the storage path after each save (a "
        "background thread; a save skips it while the last one runs)"
    )
    return figures


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--tune-trials", nargs="+", type=positive_int, default=[1000, 10000])
    options.add_argument(
        "--tune-running", type=positive_int, default=4, help="trials reporting per save"
    )
    options.add_argument("--tune-epochs", type=positive_int, default=20)
    options.add_argument("--tune-checkpoint-every", type=positive_int, default=5)
    options.add_argument("--tune-repeats", type=positive_int, default=5)
    options.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = options.parse_args()
    header("tune_state", ["ray", "optuna"])
    with local_ray():
        figures = tune_state_level(args)
    write_figures("tune_state", args, figures)


if __name__ == "__main__":
    main()
