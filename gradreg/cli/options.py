"""Command-line options the commands share: data, model, KEY=VALUE, the user's --code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from gradreg.config import TrainConfig
from gradreg.data import available_datasets
from gradreg.models import available_models
from gradreg.user_code import FORM, code_path, name_problem


def parse_option_value(text: str) -> Any:
    """'3' → 3, '0.5' → 0.5, 'true' → True, '128,128' → [128, 128], else the string."""
    if "," in text:
        return [parse_option_value(part) for part in text.split(",") if part]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        options[key] = parse_option_value(value)
    return options


def add_data_and_model_arguments(
    p: argparse.ArgumentParser,
) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    defaults = TrainConfig()
    data = p.add_argument_group("data")
    _add_named(
        data,
        "dataset",
        defaults.dataset,
        available_datasets(),
        "n_samples=2000 or data_dir=/data",
        "loader",
    )
    model = p.add_argument_group("model")
    _add_named(
        model, "model", defaults.model, available_models(), "channels=16,32 or width=16", "builder"
    )
    model.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        metavar="WIDTH",
        help="hidden widths of the mlp, e.g. --hidden 128 128",
    )
    add_code_argument(p)
    return data, model


def add_code_argument(p: argparse.ArgumentParser) -> None:
    """``--code DIR``: the directory of the user's own builder and loader, first on the
    import path for the command (`gradreg.user_code.code_path`)."""
    p.add_argument(
        "--code",
        metavar="DIR",
        help="a directory of your own code (builders, loaders), put first on the import path "
        "for the command",
    )


def code_of(args: argparse.Namespace) -> AbstractContextManager[Any]:
    """The ``--code`` directory on the import path for a block, or nothing without one."""
    directory = getattr(args, "code", None)
    return code_path(directory) if directory else nullcontext()


def name_or_entry_point(kind: str, names: Iterable[str]) -> Callable[[str], str]:
    """An argparse type: one of ``names`` or an entry point ``package.module:function``."""
    accepted = sorted(names)

    def parse(value: str) -> str:
        problem = name_problem(kind, value, accepted)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _add_named(
    group: argparse._ArgumentGroup,
    kind: str,
    default: str,
    names: Iterable[str],
    example: str,
    role: str,
) -> None:
    """``--KIND NAME`` from a registry's names or the user's ``module:function``, and its
    repeatable ``--KIND-option KEY=VALUE``."""
    group.add_argument(
        f"--{kind}",
        default=default,
        type=name_or_entry_point(kind, names),
        metavar="NAME",
        help=f"one of: {', '.join(sorted(names))}; or your own {role} {FORM} (with --code DIR)",
    )
    group.add_argument(
        f"--{kind}-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{kind} option, e.g. {example} (repeatable)",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = key_values(args.model_option, "--model-option")
    if args.hidden is not None:
        options["hidden"] = list(args.hidden)
    return options


@contextmanager
def progress(total: int, desc: str, unit: str, quiet: bool) -> Iterator[Any]:
    """A progress bar on stderr (none with --quiet), closed however the run ends."""
    from tqdm import tqdm

    bar = tqdm(
        total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True
    )
    try:
        yield bar
    finally:
        bar.close()


def say_written(written: Sequence[Path], out: str | None) -> None:
    """The line that names the files a run wrote to ``--out``."""
    if written:
        print(f"wrote {', '.join(p.name for p in written)} to {out}")
