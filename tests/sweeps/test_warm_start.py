"""Warm start (issue 27): which earlier trials seed a new study, which are skipped and why, and
that the seeds change what the sampler suggests."""

from __future__ import annotations

import copy
import json
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweeps import SpecError, parse_spec
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec import SweepSpec
from sweeps.study import TUNE_TRIAL_ATTR
from sweeps.warm_start import SEEDED_ATTR, SourceSweep, seed_study
from tests.helpers.specs import DIGITS_SWEEP, digits_spec, serial_digits_spec

WIDE = {
    "noise_scale": {"type": "float", "low": 1.0e-4, "high": 1.0, "scale": "log"},
    "prior_variance": {"type": "float", "low": 0.01, "high": 100.0, "scale": "log"},
}


def earlier_sweep(
    name: str, spec: SweepSpec, trials: list[tuple[dict[str, Any], float, str | None]]
) -> SourceSweep:
    """A source sweep whose study holds ``trials``: (params, value, Tune's state); a state of
    None is a trial Optuna holds as failed."""
    study = optuna.create_study(direction="minimize")
    distributions = SearchSpace(spec).distributions()
    states = {}
    for number, (params, value, state) in enumerate(trials):
        tune_id = f"{name}-{number:05d}"
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                value=None if state is None else value,
                state=TrialState.FAIL if state is None else TrialState.COMPLETE,
                user_attrs={TUNE_TRIAL_ATTR: tune_id},
            )
        )
        if state is not None:
            states[tune_id] = state
    return SourceSweep(name, spec, study.get_trials(), states)


def new_study(spec: SweepSpec) -> optuna.Study:
    return optuna.create_study(direction="minimize", sampler=make_sampler(spec))


def test_seeds_the_trials_that_fit_and_counts_the_others_by_reason():
    spec = digits_spec(name="new")  # noise_scale in [1e-3, 0.1], prior_variance in [0.1, 10]
    fits = {"noise_scale": 0.01, "prior_variance": 1.0}
    earlier = earlier_sweep(
        "earlier",
        digits_spec(name="earlier", parameters=WIDE),
        [
            (fits, 0.31, "succeeded"),
            ({"noise_scale": 0.5, "prior_variance": 1.0}, 0.2, "succeeded"),
            ({"noise_scale": 0.01, "prior_variance": 50.0}, 0.2, "succeeded"),
            ({"noise_scale": 0.02, "prior_variance": 2.0}, 0.9, "stopped"),
            ({"noise_scale": 0.02, "prior_variance": 2.0}, 0.0, None),
        ],
    )
    longer = earlier_sweep(
        "longer",
        digits_spec(name="longer", fixed={**DIGITS_SWEEP["fixed"], "epochs": 8}),
        [(fits, 0.1, "succeeded"), (fits, 0.1, "succeeded")],
    )
    other_data = earlier_sweep(
        "iris",
        digits_spec(name="iris", dataset={"name": "iris"}),
        [(fits, 0.1, "succeeded")],
    )
    study = new_study(spec)

    report = seed_study(study, spec, [earlier, longer, other_data])

    assert report.to_dict() == {
        "sweeps": ["earlier", "longer", "iris"],
        "trials_seeded": 1,
        "trials_skipped": {
            "another dataset": 1,
            "epochs differs": 2,
            "noise_scale outside the space": 1,
            "not finished": 1,
            "prior_variance outside the space": 1,
            "stopped early": 1,
        },
        "seeded_from": ["earlier/earlier-00000"],
    }
    [seeded] = study.get_trials()
    assert seeded.state == TrialState.COMPLETE
    assert seeded.params == fits and seeded.value == 0.31
    assert seeded.user_attrs[SEEDED_ATTR] == "earlier/earlier-00000"
    assert seeded.distributions == {
        k: v for k, v in SearchSpace(spec).distributions().items() if k in fits
    }


