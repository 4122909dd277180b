"""A sweep fixes TrainConfig.tf32 like any training setting, checked when the spec is read."""

from __future__ import annotations

import pytest

from sweeps.spec.errors import SpecError
from tests.helpers.specs import DIGITS_SWEEP, digits_spec


def test_a_sweep_fixes_tf32_like_any_training_setting():
    fixed = DIGITS_SWEEP["fixed"]
    assert digits_spec(fixed={**fixed, "tf32": "off"}).fixed["tf32"] == "off"
    with pytest.raises(SpecError, match=r"fixed\.tf32: unknown tf32 'maybe'; accepted: default"):
        digits_spec(fixed={**fixed, "tf32": "maybe"})
