"""Headless Chromium for the MLflow UI tests: a page's DOM (and a screenshot) as a user's fresh
browser renders it.

Each call gets a fresh profile (``--user-data-dir``): nothing a person clicked earlier (the UI
keeps its view choices in the browser's storage) decides which page a link opens.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.entities import Run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What the UI shows when one of its API calls failed (MLflow's own texts).
UI_ERRORS = ("Request error", "INTERNAL_ERROR", "Failed to load child runs")


def _command(profile: Path) -> list[str]:
    if CHROMIUM is None:
        pytest.fail("this test needs Chromium: apt-get install chromium (.ci/run installs it)")
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,1000",
        # Virtual time: past the UI's loading skeleton, without waiting out real seconds.
        "--virtual-time-budget=20000",
    ]  # fmt: skip


def dom(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` once the UI has loaded, in a new profile at ``profile``; with
    ``screenshot``, a PNG of the page there too (from a second fresh profile)."""
    assert not profile.exists(), f"{profile} is not a fresh profile"
    done = subprocess.run(
        [*_command(profile), "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout, f"chromium on {url}: {done.stderr[-2000:]}"
    # Kept beside the profile for a person to read when an assertion on it fails.
    profile.with_name(profile.name + ".html").write_text(done.stdout)
    if screenshot is not None:
        shot = [*_command(profile.with_name(profile.name + "-shot")), f"--screenshot={screenshot}"]
        subprocess.run([*shot, url], capture_output=True, timeout=120)
    return done.stdout


def ui_errors(page: str) -> list[str]:
    """The UI's error texts that ``page`` (a DOM) shows."""
    return [text for text in UI_ERRORS if text in page]


def assert_lists_runs(page: str, experiment_id: str, parent_run_id: str, count: int) -> None:
    """``page`` is the experiment's Training runs table (not MLflow 3's GenAI overview, whose
    sidebar and breadcrumbs also name the runs page and the experiment): the sweep's parent run
    in it (its trials nested under it, collapsed), the count of every run in the experiment,
    and no failed request."""
    assert re.search(r"<h2[^>]*>Training runs</h2>", page), "the page is not the runs table"
    assert f'href="#/experiments/{experiment_id}/runs/{parent_run_id}"' in page, "no parent run"
    assert f"<strong>{count}</strong> matching runs" in page
    assert ui_errors(page) == []


def assert_shows_run(page: str, run: Run, metrics: tuple[str, ...]) -> None:
    """``page`` is ``run``'s own page: its name as the header, its latest ``metrics`` with
    their values, and no failed request (the page also lists the run's child runs)."""
    assert f'data-testid="runs-header">{run.info.run_name}<' in page, "not the run's page"
    for metric in metrics:
        value = run.data.metrics[metric]
        # As JavaScript prints it (1.0 as 1); right for 1e-4 <= |value| < 1e16, as metrics are.
        text = str(int(value)) if value.is_integer() else repr(value)
        shown = rf'>{metric}</a>.{{0,400}}?title="{re.escape(text)}"'
        assert re.search(shown, page), f"{metric} {value} is not on the run's page"
    assert ui_errors(page) == []
