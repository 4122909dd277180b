"""One concept, a researcher's own code named by an entry point: resolving it, calling it, and
where it comes from. Torch-free, and nothing here imports user code unless asked to.

**Entry points.** ``"package.module:function"``: a dotted module path of Python identifiers,
exactly one colon, and one attribute name. `TrainConfig.model` and `TrainConfig.dataset`
take one wherever they take a built-in name; a value with a colon is meant as an entry point
(`is_entry_point`). `entry_point_problem` judges the syntax alone, without importing
anything: the API process checks specs with it and never imports user code.

**Resolving and calling.** `resolve` imports the module and returns the attribute, if it is
callable; `call` resolves and calls it. Every failure is a `UserCodeError` that names the
entry point and its role ("model builder", "data loader"), and says which of these went
wrong (its ``kind``):

- ``syntax``: the string is not ``package.module:function``;
- ``not_found``: the module (or a package on its path) is not on ``sys.path``, so the code
  is not where this process looks for it;
- ``import``: importing the module raised, e.g. a missing dependency (named) or a syntax
  error, quoted with the user's frames;
- ``attribute``: the module has no such attribute (the callables it defines are listed);
- ``not_callable``: the attribute is not a function or class;
- ``call``: calling it raised (quoted with the user's frames; a call that does not fit the
  function's signature says so and shows the signature);
- ``result``: it returned something the contract refuses (raised by the builder and loader
  checks, `gradreg.models` and `gradreg.data.user_loaders`, and by `gradreg.preflight`);
- ``config``: the code ran, but the run's settings do not fit it (e.g. ``fisher:
  per_example`` with a layer that estimator has no rule for; `gradreg.preflight`).

The frames quoted are the user's: `traceback.extract_tb` less gradreg's own frames, Python's
import machinery and torch's module-call wrappers; the last `FRAMES` of them.

**Where the code comes from.** ``sys.path``, as for any import. A sweep's trials get the code
directory there from Ray's runtime environment, an MLflow model from its ``code_paths``;
``gradreg train --code DIR`` (and ``predict``, ``data show``) and tests use `code_path`,
which puts DIR first on ``sys.path`` for a block.

**Fresh imports.** Inside `code_path`, the modules the directory provides (its top-level
``*.py`` files and packages) are imported from it, never taken from ``sys.modules``: a module
of such a name that an enclosing `code_path` imported is set aside for the block and put back
after it, and the modules the block imported from the directory are dropped when it ends. A
module of such a name that the process imported from anywhere else (the standard library, an
installed package, gradreg itself) is an error naming both places: replacing a module that
running code holds is not safe, so the user's package must be renamed. The block writes no
bytecode caches into the directory. ``sys.path`` and ``sys.modules`` belong to the process:
one thread at a time may use `code_path`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import inspect
import keyword
import os
import sys
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

FORM = "package.module:function"
FRAMES = 5  # the user's frames quoted in an error, at most (the last ones)
_LISTED = 10  # names listed in a message, at most
KINDS = ("syntax", "not_found", "import", "attribute", "not_callable", "call", "result", "config")

_GRADREG_DIR = Path(__file__).resolve().parent
_IMPORTLIB_DIR = Path(importlib.__file__).resolve().parent
# torch's nn.Module.__call__ wrappers, between gradreg's call and the user's forward
_TORCH_CALL_FRAMES = ("_call_impl", "_wrapped_call_impl")
_TORCH_MODULE_FILE = os.path.join("torch", "nn", "modules", "module.py")

_ACTIVE: list[Path] = []  # the directories `code_path` has put on sys.path, innermost last


# ---------------------------------------------------------------- the error


class UserCodeError(ValueError):
    """User code that could not be resolved or run, or returned what its contract refuses.

    ``entry_point`` (None where the problem is not one entry point's), ``role`` ("model
    builder", "data loader", …), ``kind`` (one of `KINDS`), ``problem`` (what went wrong,
    one line, without the frames), ``exception`` (the user's exception as Python prints its
    last line, or None) and ``frames`` (the user's last frames, formatted). ``str(error)`` is
    the whole message: the role, the entry point, the problem and the frames.
    """

    def __init__(
        self,
        entry_point: str | None,
        problem: str,
        *,
        kind: str,
        role: str = "entry point",
        exception: str | None = None,
        frames: tuple[str, ...] = (),
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
        self.entry_point = entry_point
        self.problem = problem
        self.kind = kind
        self.role = role
        self.exception = exception
        self.frames = tuple(frames)
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.role} {self.entry_point!r}: " if self.entry_point else ""
        return head + self.problem + "".join("\n" + frame for frame in self.frames)

    def __reduce__(self) -> tuple[Any, ...]:  # keyword arguments survive pickling (Ray)
        return (_rebuild, (type(self), self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "entry_point": self.entry_point,
            "problem": self.problem,
            "kind": self.kind,
            "role": self.role,
            "exception": self.exception,
            "frames": self.frames,
        }

    @classmethod
    def from_exception(
        cls, entry_point: str | None, problem: str, error: BaseException, *, kind: str, role: str
    ) -> UserCodeError:
        """``problem`` followed by the user's exception, with the user's frames."""
        quoted = describe_exception(error)
        return cls(
            entry_point,
            f"{problem}: {quoted}",
            kind=kind,
            role=role,
            exception=quoted,
            frames=format_frames(user_frames(error)),
        )


def _rebuild(cls: type[UserCodeError], fields: dict[str, Any]) -> UserCodeError:
    return cls(**fields)


def describe_exception(error: BaseException) -> str:
    """The exception as Python prints its last line(s): ``ValueError: width must be > 0``; a
    SyntaxError with its file, line and the offending text."""
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()


def user_frames(error: BaseException, limit: int = FRAMES) -> list[traceback.FrameSummary]:
    """The last ``limit`` frames of ``error``'s traceback that are the user's: not gradreg's,
    not Python's import machinery, not torch's nn.Module call wrappers."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if _users(frame)]
    return frames[-limit:] if limit > 0 else []


def _users(frame: traceback.FrameSummary) -> bool:
    filename = frame.filename
    if filename.startswith("<frozen importlib"):
        return False
    if filename.endswith(_TORCH_MODULE_FILE) and frame.name in _TORCH_CALL_FRAMES:
        return False
    path = Path(filename)
    return not (path.is_relative_to(_GRADREG_DIR) or path.is_relative_to(_IMPORTLIB_DIR))


def format_frames(frames: list[traceback.FrameSummary]) -> tuple[str, ...]:
    """Each frame as a traceback prints it, ``  File "...", line N, in name`` and its source
    line, without the carets that mark a column (the same text on every Python)."""
    formatted = []
    for frame in frames:
        head = f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}'
        formatted.append(f"{head}\n    {frame.line.strip()}" if frame.line else head)
    return tuple(formatted)


