"""The sweep ensemble: an equal-weight ensemble of a sweep's best finished trials.

Every finished trial keeps its validation and test class probabilities in its MLflow run
(``predictions.npz``). At the end of a sweep, or on demand (`python -m sweeps ensemble NAME`),
the best ``ensemble.size`` trials by the first objective (``selection: top``), or Caruana's
greedy picks by validation NLL among the best 4 × size (``selection: greedy``), are averaged.
Test data are never used to choose. Trials stopped early (ASHA) or failed never predicted on
the whole splits, so they are not candidates; a finished trial without predictions is skipped
and the next best takes its place. The ensemble reports the members it has (``size``) beside
the spec's ``requested``, with a note when they differ (fewer finished trials with
predictions than asked for; greedy picks that repeat a trial).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from gradreg.evaluation.ensembles import evaluate_ensemble, greedy_selection
from gradreg.evaluation.metrics import ReliabilityBins
from gradreg.train import Predictions
from sweeps.records import Goal, TrialSummary, ranked_trials
from sweeps.spec import EnsembleSection

PREDICTIONS_FILE = "predictions.npz"
GREEDY_POOL = 4  # greedy selection looks at the best GREEDY_POOL × size trials


class PredictionSource(Protocol):
    def load_predictions(self, run_id: str) -> bytes | None: ...


@dataclass
class SweepEnsemble:
    selection: str
    requested: int  # the spec's ensemble.size
    members: list[dict[str, Any]]  # trial_id, name, mlflow_run_id, weight (share of picks)
    # {val,test}_{metric}, _ts variants, val_temperature, val_temperature_fitted
    metrics: dict[str, float]
    test_bins: ReliabilityBins | None
    candidates: int  # finished trials it could choose from
    skipped: list[dict[str, str]] = field(default_factory=list)  # trials without predictions
    note: str | None = None  # why it has fewer members than requested
    temperature_scaling: str | None = None  # why its T was left at 1; None when fitted

    @property
    def size(self) -> int:
        """The members it has: distinct trials (greedy selection may pick one several times)."""
        return len(self.members)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe part that travels with the sweep's outcome to the store and the API."""
        return {
            "selection": self.selection,
            "size": self.size,
            "requested": self.requested,
            "note": self.note,
            "members": self.members,
            "metrics": self.metrics,
            "candidates": self.candidates,
            "skipped": self.skipped,
            "temperature_scaling": self.temperature_scaling,
        }


def encode_predictions(predictions: Mapping[str, Predictions]) -> bytes:
    """``predictions.npz``: ``{split}_probs`` (float32, rows sum to 1) and ``{split}_labels``."""
    arrays: dict[str, np.ndarray] = {}
    for split, p in predictions.items():
        arrays[f"{split}_probs"] = p.probs.detach().cpu().numpy().astype(np.float32)
        arrays[f"{split}_labels"] = p.labels.detach().cpu().numpy().astype(np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds: bool
    return buffer.getvalue()


def decode_predictions(data: bytes) -> dict[str, Predictions]:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        splits = sorted({key.rsplit("_", 1)[0] for key in stored.files})
        return {
            split: Predictions(
                torch.from_numpy(stored[f"{split}_probs"].astype(np.float64)),
                torch.from_numpy(stored[f"{split}_labels"]),
            )
            for split in splits
        }


def build_ensemble(
    source: PredictionSource,
    section: EnsembleSection,
    objective: Goal,
    trials: Sequence[TrialSummary],
) -> SweepEnsemble | None:
    """The sweep ensemble of ``trials`` (None when ``section.size`` is 0)."""
    if section.size == 0:
        return None
    finished = [t for t in trials if t.state == "succeeded" and t.mlflow_run_id]
    ranked = ranked_trials(objective, finished)
    pool = section.size * (GREEDY_POOL if section.selection == "greedy" else 1)
    loaded: list[tuple[TrialSummary, dict[str, Predictions]]] = []
    skipped = []
    for trial in ranked:
        if len(loaded) == pool:
            break
        data = source.load_predictions(str(trial.mlflow_run_id))
        if data is None:
            skipped.append({"trial_id": trial.trial_id, "reason": f"no {PREDICTIONS_FILE}"})
            continue
        loaded.append((trial, decode_predictions(data)))
    if not loaded:
        note = _shortfall(section.size, 0, len(trials), len(ranked), len(skipped))
        return SweepEnsemble(
            section.selection, section.size, [], {}, None, len(ranked), skipped, note
        )
    splits = list(loaded[0][1])
    probs = {s: [p[s].probs for _, p in loaded] for s in splits}
    labels = {s: loaded[0][1][s].labels for s in splits}
    for trial, predictions in loaded[1:]:
        if any(not torch.equal(predictions[s].labels, labels[s]) for s in splits):
            raise ValueError(
                f"trial {trial.trial_id} predicted other examples than {loaded[0][0].trial_id}: "
                "a sweep ensemble needs every trial on the same split"
            )
    if section.selection == "greedy":
        picks = greedy_selection(probs["val"], labels["val"], section.size)
    else:
        picks = list(range(min(section.size, len(loaded))))
    result = evaluate_ensemble(probs, labels, picks)
    counts = Counter(picks)
    members = [
        {
            "trial_id": loaded[i][0].trial_id,
            "name": loaded[i][0].name,
            "mlflow_run_id": loaded[i][0].mlflow_run_id,
            "weight": count / len(picks),
        }
        for i, count in sorted(counts.items())
    ]
    notes = []
    if len(loaded) < section.size:
        notes.append(_shortfall(section.size, len(loaded), len(trials), len(ranked), len(skipped)))
    if section.selection == "greedy" and len(members) < section.size:
        notes.append(
            f"greedy selection made {section.size} picks, with replacement, and chose "
            f"{len(members)} distinct trial{_s(len(members))} (each member's weight is its "
            "share of the picks)"
        )
    return SweepEnsemble(
        section.selection,
        section.size,
        members,
        result.metrics,
        result.test_bins,
        len(ranked),
        skipped,
        "; ".join(notes) or None,
        result.temperature.reason,
    )


def _shortfall(requested: int, loaded: int, trials: int, finished: int, skipped: int) -> str:
    """Why an ensemble has fewer candidates with predictions than members asked for."""
    had = f"only {loaded}" if loaded else "none"
    without = f", {skipped} of them without {PREDICTIONS_FILE}" if skipped else ""
    return (
        f"{requested} member{_s(requested)} asked for, but {had} of the sweep's finished "
        f"trials had predictions (the sweep has {trials} trial{_s(trials)}, {finished} "
        f"finished{without})"
    )


def _s(count: int) -> str:
    return "" if count == 1 else "s"
