"""TrainConfig.tf32: a run chooses TF32 without leaving torch's global flags changed."""

from __future__ import annotations

import pytest

from gradreg import TrainConfig, fit
from gradreg.curvature.precision import tf32_convolutions, tf32_matmuls

SMALL = {"dataset": "iris", "method": "vl", "epochs": 2, "model_options": {"hidden": [8]}}


def flags() -> tuple[bool, bool]:
    return tf32_convolutions(), tf32_matmuls()


@pytest.mark.parametrize(
    ("setting", "inside"),
    [("default", (True, False)), ("on", (True, True)), ("off", (False, False))],
)
def test_a_run_trains_in_its_tf32_setting_and_puts_the_flags_back(setting, inside):
    before = flags()
    assert before == (True, False)  # torch's defaults
    seen = []
    fit({**SMALL, "tf32": setting}, on_epoch=lambda report: seen.append(flags()))
    assert seen == [inside, inside]
    assert flags() == before


def test_the_flags_come_back_when_a_run_fails():
    def fail(report):
        raise RuntimeError("a callback that fails")

    with pytest.raises(RuntimeError, match="a callback that fails"):
        fit({**SMALL, "tf32": "off"}, on_epoch=fail)
    assert flags() == (True, False)


def test_tf32_is_checked_and_a_checkpoint_from_before_it_resumes():
    with pytest.raises(ValueError, match="unknown tf32 'yes'; accepted: default, on, off"):
        TrainConfig(tf32="yes")
    assert TrainConfig().tf32 == "default"
    states = []
    whole = fit(SMALL, on_epoch=lambda report: states.append(report.state_dict()))
    older = states[0]
    del older["config"]["tf32"]  # written before the setting existed
    resumed = fit(SMALL, resume=older)
    assert resumed.history[-1]["train_loss"] == whole.history[-1]["train_loss"]


def test_the_train_command_takes_tf32(capsys):
    from gradreg.cli.main import build_parser, config_from_args

    parser = build_parser()
    base = ["train", "--dataset", "iris", "--device", "cpu"]
    assert config_from_args(parser.parse_args(base)).tf32 == "default"
    assert config_from_args(parser.parse_args([*base, "--tf32", "off"])).tf32 == "off"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--tf32", "maybe"])
    assert "argument --tf32: invalid choice: 'maybe'" in capsys.readouterr().err
