"""Command-line options the train and compare commands share: data, model, KEY=VALUE."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from gradreg.config import TrainConfig
from gradreg.data import available_datasets
from gradreg.models import available_models


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
    data.add_argument(
        "--dataset",
        default=defaults.dataset,
        choices=sorted(available_datasets()),
        metavar="NAME",
        help="one of: %(choices)s",
    )
    data.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_samples=2000 or data_dir=/data (repeatable)",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        default=defaults.model,
        choices=sorted(available_models()),
        metavar="NAME",
        help="one of: %(choices)s",
    )
    model.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        metavar="WIDTH",
        help="hidden widths of the mlp, e.g. --hidden 128 128",
    )
    model.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. channels=16,32 or width=16 (repeatable)",
    )
    return data, model


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = key_values(args.model_option, "--model-option")
    if args.hidden is not None:
        options["hidden"] = list(args.hidden)
    return options