def test_a_setting_fixed_there_and_searched_here_seeds_as_a_parameter_and_vice_versa():
    lr = {"type": "float", "low": 0.001, "high": 0.01, "scale": "log"}
    fixed_without_lr = {k: v for k, v in DIGITS_SWEEP["fixed"].items() if k != "lr"}
    point = {"noise_scale": 0.01, "prior_variance": 1.0}
    # There lr was fixed at 0.003; here it is searched, and 0.003 lies in the new range.
    searching = digits_spec(
        name="searching",
        fixed=fixed_without_lr,
        parameters={**DIGITS_SWEEP["parameters"], "lr": lr},
    )
    fixed_there = earlier_sweep(
        "fixed-lr", digits_spec(name="fixed-lr"), [(point, 0.4, "succeeded")]
    )
    study = new_study(searching)
    assert seed_study(study, searching, [fixed_there]).trials_seeded == 1
    assert study.get_trials()[0].params == {**point, "lr": 0.003}

    # There lr was searched; here it is fixed at 0.003: only the trial that trained at 0.003.
    searched_there = earlier_sweep(
        "searched-lr",
        searching,
        [({**point, "lr": 0.003}, 0.4, "succeeded"), ({**point, "lr": 0.005}, 0.3, "succeeded")],
    )
    fixing = digits_spec(name="fixing")
    study = new_study(fixing)
    report = seed_study(study, fixing, [searched_there])
    assert (report.trials_seeded, report.trials_skipped) == (1, {"lr differs": 1})
    assert study.get_trials()[0].params == point


def test_where_a_trial_ran_may_differ():
    point = {"noise_scale": 0.01, "prior_variance": 1.0}
    on_a_gpu = digits_spec(
        name="gpu", fixed={**DIGITS_SWEEP["fixed"], "device": "cuda"}, resources={"gpu": 1}
    )
    earlier = earlier_sweep("cpu", digits_spec(name="cpu"), [(point, 0.4, "succeeded")])
    assert seed_study(new_study(on_a_gpu), on_a_gpu, [earlier]).trials_seeded == 1


def test_a_parameter_the_earlier_trial_has_no_value_for_is_a_skip():
    searching_lr = digits_spec(
        name="new",
        fixed={k: v for k, v in DIGITS_SWEEP["fixed"].items() if k != "lr"},
        parameters={
            **DIGITS_SWEEP["parameters"],
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2},
        },
    )
    earlier_spec = digits_spec(name="no-lr", fixed=searching_lr.fixed)  # lr left at its default
    earlier = earlier_sweep(
        "no-lr", earlier_spec, [({"noise_scale": 0.01, "prior_variance": 1.0}, 0.4, "succeeded")]
    )
    report = seed_study(new_study(searching_lr), searching_lr, [earlier])
    assert (report.trials_seeded, report.trials_skipped) == (0, {"no lr": 1})


def test_other_objectives_skip_every_trial():
    spec = digits_spec(name="new", objectives=[{"metric": "val_accuracy"}])
    earlier = earlier_sweep(
        "earlier",
        digits_spec(name="earlier"),
        [({"noise_scale": 0.01, "prior_variance": 1.0}, 0.4, "succeeded")],
    )
    study = optuna.create_study(direction="maximize")
    report = seed_study(study, spec, [earlier])
    assert (report.trials_seeded, report.trials_skipped) == (0, {"other objectives": 1})
    assert study.get_trials() == []


def test_the_first_model_based_suggestion_differs_from_an_unseeded_one_with_the_same_seed():
    # TPE with 2 startup trials: the seeded study is past them before its first suggestion.
    spec = digits_spec(name="new")
    good = [
        ({"noise_scale": s, "prior_variance": p}, v, "succeeded")
        for s, p, v in [(0.002, 0.2, 0.2), (0.003, 0.3, 0.21), (0.08, 8.0, 1.5), (0.05, 5.0, 1.2)]
    ]
    earlier = earlier_sweep("earlier", digits_spec(name="earlier"), good)

    def first_suggestion(seeded: bool) -> dict[str, Any]:
        study = new_study(spec)
        if seeded:
            assert seed_study(study, spec, [earlier]).trials_seeded == 4
        trial = study.ask()
        SearchSpace(spec)(trial)
        return trial.params

    unseeded = first_suggestion(seeded=False)
    assert first_suggestion(seeded=False) == unseeded  # the seed fixes it
    assert first_suggestion(seeded=True) != unseeded


