"""A researcher's own code by entry point: its syntax (checked without importing), resolving
and calling it with an error of its own for each way that fails, the code directory on the
import path, builders, and a user's network trained by `fit`."""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import pytest
from torch import nn

from gradreg.config import TrainConfig
from gradreg.models import build_model
from gradreg.user_code import (
    UserCodeError,
    call,
    code_path,
    entry_point_problem,
    is_entry_point,
    resolve,
)
from tests.helpers.user_code import BUILD, write_package, write_user_code


@pytest.fixture
def code(tmp_path):
    """The test's user code, on the import path for the test."""
    directory = write_user_code(tmp_path / "src")
    with code_path(directory):
        yield directory


# ---------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("mynets.mixer.build", None),  # no colon: a name, not an entry point
        ("mynets.mixer:build", None),
        ("mixer:Build_2", None),
        ("a:b:c", r"'a:b:c' holds 2 colons; an entry point is 'package.module:function'"),
        (":build", r"names no module before the colon"),
        ("mynets.:build", r"'' is not a Python identifier; the part before the colon is a dotted"),
        ("my-nets.mixer:build", r"'my-nets' is not a Python identifier"),
        ("mynets.class:build", r"'class' is not a Python identifier"),
        ("mynets.mixer:", r"names no function after the colon"),
        ("mynets.mixer: build", r"' build' is not a Python identifier; the part after the colon"),
        ("mynets.mixer:Mixer.build", r"'Mixer.build' is not a Python identifier"),
    ],
)
def test_the_syntax_of_an_entry_point(value, problem):
    found = entry_point_problem(value) if is_entry_point(value) else None
    if problem is None:
        assert found is None
    else:
        assert found is not None and re.search(problem, found), found


