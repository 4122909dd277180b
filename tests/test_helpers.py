"""The tests' own helpers: poll_until, the manual clock, and where tests import helpers from."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from tests.helpers import poll_until
from tests.helpers.clock import ManualClock

TESTS = Path(__file__).resolve().parent


def test_poll_until_returns_the_first_true_value():
    answers = iter([None, 0, [], {"status": "done"}, "later"])
    assert poll_until(lambda: next(answers), 10, "a sweep", interval_s=0.001) == {"status": "done"}
    assert next(answers) == "later"  # no call after the first true value


def test_poll_until_names_what_it_waited_for_the_last_value_and_the_detail():
    calls = []

    def never() -> int:
        calls.append(1)
        return 0

    with pytest.raises(AssertionError) as raised:
        poll_until(never, 0.05, "the API answering", interval_s=0.01, detail=lambda: "log tail")
    assert str(raised.value) == "the API answering: not within 0.05 s (last: 0)\nlog tail"
    assert len(calls) >= 2  # it polled, and looked once more at the deadline


def test_poll_until_refuses_a_timeout_or_interval_that_is_not_positive():
    with pytest.raises(ValueError, match=r"timeout_s and interval_s must be > 0; got 0, 0\.05"):
        poll_until(lambda: True, 0, "anything")
    with pytest.raises(ValueError, match="got 1, -1"):
        poll_until(lambda: True, 1, "anything", interval_s=-1)


def test_a_manual_clock_ends_waits_when_it_passes_their_deadline_or_the_event_is_set():
    clock = ManualClock(start=5.0)
    event = clock.event()
    ended: list[bool] = []
    waiter = threading.Thread(target=lambda: ended.append(event.wait(2.0)))
    waiter.start()
    clock.wait_for_naps(1)
    assert clock.deadlines() == [7.0]
    clock.advance(1.5)
    assert clock.deadlines() == [7.0] and ended == []  # still waiting at 6.5
    clock.advance(0.5)
    waiter.join()
    assert ended == [False] and clock() == 7.0 and clock.deadlines() == []

    waiter = threading.Thread(target=lambda: ended.append(event.wait(60)))
    waiter.start()
    clock.wait_for_naps(2)
    event.set()
    waiter.join()
    assert ended == [False, True] and clock() == 7.0
    assert event.wait(0) is True  # set stays set


def test_a_wait_on_a_clock_nobody_moves_fails_instead_of_hanging():
    clock = ManualClock(stall_s=0.05)
    with pytest.raises(AssertionError, match="neither ended by the clock nor by the event"):
        clock.event().wait(1.0)
    with pytest.raises(AssertionError, match="1 waits on the clock expected"):
        ManualClock(stall_s=0.05).wait_for_naps(1)
    with pytest.raises(ValueError, match="a clock does not go back"):
        clock.advance(-1)


def imports_of_test_code(path: Path) -> list[str]:
    """The modules of tests/ that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_tests_import_helpers_only_from_tests_helpers():
    """Another test module or a conftest is no place to import from: fixtures come from
    conftest.py by name, and every shared helper lives in tests/helpers."""
    wrong = {
        str(path.relative_to(TESTS.parent)): modules
        for path in sorted(TESTS.rglob("*.py"))
        if (
            modules := [
                name
                for name in imports_of_test_code(path)
                if name != "tests.helpers" and not name.startswith("tests.helpers.")
            ]
        )
    }
    assert wrong == {}, f"import these from tests.helpers instead: {wrong}"
