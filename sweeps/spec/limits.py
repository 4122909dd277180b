"""The caps a sweep must stay within and the directory its data must come from.

A sweep is admitted under one `Limits` (the API's, at submission) and that `Limits` travels
with it (`to_document`, kept by the store), so its driver, wherever it runs, enforces the
caps it was admitted under rather than its own environment's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.settings import SweepSettings


@dataclass(frozen=True)
class Limits:
    max_trials: int = 1000
    max_concurrent_trials: int = 64
    max_time_budget_s: float = 7 * 24 * 3600
    max_epochs: int = 10_000
    max_trial_cpus: float = 64.0
    max_trial_gpus: float = 8.0
    data_root: Path | None = None

    @classmethod
    def from_settings(cls, settings: SweepSettings | None = None) -> Limits:
        settings = settings or SweepSettings()
        return cls(
            max_trials=settings.max_trials,
            max_concurrent_trials=settings.max_concurrent_trials,
            max_time_budget_s=settings.max_time_budget_s,
            max_epochs=settings.max_epochs,
            max_trial_cpus=settings.max_trial_cpus,
            max_trial_gpus=settings.max_trial_gpus,
            data_root=settings.data_root(),
        )

    def to_document(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["data_root"] = str(self.data_root) if self.data_root else None
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Limits:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ValueError(f"unknown limits {', '.join(unknown)}; known: {', '.join(known)}")
        values = dict(document)
        if values.get("data_root"):
            values["data_root"] = Path(values["data_root"])
        return cls(**values)

    def with_data_root(self, data_root: Path | None) -> Limits:
        return dataclasses.replace(self, data_root=data_root)
