"""A trained posterior saved with everything it needs to predict from raw inputs.

A saved posterior is a directory of two files: ``posterior.pt`` (the posterior's state dict:
means, variances, and a post-hoc fit such as Laplace's curvature) and ``gradreg_model.json``
(the training config, the model's input shape, the input standardisation learnt from the
training split, and the class names). `SavedPosterior.load` rebuilds the same posterior class
around the same network, so a reloaded posterior predicts exactly as the trained one did.
Torch and numpy only: the MLflow model (`sweeps.model`) and ``gradreg predict`` wrap this.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradreg.config import TrainConfig
from gradreg.data import Dataset
from gradreg.data.transform import InputTransform
from gradreg.methods import get_method, posterior
from gradreg.models import build_model
from gradreg.posteriors.gaussian import GaussianPosterior

FORMAT_VERSION = 1
MANIFEST_FILE = "gradreg_model.json"
WEIGHTS_FILE = "posterior.pt"
DEFAULT_N_SAMPLES = 32
EXAMPLE_ROWS = 3
PREDICT_CHUNK = 2048  # examples per forward pass, as training's evaluation


@dataclass(frozen=True)
class ModelInputs:
    """What a trained network expects, beyond its weights: how raw inputs are standardised,
    the shape it takes, how many examples its prior was scaled by, and its classes' names."""

    transform: InputTransform
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    n_train: int
    # A few raw validation inputs, for an MLflow input example; not saved with the posterior.
    example: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, data: Dataset) -> ModelInputs:
        if data.transform is None:
            raise ValueError(f"dataset {data.name!r} carries no input transform to save")
        example = data.transform.invert(data.x_val[:EXAMPLE_ROWS])
        return cls(data.transform, tuple(data.class_names), data.input_shape, data.n_train, example)

    def to_dict(self) -> dict[str, Any]:
        return {
            "transform": self.transform.to_dict(),
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelInputs:
        return cls(
            InputTransform.from_dict(values["transform"]),
            tuple(str(name) for name in values["class_names"]),
            tuple(int(size) for size in values["input_shape"]),
            int(values["n_train"]),
        )


@dataclass
class SavedPosterior:
    posterior: GaussianPosterior
    config: TrainConfig
    inputs: ModelInputs

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.inputs.class_names

    @property
    def predictives(self) -> tuple[str, ...]:
        """The predictive modes this posterior's method offers; the first is its own."""
        return get_method(self.config.method_name).predictives

    def predict_proba(
        self,
        x: np.ndarray,
        mode: str | None = None,
        n_samples: int = DEFAULT_N_SAMPLES,
        seed: int = 0,
    ) -> np.ndarray:
        """Class probabilities (N, C) in float64 for raw inputs ``x`` in the dataset's units.

        ``mode`` is one of `predictives` (None: the method's own); ``sample`` averages the
        network over ``n_samples`` weights drawn from q with ``seed``.
        """
        mode = self.predictives[0] if mode is None else mode
        if mode not in self.predictives:
            raise ValueError(
                f"method {self.config.method_name!r} has no predictive {mode!r}; accepted: "
                f"{', '.join(self.predictives)}"
            )
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
            raise TypeError(f"n_samples must be an int, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        device = next(self.posterior.parameters()).device
        inputs = self.inputs.transform(np.asarray(x)).to(device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        chunks = [
            self.posterior.predictive_log_probs(chunk, mode, int(n_samples), generator).cpu()
            for chunk in inputs.split(PREDICT_CHUNK)
        ]
        return torch.cat(chunks).exp().numpy()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the two files into ``directory`` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu() for key, value in self.posterior.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        manifest = {
            "format_version": FORMAT_VERSION,
            "posterior_class": type(self.posterior).__name__,
            "config": self.config.to_dict(),
            "inputs": self.inputs.to_dict(),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SavedPosterior:
        """The posterior saved in ``directory``, on the CPU, in evaluation mode."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} holds no saved posterior ({MANIFEST_FILE})")
        manifest = json.loads(manifest_path.read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path}: format version {version!r}; this gradreg reads {FORMAT_VERSION}"
            )
        # A compiled network saves the same parameter names; predicting needs no compile.
        config = TrainConfig.from_dict({**manifest["config"], "compile": False, "device": "cpu"})
        inputs = ModelInputs.from_dict(manifest["inputs"])
        model = build_model(
            config.model, inputs.input_shape, len(inputs.class_names), **config.model_options
        )
        rebuilt = posterior(
            model, config.method_name, n_data=inputs.n_train, **config.posterior_settings()
        )
        if type(rebuilt).__name__ != manifest["posterior_class"]:
            raise ValueError(
                f"{manifest_path}: saved a {manifest['posterior_class']}, but method "
                f"{config.method_name!r} builds a {type(rebuilt).__name__} in this gradreg"
            )
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        rebuilt.load_state_dict(state)
        rebuilt.eval()
        return cls(rebuilt, config, inputs)
