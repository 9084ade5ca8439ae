"""Which device a process computes on: every stage (extract, train, eval, cluster) reads ``--device``
here, so ``auto``, a missing GPU and torchrun's one-GPU-per-process rule mean the same everywhere.

``pick_device`` is the reading itself, for any library that counts its own GPUs (FAISS links its
own CUDA runtime); ``resolve_device`` is that reading for PyTorch, and it also makes the device
current, so that whatever touches CUDA afterwards without naming a device (``Event.record()``,
the DataLoader's pinning thread, ``torch.empty(pin_memory=True)``) lands on it, not on GPU 0."""

from __future__ import annotations

import os

import torch


class DeviceError(ValueError):
    """A ``--device`` that cannot be honoured (no GPU, an unknown name, LOCAL_RANK past the GPUs)."""


def pick_device(device: str | torch.device, gpus: int, library: str) -> tuple[torch.device, str]:
    """(device, why) for ``device`` = ``auto`` | ``cpu`` | ``cuda`` | ``cuda:K``, given that ``library``
    sees ``gpus`` CUDA devices. ``auto`` is cuda when there is one; cuda without one is an error,
    never a quiet CPU run. A bare ``cuda`` under torchrun (LOCAL_RANK set) is this process's GPU on
    its node, so N ranks on one node use N GPUs instead of all sharing GPU 0; ``cuda:K`` is as given."""
    name = str(device)
    if name == "auto":
        if not gpus:
            return torch.device("cpu"), f"auto: {library} sees no GPU"
        name, why = "cuda", f"auto: {library} sees {gpus} GPU(s)"
    else:
        why = f"asked for {name}"
    try:
        dev: torch.device | None = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:K")
    if dev.type == "cpu":
        return dev, why
    if not gpus:
        raise DeviceError(
            f"device {name!r} was requested but {library} sees no CUDA device (no GPU): use --device cpu"
        )
    if dev.index is None and "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        if not 0 <= local < gpus:
            raise DeviceError(
                f"LOCAL_RANK is {local} but this process sees {gpus} CUDA device(s): start at most "
                f"{gpus} processes per node, or give --device cuda:K"
            )
        dev, why = torch.device("cuda", local), f"{why}; cuda:{local} = LOCAL_RANK (torchrun)"
    elif dev.index is not None and dev.index >= gpus:
        raise DeviceError(f"device {name!r} was requested but {library} sees {gpus} CUDA device(s)")
    return dev, why


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``pick_device`` for PyTorch; a CUDA device with an index is made current before anything else
    touches CUDA (a bare ``cuda`` is the current device already)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev, _ = pick_device(device, gpus, "PyTorch")
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    return dev