# ---------------------------------------------------------------- entry points


def is_entry_point(value: object) -> bool:
    """Whether ``value`` is meant as an entry point rather than a built-in name: a string
    with a colon (its syntax is `entry_point_problem`'s to judge)."""
    return isinstance(value, str) and ":" in value


def entry_point_problem(value: object) -> str | None:
    """Why ``value`` is not an entry point ``package.module:function``, or None when it is
    one. The syntax only: nothing is imported."""
    if not isinstance(value, str):
        return f"an entry point is a string {FORM!r}, got {value!r}"
    colons = value.count(":")
    if colons != 1:
        return f"{value!r} holds {colons} colons; an entry point is {FORM!r}, with exactly one"
    module, _, attribute = value.partition(":")
    if not module:
        return f"{value!r} names no module before the colon; an entry point is {FORM!r}"
    for part in module.split("."):
        if not _identifier(part):
            return (
                f"{value!r}: {part!r} is not a Python identifier; the part before the colon is "
                "a dotted module path (package.module)"
            )
    if not attribute:
        return f"{value!r} names no function after the colon; an entry point is {FORM!r}"
    if not _identifier(attribute):
        return (
            f"{value!r}: {attribute!r} is not a Python identifier; the part after the colon "
            "names one function or class of the module"
        )
    return None


def name_problem(what: str, value: object, names: Collection[str]) -> str | None:
    """Why ``value`` is neither one of ``names`` (built-in ``what``s: models, datasets) nor
    an entry point's syntax, or None. Nothing is imported."""
    if is_entry_point(value):
        problem = entry_point_problem(value)
        return f"{what}: {problem}" if problem else None
    if value in names:
        return None
    hint = ""
    if isinstance(value, str) and "." in value:
        module, _, attribute = value.rpartition(".")
        hint = f" (did you mean {module}:{attribute}?)"
    return (
        f"unknown {what} {value!r}; accepted: {', '.join(names)}, or an entry point {FORM!r}{hint}"
    )


