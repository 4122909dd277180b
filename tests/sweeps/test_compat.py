"""The engine touches Ray's and Optuna's internals only in its compat modules, and refuses at
start-up a version of either that it was not tested with (sweeps.tested_versions)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import ray
from packaging.requirements import Requirement

from sweeps._ray_compat import searcher_study
from sweeps.driver import _optuna_search
from sweeps.study import StudyStorage, attached, make_searcher, study_place
from sweeps.tested_versions import TESTED, UntestedVersionError, require_tested, version_problem
from tests.helpers.specs import digits_spec

ROOT = Path(__file__).parents[2]


def test_the_installed_versions_are_tested_ones():
    assert ray.__version__ in TESTED["ray"] and optuna.__version__ in TESTED["optuna"]
    assert version_problem("ray", ray.__version__) is None
    require_tested("optuna", optuna.__version__)


@pytest.mark.parametrize(
    ("library", "installed"), [("ray", "2.61.0"), ("ray", "2.60.0rc1"), ("optuna", "5.1.0")]
)
def test_another_version_is_refused_with_what_to_do(library, installed):
    problem = version_problem(library, installed)
    assert problem is not None
    assert f"{library} {installed}" in problem  # what is installed
    assert f"tested with {library} {TESTED[library][0]}" in problem  # what was tested
    assert f"sweeps/_{library}_compat.py" in problem  # where the internals are touched
    assert f"pip install '{library}=={TESTED[library][-1]}'" in problem
    with pytest.raises(UntestedVersionError, match=re.escape(installed)) as raised:
        require_tested(library, installed)
    assert isinstance(raised.value, ImportError)


def test_the_driver_refuses_an_untested_ray_before_it_starts_anything():
    """Importing the driver (which `sweeps.run_sweep`, `resume_sweep` and `run_stored` do first)
    runs the check: here against a table that lists another Ray, in a fresh interpreter."""
    code = (
        "import sweeps.tested_versions as v; v.TESTED['ray'] = ('2.59.0',); "
        "from sweeps import run_sweep"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sweeps.tested_versions.UntestedVersionError: ")
    assert f"tested with ray 2.59.0 only; this environment has ray {ray.__version__}" in last


def test_the_dependency_pins_are_the_tested_versions():
    """pyproject.toml lets pip install only what was tested, and the images install it."""
    quoted = re.findall(r'"([^"]+)"', (ROOT / "pyproject.toml").read_text())
    sweeps_deps = [q for q in quoted if re.match(r"(ray|optuna)\b", q)]
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    for library, tested in TESTED.items():
        (pin,) = [Requirement(d) for d in sweeps_deps if Requirement(d).name == library]
        for version in tested:
            assert pin.specifier.contains(version), pin
            major, minor, patch = (int(part) for part in version.split("."))
            for untested in (f"{major}.{minor}.{patch + 1}", f"{major}.{minor + 1}.0"):
                assert not pin.specifier.contains(untested), (pin, untested)
        assert f"{library}=={tested[-1]}" in constraints


def test_a_persistent_study_pickles_without_the_trials_optunas_cache_holds(tmp_path):
    """Why `StudyStorage` is a subclass of Optuna's private cache: the public way (an RDBStorage,
    which Optuna wraps in its cache) pickles every trial read into every save of Tune's state."""
    place = study_place("s", str(tmp_path / "s"))
    with attached(place):
        searcher, _ = make_searcher(place, str(tmp_path / "s"), **_optuna_search(digits_spec()))
        study = searcher_study(searcher)
        sizes = []
        for i in range(1, 41):
            searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", {"val_nll": 1.0 / i, "training_iteration": 1})
            if i in (1, 40):
                assert len(study.trials) == i  # read through the cache, as samplers do
                sizes.append(len(pickle.dumps(study)))
        assert sizes[1] - sizes[0] < 1000  # Optuna's own cache pickles some 400 bytes a trial
        restored = pickle.loads(pickle.dumps(study))
    assert len(restored.trials) == 40  # reconnected to its database, where the trials are
    assert [t.value for t in restored.trials] == [t.value for t in study.trials]


def test_the_study_storage_pickles_by_its_import_path(tmp_path):
    """Tune's saved states name `sweeps.study.StudyStorage`."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    saved = pickle.dumps(StudyStorage(url, "s"))
    assert b"sweeps.study" in saved and b"StudyStorage" in saved
    assert pickle.loads(saved).url == url
