"""A saved posterior reloads into the same class, with the same variances, and predicts from raw
inputs exactly as the trained one did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gradreg.export import MANIFEST_FILE, SavedPosterior
from gradreg.train import fit

QUICK = {"epochs": 2, "batch_size": 64, "lr": 0.01, "device": "cpu"}
METHODS = {
    "vl-uniform": {"method": "vl", "variance": "uniform", "noise_scale": 0.05},
    "vl-diagonal": {"method": "vl", "variance": "diagonal"},
    "map": {"method": "map"},
    "laplace": {"method": "laplace"},
    "ivon": {"method": "ivon", "lr": 0.1},
}


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request):
    config = {"dataset": "wine", "model": "mlp", "model_options": {"hidden": [16]}, **QUICK}
    return fit({**config, **METHODS[request.param]})


def test_a_saved_posterior_reloads_as_the_same_class_with_the_same_variances(trained, tmp_path):
    saved = trained.saved()
    loaded = SavedPosterior.load(saved.save(tmp_path / "model"))

    assert type(loaded.posterior) is type(trained.posterior)
    assert loaded.config.method_name == trained.config.method_name
    for before, after in zip(
        trained.posterior.variances(), loaded.posterior.variances(), strict=True
    ):
        assert torch.equal(before, after)
    before = trained.posterior.state_dict()
    after = loaded.posterior.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert loaded.inputs.transform == saved.inputs.transform
    assert loaded.class_names == saved.class_names == ("0", "1", "2")


def test_predictions_from_raw_inputs_match_the_trained_posterior(trained, tmp_path):
    saved = trained.saved()
    loaded = SavedPosterior.load(saved.save(tmp_path / "model"))
    raw = saved.inputs.example
    assert raw is not None and raw.shape == (3, 13)
    # The raw example, standardised again, is the validation split the trainer saw.
    standard = saved.inputs.transform(raw)
    at_mean = trained.posterior.predictive_log_probs(standard, "mean").exp().numpy()

    assert np.allclose(loaded.predict_proba(raw, "mean"), at_mean, rtol=0, atol=1e-6)
    for mode in loaded.predictives:
        probs = loaded.predict_proba(raw, mode, n_samples=4, seed=3)
        assert probs.shape == (3, 3)
        assert np.allclose(probs.sum(axis=1), 1)
        assert np.array_equal(probs, saved.predict_proba(raw, mode, n_samples=4, seed=3))


def test_bad_predict_arguments_name_what_is_accepted(trained):
    saved = trained.saved()
    raw = saved.inputs.example
    with pytest.raises(ValueError, match="has no predictive 'nope'; accepted"):
        saved.predict_proba(raw, "nope")
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        saved.predict_proba(raw, n_samples=0)
    with pytest.raises(ValueError, match=r"expected inputs of shape"):
        saved.predict_proba(np.zeros((2, 5)))


def test_loading_refuses_what_it_cannot_read(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved posterior"):
        SavedPosterior.load(tmp_path)
    directory = trained.saved().save(tmp_path / "model")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    (directory / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99; this gradreg reads 1"):
        SavedPosterior.load(directory)


def test_a_file_dataset_model_takes_the_files_units_and_answers_with_its_label_names(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("GRADREG_DATA_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    species = rng.choice(["moth", "ant", "bee"], size=120)
    centre = {"ant": (100.0, 5.0), "bee": (300.0, 9.0), "moth": (500.0, 1.0)}
    rows = [(*(np.array(centre[s]) + rng.normal(0, 5, 2)), s) for s in species]
    lines = ["wingspan,weight,species", *(f"{a:.3f},{b:.3f},{s}" for a, b, s in rows)]
    (tmp_path / "insects.csv").write_text("\n".join(lines) + "\n")
    result = fit(
        {
            "dataset": "file",
            "dataset_options": {"path": "insects.csv", "label": "species"},
            "model": "mlp",
            "model_options": {"hidden": [16]},
            "method": "map",
            "epochs": 30,
            "lr": 0.03,
            "device": "cpu",
        }
    )
    loaded = SavedPosterior.load(result.saved().save(tmp_path / "model"))

    assert loaded.class_names == ("ant", "bee", "moth")  # sorted, as recorded at training
    raw = np.array([[a, b] for a, b, _ in rows])  # the file's own units, unstandardised
    predicted = np.array(loaded.class_names)[loaded.predict_proba(raw).argmax(axis=1)]
    assert (predicted == species).mean() > 0.95
