"""The device side of extraction: TS windows of decoded items -> teacher embeddings on the host.

``embed_item`` turns one decoded item (consecutive clips of one tar shard) into window and clip
embeddings; ``to_host`` queues their device -> host copies on the extraction's own GPU, so the
writer (extract.py) waits on an event instead of a synchronise per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssondo_cache.extract_items import PCM16_SCALE, Resampler
from ssondo_cache.teachers.base import Teacher, compile_teacher
from ssondo_cache.windows import cut_windows


class WindowEmbedder:
    """windows (n, win) -> (n, D) float32: teacher frames averaged over time, in fixed-size forwards."""

    def __init__(self, teacher: Teacher, device: torch.device, batch_size: int, compile: bool) -> None:
        self.teacher, self.device, self.batch_size = teacher, device, batch_size
        self.autocast = device.type == "cuda" and not teacher.cpu_only
        # compiled graphs want one input shape: pad every forward to batch_size rows
        self.pad = compile
        self.forward = compile_teacher(teacher) if compile else teacher

    @property
    def precision(self) -> str:
        if self.teacher.cpu_only:  # runs outside PyTorch (e.g. onnxruntime): its own arithmetic
            return "cpu-native"
        return f"{self.device.type}-{'bf16-autocast' if self.autocast else 'fp32'}"

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(windows), self.batch_size):
            x = windows[i : i + self.batch_size]
            n = len(x)
            if self.pad and n < self.batch_size:
                x = torch.nn.functional.pad(x, (0, 0, 0, self.batch_size - n))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                frames = self.forward(x)  # (B, T, D)
            out.append(frames[:n].float().mean(dim=1))  # (n, D): pool over time in float32
        return torch.cat(out)


class BlockBuffer:
    """The rows [start, stop) of one block while its items come in."""

    def __init__(self, start: int, stop: int, w_max: int, dim: int) -> None:
        self.start, self.stop = start, stop
        self.emb = np.full((stop - start, w_max, dim), np.nan, dtype=np.float16)
        self.clip = np.full((stop - start, dim), np.nan, dtype=np.float16)
        self.n_windows = np.zeros(stop - start, dtype=np.int32)


@dataclass
class Embedded:
    """One item's results, possibly still being computed on the device (finished by ``store``)."""

    block: int
    start: int  # global row of the item's first clip
    last: bool
    counts: list[int]  # windows per clip
    emb: torch.Tensor  # (sum counts, D) float16, on the host (being copied there when ``ready`` is set)
    clip: torch.Tensor  # (clips, D) float16, likewise
    ready: torch.cuda.Event | None = None  # recorded after the device -> host copies

    def store(self, buf: BlockBuffer) -> int:
        """Copy into ``buf`` the rows inside it (an item may run past a block's edge); returns how many."""
        if self.ready is not None:
            self.ready.synchronize()  # waits for THIS item only, not for work queued after it
        emb16, clip16 = self.emb.numpy(), self.clip.numpy()
        at = kept = 0
        for j, n in enumerate(self.counts):
            row = self.start + j - buf.start
            if 0 <= row < len(buf.n_windows):
                buf.emb[row, :n] = emb16[at : at + n]
                buf.clip[row] = clip16[j]
                buf.n_windows[row] = n
                kept += 1
            at += n
        return kept


def embed_item(
    item: dict[str, Any],
    embedder: WindowEmbedder,
    resampler: Resampler | None,
    win: int | None,
    hop: int | None,
) -> Embedded:
    """Queue the device work for one item: [resample], cut windows, teacher, pool. Nothing waits for
    the device here, so the next item can be prepared while this one runs."""
    flat = item["audio"].to(embedder.device, non_blocking=True)  # (sum of lengths,)
    if flat.dtype == torch.int16:
        flat = flat.float() * PCM16_SCALE
    lengths = item["lengths"]
    if len(set(lengths)) == 1:  # the usual case (e.g. all 10-s clips): one (n, S) tensor, few kernels
        audio = flat.view(len(lengths), lengths[0])
        if resampler is not None:
            audio = resampler.batch(audio)
        windows = cut_windows(audio, win, hop)  # (n, W, win)
        n, w = windows.shape[:2]
        emb = embedder(windows.reshape(n * w, -1))  # (n * W, D) float32
        clip = emb.view(n, w, -1).mean(dim=1)  # (n, D): float32 mean, then f16
        counts = [w] * n
    else:
        clips = list(flat.split(lengths))
        if resampler is not None:
            clips = resampler(clips)
        per_clip = [cut_windows(a, win, hop) for a in clips]  # (n_i, win) each
        counts = [len(w) for w in per_clip]
        emb = embedder(torch.cat(per_clip))  # (sum n_i, D) float32
        clip = torch.stack([e.mean(dim=0) for e in emb.split(counts)])  # (clips, D): float32 mean, then f16
    (emb, clip), ready = to_host([emb.to(torch.float16), clip.to(torch.float16)], embedder.device)
    return Embedded(item["block"], item["start"], item["last"], counts, emb, clip, ready)


def to_host(
    tensors: list[torch.Tensor], device: torch.device
) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Host copies of ``tensors`` (on ``device``), and on CUDA the event that says they have landed.

    On CUDA the copies are only queued, into pinned buffers, on ``device``'s current stream, and the
    event is recorded on THAT stream: a bare ``Event.record()`` uses the current device's stream,
    which is not ``device``'s when another GPU is current, and the event would fire too early."""
    if device.type != "cuda":
        return [t.cpu() for t in tensors], None
    with torch.cuda.device(device):  # pinned buffers are made with this GPU's context, not GPU 0's
        stream = torch.cuda.current_stream(device)
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        with torch.cuda.stream(stream):
            for h, t in zip(host, tensors, strict=True):
                h.copy_(t, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(stream)
    return host, ready
