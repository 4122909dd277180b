"""Files a finished run leaves behind: metrics, history, reliability bins and diagram."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradreg.evaluation.plots import write_reliability_diagram
from gradreg.train import FitResult

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
BINS_FILE = "reliability_bins.json"
DIAGRAM_FILE = "reliability.png"
CONFIG_FILE = "config.json"


def result_summary(result: FitResult) -> dict[str, Any]:
    """A JSON-safe summary: config, dataset, final metrics and the σ of each parameter."""
    return {
        "config": result.config.to_dict(),
        "dataset": result.dataset,
        "metrics": result.metrics,
        # Why T was left at 1 (val_temperature_fitted 0), or None when it was fitted.
        "temperature_scaling": result.temperature.reason if result.temperature else None,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "posterior": result.posterior.variance_summary(),
    }


def write_run_artifacts(result: FitResult, directory: str | Path) -> list[Path]:
    """Write the run's files into ``directory`` (created if missing); return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    method = result.config.method
    label = f"{method}-{result.config.variance} (test)" if result.config.variance else method
    files = {
        METRICS_FILE: result_summary(result),
        HISTORY_FILE: result.history,
        BINS_FILE: result.test_bins.to_dict(),
        CONFIG_FILE: result.config.to_dict(),
    }
    paths = []
    for name, payload in files.items():
        path = out / name
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        paths.append(path)
    paths.append(write_reliability_diagram(out / DIAGRAM_FILE, {label: result.test_bins}))
    return paths