def _identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


@dataclass(frozen=True)
class EntryPoint:
    """A checked ``module:attribute``."""

    module: str
    attribute: str

    @classmethod
    def parse(cls, value: object, role: str = "entry point") -> EntryPoint:
        problem = entry_point_problem(value)
        if problem:
            shown = value if isinstance(value, str) else None
            raise UserCodeError(shown, problem, kind="syntax", role=role)
        assert isinstance(value, str)
        module, _, attribute = value.partition(":")
        return cls(module, attribute)

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


# ---------------------------------------------------------------- resolving and calling


def resolve(value: str, role: str = "entry point") -> Callable[..., Any]:
    """The callable ``value`` names, its module imported (see the module's docstring for
    where from); every failure a `UserCodeError` of its own ``kind``."""
    entry = EntryPoint.parse(value, role)
    module = import_module(entry, role)
    if not hasattr(module, entry.attribute):
        raise UserCodeError(
            str(entry),
            f"module {entry.module!r} ({_where(module)}) has no attribute {entry.attribute!r}"
            + _callables_hint(module, entry.attribute),
            kind="attribute",
            role=role,
        )
    target = getattr(module, entry.attribute)
    if not callable(target):
        raise UserCodeError(
            str(entry),
            f"{entry.attribute!r} is {described(target)}, not a function or class; the entry "
            "point must name something to call",
            kind="not_callable",
            role=role,
        )
    resolved: Callable[..., Any] = target
    return resolved


def call(value: str, *args: Any, role: str = "entry point", **kwargs: Any) -> Any:
    """Resolve ``value`` and call it with ``args`` and ``kwargs``; an exception it raises
    becomes a `UserCodeError` (kind ``call``) quoting it with the user's frames."""
    entry = str(EntryPoint.parse(value, role))
    function = resolve(entry, role)
    try:
        return function(*args, **kwargs)
    except Exception as error:
        raise _call_error(entry, function, error, args, kwargs, role) from error


def _call_error(
    entry: str,
    function: Callable[..., Any],
    error: Exception,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    role: str,
) -> UserCodeError:
    frames = user_frames(error)
    if isinstance(error, TypeError) and not frames and not _signature_fits(function, args, kwargs):
        # The call itself failed, before any of the function's lines ran: its signature.
        given = ", ".join(kwargs) or "none"
        return UserCodeError(
            entry,
            f"the call does not fit {_signature(function)}: {describe_exception(error)} "
            f"(options given: {given})",
            kind="call",
            role=role,
            exception=describe_exception(error),
        )
    return UserCodeError.from_exception(entry, "raised", error, kind="call", role=role)


def _signature_fits(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bool:
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): assume it fits
        return True
    return True


def _signature(function: Callable[..., Any]) -> str:
    name = getattr(function, "__name__", type(function).__name__)
    try:
        return f"{name}{inspect.signature(function)}"
    except (TypeError, ValueError):
        return f"{name}(...)"


def import_module(entry: EntryPoint, role: str = "entry point") -> ModuleType:
    """``entry``'s module, imported; `UserCodeError` of kind ``not_found`` (the module is not
    on the path) or ``import`` (importing it raised, a missing dependency included)."""
    try:
        return importlib.import_module(entry.module)
    except ModuleNotFoundError as error:
        if error.name is not None and _on_module_path(error.name, entry.module):
            raise UserCodeError(
                str(entry), _not_found(entry.module, error.name), kind="not_found", role=role
            ) from error
        missing = f"module {error.name!r}" if error.name else "a module"
        raise UserCodeError.from_exception(
            str(entry),
            f"importing module {entry.module!r} failed: it imports {missing}, which is not "
            "installed where the code runs",
            error,
            kind="import",
            role=role,
        ) from error
    except (Exception, SystemExit) as error:
        raise UserCodeError.from_exception(
            str(entry), f"importing module {entry.module!r} raised", error, kind="import", role=role
        ) from error


