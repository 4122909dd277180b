"""What a trial's MLflow model costs at its end, against what the trial already logged there.

For one trained digits posterior, times (median of --repeats, each on a fresh run):
- `Tracker.log_outcome`: the trial's end before models (final metrics, bins, diagram): the
  baseline;
- `sweeps.model.log_model`: the pyfunc model (saved posterior, signature, input example);
- `sweeps.model.register`: one registry version (once per sweep);
- the training itself (`fit`, the same config), for scale;
- the reliability diagram as trials draw it since issue 29 (SVG, `gradreg.evaluation.svg`),
  and as matplotlib's PNG with fixed margins and with its constrained layout (how trials drew
  it before), with the ratios between them;
- the epoch metrics a trial writes before its final checkpoint: ``--epochs`` epochs in one
  batch (`Tracker.log_epochs`).
The first call of each is reported apart: a trial process pays MLflow's imports once.
MLflow on a local SQLite store, as the CLI's default. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient

from gradreg.evaluation.plots import write_reliability_diagram
from gradreg.evaluation.svg import write_reliability_svg
from gradreg.train import fit
from sweeps.model import log_model, register
from sweeps.tracking import Tracker


def _median_s(samples: list[float]) -> float:
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()

    config = {
        "dataset": "digits",
        "model": "mlp",
        "model_options": {"hidden": [args.hidden, args.hidden]},
        "method": "vl",
        "variance": "uniform",
        "noise_scale": 0.01,
        "epochs": args.epochs,
        "device": "cpu",
    }
    started = time.perf_counter()
    result = fit(config)
    fit_s = time.perf_counter() - started
    saved = result.saved()

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp, 'mlflow.db')}"
        tracker = Tracker(uri)
        client = MlflowClient(uri)
        experiment = tracker.experiment_id("bench")
        outcome_s, model_s, register_s = [], [], []
        diagram_s: dict[str, list[float]] = {"fixed": [], "constrained": []}
        svg_s: list[float] = []
        epochs_s = []
        epochs = [(row["epoch"], row) for row in result.history]
        for _ in range(args.repeats + 1):  # the first of each warms MLflow's caches
            for layout, samples in diagram_s.items():
                started = time.perf_counter()
                write_reliability_diagram(
                    Path(tmp, f"{layout}.png"), {"vl-uniform": result.test_bins}, layout=layout
                )
                samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            write_reliability_svg(Path(tmp, "diagram.svg"), {"vl-uniform": result.test_bins})
            svg_s.append(time.perf_counter() - started)
            run_id = client.create_run(experiment).info.run_id
            started = time.perf_counter()
            tracker.log_epochs(run_id, epochs)
            epochs_s.append(time.perf_counter() - started)
            t0 = time.perf_counter()
            tracker.log_outcome(run_id, result.metrics, result.test_bins, "vl-uniform", True)
            t1 = time.perf_counter()
            model_uri = log_model(uri, run_id, saved, saved.inputs.example)
            t2 = time.perf_counter()
            register(uri, "bench", model_uri, run_id, {"gradreg.sweep": "bench"}, "")
            t3 = time.perf_counter()
            outcome_s.append(t1 - t0)
            model_s.append(t2 - t1)
            register_s.append(t3 - t2)
    outcome, model, registered = (_median_s(s[1:]) for s in (outcome_s, model_s, register_s))
    fixed, constrained = (_median_s(diagram_s[layout][1:]) for layout in ("fixed", "constrained"))
    epochs_batch = _median_s(epochs_s[1:])
    svg = _median_s(svg_s[1:])
    print(
        json.dumps(
            {
                "params": sum(p.numel() for p in saved.posterior.parameters()),
                "fit_s": round(fit_s, 3),
                "log_outcome_ms": round(outcome * 1000, 1),
                "log_model_ms": round(model * 1000, 1),
                # a trial process's first model pays MLflow's imports
                "log_model_first_ms": round(model_s[0] * 1000, 1),
                "register_ms": round(registered * 1000, 1),
                "diagram_fixed_ms": round(fixed * 1000, 1),
                "diagram_constrained_ms": round(constrained * 1000, 1),
                "diagram_fixed_vs_constrained": round(fixed / constrained, 2),
                "diagram_svg_ms": round(svg * 1000, 3),
                "diagram_svg_vs_fixed": round(svg / fixed, 4),
                "log_epochs_batch_ms": round(epochs_batch * 1000, 1),
                "epochs_in_batch": len(epochs),
                "log_model_vs_log_outcome": round(model / outcome, 2),
                "log_model_vs_fit": round(model / fit_s, 3),
                "repeats": args.repeats,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
