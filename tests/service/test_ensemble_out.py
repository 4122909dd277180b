"""The API's shape of a sweep ensemble reads what the driver stores, old and new."""

from __future__ import annotations

import torch

from gradreg.train import Predictions
from service.schemas import EnsembleOut
from sweeps.ensemble import build_ensemble, encode_predictions
from sweeps.records import TrialSummary
from sweeps.spec import EnsembleSection, Objective

MEMBER = {"trial_id": "a", "name": "t1", "mlflow_run_id": "run-a", "weight": 1.0}


class Stored:
    def __init__(self, predictions: dict[str, Predictions]) -> None:
        self.data = encode_predictions(predictions)

    def load_predictions(self, run_id: str) -> bytes | None:
        return self.data


def test_an_ensemble_with_fewer_members_than_requested_says_so_in_the_api():
    labels = torch.arange(30) % 3
    g = torch.Generator().manual_seed(0)
    probs = {s: torch.softmax(torch.randn(30, 3, generator=g), -1) for s in ("val", "test")}
    source = Stored({s: Predictions(p.double(), labels) for s, p in probs.items()})
    trials = [TrialSummary("a", "t1", "succeeded", {}, {"val_nll": 1.0}, "run-a")]
    summary = build_ensemble(source, EnsembleSection(), Objective(metric="val_nll"), trials)
    read = EnsembleOut.model_validate(summary.summary())
    assert (read.size, read.requested, len(read.members)) == (1, 5, 1)
    assert read.note is not None and read.note.startswith("5 members asked for, but only 1")
    assert read.temperature_scaling is None  # random predictions: T is fitted
    assert read.metrics["val_temperature_fitted"] == 1.0


def test_an_ensemble_stored_before_requested_and_note_still_reads():
    old = {
        "selection": "top",
        "size": 5,
        "members": [MEMBER],
        "metrics": {"test_nll": 0.5, "val_temperature": 1.2},
        "candidates": 1,
        "skipped": [],
    }
    read = EnsembleOut.model_validate(old)
    assert (read.size, read.requested, read.note, read.temperature_scaling) == (5, None, None, None)
