import random

import numpy as np
import pytest
import torch

import moe_utils as mu
from conftest import cuda


def test_auto_picks_the_best_available_device(monkeypatch):
    monkeypatch.delenv("MOE_UTILS_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert mu.device("auto").type == expected
    assert mu.device().type == expected


def test_auto_obeys_the_environment(monkeypatch):
    monkeypatch.setenv("MOE_UTILS_DEVICE", "cpu")
    assert mu.device("auto") == torch.device("cpu")
    monkeypatch.setenv("MOE_UTILS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        mu.device("auto")


def test_named_devices():
    assert mu.device("cpu") == torch.device("cpu")
    assert mu.device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        mu.device("cuda")


@cuda
def test_cuda_index_out_of_range():
    with pytest.raises(ValueError, match="does not exist"):
        mu.device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cpu:x"])
def test_unknown_device_names(name):
    with pytest.raises(ValueError, match="device"):
        mu.device(name)


def test_device_type_error():
    with pytest.raises(TypeError, match="device must be a string"):
        mu.device(0)


def test_seed_makes_every_generator_repeat():
    gen = mu.seed(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    gen = mu.seed(3)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert first == again
    with pytest.raises(ValueError, match="seed must be >= 0"):
        mu.seed(-1)


def test_mps_has_no_float64_so_it_gets_float32():
    mps, cpu = torch.device("mps"), torch.device("cpu")
    assert mu.runtime.precise_dtype(cpu) == torch.float64 and mu.runtime.precise_dtype(mps) == torch.float32
    from moe_utils import _checks
    assert _checks.float_dtype("dtype", torch.float64, mps) == torch.float32
    assert _checks.float_dtype("dtype", torch.float64, cpu) == torch.float64
