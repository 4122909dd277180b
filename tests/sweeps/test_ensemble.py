"""The sweep ensemble: which trials it takes, and its numbers against the stored predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from gradreg.evaluation.metrics import classification_metrics
from gradreg.train import Predictions
from sweeps import TrialSummary, run_sweep
from sweeps.cli import format_ensemble
from sweeps.driver import ensemble_sweep
from sweeps.ensemble import (
    PREDICTIONS_FILE,
    build_ensemble,
    decode_predictions,
    encode_predictions,
)
from sweeps.spec import EnsembleSection, Objective
from sweeps.tracking import (
    ENSEMBLE_DIAGRAM_FILE,
    ENSEMBLE_TEMPERATURE_TAG,
    ROLE_TAG,
    TEMPERATURE_TAG,
)
from tests.helpers.specs import digits_spec


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


def test_an_ensemble_of_fewer_finished_trials_than_asked_reports_the_members_it_has():
    """A 4-trial sweep with the default ensemble.size 5: 4 members, and the reason."""
    trials = [trial(name, nll) for name, nll in [("a", 0.4), ("b", 0.1), ("c", 0.3), ("d", 0.2)]]
    trials.append(trial("e", 0.05, "failed"))
    source = Stored({f"run-{t.name}": predictions(i) for i, t in enumerate(trials)})
    found = build_ensemble(source, EnsembleSection(size=5), Objective(metric="val_nll"), trials)
    assert (found.size, found.requested, len(found.members)) == (4, 5, 4)
    note = (
        "5 members asked for, but only 4 of the sweep's finished trials had predictions (the "
        "sweep has 5 trials, 4 finished)"
    )
    assert found.note == note
    summary = found.summary()
    assert (summary["size"], summary["requested"], summary["note"]) == (4, 5, note)
    printed = format_ensemble(summary)
    assert printed.startswith("sweep ensemble (top, 4 members (5 requested) from 4 finished ")
    assert f"\n  note: {note}" in printed
    # As many as asked: no note.
    enough = build_ensemble(source, EnsembleSection(size=4), Objective(metric="val_nll"), trials)
    assert (enough.size, enough.requested, enough.note) == (4, 4, None)
    assert "requested" not in format_ensemble(enough.summary())


def test_a_top_trial_without_predictions_gives_its_place_to_the_next_best():
    trials = [trial(name, nll) for name, nll in [("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.4)]]
    stored = {f"run-{t.name}": predictions(i) for i, t in enumerate(trials)}
    stored["run-a"] = None
    source = Stored(stored)
    found = build_ensemble(source, EnsembleSection(size=2), Objective(metric="val_nll"), trials)
    assert [m["trial_id"] for m in found.members] == ["b", "c"]
    assert source.asked == ["run-a", "run-b", "run-c"]  # d is not loaded
    assert found.skipped == [{"trial_id": "a", "reason": f"no {PREDICTIONS_FILE}"}]
    assert (found.size, found.requested, found.note) == (2, 2, None)
    # None left to take its place: the note counts the trial without predictions.
    short = build_ensemble(source, EnsembleSection(size=4), Objective(metric="val_nll"), trials)
    assert short.size == 3 and short.note == (
        f"4 members asked for, but only 3 of the sweep's finished trials had predictions (the "
        f"sweep has 4 trials, 4 finished, 1 of them without {PREDICTIONS_FILE})"
    )


def test_greedy_picks_that_repeat_a_trial_are_said_to():
    trials = [trial("a", 0.1), trial("b", 0.2)]
    good, bad = predictions(0), predictions(1)
    for split in ("val", "test"):  # a is right everywhere, b no better than chance
        good[split] = Predictions(
            torch.nn.functional.one_hot(good[split].labels, 3) * 0.9 + 0.1 / 3,
            good[split].labels,
        )
    source = Stored({"run-a": good, "run-b": bad})
    section = EnsembleSection(size=3, selection="greedy")
    found = build_ensemble(source, section, Objective(metric="val_nll"), trials)
    assert [(m["trial_id"], m["weight"]) for m in found.members] == [("a", 1.0)]
    assert (found.size, found.requested) == (1, 3)
    assert found.note == (
        "3 members asked for, but only 2 of the sweep's finished trials had predictions (the "
        "sweep has 2 trials, 2 finished); greedy selection made 3 picks, with replacement, "
        "and chose 1 distinct trial (each member's weight is its share of the picks)"
    )


def test_an_ensemble_whose_validation_labels_are_separated_leaves_its_temperature_at_1():
    trials = [trial("a", 0.1), trial("b", 0.2)]
    stored = {}
    for i, t in enumerate(trials):
        found = predictions(i)
        val = found["val"]  # every validation example right by a margin, in both trials
        sharp = torch.softmax(val.probs.log() + 5.0 * torch.nn.functional.one_hot(val.labels), -1)
        stored[f"run-{t.name}"] = {**found, "val": Predictions(sharp, val.labels)}
    ensemble = build_ensemble(
        Stored(stored), EnsembleSection(size=2), Objective(metric="val_nll"), trials
    )
    reason = (
        "not fitted: all 40 validation examples are classified correctly with a margin, so the "
        "NLL falls as T -> 0 and has no finite minimiser"
    )
    assert ensemble.temperature_scaling == reason
    assert ensemble.metrics["val_temperature_fitted"] == 0.0
    assert ensemble.metrics["test_nll_ts"] == pytest.approx(ensemble.metrics["test_nll"])
    summary = ensemble.summary()
    assert summary["temperature_scaling"] == reason
    printed = format_ensemble(summary)
    assert "| +TS not fitted (T = 1)\n" in printed
    assert printed.endswith(f"\n  temperature scaling {reason}")


def test_an_ensemble_stored_before_requested_and_note_still_prints():
    """Stored sweeps keep the old summary: no requested, note or temperature_scaling."""
    old = {
        "selection": "top",
        "size": 5,
        "members": [{"trial_id": "a", "name": "t1", "mlflow_run_id": "r", "weight": 1.0}],
        "metrics": {
            f"test_{m}{v}": 0.5 for m in ("accuracy", "nll", "ece", "brier") for v in ("", "_ts")
        },
        "candidates": 1,
        "skipped": [],
    }
    printed = format_ensemble(old)
    assert printed.startswith("sweep ensemble (top, 1 member from 1 finished trials)")
    assert "note" not in printed and "+TS nll 0.5" in printed


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
    assert {"ensemble.json", ENSEMBLE_DIAGRAM_FILE} <= files
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


def test_a_sweep_says_where_temperature_scaling_was_not_fitted_and_why(
    ray_local, driver_options, tracking_uri
):
    """Two trials on wine's split 15 (27 validation rows, all classified right by epoch 6),
    with the default ensemble.size 5: each trial's run and the parent run carry the reason,
    and the ensemble reports the 2 members it has."""
    spec = digits_spec(
        name="wine-separable",
        dataset={"name": "wine", "split_seed": 15},
        model={"name": "mlp", "options": {"hidden": [16]}},
        fixed={"epochs": 6, "batch_size": 32, "lr": 0.01, "seed": 15, "device": "cpu"},
        parameters={"noise_scale": {"type": "float", "low": 0.0099, "high": 0.0101}},
        budget={"max_trials": 2, "max_concurrent_trials": 2},
    )
    outcome = run_sweep(spec, driver_options)

    assert outcome.status == "succeeded" and len(outcome.trials) == 2
    reason = (
        "not fitted: all 27 validation examples are classified correctly with a margin, so the "
        "NLL falls as T -> 0 and has no finite minimiser"
    )
    client = MlflowClient(tracking_uri)
    for t in outcome.trials:
        run = client.get_run(t.mlflow_run_id)
        assert run.data.metrics["val_accuracy"] == 1.0
        assert (
            run.data.metrics["val_temperature"],
            run.data.metrics["val_temperature_fitted"],
        ) == (
            1.0,
            0.0,
        )
        assert run.data.metrics["test_nll_ts"] == pytest.approx(run.data.metrics["test_nll"])
        assert run.data.tags[TEMPERATURE_TAG] == reason
    ensemble = outcome.ensemble
    assert (ensemble["size"], ensemble["requested"], len(ensemble["members"])) == (2, 5, 2)
    assert ensemble["note"] == (
        "5 members asked for, but only 2 of the sweep's finished trials had predictions (the "
        "sweep has 2 trials, 2 finished)"
    )
    assert ensemble["temperature_scaling"] == reason
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[ENSEMBLE_TEMPERATURE_TAG] == reason
    assert parent.data.metrics["ensemble_val_temperature_fitted"] == 0.0
    assert parent.data.metrics["ensemble_members"] == 2
