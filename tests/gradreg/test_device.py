import pytest
import torch

from gradreg.device import resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_always_works(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_falls_back_to_cpu(no_cuda):
    assert resolve_device() == torch.device("cpu")


def test_auto_prefers_cuda(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(no_cuda, name):
    with pytest.raises(ValueError, match=f"'{name}' requested but CUDA is not available"):
        resolve_device(name)


def test_cuda_index(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' requested but only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_unknown_names_list_accepted(name):
    with pytest.raises(ValueError, match=r"unknown device .*accepted: 'auto', 'cpu', 'cuda'"):
        resolve_device(name)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(0)
