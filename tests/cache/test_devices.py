"""--device: auto, no quiet CPU fallback, one GPU per torchrun process (CUDA faked: no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from ssondo_cache.devices import resolve_device


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match="no CUDA device is available"):
            resolve_device(name)


def test_torchrun_processes_take_their_local_gpu(four_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda")  # one process: the current device
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is taken as given
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(RuntimeError, match="LOCAL_RANK is 5 but this process sees 4 CUDA"):
        resolve_device("cuda")
