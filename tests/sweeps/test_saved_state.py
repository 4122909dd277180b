"""Sweeps saved by earlier code resume: Tune's pickled state names our classes by import path
(docs/design.md, "Saved state").

- ``saved_sweep.tar.gz``: saved at d143a76, before the method table and the sweeps modules were
  reorganised, and before studies persisted (its Optuna study is pickled with Tune's state).
- ``saved_sweep_d525a8a.tar.gz``: saved at d525a8a, just before the issue-24 moves (the spec's
  models at ``sweeps.spec``, the study storage a subclass of Optuna's cache); its Optuna study is
  kept in ``optuna.db`` beside Tune's state, and must be continued, not started afresh.
- ``saved_sweep_039f30b.tar.gz``: saved at 039f30b, before sweeps could be extended (issue 27),
  with Tune's results trimmed (issue 29).

Each holds one finished trial and one stopped part-way (tests/sweeps/fixtures/make_saved_sweep.py).
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeps import DriverOptions, resume_sweep
from sweeps.study import TUNE_TRIAL_ATTR
from sweeps.tracking import (
    IMPORTANCE_TAG,
    ROLE_TAG,
    STUDY_SOURCE_TAG,
    STUDY_STORAGE_TAG,
    TRIAL_TAG,
)

FIXTURES = Path(__file__).with_name("fixtures")
SAVED = ["saved_sweep.tar.gz", "saved_sweep_d525a8a.tar.gz", "saved_sweep_039f30b.tar.gz"]


def unpack_saved_sweep(archive: Path, root: Path) -> dict:
    """The fixture under ``root``, its absolute paths rewritten from where it was made."""
    with tarfile.open(archive) as opened:
        opened.extractall(root, filter="data")
    manifest = json.loads((root / "manifest.json").read_text())
    old = manifest["root"]
    record_file = root / "tune" / manifest["sweep"] / "sweep.json"
    record = json.loads(record_file.read_text())
    record["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    record_file.write_text(json.dumps(record))
    with sqlite3.connect(root / "mlflow.db") as db:
        db.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
            (old, str(root)),
        )
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, str(root)))
    db.close()
    return {**manifest, "tracking_uri": record["tracking_uri"], "extra": record["extra"]}


@pytest.mark.parametrize("archive", SAVED)
def test_a_sweep_saved_by_earlier_code_resumes(ray_local, tmp_path, archive):
    saved = unpack_saved_sweep(FIXTURES / archive, tmp_path)
    options = DriverOptions(
        tracking_uri=saved["tracking_uri"], storage_path=str(tmp_path / "tune"), quiet=True
    )

    outcome = resume_sweep(saved["sweep"], options)

    assert outcome.status == "succeeded", [(t.name, t.state, t.error) for t in outcome.trials]
    assert outcome.counts() == {"succeeded": 3}
    by_id = {t.trial_id: t for t in outcome.trials}
    for trial_id, metrics in saved["finished"].items():
        assert by_id[trial_id].metrics == metrics  # kept from the saved state, not re-run
    client = MlflowClient(saved["tracking_uri"])
    runs = client.search_runs([outcome.experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert sorted(r.data.tags[TRIAL_TAG] for r in trials) == sorted(by_id)
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert steps == list(range(1, 9))  # the part-way trial went on from its checkpoint
        assert run.info.status == "FINISHED"
    tags = client.get_run(outcome.parent_run_id).data.tags
    assert tags[IMPORTANCE_TAG].startswith("not computed: 3 trial(s)")
    if "study" not in saved["extra"]:
        # Saved before studies persisted: its study resumed in memory, from Tune's pickle.
        assert tags[STUDY_STORAGE_TAG] == "memory"
        return
    # Its study, beside Tune's state where the sweep now is, continued: one Optuna trial for
    # each Tune trial, the two saved ones among them, each with its trial's final value.
    assert saved["extra"]["study"]["source"] == "experiment"
    storage = f"sqlite:///{tmp_path / 'tune' / saved['sweep'] / 'optuna.db'}"
    assert (tags[STUDY_STORAGE_TAG], tags[STUDY_SOURCE_TAG]) == (storage, "experiment")
    study = optuna.load_study(study_name=saved["sweep"], storage=storage)
    by_tune = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}
    assert len(study.trials) == 3 and set(by_tune) == set(by_id)
    for trial_id, trial in by_id.items():
        assert by_tune[trial_id].state.name == "COMPLETE"
        assert by_tune[trial_id].value == pytest.approx(trial.metrics["val_nll"])


@pytest.mark.parametrize("archive", SAVED)
def test_a_sweep_saved_by_earlier_code_can_be_extended(ray_local, tmp_path, archive):
    saved = unpack_saved_sweep(FIXTURES / archive, tmp_path)
    options = DriverOptions(
        tracking_uri=saved["tracking_uri"], storage_path=str(tmp_path / "tune"), quiet=True
    )

    # Saved with a budget of 3 trials, 2 started: it resumes the part-way one and runs 2 more.
    outcome = resume_sweep(saved["sweep"], options, extend={"max_trials": 4})

    assert outcome.status == "succeeded", [(t.name, t.state, t.error) for t in outcome.trials]
    assert outcome.counts() == {"succeeded": 4}
    by_id = {t.trial_id: t for t in outcome.trials}
    for trial_id, metrics in saved["finished"].items():
        assert by_id[trial_id].metrics == metrics
