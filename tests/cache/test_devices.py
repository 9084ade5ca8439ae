"""--device: auto, no quiet CPU fallback, one GPU per torchrun process, and on that GPU every stream,
event and pinned buffer of extraction (CUDA faked: no GPU needed)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ssondo_cache.devices import DeviceError, pick_device, resolve_device
from ssondo_cache.extract import decode_loader
from ssondo_cache.extract_items import BlockItems, block_work, make_plan
from ssondo_cache.manifests import read_clips
from ssondo_cache.pack import pack
from ssondo_cache.window_embed import to_host
from ssondo_cache.windows import TemporalSupport
from ssondo_cache.workspace import Workspace
from tests.cache.conftest import write_audio


def _index(device) -> int | None:
    return device if isinstance(device, int) else torch.device(device).index


class FakeCuda:
    """Four GPUs on the CPU: a current device per host thread (CUDA keeps one per thread, which is why
    the DataLoader's pinning thread must be told its device), and a log of (what, device) for every
    set_device, stream, event record and pinned allocation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int = 4) -> None:
        self.local = threading.local()
        self.log: list[tuple[str, int]] = []
        fake = self

        class Stream:
            def __init__(self, index: int) -> None:
                self.device_index = index

        class Event:
            def record(self, stream=None) -> None:
                stream = stream if stream is not None else torch.cuda.current_stream()
                fake.log.append(("event", stream.device_index))

            def synchronize(self) -> None:
                pass

        @contextmanager
        def on(index: int):
            before = self.current
            self.current = index
            try:
                yield
            finally:
                self.current = before

        def current_stream(device=None):
            index = self.current if device is None or _index(device) is None else _index(device)
            self.log.append(("stream", index))
            return Stream(index)

        def set_device(device) -> None:
            self.log.append(("set_device", _index(device)))
            self.current = _index(device)

        real_empty = torch.empty

        def empty(*args, pin_memory: bool = False, **kw):
            if pin_memory:
                self.log.append(("pin", self.current))
            return real_empty(*args, **kw)

        def pin_tensor(t: torch.Tensor) -> torch.Tensor:
            self.log.append(("pin", self.current))
            return t

        for name, value in {
            "is_available": lambda: True,
            "device_count": lambda: n,
            "set_device": set_device,
            "current_device": lambda: self.current,
            "current_stream": current_stream,
            "device": lambda d: on(_index(d)),
            "stream": lambda s: on(s.device_index),  # torch.cuda.stream also makes its device current
            "Event": Event,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)
        for name, value in {
            "is_available": lambda: True,
            "current_accelerator": lambda: torch.device("cuda"),
            "current_device_index": lambda: self.current,
            "set_device_index": set_device,
        }.items():
            monkeypatch.setattr(torch.accelerator, name, value)
        monkeypatch.setattr(torch, "empty", empty)
        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_tensor)

    @property
    def current(self) -> int:
        return getattr(self.local, "device", 0)  # a fresh thread starts on GPU 0, as in CUDA

    @current.setter
    def current(self, index: int) -> None:
        self.local.device = index

    def devices(self, what: str) -> set[int]:
        return {d for w, d in self.log if w == what}


@pytest.fixture
def four_gpus(monkeypatch):
    return FakeCuda(monkeypatch)


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="PyTorch sees no CUDA device"):
            resolve_device(name)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_torchrun_processes_take_their_local_gpu(four_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda")  # one process: the current device
    assert four_gpus.log == []  # ... which is current already
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is taken as given
    assert resolve_device("cpu") == torch.device("cpu")
    assert four_gpus.log == [("set_device", 2), ("set_device", 2), ("set_device", 0)]
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DeviceError, match="LOCAL_RANK is 5 but this process sees 4 CUDA"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="sees 4 CUDA device"):
        resolve_device("cuda:4")


def test_faiss_and_torch_read_device_the_same_way(monkeypatch):
    """One reading for every library; FAISS counts its own GPUs (its own CUDA runtime)."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto", 0, "FAISS") == (torch.device("cpu"), "auto: FAISS sees no GPU")
    dev, why = pick_device("auto", 2, "FAISS")
    assert dev == torch.device("cuda", 1) and "LOCAL_RANK" in why
    with pytest.raises(DeviceError, match="FAISS sees no CUDA device"):
        pick_device("cuda", 0, "FAISS")


def test_to_host_queues_its_copies_and_event_on_the_given_gpu(four_gpus):
    """The copy-done event is recorded on the stream of the GPU that ran the copies, even when another
    GPU is current: recorded on GPU 0's stream it would fire before GPU 1's copies land."""
    a, b = torch.arange(6.0).view(2, 3), torch.ones(4)
    for current in (1, 0):  # 1: as resolve_device leaves it under LOCAL_RANK=1; 0: a careless caller
        four_gpus.current, four_gpus.log = current, []
        (ha, hb), ready = to_host([a, b], torch.device("cuda", 1))
        assert torch.equal(ha, a) and torch.equal(hb, b) and ready is not None
        assert [w for w, _ in four_gpus.log].count("pin") == 2
        assert four_gpus.devices("pin") == four_gpus.devices("stream") == four_gpus.devices("event") == {1}
        assert four_gpus.current == current  # left as it was
    assert to_host([a], torch.device("cpu"))[1] is None


def test_rank_1_extraction_pins_and_records_on_gpu_1(four_gpus, monkeypatch, tmp_path: Path):
    """Under torchrun with LOCAL_RANK=1: set_device(1) comes before any other CUDA call, and the
    DataLoader's pinning thread (which starts on GPU 0, as every new thread does) pins on GPU 1."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    for i in range(2):
        write_audio(tmp_path / "audio" / f"c{i}.wav", 0.3, 16000, seed=i)
    work = tmp_path / "work"
    pack([tmp_path / "audio"], work, sample_rate=16000, shard_size=1, progress=False)
    dev = resolve_device("cuda")
    assert dev == torch.device("cuda", 1) and four_gpus.log == [("set_device", 1)]
    plan = make_plan(read_clips(work), 16000, TemporalSupport.parse(1.0))
    blocks = [block_work(plan, k, (k, k + 1), Workspace(work), 8, False) for k in range(2)]
    items = list(decode_loader(BlockItems(blocks, None), 1, dev))  # 1 spawned worker + the pin thread
    assert len(items) == 2 and four_gpus.devices("pin") == {1}
    to_host([items[0]["audio"]], dev)
    assert {d for _, d in four_gpus.log} == {1}


@pytest.mark.gpu
def test_to_host_on_a_real_gpu():
    """The copies land in pinned memory and the event says when (the last GPU: not GPU 0 when there
    are several)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    dev = resolve_device(f"cuda:{torch.cuda.device_count() - 1}")
    x = torch.randn(4096, 64, device=dev).half()
    (host,), ready = to_host([x], dev)
    ready.synchronize()
    assert host.is_pinned() and torch.equal(host, x.cpu())
