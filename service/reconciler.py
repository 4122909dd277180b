"""Bring the store and Ray's job table into agreement, at start-up and every few seconds.

- a queued sweep becomes pending, oldest first, once its owner holds fewer active sweeps than
  their quota; a pending one whose owner's quota was lowered meanwhile goes back to queued
  (`service.quotas`);
- pending sweeps are submitted as Ray Jobs, oldest first, while fewer than `max_active` are
  active; the rest wait as pending, saying so;
- every running sweep gets its allowance: the trials it may start, under its owner's quotas
  and its fair share of the cluster (`service.fair_share`), which its driver reads;
- a cancelling sweep whose driver has not stopped within the grace period has its job stopped;
- a sweep whose job ended without the driver writing a final status (the driver died, or was
  stopped without being asked) is closed as failed and, within `max_attempts`, resubmitted
  as a new attempt that resumes from Tune's saved state.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.fair_share import Demand, allocate
from service.launcher import FINAL_JOB_STATES, RayJobs
from service.quotas import Quotas
from service.statuses import ACTIVE, QUEUED
from service.store import status_machine, sweep_queries, trial_queries
from service.store.models import Sweep, User
from sweeps.records import FINISHED_STATES
from sweeps.spec.parse import validate_shape

log = logging.getLogger(__name__)
# A running sweep whose every trial has finished (its driver is wrapping up) wants none.
NOTHING_LEFT = "every trial of its budget has finished"


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        jobs: RayJobs,
        *,
        interval_s: float,
        cancel_grace_s: float,
        max_attempts: int,
        max_active: int,
        quotas: Quotas,
        capacity: Callable[[], Mapping[str, float] | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``quotas``: a user's who has none of their own; ``capacity``: the cluster's total
        resources now ({"GPU": n, "CPU": n}; None: unknown, so only quotas limit a sweep);
        ``clock`` gives the seconds the grace periods count in (tests move their own)."""
        self.quotas = quotas
        self.capacity = capacity
        self.sessions = sessions
        self.clock = clock
        self.jobs = jobs
        self.interval_s = interval_s
        self.cancel_grace_s = cancel_grace_s
        self.max_attempts = max_attempts
        self.max_active = max_active
        self._queued_reason = (
            f"queued: {max_active} sweep(s) already active (GRADREG_MAX_ACTIVE_SWEEPS)"
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancel_seen: dict[str, float] = {}
        self._stop_sent: set[str] = set()
        self._missing_since: dict[str, float] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def kick(self) -> None:
        """Reconcile now (a sweep was just created, cancelled or resumed)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconciliation pass failed; retrying in %.0f s", self.interval_s)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def reconcile_once(self) -> None:
        with self.sessions() as session:
            quotas = self._user_quotas(session)
            active = len(_ids(session, ACTIVE))
            holding = Counter(
                session.scalars(sa.select(Sweep.owner).where(Sweep.status.in_(ACTIVE)))
            )
            waiting = session.execute(
                sa.select(Sweep.id, Sweep.owner, Sweep.status, Sweep.reason)
                .where(Sweep.status.in_((QUEUED, "pending")))
                .order_by(Sweep.created_at, Sweep.id)
            )
            for sweep_id, owner, status, reason in waiting.all():
                quota = quotas.get(owner, self.quotas).active_sweeps
                if holding[owner] >= quota:
                    if status != QUEUED:
                        self._queue(session, sweep_id, holding[owner], quota)
                    continue
                holding[owner] += 1
                if status == QUEUED and not self._admit(session, sweep_id):
                    continue
                if active < self.max_active:
                    if self._submit(session, sweep_id):
                        active += 1
                elif reason is None or status == QUEUED:
                    # Said once, not every pass: a resubmitted sweep keeps why it was resubmitted.
                    status_machine.update_sweep(session, sweep_id, reason=self._queued_reason)
            for sweep_id in _ids(session, ACTIVE):
                self._check(session, sweep_id)
            self._share(session, quotas)

    def _user_quotas(self, session: Session) -> dict[str, Quotas]:
        """Every user's quotas in force (their own over the defaults)."""
        users = session.execute(sa.select(User.name, User.quotas)).all()
        return {name: self.quotas.overridden(own) for name, own in users}

    def _queue(self, session: Session, sweep_id: str, holding: int, quota: int) -> None:
        """A pending sweep whose owner's quota is full (it was lowered, or a resumed sweep
        came back) waits as queued."""
        with contextlib.suppress(status_machine.InvalidTransition):  # cancelled meanwhile
            status_machine.transition(
                session, sweep_id, QUEUED, reason=sweep_queries.queued_reason(holding, quota)
            )

    def _admit(self, session: Session, sweep_id: str) -> bool:
        try:
            status_machine.transition(session, sweep_id, "pending", reason=None)
        except status_machine.InvalidTransition:
            return False  # cancelled meanwhile
        return True

    def _share(self, session: Session, quotas: Mapping[str, Quotas]) -> None:
        """Each running sweep's allowance (`service.fair_share`), stored where it changed."""
        running = list(
            session.scalars(
                sa.select(Sweep)
                .where(Sweep.status.in_(("submitted", "running")))
                .order_by(Sweep.created_at, Sweep.id)
            )
        )
        if not running:
            return
        counts = trial_queries.counts_by_sweep(session, [sweep.id for sweep in running])
        demands = [demand(sweep, counts[sweep.id]) for sweep in running]
        try:
            capacity = self.capacity()
        except Exception as error:  # Ray restarting: share by quotas alone this pass
            log.warning("could not read the cluster's resources: %s", error)
            capacity = None
        owners = {sweep.owner for sweep in running}
        allowances = allocate(
            demands, capacity, {owner: quotas.get(owner, self.quotas) for owner in owners}
        )
        wants = {d.sweep_id: d.max_concurrent_trials for d in demands}
        for sweep in running:
            given = allowances[sweep.id]
            reason = given.reason if wants[sweep.id] else NOTHING_LEFT
            if (sweep.allowance, sweep.allowance_reason) != (given.trials, reason):
                status_machine.update_sweep(
                    session, sweep.id, allowance=given.trials, allowance_reason=reason
                )

    def _submit(self, session: Session, sweep_id: str) -> bool:
        sweep = sweep_queries.get_sweep(session, sweep_id)
        try:
            # Every attempt runs the code bundle its stored spec names, if any.
            submission_id = self.jobs.submit(sweep.id, sweep.attempt, sweep.spec.get("code"))
        except Exception as error:
            # Ray may be restarting: keep the sweep pending and say why; the next pass retries.
            status_machine.update_sweep(session, sweep_id, reason=f"submission failed: {error}")
            return False
        try:
            status_machine.transition(
                session, sweep_id, "submitted", submission_id=submission_id, reason=None
            )
        except status_machine.InvalidTransition as error:
            # Cancelled between this pass reading it and the job starting: the job must not run.
            log.warning("sweep %s: %s; stopping the job just submitted", sweep_id, error)
            self.jobs.stop(submission_id)
            return False
        return True

    def _check(self, session: Session, sweep_id: str) -> None:
        sweep = sweep_queries.get_sweep(session, sweep_id)
        if sweep.submission_id is None:
            return
        state = self.jobs.state(sweep.submission_id)
        if state is not None:
            self._missing_since.pop(sweep.submission_id, None)
        if state is not None and state.status not in FINAL_JOB_STATES:
            if sweep.status == "cancelling":
                self._escalate(sweep)
            return
        if state is None and not self._gone_for_good(sweep.submission_id):
            return
        session.expire_all()  # the driver may have written its final status just now
        sweep = sweep_queries.get_sweep(session, sweep_id)
        if sweep.status not in ACTIVE:
            return
        ended = "vanished from Ray" if state is None else f"{state.status.value}"
        detail = f": {failure_line(state.message)}" if state is not None and state.message else ""
        if sweep.status == "cancelling":
            status_machine.transition(session, sweep_id, "cancelled", reason=f"driver job {ended}")
            return
        reason = f"the driver's job ended ({ended}{detail}) without a result"
        resubmit = sweep.attempt < self.max_attempts
        status_machine.end_attempt(session, sweep_id, reason, resubmit=resubmit)
        if resubmit:
            log.warning("sweep %s: %s; resubmitting", sweep_id, reason)

    def _gone_for_good(self, submission_id: str) -> bool:
        """A job Ray does not know is taken as gone only when a later pass, at least one interval
        on, still does not find it: one missing answer from a busy head ends no attempt."""
        now = self.clock()
        first_missed = self._missing_since.setdefault(submission_id, now)
        if now - first_missed < self.interval_s:
            return False
        del self._missing_since[submission_id]
        return True

    def _escalate(self, sweep: Sweep) -> None:
        now = self.clock()
        first_seen = self._cancel_seen.setdefault(sweep.id, now)
        waited = now - first_seen
        job = sweep.submission_id
        if waited < self.cancel_grace_s or job is None or job in self._stop_sent:
            return
        log.warning("sweep %s ignored its cancel for %.0f s; stopping its job", sweep.id, waited)
        self.jobs.stop(job)
        self._stop_sent.add(job)


def demand(sweep: Sweep, counts: Mapping[str, int]) -> Demand:
    """What a sweep's trials take, and how many it could run at once: its concurrency, but no
    more than the trials of its budget not finished yet (``counts``: its trials by state). A
    sweep whose last trial ended while its driver still builds the ensemble wants none: its
    share goes to the others at once, not when the driver exits."""
    spec = validate_shape(sweep.spec)
    finished = sum(counts.get(state, 0) for state in FINISHED_STATES)
    return Demand(
        sweep_id=sweep.id,
        owner=sweep.owner,
        gpu_per_trial=spec.resources.gpu,
        cpu_per_trial=spec.resources.cpu,
        max_concurrent_trials=max(
            0, min(spec.budget.max_concurrent_trials, spec.budget.max_trials - finished)
        ),
    )


def _ids(session: Session, statuses: tuple[str, ...]) -> list[str]:
    query = sa.select(Sweep.id).where(Sweep.status.in_(statuses)).order_by(Sweep.created_at)
    return list(session.scalars(query))


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Transition)\b.*:")


def failure_line(message: str) -> str:
    """The line that says what went wrong: Ray's job message ends with the driver's last logs
    (up to 20,000 characters), whose last exception line names the error. SQLAlchemy follows
    it with a line of its own ("(Background on this error at: ...)"), which says nothing."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return message
    raised = [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
    last = raised[-1] if raised else lines[-1]
    return last if len(lines) == 1 else f"{lines[0].rstrip(':,')} … {last}"
