"""What a code bundle costs a sweep: its start and its trials, against the same sweep without one.

    python benchmarks/user_code_overhead.py               # 4 trials of 3 epochs, 2 repeats
    python benchmarks/user_code_overhead.py --epochs 10 --repeats 3

Three sweeps per repeat, each in a fresh process that starts its own Ray (a bundle is Ray's
runtime environment, which is given when Ray starts), one trial at a time:
(a) built-in: gradreg's `mlp` on the example's signals, the data loader on the path;
(b) installed: examples/own-model's network and loader, on the path of the process and
    its Ray workers (code installed on the nodes: no bundle);
(c) bundle: the same code shipped as a bundle (`python -m sweeps run --code DIR`): Ray
    uploads the zip, every worker unpacks it and imports from it.
Every sweep trains the same four configurations (initial points). Start-up is run_sweep's
call to its first trial's start (Ray's start, the bundle's upload, the preflight, Tune's
set-up); a trial is its start to its end as the driver saw them. (c) against (b) is the
bundle's own cost; (a) puts both next to a sweep of a built-in network.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _trial_clock import spread

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CODE = ROOT / "examples" / "own-model" / "src"
N_TRIALS = 4
MODES = ("built-in", "installed", "bundle")


def sweep_document(mode: str, epochs: int, name: str) -> dict[str, Any]:
    model: dict[str, Any] = {"entry_point": "mynets.mixer:build", "options": {"width": 32}}
    if mode == "built-in":
        model = {"name": "mlp", "options": {"hidden": [64]}}
    points = [
        {"noise_scale": 10 ** (-3 + 2 * i / (N_TRIALS - 1)), "prior_variance": 10 ** (i % 2)}
        for i in range(N_TRIALS)
    ]
    return {
        "name": name,
        "dataset": {"entry_point": "mydata.signals:load", "options": {"n": 1200, "noise": 0.3}},
        "model": model,
        "method": "vl-uniform",
        "fixed": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "device": "cpu"},
        "parameters": {
            "noise_scale": {"type": "float", "low": 1e-3, "high": 0.1, "scale": "log"},
            "prior_variance": {"type": "float", "low": 0.1, "high": 10.0, "scale": "log"},
        },
        "search": {"algorithm": "random", "seed": 0, "initial_points": points},
        "budget": {"max_trials": N_TRIALS, "max_concurrent_trials": 1},
        "resources": {"cpu": 1},
        "fault_tolerance": {"max_retries_per_trial": 0, "checkpoint_every_epochs": epochs},
    }


@dataclass
class SweepTimes:
    startup_s: float  # run_sweep's call to the first trial's start
    trial_s: float  # mean of each trial's start to its end
    wall_s: float  # run_sweep's whole call


def one_sweep(mode: str, epochs: int, root: str, name: str, queue: Any) -> None:
    """In a fresh process: run one sweep and put its SweepTimes (or the error) on ``queue``."""
    try:
        if mode != "bundle":
            # Installed on the "nodes": this process's path and its Ray workers' (they inherit
            # the environment of the Ray that run_sweep starts).
            sys.path.insert(0, str(EXAMPLE_CODE))
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(EXAMPLE_CODE), os.environ.get("PYTHONPATH")])
            )
        from _trial_clock import timed_sweep_run

        from sweeps import DriverOptions, Limits, parse_spec
        from sweeps.code import CodeBundle

        spec = parse_spec(sweep_document(mode, epochs, name), Limits())
        options = DriverOptions(
            tracking_uri=f"sqlite:///{Path(root) / 'mlflow.db'}",
            storage_path=str(Path(root) / "tune"),
            quiet=True,
            code=CodeBundle.pack(EXAMPLE_CODE) if mode == "bundle" else None,
        )
        run = timed_sweep_run(spec, options, N_TRIALS)
        spans = [end - start for start, end in zip(run.starts, run.ends, strict=True)]
        queue.put(SweepTimes(run.starts[0] - run.called, statistics.mean(spans), run.wall_s))
    except BaseException as error:  # reported by the parent, which fails loudly
        queue.put(f"{type(error).__name__}: {error}")


def timed_sweep(mode: str, epochs: int, root: Path, name: str) -> SweepTimes:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=one_sweep, args=(mode, epochs, str(root), name, queue))
    process.start()
    answer = queue.get(timeout=1800)
    process.join(timeout=300)
    if isinstance(answer, str):
        raise RuntimeError(f"the {mode} sweep failed: {answer}")
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be at least 1")

    times: dict[str, list[SweepTimes]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            # Each repeat starts with another mode, so that no mode always goes first.
            for mode in MODES[repeat % 3 :] + MODES[: repeat % 3]:
                result = timed_sweep(mode, args.epochs, Path(tmp), f"bench-{mode}-r{repeat}")
                times[mode].append(result)
                print(
                    f"repeat {repeat + 1} {mode}: start-up {result.startup_s:.1f} s, "
                    f"trial {result.trial_s:.2f} s, whole sweep {result.wall_s:.1f} s",
                    flush=True,
                )

    def figure(mode: str, field: str) -> list[float]:
        return [getattr(t, field) for t in times[mode]]

    def ratio(mode: str, baseline: str, field: str) -> list[float]:
        return [a / b for a, b in zip(figure(mode, field), figure(baseline, field), strict=True)]

    def difference(mode: str, baseline: str, field: str) -> list[float]:
        return [a - b for a, b in zip(figure(mode, field), figure(baseline, field), strict=True)]

    import ray
    import torch

    print(
        f"# {N_TRIALS} trials of {args.epochs} epochs, 1 at a time, VL-uniform on the example's "
        "signals (1200, 4 classes)"
    )
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    print(f"# median [min, max] over {args.repeats} repeat(s)")
    for mode in MODES:
        print(
            f"{mode:9s} start-up {spread(figure(mode, 'startup_s'), ' s')}, "
            f"trial {spread(figure(mode, 'trial_s'), ' s')}"
        )
    print(
        "bundle vs installed: start-up "
        f"{spread(difference('bundle', 'installed', 'startup_s'), ' s', sign='+')} "
        f"({spread(ratio('bundle', 'installed', 'startup_s'), 'x')}), trial "
        f"{spread(ratio('bundle', 'installed', 'trial_s'), 'x')}"
    )
    print(
        "bundle vs built-in:  start-up "
        f"{spread(difference('bundle', 'built-in', 'startup_s'), ' s', sign='+')} "
        f"({spread(ratio('bundle', 'built-in', 'startup_s'), 'x')}), trial "
        f"{spread(ratio('bundle', 'built-in', 'trial_s'), 'x')}"
    )


if __name__ == "__main__":
    main()
