"""What Tune keeps of a trial's reports: only what Tune itself reads.

A trial reports every metric it has, its MLflow run id, its reliability bins and where it runs
(`sweeps.trainable`). The driver's `SweepCallback` hands all of that to the store and to MLflow,
and keeps each finished trial's last report (`SweepMonitor.finals`, and a file per trial beside
Tune's state: `sweeps.statefiles.write_report`). Tune needs far less: its searcher reads the
objectives, its scheduler the early-stopping metric, and both Tune's own keys
(`sweeps.spec.resolve.tune_metrics`).

Left alone, Tune keeps each trial's last report whole, a running analysis of every number in it
(max, min, mean, last, and the means of the last 5 and 10 values with the windows behind them),
and the whole report of each checkpoint it holds, and it writes all of that into every save of
the experiment state: about 39 KB per trial (BENCHMARKS.md, "Tune's state per trial").
`TuneResultTrimmer` removes the rest from each report before Tune keeps it (Tune lets a callback
change a result in place, and keeps it after the callbacks ran), turns the windows off, and
keeps only the latest checkpoint's record, its report trimmed the same way.

A trial that ended (finished, stopped by the scheduler, or failed for good) is never run again:
a resumed sweep skips it. The trimmer then drops its checkpoint's record too, and the rest of
its state that only a running trial needs (`compact_finished_trial`), and `compact_saves` has
Tune write each trial's state as compact JSON instead of indented. A finished trial's share of
a save went from about 8 KB to under 4 KB (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from ray import tune

from sweeps._ray_compat import (
    checkpoint_bookkeeping,
    compact_finished_trial,
    compact_trial_states,
    drop_metric_windows,
    forget_checkpoints,
    latest_checkpoint_report,
)
from sweeps.records import BINS_KEY, PLACEMENT_KEY, RUN_ID_KEY, reported_metrics

OWN_KEYS = frozenset({RUN_ID_KEY, BINS_KEY, PLACEMENT_KEY})  # besides the metrics
# Tune's own keys that an ended trial's last report keeps: which trial and its parameters (a
# `Result`'s ``config`` is its last report's, which `sweeps.outcome` reads), and how far it got.
ENDED_TUNE_KEYS = frozenset({"trial_id", "config", "done", "training_iteration"})

# While a sweep runs: Tune writes each trial's state as compact JSON.
compact_saves = compact_trial_states


def trim(report: MutableMapping[str, Any], kept: Iterable[str]) -> None:
    """Remove from ``report``, in place, what a trial added that is not in ``kept``: its
    metrics (`reported_metrics`) and its own keys (`OWN_KEYS`). Tune's own keys stay."""
    ours = OWN_KEYS.union(reported_metrics(report)).difference(kept)
    for key in ours.intersection(report):
        del report[key]


class TuneResultTrimmer(tune.Callback):
    """Trims each report before Tune keeps it. Must come after every callback that reads the
    whole report (`SweepCallback`), and before `LatestResultLogger`, whose file then holds
    what Tune holds."""

    def __init__(self, kept: Iterable[str]) -> None:
        self.kept = frozenset(kept)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        drop_metric_windows(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        trim(result, self.kept)
        # A trial restored from a sweep saved before the trimmer still has its windows.
        drop_metric_windows(trial)
        # The checkpoint Tune registered since the last report (Tune rewrites the trial's state
        # right after this call); the last one's is trimmed when the trial ends.
        self._trim_checkpoints(trial)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._compact(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._compact(trial)

    def _compact(self, trial: Any) -> None:
        # Tune calls these for a trial that will not run again (a retried trial's failure is a
        # recovery, not an error), and the driver resumes neither finished nor failed trials.
        compact_finished_trial(trial, self.kept | ENDED_TUNE_KEYS, analysis_keys=self.kept)

    def _trim_checkpoints(self, trial: Any) -> None:
        # Only the latest checkpoint's record: it is what a resume starts from, and the
        # pruner deletes the older directories once no saved state names them.
        forget_checkpoints(checkpoint_bookkeeping(trial), keep=lambda path: False)
        report = latest_checkpoint_report(trial)
        if report is not None:
            trim(report, self.kept)
