"""python -m sweeps: validate, schema, run by id from a store, stop and resume, Ctrl-C,
--version and the exit codes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sweeps import cli
from sweeps.cli import main
from sweeps.driver import DriverOptions
from sweeps.records import SweepOutcome, TrialSummary, trial_number
from sweeps.spec import SweepSpec
from sweeps.store import DirectoryStore, run_stored
from tests.helpers import poll_until
from tests.helpers.specs import (
    DIGITS_SWEEP,
    IVON_SWEEP,
    assert_registered_model_predicts,
    digits_spec,
)


def test_validate_accepts_the_examples_and_names_problems(tmp_path, capsys):
    examples = sorted(str(p) for p in Path("sweeps/examples").glob("*.yaml"))
    assert main(["validate", *examples]) == 0
    assert capsys.readouterr().out.count(": ok (") == 4

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**DIGITS_SWEEP, "method": "map"}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "parameters.noise_scale: method 'map' does not use noise_scale" in err


def test_schema_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == SweepSpec.model_json_schema()


def test_run_needs_a_spec_or_an_id(capsys):
    assert main(["run"]) == 2
    assert "give a spec file or --sweep-id" in capsys.readouterr().err
    assert main(["run", "--sweep-id", "x"]) == 2
    assert "--sweep-id needs --store" in capsys.readouterr().err


def test_resume_of_an_unknown_sweep_is_a_clear_error(tmp_path, capsys):
    assert main(["resume", "nothing-here", "--storage-path", str(tmp_path)]) == 2
    assert "no sweep 'nothing-here' to resume" in capsys.readouterr().err


def test_stored_sweep_stops_on_request_and_a_second_attempt_resumes_it(
    ray_local, tmp_path, driver_options
):
    store = DirectoryStore(tmp_path / "store")
    store.submit("sweep-0001", digits_spec(budget={"max_trials": 3, "max_concurrent_trials": 1}))
    store.request_stop("sweep-0001")
    options = DriverOptions(**{**driver_options.__dict__, "stop_poll_s": 0.0})

    stopped = run_stored("sweep-0001", store, options)
    assert stopped.status == "stopped"
    assert stopped.sweep == "sweep-0001"
    started = json.loads((tmp_path / "store/sweep-0001/started.json").read_text())
    assert started["parent_run_id"] == stopped.parent_run_id
    assert json.loads((tmp_path / "store/sweep-0001/outcome.json").read_text())["status"] == (
        "stopped"
    )

    (tmp_path / "store/sweep-0001/STOP").unlink()
    finished = run_stored("sweep-0001", store, options)
    assert finished.status == "succeeded" and len(finished.trials) == 3
    assert finished.parent_run_id == stopped.parent_run_id  # the same sweep, a new attempt
    # Trials are named after the sweep and numbered on across its attempts.
    assert {t.name.rsplit("-", 2)[0] for t in finished.trials} == {"sweep-0001"}
    assert sorted(trial_number(t.name) for t in finished.trials) == [1, 2, 3]
    events = store.trial_events("sweep-0001")
    done = {e["trial_id"] for e in events if e["state"] == "succeeded"}
    assert done == {t.trial_id for t in finished.trials}
    outcome = json.loads((tmp_path / "store/sweep-0001/outcome.json").read_text())
    assert outcome["counts"] == {"succeeded": 3}


def _read_lines(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)


@pytest.mark.slow
def test_a_signal_saves_the_sweep_and_resume_finishes_it_without_rerunning(tmp_path):
    """Ctrl-C (SIGINT) stops the first run after its first trial, SIGTERM (what `docker compose
    stop` and the upgrade procedure send) the resumed run after its second; a last resume
    finishes the sweep. One sweep for both signals: each run starts a Ray of its own."""
    spec = {
        **DIGITS_SWEEP,
        "name": "digits-ctrl-c",
        "fixed": {**DIGITS_SWEEP["fixed"], "epochs": 3},
        "budget": {"max_trials": 3, "max_concurrent_trials": 1},
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--tracking-uri", tracking, "--storage-path", str(tmp_path / "tune")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

    def interrupted(command: list[str], done_line: str, signum: signal.Signals) -> None:
        driver = subprocess.Popen(
            [sys.executable, "-m", "sweeps", *command, *common],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(driver.stderr, lines), daemon=True)
        reader.start()

        def done() -> bool:
            if any(done_line in line for line in lines):
                return True
            assert driver.poll() is None, "".join(lines[-30:])
            return False

        poll_until(done, 180, done_line, interval_s=0.2, detail=lambda: "".join(lines[-30:]))
        driver.send_signal(signum)
        out, _ = driver.communicate(timeout=120)
        assert driver.returncode == 0, "".join(lines[-30:])
        assert "sweep digits-ctrl-c: stopped" in out, (signum, out)
        assert "registered model" not in out  # a stopped sweep has not ended

    interrupted(["run", str(spec_file)], "trials 1/3 done", signal.SIGINT)
    interrupted(["resume", "digits-ctrl-c"], "trials 2/3 done", signal.SIGTERM)

    resumed = subprocess.run(
        [sys.executable, "-m", "sweeps", "resume", "digits-ctrl-c", *common, "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sweep digits-ctrl-c: succeeded" in resumed.stdout
    assert "best trials by val_nll" in resumed.stdout
    assert "registered model: models:/digits-ctrl-c/1 (mlflow models serve" in resumed.stdout

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("digits-ctrl-c")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("gradreg.role") == "trial"]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert steps == [1, 2, 3]


@pytest.mark.slow
def test_an_ivon_sweep_through_the_cli_registers_a_model_that_loads_and_predicts(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(IVON_SWEEP))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "run", str(spec_file), "--json",
         "--tracking-uri", tracking, "--storage-path", str(tmp_path / "tune")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout[done.stdout.index("{") :])
    assert outcome["status"] == "succeeded", outcome["reason"]
    assert outcome["counts"] == {"succeeded": 2}
    assert outcome["registered_model"]["uri"] == "models:/digits-ivon/1"

    client = MlflowClient(tracking)
    version = client.get_model_version("digits-ivon", "1")
    assert client.get_run(version.run_id).data.params["method"] == "ivon"
    assert_registered_model_predicts(tracking, "models:/digits-ivon/1")


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"python -m sweeps {version('gradreg')}\n"


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(DIGITS_SWEEP))
    return path


def _ended(status: str):
    def run_sweep(spec, options):
        return SweepOutcome(
            sweep=spec.name,
            status=status,
            reason="as the test says",
            objectives=[{"metric": "val_nll", "goal": "minimize"}],
            trials=[],
            best=[],
            experiment_id="1",
            parent_run_id="run",
            tracking_uri="sqlite://",
            experiment_path="tune",
        )

    return run_sweep


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("stopped", 0), ("failed", 1)])
def test_run_exits_by_how_the_sweep_ended(monkeypatch, capsys, spec_file, status, code):
    # A stopped sweep is 0 on purpose: its state is saved and `resume` finishes it.
    monkeypatch.setattr(cli, "run_sweep", _ended(status))
    assert main(["run", str(spec_file), "--quiet"]) == code
    assert f"sweep {DIGITS_SWEEP['name']}: {status}" in capsys.readouterr().out


def test_the_report_ranks_by_the_one_rule_for_best():
    """Only trials that ended on their own terms with a finite value rank (the rule of
    sweeps.records.ranked_trials, which the outcome's best follows): not a NaN, not a trial
    interrupted or still running part-way, however good its last report."""

    def trial(name: str, state: str, val_nll: float) -> TrialSummary:
        return TrialSummary(name, name, state, {"lr": 0.01}, {"val_nll": val_nll}, None)

    trials = [
        trial("t1", "succeeded", 0.5),
        trial("t2", "stopped", 0.3),
        trial("t3", "succeeded", math.nan),
        trial("t4", "interrupted", 0.1),
        trial("t5", "running", 0.05),
        trial("t6", "failed", 0.01),
        trial("t7", "succeeded", 0.4),
    ]
    outcome = dataclasses.replace(
        _ended("stopped")(digits_spec(), None), trials=trials, best=[trials[1]]
    )
    assert [t.name for t in outcome.ranked()] == ["t2", "t7", "t1"]
    report = cli.format_outcome(outcome, top=5).splitlines()
    table = report[report.index("best trials by val_nll:") + 1 :]
    assert [row.split()[0] for row in table[1:4]] == ["t2", "t7", "t1"]
    assert table[4].startswith("MLflow:")


def test_a_missing_spec_file_exits_2(tmp_path, capsys, spec_file):
    missing = tmp_path / "absent.yaml"
    assert main(["run", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["validate", str(missing), str(spec_file)]) == 2  # every file is still checked
    captured = capsys.readouterr()
    assert str(missing) in captured.err and f"{spec_file}: ok" in captured.out


def test_ctrl_c_that_reaches_the_command_line_exits_130(monkeypatch, capsys, spec_file):
    def interrupted(spec, options):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_sweep", interrupted)
    assert main(["run", str(spec_file), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