def _on_module_path(missing: str, module: str) -> bool:
    """Whether ``missing`` is ``module`` or one of the packages on its dotted path."""
    parts = module.split(".")
    return missing in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _not_found(module: str, missing: str) -> str:
    if missing == module.split(".")[0]:
        return f"no module or package named {missing!r} {_searched()}"
    parent, _, child = missing.rpartition(".")
    package = sys.modules.get(parent)
    place = f" ({_where(package)})" if package is not None else ""
    if package is not None and not hasattr(package, "__path__"):
        return f"{parent!r}{place} is a module, not a package, so it holds no module {child!r}"
    return f"package {parent!r}{place} has no module {child!r}"


def _searched() -> str:
    if _ACTIVE:
        return f"in the code directory {_ACTIVE[-1]}, nor elsewhere on the import path"
    return (
        "on this process's import path (sys.path): the code is not on it; give its directory "
        "(--code DIR) or install it"
    )


def _where(module: ModuleType) -> str:
    location = getattr(module, "__file__", None)
    if location:
        return str(location)
    paths = list(getattr(module, "__path__", []))
    return f"namespace package at {', '.join(map(str, paths))}" if paths else "built in"


def _callables_hint(module: ModuleType, wanted: str) -> str:
    """'; did you mean 'build'? It defines: build, PatchMixer' — what the module itself
    defines that can be called (not what it imported)."""
    names = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", None) == module.__name__
    ]
    if not names:
        return "; it defines no public function or class"
    close = difflib.get_close_matches(wanted, names, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ";"
    shown = ", ".join(sorted(names)[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{guess} it defines: {shown}{more}"


def described(value: object) -> str:
    """How a message names a value that came back: 'None', 'a dict', 'an int', 'a list of 3
    item(s)', 'the class PatchMixer'."""
    if value is None:
        return "None"
    if inspect.isclass(value):
        return f"the class {value.__name__}"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, tuple | list):
        return f"{article} {name} of {len(value)} item(s)"
    return f"{article} {name}"


# ---------------------------------------------------------------- the code's directory


@contextmanager
def code_path(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """``directory`` first on ``sys.path`` for the block, its modules imported afresh (see
    the module's docstring: a same-named module from a code directory is set aside and put
    back; one from anywhere else is an error). Yields the directory, absolute."""
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"code directory {directory}: no such directory")
    names = provided_modules(path)
    clashes = [
        f"{name!r} (imported from {_where(sys.modules[name])})"
        for name in names
        if name in sys.modules and not _from_code_directory(sys.modules[name])
    ]
    if clashes:
        raise ValueError(
            f"code directory {path} holds module(s) named like one this process already "
            f"imported from elsewhere: {', '.join(clashes)}; rename the package in {path}"
        )
    set_aside = _take_modules(names)
    sys.path.insert(0, str(path))
    _ACTIVE.append(path)
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    importlib.invalidate_caches()  # files written since the finders last looked
    try:
        yield path
    finally:
        sys.dont_write_bytecode = writes_bytecode
        _ACTIVE.remove(path)
        if str(path) in sys.path:
            sys.path.remove(str(path))
        _take_modules(names)
        sys.modules.update(set_aside)
        importlib.invalidate_caches()


def provided_modules(directory: Path) -> tuple[str, ...]:
    """The top-level module and package names ``directory`` provides to an import."""
    suffixes = importlib.machinery.all_suffixes()
    names = set()
    for entry in directory.iterdir():
        if entry.is_dir():
            name = "" if entry.name == "__pycache__" else entry.name
        elif any(entry.name.endswith(suffix) for suffix in suffixes):
            name = entry.name.split(".")[0]
        else:
            continue
        if _identifier(name):
            names.add(name)
    return tuple(sorted(names))


def _from_code_directory(module: ModuleType) -> bool:
    locations = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
    return any(
        Path(str(location)).resolve().is_relative_to(directory)
        for location in locations
        if location
        for directory in _ACTIVE
    )


def _take_modules(names: tuple[str, ...]) -> dict[str, ModuleType]:
    """Remove the modules ``names`` and their submodules from ``sys.modules``; return them."""
    taken = {
        name: module for name, module in list(sys.modules.items()) if name.split(".")[0] in names
    }
    for name in taken:
        del sys.modules[name]
    return taken
