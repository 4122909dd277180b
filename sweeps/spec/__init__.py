"""The sweep spec: its shape (`model`, with `schema.json`), its problems (`errors`), reading and
writing it (`parse`), the rules it must keep (`checks`, `limits`) and what a trial trains from
it (`resolve`).

The spec's models are re-exported here: Tune pickles them into a sweep's saved state by the
import path ``sweeps.spec.<Class>``, which sweeps saved before this package existed still name.
"""

from sweeps.spec.model import (
    Budget,
    CategoricalParameter,
    CodeSection,
    DatasetSection,
    EarlyStopping,
    EnsembleSection,
    FaultTolerance,
    FloatParameter,
    IntParameter,
    ModelSection,
    Objective,
    Parameter,
    Resources,
    SearchSection,
    SweepSpec,
    Tracking,
    WarmStart,
)

__all__ = [
    "Budget",
    "CategoricalParameter",
    "CodeSection",
    "DatasetSection",
    "EarlyStopping",
    "EnsembleSection",
    "FaultTolerance",
    "FloatParameter",
    "IntParameter",
    "ModelSection",
    "Objective",
    "Parameter",
    "Resources",
    "SearchSection",
    "SweepSpec",
    "Tracking",
    "WarmStart",
]
