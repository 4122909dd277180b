"""A small patch mixer for 1-d signals: patches, residual blocks of LayerNorm and GELU, a head.

gradreg has no per-example Fisher rule for LayerNorm, so sweep it with ``fisher: sampled`` (the
default); ``per_example`` is refused before the first trial, naming the layer.
"""

from __future__ import annotations

import torch
from torch import nn


class MixerBlock(nn.Module):
    """x + MLP(LayerNorm(x)) over the channels of every patch."""

    def __init__(self, width: int, expansion: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, expansion * width), nn.GELU(), nn.Linear(expansion * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class PatchMixer(nn.Module):
    def __init__(
        self, channels: int, length: int, n_classes: int, width: int, depth: int, patch: int
    ) -> None:
        super().__init__()
        if length % patch:
            raise ValueError(f"the signal's length {length} is not a multiple of patch={patch}")
        self.embed = nn.Conv1d(channels, width, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(*(MixerBlock(width, expansion=2) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).transpose(1, 2)  # (B, patches, width)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def build(
    input_shape: tuple[int, ...], n_classes: int, width: int = 32, depth: int = 2, patch: int = 8
) -> nn.Module:
    """gradreg's builder contract: the input shape of one example and the number of classes,
    then this builder's own options (the spec's model.options)."""
    if len(input_shape) != 2:
        raise ValueError(f"PatchMixer takes signals of shape (channels, length), got {input_shape}")
    channels, length = input_shape
    return PatchMixer(channels, length, n_classes, width=width, depth=depth, patch=patch)
