"""A sweep's statuses in the service, and the sets the store, reconciler, routes and client use.

The transitions between them are the store's status machine (`service.store.status_machine`).
"""

from __future__ import annotations

SWEEP_STATUSES: tuple[str, ...] = (
    "pending",
    "submitted",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
# Nothing runs for these any more; only a resume (failed, cancelled → pending) leaves them.
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
# A driver job exists (or should) for these.
ACTIVE: tuple[str, ...] = ("submitted", "running", "cancelling")
