"""The sweep ensemble: which trials it takes, and its numbers against the stored predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from gradreg.metrics import classification_metrics
from gradreg.train import Predictions
from sweeps import TrialSummary, run_sweep
from sweeps.driver import ensemble_sweep
from sweeps.ensemble import (
    PREDICTIONS_FILE,
    build_ensemble,
    decode_predictions,
    encode_predictions,
)
from sweeps.spec import EnsembleSection, Objective
from sweeps.tracking import ROLE_TAG
from tests.sweeps.conftest import digits_spec


def predictions(seed: int, n: int = 40, classes: int = 3) -> dict[str, Predictions]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    out = {}
    for split in ("val", "test"):
        probs = torch.softmax(torch.randn(n, classes, generator=g, dtype=torch.float64), -1)
        out[split] = Predictions(probs, labels)
    return out


class Stored:
    """Predictions by run id, as a tracker would return them."""

    def __init__(self, by_run: dict[str, dict[str, Predictions] | None]) -> None:
        self.by_run = by_run
        self.asked: list[str] = []

    def load_predictions(self, run_id: str) -> bytes | None:
        self.asked.append(run_id)
        found = self.by_run[run_id]
        return None if found is None else encode_predictions(found)


def trial(name: str, val_nll: float, state: str = "succeeded") -> TrialSummary:
    return TrialSummary(name, name, state, {}, {"val_nll": val_nll}, f"run-{name}")


def test_top_takes_the_best_finished_trials_by_the_first_objective():
    trials = [trial("a", 0.5), trial("b", 0.2), trial("c", 0.9), trial("d", 0.1, "failed")]
    trials.append(trial("e", 0.3, "stopped"))  # ASHA's: it never predicted on the whole splits
    source = Stored({f"run-{t.name}": predictions(i) for i, t in enumerate(trials)})
    found = build_ensemble(source, EnsembleSection(size=2), Objective(metric="val_nll"), trials)
    assert [m["trial_id"] for m in found.members] == ["b", "a"]  # best first
    assert source.asked == ["run-b", "run-a"]
    assert found.candidates == 3 and all(m["weight"] == 0.5 for m in found.members)
    assert (
        build_ensemble(source, EnsembleSection(size=0), Objective(metric="val_nll"), trials) is None
    )


def test_greedy_picks_by_validation_nll_with_replacement_and_names_what_it_skipped():
    trials = [trial(name, nll) for name, nll in [("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.4)]]
    stored = {f"run-{t.name}": predictions(i) for i, t in enumerate(trials)}
    stored["run-c"] = None  # a trial from before trials kept their predictions
    source = Stored(stored)
    found = build_ensemble(
        source, EnsembleSection(size=3, selection="greedy"), Objective(metric="val_nll"), trials
    )
    assert found.skipped == [{"trial_id": "c", "reason": f"no {PREDICTIONS_FILE}"}]
    assert sum(m["weight"] for m in found.members) == pytest.approx(1.0)
    assert {m["trial_id"] for m in found.members} <= {"a", "b", "d"}


def test_trials_that_predicted_different_examples_cannot_be_ensembled():
    other = predictions(1)
    other["val"] = Predictions(other["val"].probs, torch.flip(other["val"].labels, [0]))
    source = Stored({"run-a": predictions(0), "run-b": other})
    with pytest.raises(ValueError, match=r"other examples .* the same split"):
        build_ensemble(
            source,
            EnsembleSection(size=2),
            Objective(metric="val_nll"),
            [trial("a", 0.1), trial("b", 0.2)],
        )


def test_predictions_survive_their_file():
    original = predictions(5)
    back = decode_predictions(encode_predictions(original))
    for split in ("val", "test"):
        assert torch.equal(back[split].labels, original[split].labels)
        assert torch.allclose(back[split].probs, original[split].probs, atol=1e-7)


def test_a_sweep_logs_its_ensemble_on_the_parent_run(ray_local, driver_options, tracking_uri):
    spec = digits_spec(name="digits-ensemble", ensemble={"size": 3})
    outcome = run_sweep(spec, driver_options)

    assert outcome.status == "succeeded" and outcome.ensemble is not None
    members = outcome.ensemble["members"]
    ranked = sorted(outcome.trials, key=lambda t: t.metrics["val_nll"])[:3]
    assert {m["trial_id"] for m in members} == {t.trial_id for t in ranked}
    client = MlflowClient(tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    # Recomputed from the probabilities the member trials stored: the same numbers.
    stored = []
    for member in members:
        path = client.download_artifacts(member["mlflow_run_id"], PREDICTIONS_FILE)
        with open(path, "rb") as handle:
            stored.append(decode_predictions(handle.read()))
    test_probs = torch.stack([s["test"].probs for s in stored]).mean(0)
    expected = classification_metrics(test_probs, stored[0]["test"].labels, "test_")
    for key, value in expected.items():
        assert parent.data.metrics[f"ensemble_{key}"] == pytest.approx(value, rel=1e-9)
        assert outcome.ensemble["metrics"][key] == pytest.approx(value, rel=1e-9)
    assert parent.data.metrics["ensemble_members"] == 3
    files = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"ensemble.json", "ensemble_reliability.png"} <= files
    with open(client.download_artifacts(outcome.parent_run_id, "ensemble.json")) as handle:
        assert json.load(handle)["members"] == members
    assert np.isfinite(parent.data.metrics["ensemble_test_nll_ts"])

    # On demand, for the finished sweep: greedy selection from the trials in MLflow.
    again = ensemble_sweep(spec.name, driver_options, selection="greedy", size=4)
    assert again.selection == "greedy" and again.candidates == 4
    assert again.metrics["val_nll"] <= min(t.metrics["val_nll"] for t in outcome.trials) + 1e-6
    children = [
        r
        for r in client.search_runs([outcome.experiment_id])
        if r.data.tags.get(ROLE_TAG) == "trial"
    ]
    assert all(
        PREDICTIONS_FILE in {a.path for a in client.list_artifacts(r.info.run_id)} for r in children
    )
