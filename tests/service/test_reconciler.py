"""The reconciler's queue on a real store; the Ray Jobs side is a recording stand-in.

The end-to-end tests (tests/service/test_api.py, tests/reliability) run it against real Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from ray.job_submission import JobStatus
from sqlalchemy.orm import Session, sessionmaker

from service.launcher import JobState, RayJobs
from service.reconciler import Reconciler, failure_line
from service.store import status_machine, sweep_queries
from service.store.models import Sweep
from service.store.sweep_store import upsert_trial
from tests.helpers.clock import ManualClock
from tests.helpers.store import event as trial_event
from tests.helpers.store import new_sweep, status_of, trial_states


class RecordingJobs:
    """Accepts every submission; each job runs until `finish` ends it."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.code: list[object] = []  # the code section each submission was given
        self.finished: set[str] = set()
        self.stopped: list[str] = []
        self.missing: set[str] = set()  # jobs Ray answers "does not exist" for
        self.while_submitting: Callable[[str], None] = lambda sweep_id: None

    def submit(self, sweep_id: str, attempt: int, code: object = None) -> str:
        self.while_submitting(sweep_id)
        self.submitted.append(sweep_id)
        self.code.append(code)
        return f"job-{sweep_id}-{attempt}"

    def stop(self, submission_id: str) -> bool:
        self.stopped.append(submission_id)
        self.finished.add(submission_id)
        return True

    def state(self, submission_id: str) -> JobState | None:
        if submission_id in self.missing:
            return None
        done = submission_id in self.finished
        return JobState(JobStatus.SUCCEEDED if done else JobStatus.RUNNING, None)

    def finish(self, submission_id: str) -> None:
        self.finished.add(submission_id)


def reconciler(
    sessions: sessionmaker[Session],
    jobs: RecordingJobs,
    max_active: int,
    clock: ManualClock | None = None,
    interval_s: float = 1,
) -> Reconciler:
    """A reconciler with a 30 s cancel grace period and 3 attempts, on ``clock`` if given."""
    return Reconciler(
        sessions,
        jobs,
        interval_s=interval_s,
        cancel_grace_s=30,
        max_attempts=3,
        max_active=max_active,
        clock=clock or time.monotonic,
    )


def test_at_most_max_active_sweeps_run_and_the_rest_wait_in_order(session_factory):
    jobs = RecordingJobs()
    ids = [new_sweep(session_factory, name=f"s{i}") for i in range(5)]
    passes = reconciler(session_factory, jobs, max_active=2)

    passes.reconcile_once()
    assert jobs.submitted == ids[:2]
    waiting = [status_of(session_factory, sweep_id) for sweep_id in ids[2:]]
    assert all(s.status == "pending" for s in waiting)
    assert all(s.reason and s.reason.startswith("queued: 2 sweep(s)") for s in waiting)

    passes.reconcile_once()  # nothing finished: nothing more starts
    assert jobs.submitted == ids[:2]

    with session_factory() as session:  # the first driver finishes its sweep
        status_machine.transition(session, ids[0], "running")
        status_machine.transition(session, ids[0], "succeeded")
    passes.reconcile_once()
    assert jobs.submitted == ids[:3]
    third = status_of(session_factory, ids[2])
    assert (third.status, third.reason) == ("submitted", None)

    with session_factory() as session:  # a queued sweep cancelled before it started
        status_machine.request_cancel(session, ids[3])
    with session_factory() as session:
        status_machine.transition(session, ids[1], "failed", reason="boom")
    passes.reconcile_once()
    assert jobs.submitted == [*ids[:3], ids[4]]


def test_a_queued_resubmission_keeps_the_reason_it_was_resubmitted(session_factory):
    jobs = RecordingJobs()
    running = new_sweep(session_factory, "running")
    retried = new_sweep(session_factory, "failed")
    with session_factory() as session:
        status_machine.transition(session, retried, "pending")
        status_machine.update_sweep(session, retried, reason="attempt 2 resumes it: the job ended")
    reconciler(session_factory, jobs, max_active=1).reconcile_once()
    assert jobs.submitted == []
    assert status_of(session_factory, running).status == "running"
    assert status_of(session_factory, retried).reason == "attempt 2 resumes it: the job ended"


