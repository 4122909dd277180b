"""A sweep's Optuna study: where it is kept, and the searcher that keeps it there (the
parameter importances it gives when the sweep ends: `sweeps.importances`).

Where the study is kept (`study_place`), the first rule that applies:

1. ``DriverOptions.study_storage`` or ``GRADREG_STUDY_STORAGE``: ``memory``, or an SQLAlchemy
   URL used as given.
2. The service's database, when the sweep runs from a store that has one (`run_stored`).
   Optuna's tables (``studies``, ``trials``, ``version_info``, ``alembic_version``) would meet
   the service's own, so they go apart: on PostgreSQL into a schema of their own (``optuna``,
   or ``<the store's schema>_optuna`` when the store's URL sets a search_path), on SQLite into
   the file ``<store file>.optuna.db`` beside the store's.
3. Tune's storage is a local path: ``<experiment>/optuna.db``, beside Tune's state, so the
   study moves with it.
4. Tune's storage is remote (``s3://…``): in memory, pickled with Tune's state as before. A file
   on this machine would not follow the sweep to the machine that resumes it; set
   ``GRADREG_STUDY_STORAGE`` to keep such a study in a database.

The study is named after the sweep (a service sweep: its id). Tune pickles the searcher into
the sweep's saved state; `StudyStorage` pickles as the study's name and place only, never its
URL's password, and a resume `attached` to the place reconnects it to the same study.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sweeps._optuna_compat import CachedRDBStorage, set_trial_user_attr
from sweeps._ray_compat import asked_trials, searcher_study

STUDY_FILE = "optuna.db"
STORE_FILE_SUFFIX = ".optuna.db"
OPTUNA_SCHEMA = "optuna"
MEMORY = "memory"
# Study and trial attributes the driver writes (visible in optuna-dashboard).
SWEEP_ATTR = "gradreg.sweep"
EXPERIMENT_ATTR = "gradreg.experiment"
TUNE_TRIAL_ATTR = "tune_trial_id"
LOST_ATTR = "gradreg.lost"
LOST = "asked by a driver that stopped before Tune saved the trial; Tune never ran it"
SQLITE_TIMEOUT_S = 30  # several drivers share the service's study file
_CREATION_LOCK_ID = 0x6F70747A  # PostgreSQL advisory lock around Optuna's table creation

logger = logging.getLogger(__name__)


class StudyExistsError(FileExistsError):
    pass


@dataclass(frozen=True)
class StudyPlace:
    """Where sweep ``name``'s study is kept: ``url`` (an SQLAlchemy URL), or None in memory."""

    name: str
    url: str | None = field(repr=False)  # may hold a password: `shown` hides it
    source: str  # "setting", "store", "experiment" or "memory"
    why: str

    @property
    def persistent(self) -> bool:
        return self.url is not None

    @property
    def shown(self) -> str:
        """The URL with its password hidden, or ``memory``."""
        return redact(self.url) if self.url else MEMORY

    def describe(self) -> str:
        where = "memory, saved with Tune's state" if self.url is None else self.shown
        return f"study: Optuna study {self.name!r} in {where} ({self.why})"

    def recorded(self) -> dict[str, str]:
        """What the sweep's record remembers (no password): see `check_resumable`."""
        return {"name": self.name, "storage": self.shown, "source": self.source}


# ---------------------------------------------------------------- where


def study_place(
    name: str, experiment: str, *, store_url: str | None = None, setting: str | None = None
) -> StudyPlace:
    """Where sweep ``name`` (Tune experiment at ``experiment``) keeps its study."""
    if setting:
        if setting == MEMORY:
            return StudyPlace(name, None, "memory", "GRADREG_STUDY_STORAGE=memory")
        return StudyPlace(name, setting, "setting", "GRADREG_STUDY_STORAGE")
    if store_url and (url := beside_store(store_url)) is not None:
        return StudyPlace(name, url, "store", "beside the service's store, apart from its tables")
    if "://" not in experiment:
        url = f"sqlite:///{Path(experiment, STUDY_FILE).absolute()}"
        return StudyPlace(name, url, "experiment", "beside Tune's state")
    return StudyPlace(
        name,
        None,
        "memory",
        "Tune's storage is remote, and a local file would not follow it to another machine; "
        "set GRADREG_STUDY_STORAGE to keep the study in a database",
    )


