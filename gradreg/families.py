"""The variance families of a Gaussian posterior (``diagonal``, ``uniform``): the settings each
reads, which of them a user must give, and when σ² is learned.

Torch-free, like the method table that names a family for each method; the classes that hold
σ² are in `gradreg.posteriors.gaussian`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class VarianceFamily:
    """How a posterior holds σ²: its own settings, and which of them a user must give."""

    name: str
    settings: tuple[str, ...]
    required: Mapping[str, str] = field(default_factory=dict)  # setting → hint of a value
    # Whether σ² is learned: always (True), never (False), or when this switch is on.
    learned: bool | str = False
    starts_from: str = ""  # what the error for a setting of another family points to


FAMILIES: Mapping[str, VarianceFamily] = MappingProxyType(
    {
        "diagonal": VarianceFamily(
            "diagonal", ("init_variance",), learned=True, starts_from="starts from init_variance"
        ),
        "uniform": VarianceFamily(
            "uniform",
            ("noise_scale", "learn_noise_scale"),
            required={"noise_scale": "σ of every weight, e.g. 0.01"},
            learned="learn_noise_scale",
            starts_from="uses σ² = noise_scale²",
        ),
    }
)
VARIANCE_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def family_problem(
    variance: str,
    *,
    noise_scale: float | None = None,
    init_variance: float | None = None,
    learn_noise_scale: bool = False,
) -> str | None:
    """Why these settings do not fit the variance family, or None when they do."""
    if variance not in FAMILIES:
        return f"unknown variance family {variance!r}; accepted: {', '.join(FAMILIES)}"
    family = FAMILIES[variance]
    given = {
        "noise_scale": noise_scale is not None,
        "learn_noise_scale": bool(learn_noise_scale),
        "init_variance": init_variance is not None,
    }
    for other in FAMILIES.values():
        if other is family:
            continue
        if any(given[name] for name in other.settings):
            names = " and ".join(other.settings)
            verb = "belong" if len(other.settings) > 1 else "belongs"
            return (
                f"{names} {verb} to variance={other.name!r}; with variance={family.name!r} the "
                f"posterior {family.starts_from}"
            )
    for name, hint in family.required.items():
        if not given[name]:
            return f"variance={family.name!r} needs {name} ({hint})"
    return None