def test_a_driver_that_died_is_resubmitted_until_its_attempts_run_out(engine, session_factory):
    jobs = RecordingJobs()
    sweep_id = new_sweep(session_factory, "pending")
    passes = reconciler(session_factory, jobs, max_active=1)
    committed: list[str] = []  # the sweep's status after each commit, as another reader sees it

    def observe(session: Session) -> None:
        with engine.connect() as reader:
            committed.append(reader.scalar(sa.select(Sweep.status).where(Sweep.id == sweep_id)))

    for attempt in (1, 2, 3):
        passes.reconcile_once()  # submits the attempt
        with session_factory() as session:
            status_machine.transition(session, sweep_id, "running")
            upsert_trial(session, sweep_id, trial_event(f"t{attempt}"))
            version = sweep_queries.get_sweep(session, sweep_id).version
        jobs.finish(f"job-{sweep_id}-{attempt}")  # ... and its driver dies without a word
        committed.clear()
        sa.event.listen(Session, "after_commit", observe)
        try:
            passes.reconcile_once()
        finally:
            sa.event.remove(Session, "after_commit", observe)
        sweep = status_of(session_factory, sweep_id)
        reason = "the driver's job ended (SUCCEEDED) without a result"
        if attempt < 3:
            # failed and back to pending in one write: no reader sees the failed in between
            assert "failed" not in committed and committed[-1] == "pending", committed
            assert (sweep.status, sweep.attempt) == ("pending", attempt + 1)
            assert sweep.reason == f"attempt {attempt + 1} resumes it: {reason}"
            assert sweep.finished_at is None
        else:
            assert (sweep.status, sweep.attempt, sweep.reason) == ("failed", 3, reason)
        assert sweep.version > version
        killed = ("interrupted", f"the sweep became failed while it ran: {reason}")
        assert trial_states(session_factory, sweep_id)[f"t{attempt}"] == killed
    assert jobs.submitted == [sweep_id] * 3


def test_a_sweep_cancelled_while_its_job_is_submitted_has_that_job_stopped(session_factory):
    jobs = RecordingJobs()
    cancelled, queued = new_sweep(session_factory, name="a"), new_sweep(session_factory, name="b")

    def cancel_first(sweep_id: str) -> None:  # the user's cancel lands mid-submission
        if sweep_id == cancelled:
            with session_factory() as session:
                status_machine.request_cancel(session, cancelled)

    jobs.while_submitting = cancel_first
    reconciler(session_factory, jobs, max_active=1).reconcile_once()
    assert jobs.stopped == [f"job-{cancelled}-1"]
    sweep = status_of(session_factory, cancelled)
    assert (sweep.status, sweep.reason, sweep.submission_id) == (
        "cancelled",
        "cancelled before it ran",
        None,
    )
    # The pass went on: the slot the cancelled sweep did not take went to the next one.
    assert status_of(session_factory, queued).status == "submitted"


def test_a_dead_drivers_reason_is_its_exception_line_not_a_trailer():
    message = (
        "Job entrypoint command failed with exit code 1, last available logs:\n"
        "Traceback (most recent call last):\n"
        '  File "service/worker.py", line 38, in <module>\n'
        "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed: refused\n"
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)\n"
    )
    assert failure_line(message) == (
        "Job entrypoint command failed with exit code 1, last available logs … "
        "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed: refused"
    )
    plain = "Job entrypoint command failed with exit code 1, last available logs:\nKilled\n"
    assert failure_line(plain).endswith("… Killed")
    assert failure_line("Job was stopped") == "Job was stopped"


