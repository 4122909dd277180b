"""A sweep's parameter importances (sweeps.importances): shares that find the parameter that
matters, a study kept in memory rebuilt from the outcome, and why there are none when there are
none (the parent run's tag, sweeps.postrun)."""

from __future__ import annotations

import math

import optuna
import pytest

from sweeps.importances import param_importances, rebuilt_study
from sweeps.postrun import AfterTune
from sweeps.records import TrialSummary
from sweeps.study import StudyPlace
from sweeps.tracking import IMPORTANCE_TAG, Tracker
from tests.helpers.specs import digits_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quadratic_study(n: int, params: tuple[str, ...] = ("x", "y")) -> optuna.Study:
    """x decides the value; y is noise."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(
        lambda t: sum((10 if p == "x" else 0.01) * t.suggest_float(p, -1, 1) ** 2 for p in params),
        n_trials=n,
    )
    return study


def test_importances_are_shares_that_find_the_parameter_that_matters():
    study = quadratic_study(12)
    found = param_importances(study, "val_nll")
    assert set(found.values) == {"x", "y"} and found.trials == 12
    assert math.isclose(sum(found.values.values()), 1.0)
    assert found.values["x"] > found.values["y"]
    assert param_importances(study, "val_nll").values == found.values  # seeded


@pytest.mark.parametrize(
    ("study", "reason"),
    [
        (quadratic_study(3), "3 trial(s) finished with val_nll, importances need 4"),
        (quadratic_study(6, ("x",)), "1 searched parameter(s)"),
    ],
)
def test_too_little_to_tell_gives_no_importances_and_says_why(study, reason):
    found = param_importances(study, "val_nll")
    assert found.values == {} and reason in found.note and found.note.startswith("not computed")


def test_a_study_kept_in_memory_is_rebuilt_from_the_outcome():
    spec = digits_spec()
    trials = [
        TrialSummary(
            f"t{i}",
            f"t{i}",
            state,
            {"noise_scale": 0.01 * i, "prior_variance": 1.0 + i},
            {"val_nll": value},
            None,
        )
        for i, (state, value) in enumerate(
            [("succeeded", 0.5), ("stopped", 0.9), ("failed", 0.1), ("succeeded", math.nan)],
            start=1,
        )
    ]
    study = rebuilt_study(spec, trials)
    assert [(t.params["prior_variance"], t.value) for t in study.trials] == [(2.0, 0.5), (3.0, 0.9)]


def test_several_objectives_rank_parameters_by_the_first():
    spec = digits_spec(
        objectives=[{"metric": "val_nll"}, {"metric": "val_ece"}],
        search={"algorithm": "tpe", "seed": 0},
    )
    trials = [
        TrialSummary(
            f"t{i}",
            f"t{i}",
            "succeeded",
            {"noise_scale": 0.001 + 0.015 * i, "prior_variance": 1.0 + (i % 2)},
            {"val_nll": 0.1 * i, "val_ece": 0.05},
            None,
        )
        for i in range(6)
    ]
    found = param_importances(rebuilt_study(spec, trials), "val_nll")
    assert found.values["noise_scale"] > found.values["prior_variance"]


def test_importances_that_fail_are_the_tags_not_the_sweeps(tmp_path, tracking_uri):
    from types import SimpleNamespace

    tracker = Tracker(tracking_uri)
    run_id = tracker.client.create_run(tracker.experiment_id("study-tags")).info.run_id
    record = SimpleNamespace(parent_run_id=run_id)
    outcome = SimpleNamespace(trials=[])
    said: list[str] = []
    missing = StudyPlace("gone", f"sqlite:///{tmp_path / 'none.db'}", "experiment", "")
    AfterTune(tracker, digits_spec(), record, missing, said.append).log_importances(outcome)
    assert tracker.client.get_run(run_id).data.tags[IMPORTANCE_TAG].startswith("failed: KeyError")
    memory = StudyPlace("s", None, "memory", "")
    AfterTune(tracker, digits_spec(), record, memory, said.append).log_importances(outcome)
    assert tracker.client.get_run(run_id).data.tags[IMPORTANCE_TAG].startswith("not computed: 0")
    assert said[0].startswith("parameter importances for val_nll: failed: KeyError")


def test_the_importance_plot_is_a_png(tmp_path):
    from gradreg.evaluation.plots import write_param_importances

    path = write_param_importances(tmp_path / "p.png", {"lr": 0.7, "noise_scale": 0.3})
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="empty"):
        write_param_importances(tmp_path / "q.png", {})