def beside_store(store_url: str) -> str | None:
    """The URL that keeps Optuna's tables apart from a store's (see the module's docstring);
    None for a store without a file or server (in-memory SQLite)."""
    url = sa.make_url(store_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            return None
        return str(url.set(database=url.database + STORE_FILE_SUFFIX))
    if backend == "postgresql":
        options = url.query.get("options", "")
        if isinstance(options, tuple):
            options = " ".join(options)
        found = re.search(r"-c\s*search_path=(\S+)", options)
        if found:
            schema = found.group(1).split(",")[0].strip("\"'")
            options = options.replace(found.group(0), f"-csearch_path={schema}_{OPTUNA_SCHEMA}")
        else:
            options = f"-csearch_path={OPTUNA_SCHEMA} {options}".strip()
        return url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    raise ValueError(
        f"the service's store is on {backend!r}; sweeps keep their Optuna studies beside "
        "SQLite and PostgreSQL stores only: set GRADREG_STUDY_STORAGE to a URL or to 'memory'"
    )


def redact(url: str) -> str:
    """``url`` with its password (in the authority or the query) hidden."""
    parsed = sa.make_url(url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _schema(url: sa.URL) -> str | None:
    found = re.search(r"-c\s*search_path=([^\s,]+)", str(url.query.get("options", "")))
    return found.group(1).strip("\"'") if found else None


# ---------------------------------------------------------------- the storage


_ATTACHED: dict[str, str] = {}  # study name -> URL, while a driver runs or resumes it


@contextlib.contextmanager
def attached(place: StudyPlace) -> Iterator[None]:
    """While a sweep runs or resumes: its pickled `StudyStorage` reconnects to ``place``."""
    if not place.persistent:
        yield
        return
    assert place.url is not None
    _ATTACHED[place.name] = place.url
    try:
        yield
    finally:
        _ATTACHED.pop(place.name, None)


class StudyStorage(CachedRDBStorage):
    """Optuna's RDB storage (with its cache) for one sweep's study, pickled by place only.

    Tune pickles the searcher, its study and trials into the sweep's saved state, by this
    import path: the pickle keeps the study's name, its redacted URL, and the URL itself only
    when it holds no password, never the trials Optuna's cache holds (`sweeps._optuna_compat`
    says why this is a subclass of that cache). Unpickled, it reconnects to the URL `attached`
    for the study, else to that saved URL.
    """

    def __init__(self, url: str, study_name: str) -> None:
        super().__init__(_rdb_storage(url))
        self.url = url
        self.study_name = study_name

    def __getstate__(self) -> dict[str, Any]:
        secret = sa.make_url(self.url).password is not None or "password" in self.url
        return {
            "study_name": self.study_name,
            "shown": redact(self.url),
            "url": None if secret else self.url,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        url = _ATTACHED.get(state["study_name"]) or state["url"]
        if url is None:
            raise RuntimeError(
                f"the saved Optuna study {state['study_name']!r} is in {state['shown']}, whose "
                "password the saved state does not keep: resume the sweep through the driver "
                "(`python -m sweeps resume`, `sweeps.resume_sweep` or `sweeps.run_stored`)"
            )
        StudyStorage.__init__(self, url, state["study_name"])


def _rdb_storage(url: str) -> RDBStorage:
    parsed = sa.make_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    with _creation_lock(parsed):
        return RDBStorage(url, engine_kwargs=engine_kwargs)


@contextlib.contextmanager
def _creation_lock(url: sa.URL) -> Iterator[None]:
    """Serialise Optuna's table creation and Alembic stamp between drivers sharing a database
    (they race otherwise); on PostgreSQL, create the schema first."""
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:  # flock: apart from SQLite's own (POSIX) locks
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    if backend != "postgresql":
        yield
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.select(sa.func.pg_advisory_lock(_CREATION_LOCK_ID)))
            connection.commit()
            try:
                schema = _schema(url)
                if schema:
                    connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                    connection.commit()
                yield
            finally:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(_CREATION_LOCK_ID)))
                connection.commit()
    except sa.exc.DBAPIError as error:
        raise RuntimeError(
            f"cannot prepare the Optuna study storage "
            f"{redact(url.render_as_string(hide_password=False))}: {error.orig or error}"
        ) from error
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the searcher


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch on a persistent study (Tune pickles it by this import path).

    Each Optuna trial carries its Tune trial's id (``tune_trial_id``) and its final value only
    (`on_trial_result`). A resumed searcher marks the trials a killed driver asked for after
    Tune's last save as failed (``gradreg.lost``; an initial point among them is queued again),
    so every other trial is one Tune trial.
    """

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        asked = asked_trials(self)
        new = trial_id not in asked
        config = super().suggest(trial_id)
        if new and trial_id in asked:
            asked[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Not written: nothing prunes (the search's pruner is Optuna's NopPruner), MLflow holds
        every epoch, and a write per report would sit on Tune's loop (about 2 ms each here)."""

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        mark_lost_trials(searcher_study(self), {t.number for t in asked_trials(self).values()})


