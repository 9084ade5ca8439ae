"""Headerless GSM 06.10 (`.gsm`, the "toast" frame layout) decoded through libsndfile.

libsndfile decodes GSM 06.10 only inside a WAV container, where the codec's parameters are
packed the Microsoft way (WAV49: two frames in 65 bytes, least significant bit first). A
`.gsm` file stores each 20 ms frame as 33 bytes, most significant bit first, behind a 4-bit
0xD signature. The 76 parameters and their widths are the same in both: we unpack them from
the toast frames, repack them as WAV49 blocks in memory and let soundfile decode.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 8000
FRAME_BYTES = 33  # toast frame: 4-bit signature + 260 bits
FRAME_SAMPLES = 160
BLOCK_BYTES = 65  # WAV49 block: two frames
SIGNATURE = 0xD
# bit widths of one frame's parameters: 8 log-area ratios, then 4 sub-frames of
# (LTP lag, LTP gain, grid position, block amplitude, 13 RPE pulses)
WIDTHS = (6, 6, 5, 5, 4, 4, 3, 3) + ((7, 2, 2, 6) + (3,) * 13) * 4
assert sum(WIDTHS) == 260


def frame_count(path: Path) -> int:
    return Path(path).stat().st_size // FRAME_BYTES


def duration(path: Path) -> float:
    return frame_count(path) * FRAME_SAMPLES / SAMPLE_RATE


def _toast_params(data: bytes) -> list[tuple[int, ...]]:
    """Every frame's 76 parameters, in order."""
    frames = []
    for start in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES):
        bits = int.from_bytes(data[start : start + FRAME_BYTES], "big")
        if bits >> 260 != SIGNATURE:
            raise ValueError(f"not a GSM 06.10 frame at byte {start} (signature {bits >> 260:#x})")
        pos, params = 260, []
        for width in WIDTHS:
            pos -= width
            params.append((bits >> pos) & ((1 << width) - 1))
        frames.append(tuple(params))
    return frames


def to_wav49(data: bytes) -> bytes:
    """A WAV file (format 0x31, GSM 6.10) holding the same frames as the toast bytes `data`."""
    frames = _toast_params(data)
    if not frames:
        raise ValueError("no GSM 06.10 frame in the data")
    if len(frames) % 2:  # a WAV49 block holds two frames: pad with a silent one
        frames.append((0,) * len(WIDTHS))
    payload = bytearray()
    for first, second in zip(frames[::2], frames[1::2], strict=True):
        acc, nbits = 0, 0
        for value, width in zip(first + second, WIDTHS + WIDTHS, strict=True):
            acc |= value << nbits
            nbits += width
        payload += acc.to_bytes(BLOCK_BYTES, "little")
    n_samples = len(frames) * FRAME_SAMPLES
    # WAVEFORMATEX: tag, channels, rate, bytes/s, block align, bits/sample, cbSize, samples/block
    fmt = struct.pack(
        "<HHIIHHHH", 0x31, 1, SAMPLE_RATE, SAMPLE_RATE * BLOCK_BYTES // 320, BLOCK_BYTES, 0, 2, 320
    )
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<II", 4, n_samples)
        + b"data"
        + struct.pack("<I", len(payload))
        + bytes(payload)
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_gsm(path: Path) -> tuple[np.ndarray, int]:
    """(samples,) float32 and the sample rate (8000) of a headerless .gsm file."""
    audio, sr = sf.read(io.BytesIO(to_wav49(Path(path).read_bytes())), dtype="float32")
    return audio, sr