def test_a_driver_that_ignores_its_cancel_is_stopped_after_the_grace_period(session_factory):
    jobs, clock = RecordingJobs(), ManualClock()
    sweep_id = new_sweep(session_factory, name="stubborn")
    passes = reconciler(session_factory, jobs, max_active=1, clock=clock)
    passes.reconcile_once()  # submitted
    with session_factory() as session:
        status_machine.mark_running(session, sweep_id)
        status_machine.request_cancel(session, sweep_id)
    job = f"job-{sweep_id}-1"

    passes.reconcile_once()  # the grace period starts when the reconciler sees the cancel
    clock.advance(29.5)
    passes.reconcile_once()  # within it the driver may wind down by itself
    assert jobs.stopped == [] and status_of(session_factory, sweep_id).status == "cancelling"
    clock.advance(0.5)
    passes.reconcile_once()  # at its end, the job is stopped, once
    assert jobs.stopped == [job]
    passes.reconcile_once()  # the stopped job has ended: the sweep is cancelled, saying why
    sweep = status_of(session_factory, sweep_id)
    assert (sweep.status, sweep.reason) == ("cancelled", "driver job SUCCEEDED")
    assert jobs.stopped == [job]


def test_a_job_missing_from_one_answer_is_not_taken_for_dead(session_factory):
    jobs, clock = RecordingJobs(), ManualClock()
    sweep_id = new_sweep(session_factory, name="flicker")
    passes = reconciler(session_factory, jobs, max_active=1, clock=clock, interval_s=5)
    passes.reconcile_once()
    job = f"job-{sweep_id}-1"
    jobs.missing.add(job)  # a busy head's answer, once
    passes.reconcile_once()
    assert (status_of(session_factory, sweep_id).status, jobs.submitted) == (
        "submitted",
        [sweep_id],
    )
    clock.advance(10)
    jobs.missing.clear()  # ... and there it is again: the next miss starts a fresh wait
    passes.reconcile_once()
    jobs.missing.add(job)
    passes.reconcile_once()
    clock.advance(4.5)
    passes.reconcile_once()  # missing for less than an interval: still not gone
    assert status_of(session_factory, sweep_id).status == "submitted"
    clock.advance(0.5)
    passes.reconcile_once()  # still missing one interval on: gone, and resubmitted
    sweep = status_of(session_factory, sweep_id)
    assert (sweep.status, sweep.attempt) == ("pending", 2)
    assert "the driver's job ended (vanished from Ray) without a result" in sweep.reason


def test_every_attempt_is_submitted_with_the_code_bundle_its_spec_names(session_factory):
    jobs = RecordingJobs()
    code = {"digest": "sha256:" + "c" * 64, "requirements": ["einops==0.8.2"]}
    sweep_id = new_sweep(session_factory, "pending", code=code)
    passes = reconciler(session_factory, jobs, max_active=1)
    for attempt in (1, 2):
        passes.reconcile_once()
        jobs.finish(f"job-{sweep_id}-{attempt}")  # its driver dies: a resubmission
        passes.reconcile_once()
    assert jobs.submitted == [sweep_id, sweep_id]
    assert jobs.code == [code, code]


def test_only_rays_no_such_job_answer_counts_as_missing():
    class Answers:
        def __init__(self, error: RuntimeError) -> None:
            self.error = error

        def get_job_info(self, submission_id: str) -> None:
            raise self.error

    jobs = RayJobs("http://127.0.0.1:1", "python", {})
    jobs._client = Answers(
        RuntimeError("Request failed with status code 404: Job gradreg-ab-1 does not exist.")
    )
    assert jobs.state("gradreg-ab-1") is None
    for text in (
        "Request failed with status code 500: Internal error for gradreg-a404b-1.",
        "Request failed with status code 404: Not Found.",  # a route that is not up yet
    ):
        jobs._client = Answers(RuntimeError(text))
        with pytest.raises(RuntimeError, match="status code"):
            jobs.state("gradreg-a404b-1")