@pytest.mark.parametrize(
    ("warm_start", "message"),
    [
        ({"sweeps": []}, "at least 1"),
        ({"sweeps": ["a", "a"]}, "names ['a'] more than once"),
        ({"sweeps": ["Not A Name"]}, "pattern"),
        ({"sweep": ["a"]}, "sweep"),
    ],
)
def test_a_bad_warm_start_section_is_refused_by_name(warm_start, message):
    document = copy.deepcopy(DIGITS_SWEEP)
    document["search"] = {**document["search"], "warm_start": warm_start}
    with pytest.raises(SpecError) as raised:
        parse_spec(document)
    assert "search.warm_start" in str(raised.value) and message in str(raised.value)


def test_a_sweep_warm_started_from_an_earlier_one_seeds_its_study_and_says_so(
    ray_local, driver_options, tracking_uri, tmp_path
):
    from mlflow import MlflowClient

    from sweeps import run_sweep
    from sweeps.statefiles import read_record
    from sweeps.tracking import WARM_START_FILE, WARM_START_TAG

    # Two of the earlier sweep's points lie in the new space; (0.5, 1.0) does not.
    points = [
        {"noise_scale": 0.01, "prior_variance": 1.0},
        {"noise_scale": 0.5, "prior_variance": 1.0},
        {"noise_scale": 0.02, "prior_variance": 3.0},
    ]
    wide = serial_digits_spec(
        "wide",
        epochs=1,
        trials=3,
        parameters=WIDE,
        search={"algorithm": "random", "seed": 0, "initial_points": points},
    )
    earlier = run_sweep(wide, driver_options)
    assert earlier.status == "succeeded" and len(earlier.trials) == 3
    warm = {"sweeps": ["wide"]}
    narrow = serial_digits_spec(
        "narrow",
        epochs=1,
        trials=1,
        search={"algorithm": "tpe", "seed": 0, "n_startup_trials": 1, "warm_start": warm},
    )

    outcome = run_sweep(narrow, driver_options)

    assert outcome.status == "succeeded" and len(outcome.trials) == 1
    recorded = read_record(str(tmp_path / "tune" / "narrow")).extra["warm_start"]
    assert {k: v for k, v in recorded.items() if k != "seeded_from"} == {
        "sweeps": ["wide"],
        "trials_seeded": 2,
        "trials_skipped": {"noise_scale outside the space": 1},
    }
    storage = f"sqlite:///{tmp_path / 'tune' / 'narrow' / 'optuna.db'}"
    study = optuna.load_study(study_name="narrow", storage=storage)
    seeded = [t for t in study.trials if SEEDED_ATTR in t.user_attrs]
    by_tune_id = {t.trial_id: t for t in earlier.trials}
    assert len(seeded) == 2
    for trial in seeded:
        source, tune_id = trial.user_attrs[SEEDED_ATTR].split("/")
        assert source == "wide"
        assert trial.params == by_tune_id[tune_id].params
        assert trial.value == pytest.approx(by_tune_id[tune_id].metrics["val_nll"])
    [own] = [t for t in study.trials if SEEDED_ATTR not in t.user_attrs]
    assert own.user_attrs[TUNE_TRIAL_ATTR] == outcome.trials[0].trial_id
    # Seeded trials are no MLflow runs: the parent says where they came from.
    client = MlflowClient(tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[WARM_START_TAG] == "2 trials of wide"
    with open(client.download_artifacts(parent.info.run_id, WARM_START_FILE)) as handle:
        logged = json.load(handle)
    assert sorted(logged["seeded_from"]) == sorted(t.user_attrs[SEEDED_ATTR] for t in seeded)
    assert logged == recorded
    children = client.search_runs(
        [outcome.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    assert len(children) == 1


def test_a_warm_start_from_a_sweep_that_does_not_exist_fails_before_anything_is_made(
    driver_options, tmp_path
):
    from sweeps import run_sweep
    from sweeps.warm_start import WarmStartError

    spec = serial_digits_spec(
        "orphan", epochs=1, trials=1, search={"warm_start": {"sweeps": ["gone"]}}
    )
    with pytest.raises(WarmStartError, match="names sweep 'gone', but no sweep of that name"):
        run_sweep(spec, driver_options)
    assert not (tmp_path / "tune" / "orphan").exists()
    itself = serial_digits_spec(
        "self", epochs=1, trials=1, search={"warm_start": {"sweeps": ["self"]}}
    )
    with pytest.raises(ValueError, match="cannot warm-start from itself"):
        run_sweep(itself, driver_options)
