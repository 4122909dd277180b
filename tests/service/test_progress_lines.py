"""The two progress lines, the driver's (`sweeps.progress`) and the API client's
(`python -m service submit --wait`), say the same of the best trial so far.

The same reports go to the driver's monitor and, through the store, to the API; the client
reads them back through the real routes.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
from fastapi.testclient import TestClient

from service.client import Client, progress_line
from service.store import status_machine
from service.store.sweep_store import objectives_of, upsert_trials
from sweeps import TrialEvent
from sweeps.progress import SweepMonitor
from sweeps.records import trial_name
from tests.helpers.api import routes_app
from tests.helpers.store import new_sweep

TOKEN = "secret"


@pytest.fixture
def api(session_factory) -> Client:
    """A client of the sweeps routes on the test's store."""
    app = routes_app(session_factory, TOKEN)
    client = Client("http://testserver", TOKEN)
    client.http = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    return client


def report(number: int, epoch: int, **metrics: float) -> TrialEvent:
    trial_id = f"{number:08x}"
    name = trial_name("demo", number, trial_id)
    values = {"epoch": float(epoch), **metrics}
    return TrialEvent("demo", trial_id, name, "running", {}, values, epoch, None)


def best_part(line: str) -> str | None:
    return line.split(" | ", 1)[1] if " | " in line else None


# (report, what both lines say of the best so far after it)
OVERFITTING = [
    (report(1, 1, val_nll=0.9, val_accuracy=0.70), "best val_nll 0.9 (demo-t1-00000001 at epoch 1"),
    (report(2, 1, val_nll=0.6, val_accuracy=0.60), "best val_nll 0.6 (demo-t2-00000002 at epoch 1"),
    (report(2, 2, val_nll=0.4, val_accuracy=0.65), "best val_nll 0.4 (demo-t2-00000002 at epoch 2"),
    # t2 overfits: its latest report is worse, and it is still the best by latest report
    (report(2, 3, val_nll=0.5, val_accuracy=0.66), "best val_nll 0.5 (demo-t2-00000002 at epoch 3"),
    (
        report(1, 2, val_nll=0.45, val_accuracy=0.8),
        "best val_nll 0.45 (demo-t1-00000001 at epoch 2",
    ),
]


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("val_nll", [said for _, said in OVERFITTING]),
        # a maximised objective: the line names it, not val_nll
        (
            "val_accuracy",
            [
                "best val_accuracy 0.7 (demo-t1-00000001 at epoch 1",
                "best val_accuracy 0.7 (demo-t1-00000001 at epoch 1",
                "best val_accuracy 0.7 (demo-t1-00000001 at epoch 1",
                "best val_accuracy 0.7 (demo-t1-00000001 at epoch 1",
                "best val_accuracy 0.8 (demo-t1-00000001 at epoch 2",
            ],
        ),
    ],
)
def test_the_driver_and_the_client_say_the_same_of_the_best(
    session_factory, api, objective, expected
):
    objectives = [{"metric": objective}]
    sweep_id = new_sweep(session_factory, "running", objectives=objectives)
    goal = objectives_of({"objectives": objectives})
    monitor = SweepMonitor(sweep="demo", objectives=goal, max_trials=4, stream=None)
    for (event, _), said in zip(OVERFITTING, expected, strict=True):
        monitor.update(event)
        with session_factory() as session:
            upsert_trials(session, sweep_id, [event], goal)
        driver = best_part(monitor.progress_line())
        client = best_part(progress_line(api.sweep(sweep_id), objective))
        assert driver == client == f"{said}, its latest report)"


def test_wait_prints_the_line_by_the_sweeps_objective(session_factory, api):
    objectives = [{"metric": "val_accuracy"}]
    sweep_id = new_sweep(session_factory, "running", objectives=objectives)
    goal = objectives_of({"objectives": objectives})
    with session_factory() as session:
        events = [event for event, _ in OVERFITTING]
        upsert_trials(session, sweep_id, events, goal)
        status_machine.transition(session, sweep_id, "cancelled")  # a final status: wait returns
    out = io.StringIO()
    api.wait(sweep_id, out=out)
    assert out.getvalue() == (
        "[demo] cancelled: trials 0 done, 0 running, 0 failed"
        " | best val_accuracy 0.8 (demo-t1-00000001 at epoch 2, its latest report)\n"
    )


def test_the_driver_and_the_client_count_the_trials_alike(session_factory, api):
    """Done is every finished state, failed included; running counts retrying trials."""
    objectives = [{"metric": "val_nll"}]
    sweep_id = new_sweep(session_factory, "running", objectives=objectives)
    goal = objectives_of({"objectives": objectives})
    monitor = SweepMonitor(sweep="demo", objectives=goal, max_trials=6, stream=None)
    states = ["running", "succeeded", "failed", "retrying", "stopped"]
    for number, state in enumerate(states, start=1):
        event = dataclasses.replace(report(number, 1, val_nll=1.0 / number), state=state)
        monitor.update(event)
        with session_factory() as session:
            upsert_trials(session, sweep_id, [event], goal)
    counted = "3 done, 2 running, 1 failed"
    assert monitor.progress_line().startswith(f"[demo] trials {counted.replace(' ', '/6 ', 1)}")
    assert progress_line(api.sweep(sweep_id), "val_nll").startswith(
        f"[demo] running: trials {counted}"
    )
