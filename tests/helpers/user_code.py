"""A researcher's own code for tests: small packages written into a directory that is on no
import path until the code under test puts it there (`gradreg.user_code.code_path`, a Ray
runtime environment, MLflow's code_paths).

`write_user_code(root)` writes ``tnets`` (builders) and ``tdata`` (loaders) under ``root``;
``write_package(root, files)`` writes any other files. The names are the tests' own, so that
they never clash with a module the test process has imported. `user_config` is a small
VL-uniform run of the two on the CPU.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradreg.config import TrainConfig

BUILD = "tnets.mixer:build"  # LayerNorm, GELU and a residual block: no per-example rule
BUILD_BATCHNORM = "tnets.mixer:build_batchnorm"
LOAD = "tdata.waves:load"  # {'train', 'test', 'class_names'}; form='pool' gives (x, y)

MIXER = '''
"""A small patch mixer: Conv1d patches, a residual block of LayerNorm and GELU, a head."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        wide = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, wide), nn.GELU(), nn.Linear(wide, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Mixer(nn.Module):
    def __init__(self, channels, n_classes, width, patch):
        super().__init__()
        self.embed = nn.Conv1d(channels, width, patch, stride=patch)
        self.block = Block(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        tokens = self.embed(x).transpose(1, 2)
        return self.head(self.block(tokens).mean(dim=1))


def build(input_shape, n_classes, width=8, patch=4):
    channels, length = input_shape
    if length % patch:
        raise ValueError(f"length {length} is not a multiple of patch={patch}")
    return Mixer(channels, n_classes, width, patch)


def build_batchnorm(input_shape, n_classes):
    channels, length = input_shape
    return nn.Sequential(
        nn.Conv1d(channels, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * length, n_classes),
    )
'''

WAVES = '''
"""Noisy class-shifted signals (N, 1, length), three classes."""

import numpy as np

NAMES = ["low", "mid", "high"]


def signals(n, length, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 1, length)).astype(np.float32) + y[:, None, None]
    return x, y


def load(n=96, length=16, seed=0, form="splits"):
    x, y = signals(n, length, seed)
    if form == "pool":
        return x, y
    cut = (3 * n) // 4
    return {"train": (x[:cut], y[:cut]), "test": (x[cut:], y[cut:]), "class_names": NAMES}
'''


def write_package(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (relative path -> source, dedented) under ``root``; return ``root``."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    return root


def write_user_code(root: Path, **more: str) -> Path:
    """``tnets`` and ``tdata`` under ``root`` (plus ``more``: relative path -> source)."""
    return write_package(
        root,
        {
            "tnets/__init__.py": "",
            "tnets/mixer.py": MIXER,
            "tdata/__init__.py": "",
            "tdata/waves.py": WAVES,
            **more,
        },
    )


def user_config(**changes: Any) -> TrainConfig:
    """VL-uniform on `BUILD` (width 8) and `LOAD` (96 examples), batches of 32, on the CPU."""
    values: dict[str, Any] = {
        "model": BUILD,
        "model_options": {"width": 8},
        "dataset": LOAD,
        "dataset_options": {"n": 96},
        "method": "vl",
        "variance": "uniform",
        "noise_scale": 0.01,
        "batch_size": 32,
        "device": "cpu",
    }
    return TrainConfig(**{**values, **changes})
