"""A sweep saved by an earlier release resumes: Tune's pickled state names our classes."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

from mlflow import MlflowClient

from sweeps import DriverOptions, resume_sweep
from sweeps.tracking import IMPORTANCE_TAG, ROLE_TAG, STUDY_STORAGE_TAG, TRIAL_TAG

FIXTURE = Path(__file__).with_name("fixtures") / "saved_sweep.tar.gz"


def unpack_saved_sweep(root: Path) -> dict:
    """The fixture under ``root``, its absolute paths rewritten from where it was made."""
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(root, filter="data")
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
    return {**manifest, "tracking_uri": record["tracking_uri"]}


def test_a_sweep_saved_by_the_earlier_layout_resumes(ray_local, tmp_path):
    saved = unpack_saved_sweep(tmp_path)
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
    # Saved before studies persisted: its study resumed in memory, from Tune's pickle.
    tags = client.get_run(outcome.parent_run_id).data.tags
    assert tags[STUDY_STORAGE_TAG] == "memory"
    assert tags[IMPORTANCE_TAG].startswith("not computed: 3 trial(s)")
