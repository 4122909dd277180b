"""What one user may hold at once: the quotas, their defaults (settings) and a user's own.

- ``active_sweeps``: sweeps admitted to run or running (pending, submitted, running,
  cancelling). One more is accepted and waits as ``queued``, in submission order.
- ``queued_sweeps``: sweeps waiting so; one more is refused (429).
- ``concurrent_trials`` and ``gpus``: trials running at once, and the GPUs they hold, across all
  of the user's sweeps. `service.fair_share` keeps a user's sweeps within them (None: no limit
  but the cluster and each sweep's own budget).

Every quota is applied when a sweep is admitted (`service.routes.sweeps`) and again when it
starts and while it runs (`service.reconciler`): a quota lowered meanwhile holds from then on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Quotas:
    active_sweeps: int
    queued_sweeps: int
    concurrent_trials: int | None = None
    gpus: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None and name in OPTIONAL:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"quota {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < (0 if name in OPTIONAL else 1):
                least = "0" if name in OPTIONAL else "1"
                raise ValueError(f"quota {name} must be at least {least}, got {value!r}")
            if name != "gpus" and value != int(value):
                raise ValueError(f"quota {name} must be a whole number, got {value!r}")

    def overridden(self, overrides: Mapping[str, Any]) -> Quotas:
        """These quotas with a user's own put over them (checked: unknown names, bad values)."""
        unknown = set(overrides) - set(QUOTA_NAMES)
        if unknown:
            raise ValueError(
                f"unknown quota {', '.join(sorted(unknown))}; known: {', '.join(QUOTA_NAMES)}"
            )
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUOTA_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Quotas))
OPTIONAL = frozenset({"concurrent_trials", "gpus"})
SETTING = {name: f"GRADREG_QUOTA_{name.upper()}" for name in QUOTA_NAMES}


class QuotaExceeded(Exception):
    """A request that would go over a quota whose excess cannot wait (429)."""

    def __init__(self, user: str, quota: str, limit: float, detail: str) -> None:
        super().__init__(
            f"user {user} {detail}: their {quota} quota is {limit:g} "
            f"(an admin sets it per user; the default is {SETTING[quota]})"
        )
        self.user = user
        self.quota = quota
        self.limit = limit