def test_a_train_config_checks_the_syntax_and_never_imports(tmp_path):
    marker = tmp_path / "imported"
    write_package(
        tmp_path / "src",
        {"sideeffect/__init__.py": f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"},
    )
    sys.path.insert(0, str(tmp_path / "src"))  # importable, so importing would show
    try:
        config = TrainConfig(
            model="sideeffect:build",
            model_options={"width": 64, "blocks": [1, 2], "act": "gelu", "extra": None},
            dataset="sideeffect:load",
            dataset_options={"noise": 0.3, "nested": {"a": [1.5, True]}},
        )
    finally:
        sys.path.remove(str(tmp_path / "src"))
    assert config.entry_points == ("sideeffect:build", "sideeffect:load")
    assert "sideeffect" not in sys.modules and not marker.exists()
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "nets:mixer:build"}, r"model: 'nets:mixer:build' holds 2 colons"),
        (
            {"dataset": "my data:load"},
            r"dataset: 'my data:load': 'my data' is not a Python identifier",
        ),
        ({"model": "nets.mixer.build"}, r"unknown model .*or an entry point .*nets.mixer:build\?"),
        ({"model": "vgg"}, r"unknown model 'vgg'; accepted: mlp, cnn, resnet18, resnet20, or"),
        (
            {"model": "nets:build", "model_options": {"width": float("nan")}},
            r"model_options: width=nan is not a JSON value",
        ),
        (
            {"dataset": "data:load", "dataset_options": {"transform": object()}},
            r"dataset_options: transform=<object .*> is not a JSON value",
        ),
        ({"model": "nets:build", "model_options": {3: 1}}, r"3 is not a keyword argument name"),
    ],
)
def test_a_train_config_refuses_a_malformed_entry_point_or_options(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_builtin_options_keep_their_own_checks():
    # a built-in model's options are not judged as JSON here (build_model checks them)
    TrainConfig(model="mlp", model_options={"hidden": (8,)})


# ---------------------------------------------------------------- resolving


def test_resolve_and_call(code):
    function = resolve(BUILD, "model builder")
    assert function.__module__ == "tnets.mixer"
    assert Path(sys.modules["tnets.mixer"].__file__).is_relative_to(code)
    model = call(BUILD, (1, 16), 3, role="model builder", width=4)
    assert isinstance(model, nn.Module)


def test_a_malformed_entry_point_is_a_syntax_error():
    with pytest.raises(UserCodeError, match=r"model builder 'a:b:c': 'a:b:c' holds 2 colons") as e:
        resolve("a:b:c", "model builder")
    assert e.value.kind == "syntax" and e.value.entry_point == "a:b:c"


def test_a_module_not_on_the_path(tmp_path):
    with pytest.raises(UserCodeError) as error:
        resolve("tnets_absent.mixer:build", "model builder")
    assert error.value.kind == "not_found"
    assert str(error.value) == (
        "model builder 'tnets_absent.mixer:build': no module or package named 'tnets_absent' on "
        "this process's import path (sys.path): the code is not on it; give its directory "
        "(--code DIR) or install it"
    )
    with code_path(write_user_code(tmp_path / "src")) as directory:
        with pytest.raises(UserCodeError, match=rf"in the code directory {directory}, nor") as e:
            resolve("tnets_absent:build")
        assert e.value.kind == "not_found"
        with pytest.raises(UserCodeError, match=r"package 'tnets' \(.*tnets/__init__.py\) has no"):
            resolve("tnets.absent:build")
        with pytest.raises(UserCodeError, match=r"'tnets.mixer' \(.*mixer.py\) is a module, not a"):
            resolve("tnets.mixer.deeper:build")


def test_an_import_error_inside_the_users_module_names_the_dependency(tmp_path):
    source = "import math\n\nimport einops_not_installed\n\n\ndef build(s, n):\n    return None\n"
    with (
        code_path(write_package(tmp_path / "src", {"tnets/needs.py": source})),
        pytest.raises(UserCodeError) as error,
    ):
        resolve("tnets.needs:build", "model builder")
    assert error.value.kind == "import"
    message = str(error.value)
    assert message.startswith(
        "model builder 'tnets.needs:build': importing module 'tnets.needs' failed: it imports "
        "module 'einops_not_installed', which is not installed where the code runs: "
        "ModuleNotFoundError: No module named 'einops_not_installed'"
    )
    # the user's frame, and none of gradreg's or importlib's
    assert error.value.frames and "needs.py" in error.value.frames[-1]
    assert "line 3, in <module>" in error.value.frames[-1]
    assert "import einops_not_installed" in message
    assert "gradreg/" not in message and "importlib" not in message


def test_an_exception_while_importing_quotes_it_with_the_users_frames(tmp_path):
    files = {
        "tnets/broken.py": "from tnets.helper import width\n\n\ndef build(s, n):\n    pass\n",
        "tnets/helper.py": "def compute():\n    return 1 / 0\n\n\nwidth = compute()\n",
        "tnets/syntax.py": "def build(s, n)\n    return 1\n",
    }
    with code_path(write_package(tmp_path / "src", files)):
        with pytest.raises(UserCodeError) as error:
            resolve("tnets.broken:build", "model builder")
        assert error.value.kind == "import"
        assert error.value.problem == (
            "importing module 'tnets.broken' raised: ZeroDivisionError: division by zero"
        )
        frames = "\n".join(error.value.frames)
        assert [f.split(", in ")[-1].split("\n")[0] for f in error.value.frames] == [
            "<module>",
            "<module>",
            "compute",
        ]
        assert "return 1 / 0" in frames and "gradreg" not in frames
        with pytest.raises(UserCodeError, match=r"raised: .*syntax.py\", line 1") as error:
            resolve("tnets.syntax:build")
        assert error.value.kind == "import" and "SyntaxError" in error.value.exception


def test_a_missing_function_lists_what_the_module_defines(code):
    with pytest.raises(UserCodeError) as error:
        resolve("tnets.mixer:buld", "model builder")
    assert error.value.kind == "attribute"
    assert str(error.value) == (
        f"model builder 'tnets.mixer:buld': module 'tnets.mixer' ({code}/tnets/mixer.py) has no "
        "attribute 'buld'; did you mean 'build'? it defines: Block, Mixer, build, build_batchnorm"
    )


def test_an_attribute_that_cannot_be_called(tmp_path):
    with code_path(write_package(tmp_path / "src", {"tnets/consts.py": "WIDTH = 3\n"})):
        with pytest.raises(UserCodeError) as error:
            resolve("tnets.consts:WIDTH", "model builder")
        assert error.value.kind == "not_callable"
        assert error.value.problem.startswith("'WIDTH' is an int, not a function or class")
        with pytest.raises(UserCodeError, match=r"it defines no public function or class"):
            resolve("tnets.consts:build")


def test_an_exception_inside_the_call(code):
    with pytest.raises(UserCodeError) as error:
        call(BUILD, (1, 18), 3, role="model builder")
    assert error.value.kind == "call"
    assert error.value.problem == ("raised: ValueError: length 18 is not a multiple of patch=4")
    assert len(error.value.frames) == 1 and "mixer.py" in error.value.frames[0]
    assert "in build" in error.value.frames[0]


def test_a_call_that_does_not_fit_the_signature_shows_it(code):
    with pytest.raises(UserCodeError) as error:
        call(BUILD, (1, 16), 3, role="model builder", widht=4)
    assert error.value.kind == "call" and error.value.frames == ()
    assert error.value.problem == (
        "the call does not fit build(input_shape, n_classes, width=8, patch=4): TypeError: "
        "build() got an unexpected keyword argument 'widht' (options given: widht)"
    )


def test_frames_are_the_last_ones_of_the_users(tmp_path):
    deep = "def f(k):\n    if k == 0:\n        raise KeyError('deep')\n    return f(k - 1)\n"
    deep += "\n\ndef build(s, n):\n    return f(8)\n"
    with (
        code_path(write_package(tmp_path / "src", {"tnets/deep.py": deep})),
        pytest.raises(UserCodeError) as error,
    ):
        call("tnets.deep:build", (1,), 2)
    assert len(error.value.frames) == 5
    assert "raise KeyError('deep')" in error.value.frames[-1]
    assert error.value.frames[0].endswith(", in f\n    return f(k - 1)")  # no caret line
    assert all(frame.count("\n") == 1 for frame in error.value.frames)


def test_a_user_code_error_pickles_with_its_fields(code):
    with pytest.raises(UserCodeError) as error:
        call(BUILD, (1, 18), 3, role="model builder")
    copy = pickle.loads(pickle.dumps(error.value))
    assert type(copy) is UserCodeError and str(copy) == str(error.value)
    assert (copy.kind, copy.entry_point, copy.frames) == ("call", BUILD, error.value.frames)


# ---------------------------------------------------------------- the code directory


def test_code_path_imports_afresh_and_puts_everything_back(tmp_path):
    first = write_package(tmp_path / "one", {"tfresh.py": "def which():\n    return 1\n"})
    second = write_package(tmp_path / "two", {"tfresh.py": "def which():\n    return 2\n"})
    path_before = list(sys.path)
    with code_path(first):
        assert call("tfresh:which") == 1
        outer = sys.modules["tfresh"]
        with code_path(second):  # the same name in another directory: not the outer's module
            assert call("tfresh:which") == 2
        assert sys.modules["tfresh"] is outer and call("tfresh:which") == 1
    assert "tfresh" not in sys.modules and sys.path == path_before
    with code_path(second):  # a later block never sees an earlier block's module
        assert call("tfresh:which") == 2
    assert not list(tmp_path.rglob("__pycache__"))  # no bytecode written into the user's code


def test_code_path_refuses_a_package_that_shadows_an_imported_one(tmp_path):
    directory = write_package(tmp_path / "src", {"json/__init__.py": "", "tnets.py": ""})
    clash = (
        r"holds module\(s\) named like one this process already imported from elsewhere: "
        r"'json' \(imported from .*json/__init__.py\); rename the package in "
    )
    with pytest.raises(ValueError, match=clash), code_path(directory):
        pass
    assert str(directory) not in sys.path
    absent = r"code directory .*absent: no such directory"
    with pytest.raises(FileNotFoundError, match=absent), code_path(tmp_path / "absent"):
        pass


# ---------------------------------------------------------------- builders


def test_a_builder_gets_the_shape_and_classes_and_its_options(code):
    model = build_model(BUILD, (1, 16), 3, width=6, patch=8)
    assert model.head.out_features == 3 and model.embed.out_channels == 6
    assert model.embed.kernel_size == (8,)


def test_a_builder_that_returns_no_module(tmp_path):
    source = "from torch import nn\n\n\ndef none(s, n):\n    return None\n\n\n"
    source += "def cls(s, n):\n    return nn.Linear\n"
    with code_path(write_package(tmp_path / "src", {"tnets/bad.py": source})):
        with pytest.raises(UserCodeError) as error:
            build_model("tnets.bad:none", (4,), 2)
        assert error.value.kind == "result"
        assert str(error.value) == (
            "model builder 'tnets.bad:none': returned None, not a torch.nn.Module; a builder "
            "returns the network: build(input_shape, n_classes, **options) -> nn.Module"
        )
        with pytest.raises(UserCodeError, match=r"returned the class Linear, not a torch.nn.Mod"):
            build_model("tnets.bad:cls", (4,), 2)
