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
from service.quotas import QuotaExceeded, Quotas
from service.reconciler import Reconciler, failure_line
from service.store import status_machine, sweep_queries, user_queries
from service.store.models import Sweep, User
from service.store.sweep_store import upsert_trial
from tests.helpers.clock import ManualClock
from tests.helpers.store import event as trial_event
from tests.helpers.store import new_sweep, spec_document, status_of, trial_states


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
        quotas=Quotas(active_sweeps=100, queued_sweeps=100),
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


# ---------------------------------------------------------------- quotas and fair share


def user_sweeps(
    sessions: sessionmaker[Session], owner: str, count: int, quotas: Quotas, **document: object
) -> list[str]:
    """``count`` sweeps submitted by ``owner`` (made a member if new) under ``quotas``."""
    ids = []
    with sessions() as session:
        if session.get(User, owner) is None:
            user_queries.create_user(session, owner, "member")
        for index in range(count):
            sweep, _ = sweep_queries.create_sweep(
                session,
                spec_document(f"{owner}-{index}", **document),
                owner=owner,
                quotas=quotas,
            )
            ids.append(sweep.id)
    return ids


def test_a_users_sweeps_over_their_quota_wait_as_queued_and_start_in_order(session_factory):
    quota = Quotas(active_sweeps=1, queued_sweeps=5)
    jobs = RecordingJobs()
    passes = reconciler(session_factory, jobs, max_active=10)
    passes.quotas = quota
    first, second, third = user_sweeps(session_factory, "alice", 3, quota)
    (other,) = user_sweeps(session_factory, "bob", 1, quota)
    queued = status_of(session_factory, second)
    assert queued.status == "queued"
    assert "active_sweeps quota is 1" in queued.reason

    passes.reconcile_once()
    assert jobs.submitted == [first, other]  # bob's own quota is untouched by alice's
    assert [status_of(session_factory, s).status for s in (second, third)] == ["queued"] * 2

    with session_factory() as session:  # alice's first sweep ends
        status_machine.transition(session, first, "running")
        status_machine.transition(session, first, "succeeded")
    passes.reconcile_once()
    assert jobs.submitted == [first, other, second]
    assert (
        status_of(session_factory, second).status,
        status_of(session_factory, second).attempt,
    ) == (
        "submitted",
        1,
    )
    assert status_of(session_factory, third).status == "queued"

    with session_factory() as session:  # a queued sweep is cancelled before it starts
        assert status_machine.request_cancel(session, third).status == "cancelled"


def test_a_quota_lowered_sends_a_pending_sweep_back_to_the_queue(session_factory):
    roomy = Quotas(active_sweeps=3, queued_sweeps=5)
    jobs = RecordingJobs()
    passes = reconciler(session_factory, jobs, max_active=1)  # one driver at a time overall
    passes.quotas = roomy
    first, second = user_sweeps(session_factory, "alice", 2, roomy)
    passes.reconcile_once()
    assert jobs.submitted == [first]
    assert status_of(session_factory, second).status == "pending"

    with session_factory() as session:
        user_queries.set_quotas(session, "alice", {"active_sweeps": 1}, roomy)
    passes.reconcile_once()
    waiting = status_of(session_factory, second)
    assert waiting.status == "queued"
    assert "active_sweeps quota is 1" in waiting.reason


def test_a_queue_at_its_cap_refuses_the_next_sweep(session_factory):
    quota = Quotas(active_sweeps=1, queued_sweeps=1)
    user_sweeps(session_factory, "alice", 2, quota)
    with pytest.raises(QuotaExceeded, match="queued_sweeps quota is 1") as refused:
        user_sweeps(session_factory, "alice", 1, quota)
    assert refused.value.quota == "queued_sweeps"
    with session_factory() as session:
        assert sweep_queries.owner_counts(session, "alice") == {"pending": 1, "queued": 1}


def test_running_sweeps_get_their_fair_share_and_it_moves_as_users_come_and_go(
    session_factory,
):
    open_quota = Quotas(active_sweeps=5, queued_sweeps=5)
    jobs = RecordingJobs()
    passes = reconciler(session_factory, jobs, max_active=10)
    passes.quotas = open_quota
    passes.capacity = lambda: {"GPU": 2.0, "CPU": 8.0}
    wide = {
        "resources": {"gpu": 0.5, "cpu": 1},
        "budget": {"max_concurrent_trials": 4, "max_trials": 4},
    }
    (alices,) = user_sweeps(session_factory, "alice", 1, open_quota, **wide)
    passes.reconcile_once()
    assert status_of(session_factory, alices).allowance == 4

    (bobs,) = user_sweeps(session_factory, "bob", 1, open_quota, **wide)
    passes.reconcile_once()
    alice_now, bob_now = status_of(session_factory, alices), status_of(session_factory, bobs)
    assert (alice_now.allowance, bob_now.allowance) == (2, 2)
    assert "among 2 user(s)" in alice_now.allowance_reason

    # bob's trials have all finished while his driver builds the ensemble: his share is
    # alice's again, before his sweep ends.
    with session_factory() as session:
        status_machine.transition(session, bobs, "running")
        for index in range(4):
            upsert_trial(session, bobs, trial_event(f"b{index}", state="succeeded", val_nll=1.0))
    passes.reconcile_once()
    back, his = status_of(session_factory, alices), status_of(session_factory, bobs)
    assert (back.allowance, back.allowance_reason) == (4, None)
    assert (his.status, his.allowance) == ("running", 0)
    assert his.allowance_reason == "every trial of its budget has finished"


def test_an_unreadable_cluster_leaves_sweeps_to_their_quotas(session_factory):
    quota = Quotas(active_sweeps=5, queued_sweeps=5, concurrent_trials=3)
    jobs = RecordingJobs()
    passes = reconciler(session_factory, jobs, max_active=10)
    passes.quotas = quota

    def unreachable() -> dict[str, float]:
        raise ConnectionError("the dashboard is restarting")

    passes.capacity = unreachable
    (sweep_id,) = user_sweeps(
        session_factory, "alice", 1, quota, budget={"max_concurrent_trials": 8}
    )
    passes.reconcile_once()
    held = status_of(session_factory, sweep_id)
    assert (held.allowance, held.allowance_reason) == (
        3,
        "its owner's concurrent_trials quota (3)",
    )