def mark_lost_trials(study: optuna.Study, known: set[int]) -> list[int]:
    """Fail the study's running trials that no Tune trial holds (``known``: the numbers of those
    it does); queue their fixed points again. Return their numbers."""
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number in known:
            continue
        set_trial_user_attr(study, trial, LOST_ATTR, LOST)
        study.tell(trial.number, state=TrialState.FAIL)
        if "fixed_params" in trial.system_attrs:
            study.enqueue_trial(trial.system_attrs["fixed_params"])
        lost.append(trial.number)
    if lost:
        logger.warning("Optuna trials %s were lost with the driver and are marked failed", lost)
    return lost


def make_searcher(
    place: StudyPlace, experiment: str, **optuna_search: Any
) -> tuple[OptunaSearch, list[str]]:
    """A fresh sweep's searcher, with its study at ``place``; and notes for the driver's output.

    A study of the same name that an earlier attempt of this sweep left (one that stopped before
    Tune saved any state) is deleted first: nothing will continue its trials.
    """
    if not place.persistent:
        return OptunaSearch(**optuna_search), [place.describe()]
    assert place.url is not None
    notes = [place.describe()]
    storage = StudyStorage(place.url, place.name)
    try:
        previous = optuna.load_study(study_name=place.name, storage=storage)
    except KeyError:
        previous = None
    if previous is not None:
        attrs = previous.user_attrs
        ours = place.source != "setting" or attrs.get(EXPERIMENT_ATTR) == experiment
        if not ours:
            raise StudyExistsError(
                f"{place.shown} already holds an Optuna study {place.name!r}, of the sweep at "
                f"{attrs.get(EXPERIMENT_ATTR, 'an unknown place')}; give the spec another name"
            )
        count = len(previous.get_trials(deepcopy=False))
        optuna.delete_study(study_name=place.name, storage=storage)
        notes.append(
            f"study: deleted the study {place.name!r} that an earlier attempt left "
            f"({count} trials; Tune saved no state for them)"
        )
    searcher = StudySearch(storage=storage, study_name=place.name, **optuna_search)
    study = searcher_study(searcher)
    study.set_user_attr(SWEEP_ATTR, place.name)
    study.set_user_attr(EXPERIMENT_ATTR, experiment)
    return searcher, notes


def check_resumable(place: StudyPlace, recorded: Mapping[str, str] | None) -> None:
    """Refuse a resume whose study is not where the sweep kept it (a fresh study would start)."""
    if not recorded or recorded.get("source") == "memory":
        return  # pickled with Tune's state (also every sweep saved before studies persisted)
    kept = recorded.get("storage", "?")
    if not place.persistent:
        raise ValueError(
            f"sweep {place.name!r} keeps its Optuna study in {kept}, but would resume in memory "
            f"({place.why}); set GRADREG_STUDY_STORAGE to that study's URL"
        )
    assert place.url is not None
    url = sa.make_url(place.url)
    missing = url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()
    if not missing:
        try:
            StudyStorage(place.url, place.name).get_study_id_from_name(place.name)
        except KeyError:
            missing = True
    if missing:
        raise FileNotFoundError(
            f"no Optuna study {place.name!r} in {place.shown}; sweep {place.name!r} kept it in "
            f"{kept} (resume it where that is reachable, or set GRADREG_STUDY_STORAGE)"
        )


def existing_study(place: StudyPlace) -> optuna.Study:
    """The study at a persistent ``place`` as it is, never created; FileNotFoundError if none."""
    assert place.url is not None
    url = sa.make_url(place.url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        raise FileNotFoundError(f"no Optuna study {place.name!r}: {place.shown} does not exist")
    try:
        return optuna.load_study(study_name=place.name, storage=_rdb_storage(place.url))
    except KeyError:
        raise FileNotFoundError(f"no Optuna study {place.name!r} in {place.shown}") from None


def resumed_place(place: StudyPlace, recorded: Mapping[str, str] | None) -> StudyPlace:
    """The place a resumed sweep's study is in: ``place``, or memory for a sweep that kept it
    there (every sweep saved before studies persisted)."""
    if recorded and recorded.get("source") != "memory":
        return place
    why = "as the sweep kept it" if recorded else "the sweep was saved before studies persisted"
    return StudyPlace(place.name, None, "memory", why)
