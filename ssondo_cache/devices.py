"""Which torch device a process computes on: every stage (extract, train, eval) resolves ``--device``
here, so ``auto``, a missing GPU and torchrun's one-GPU-per-process rule mean the same everywhere."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``auto`` -> cuda when present, else cpu; cuda without a GPU is an error, never a quiet CPU run.

    A bare ``cuda`` under torchrun (LOCAL_RANK set) is this process's GPU on its node, so N ranks
    on one node use N GPUs instead of all sharing GPU 0; ``cuda:K`` is taken as given."""
    name = str(device)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but no CUDA device is available (use --device cpu)"
        )
    if dev.index is None and "LOCAL_RANK" in os.environ:
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if not 0 <= local < count:
            raise RuntimeError(
                f"LOCAL_RANK is {local} but this process sees {count} CUDA device(s): start at most "
                f"{count} processes per node, or give --device cuda:K"
            )
        dev = torch.device("cuda", local)
    return dev
