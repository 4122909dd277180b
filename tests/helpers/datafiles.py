"""Image dataset files in their real formats, tiny, for the tests of the readers and their users."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 70, 12  # 7 train examples per class: 10 of them go to validation


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    big_endian = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian[type_code]).tobytes()


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def make_idx_dataset(directory: Path, *, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny MNIST-format files; train image i has the unique top-left pixel 3 * i."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    arrays["train-images-idx3-ubyte"][:, 0, 0] = 3 * np.arange(N_TRAIN)
    for name, array in arrays.items():
        write(directory / (f"{name}.gz" if gz else name), idx_bytes(array))
    return arrays
