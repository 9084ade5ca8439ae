"""WebDataset tar shards: writing them byte-for-byte reproducibly, reading them back.

Layout of ``clips-NNNNNN.tar``: for each clip, in key order, ``<key>.flac`` (or ``.wav``,
mono PCM_16) followed by ``<key>.json`` (source, offsets, labels ...). Tar headers carry a
fixed mtime, uid/gid 0 and empty user/group names, so packing the same clips twice gives
identical bytes; any tar reader (webdataset, ``tar tf``) reads them. The training stream reads
them with ``tar_clips`` (memory-mapped, zero-copy members) and ``pcm16`` (WAV as an int16 view).

Every audio member's CRC-32C is recorded in its json (``crc32c``, 8 hex digits) and in clips.parquet;
``audio_member`` checks it whenever a member is about to be decoded (extract, train, validation,
``iter_shard``). Members packed before checksums existed have none and are read unchecked.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np
import soundfile as sf

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, so re-packing gives identical tars
FORMATS = {"flac": "FLAC", "wav": "WAV"}  # --format -> libsndfile container; always PCM_16


CHECKSUM = "crc32c"  # the key in a member's json and the clips.parquet column


class CorruptShardError(ValueError):
    """A packed shard's bytes are not what pack wrote (the message names the shard, the member, the fix)."""


def member_checksum(data: bytes | memoryview) -> str:
    """CRC-32C of an audio member's bytes, 8 hex digits (google-crc32c reads bytes only: a view is copied,
    which with the hardware CRC still beats zlib.crc32 on the view 2.5x)."""
    return f"{google_crc32c.value(bytes(data)):08x}"


def audio_member(path: str | Path, key: str, group: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """(extension, audio bytes, meta) of one clip's members, its audio checked against the json's checksum.

    Raises CorruptShardError naming the shard and member when the audio or the json is not what pack wrote."""
    ext = next((e for e in FORMATS if e in group), None)
    if ext is None:
        raise CorruptShardError(
            f"{path}: clip {key!r} has no .flac or .wav member (has {sorted(group)}); {REPACK}"
        )
    meta: dict[str, Any] = {}
    if "json" in group:
        try:
            meta = json.loads(bytes(group["json"]))
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptShardError(
                f"{path}: member {key}.json is not valid JSON ({err}); {REPACK}"
            ) from None
    expected = meta.get(CHECKSUM)
    if expected is not None:  # None: packed before checksums, read unchecked (manifests/README.md)
        got = member_checksum(group[ext])
        if got != expected:
            raise CorruptShardError(
                f"{path}: member {key}.{ext} has crc32c {got}, pack recorded {expected}: the shard changed "
                f"after packing; {REPACK}"
            )
    return ext, group[ext], meta


REPACK = "delete that shard and re-run the same `ssondo pack` command to rebuild it"


@dataclass(frozen=True)
class ShardClip:
    key: str
    audio: np.ndarray  # (samples,) float32 in [-1, 1)
    sample_rate: int
    meta: dict[str, Any]


def encode_audio(pcm: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """(samples,) int16 -> bytes of a mono PCM_16 FLAC or WAV file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of {sorted(FORMATS)}")
    if pcm.dtype != np.int16:
        raise TypeError(f"encode_audio expects int16 samples, got {pcm.dtype}")
    if fmt == "wav":
        return wav_pcm16(pcm, sample_rate)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format=FORMATS[fmt], subtype="PCM_16")
    return buf.getvalue()


def wav_pcm16(pcm: np.ndarray, sample_rate: int) -> bytes:
    """(samples,) int16 -> a mono PCM_16 WAV file: the 44-byte header libsndfile writes, then the samples
    (the same bytes as ``soundfile.write``, without its callback-per-block writes through BytesIO)."""
    size = 2 * len(pcm)
    if size + 36 > 0xFFFFFFFF:
        raise ValueError(
            f"{len(pcm)} samples do not fit a WAV file's 4-GiB size fields; pack with --max-duration"
        )
    # fmt chunk: PCM, 1 channel, rate, bytes per second, block align, bits per sample
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)
    riff = struct.pack("<4sI4s4sI", b"RIFF", size + 36, b"WAVE", b"fmt ", len(fmt_chunk))
    header = riff + fmt_chunk + struct.pack("<4sI", b"data", size)
    return header + pcm.astype("<i2", copy=False).tobytes()


def decode_audio(data: bytes, ext: str) -> tuple[np.ndarray, int]:
    """Bytes of a ``.flac``/``.wav`` tar member -> ((samples,) float32, sample rate).

    Usable as a webdataset decoder step: ``decode_audio(sample["flac"], "flac")``."""
    ext = ext.lstrip(".").lower()
    if ext not in FORMATS:
        raise ValueError(f"not a packed audio member: .{ext}")
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if x.ndim != 1:  # shards are mono by construction; anything else is not ours
        raise ValueError(f"expected mono audio in a shard, got shape {x.shape}")
    return x, int(sr)


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class ShardWriter:
    """Append clips to one tar file with deterministic headers.

    Use on a temporary path and rename when done (see pack_shards.py): a reader never sees a
    half-written shard under the final name. The bytes are those of ``tarfile`` in PAX format (same
    headers, padding and end record); each member goes out in three writes (header, bytes, padding)
    instead of tarfile's copy of it through a BytesIO in 16-KiB pieces."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._offset = 0
        self._closed = False

    def add(self, key: str, audio: bytes, fmt: str, meta: dict[str, Any]) -> None:
        self._member(f"{key}.{fmt}", audio)
        self._member(f"{key}.json", meta_bytes(meta))

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")  # what TarFile.addfile writes
        pad = -len(data) % tarfile.BLOCKSIZE
        self._f.write(header)
        self._f.write(data)
        if pad:
            self._f.write(tarfile.NUL * pad)
        self._offset += len(header) + len(data) + pad

    def close(self) -> None:
        """The end of the archive, as TarFile.close writes it: two zero blocks, then zeros up to a
        whole record (20 blocks, like ``tar -b20``)."""
        if self._closed:
            return
        self._closed = True
        end = 2 * tarfile.BLOCKSIZE
        end += -(self._offset + end) % tarfile.RECORDSIZE
        self._f.write(tarfile.NUL * end)
        self._offset += end

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shard_file(path: Path, clips: list[tuple[str, bytes, str, dict[str, Any]]]) -> None:
    """Write a whole shard to ``path`` (a temporary name) and flush it to disk."""
    with open(path, "wb") as f:
        with ShardWriter(f) as w:
            for key, audio, fmt, meta in clips:
                w.add(key, audio, fmt, meta)
        f.flush()
        os.fsync(f.fileno())


def iter_members(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per clip, in tar order, grouped the way webdataset groups them.
    A truncated or damaged tar is a CorruptShardError naming the shard and the last good member."""
    return _damage_named(path, _iter_members(path))


def _damage_named(path: str | Path, items: Iterator[tuple]) -> Iterator[tuple]:
    """``items`` (tuples whose second-to-last field is the clip key), a tarfile error in them turned
    into a CorruptShardError naming the shard and the last good clip."""
    last = None
    try:
        for item in items:
            last = item[-2]
            yield item
    except (tarfile.TarError, EOFError) as err:
        where = f"after member {last!r}" if last is not None else "at its start"
        raise CorruptShardError(
            f"{path}: the tar shard is truncated or damaged {where} ({type(err).__name__}: {err}); {REPACK}"
        ) from None


def _iter_members(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    key: str | None = None
    group: dict[str, bytes] = {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base:
                raise ValueError(f"{path}: member {member.name!r} has no extension")
            k, ext = base.split(".", 1)
            if k != key:
                if key is not None:
                    yield key, group
                key, group = k, {}
            f = tar.extractfile(member)
            assert f is not None
            group[ext] = f.read()
    if key is not None:
        yield key, group


def iter_shard(path: str | Path) -> Iterator[ShardClip]:
    """Decoded clips of one shard, in tar order."""
    for key, group in iter_members(path):
        ext, data, meta = audio_member(path, key, group)
        audio, sr = decode_audio(data, ext)
        yield ShardClip(key=key, audio=audio, sample_rate=sr, meta=meta)


# ---------------------------------------------------------------- fast reading (training stream)


def tar_clips(path: str, stop: int) -> Iterator[tuple[int, str, dict[str, memoryview]]]:
    """(index in shard, key, {extension: bytes}) of the first ``stop`` clips of a WebDataset tar,
    grouped by key the way webdataset groups them (``<key>.<ext>``, keys without dots).

    The tar is memory-mapped and only its headers are parsed (tarfile in random-access mode,
    PAX headers included); members are zero-copy views of the mapping, read from disk only when
    used. webdataset's streaming reader copies every member through 10 KB reads and measured
    ~20x slower here, which made it the stream's bottleneck on local (or parallel) filesystems."""
    return _damage_named(path, _tar_clips(path, stop))


def _tar_clips(path: str, stop: int) -> Iterator[tuple[int, str, dict[str, memoryview]]]:
    with open(path, "rb") as f:
        data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))  # outlives f; views keep it
        index, key, group = -1, None, {}
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
                if k != key:
                    if key is not None:
                        yield index, key, group
                    index, key, group = index + 1, k, {}
                    if index >= stop:
                        return
                group[ext.lower()] = data[member.offset_data : member.offset_data + member.size]
        if key is not None:
            yield index, key, group


def pcm16(data: bytes | memoryview, ext: str) -> tuple[np.ndarray, int]:
    """Audio bytes -> ((samples,) int16, sample rate); PCM_16 mono WAV is a zero-copy view.

    Why not soundfile for WAV: reading from memory goes through Python callbacks in small blocks
    (~2 ms per 10-s clip, the stream's whole budget); the view is ~100x cheaper, and the crop is
    taken before any conversion. FLAC (and any other WAV) goes through ``decode_audio``."""
    if ext == "wav" and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos, fmt = 12, None
        while pos + 8 <= len(data):
            cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
            if cid == b"fmt ":
                fmt = struct.unpack_from("<HHI", data, pos + 8) + struct.unpack_from("<H", data, pos + 22)
            elif cid == b"data" and fmt is not None and (fmt[0], fmt[1], fmt[3]) == (1, 1, 16):
                n = min(size, len(data) - pos - 8) // 2
                return np.frombuffer(data, dtype="<i2", count=n, offset=pos + 8), int(fmt[2])
            pos += 8 + size + (size & 1)
    x, sr = decode_audio(bytes(data), ext)  # shards hold PCM_16: x * 32768 is an exact integer
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16), sr
