"""Turning one input file into clean mono PCM_16 clips: probe, decode, check, downmix, resample.

Everything here is a pure function of the file's bytes and the pack parameters, so two
processes (or two runs, or two nodes of a cluster) that see the same bytes produce the same
samples. The chain runs in float32 from the decoder to the int16 rounding (no float64 copies):
float32 holds any 16- or 24-bit input sample exactly, and its rounding (6e-8) is 500x below the
int16 step. Resampling is libsoxr (python-soxr) at its high quality (``HQ``: 20-bit precision,
linear phase, passband to 91.3 % of the lower Nyquist, stopband 120 dB down): the 120 dB keep
aliasing 24 dB under the int16 quantisation floor (-98 dB), so the very-high setting (``VHQ``,
28 bits, 170 dB) cannot change a packed sample's meaning, while it costs 1.3x the time and forces
libsoxr's float64 engine. HQ on float32 runs libsoxr's single-precision SIMD engine (``cr32s``,
SSE), which every x86-64 CPU runs with the same instructions (libsoxr picks its AVX engine for
float64 only), so ranks on different x86-64 machines write byte-identical shards (libsoxr's own
environment variables, ``SOXR_USE_SIMD32`` or ``SOXR_MIN_DFT_SIZE`` say, would change the bits). Its cost does not grow with the rates' lowest common
multiple (11,127 -> 32,000 Hz costs what 44,100 -> 32,000 does).
"""

from __future__ import annotations

import io
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# fmt: off
# Extensions libsndfile (the decoder behind soundfile) reads.
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
                              ".au", ".snd", ".caf", ".w64", ".rf64"})
# Audio that exists in the wild but libsndfile cannot decode: refused with a clear reason.
UNSUPPORTED_AUDIO_EXTENSIONS = frozenset({".m4a", ".aac", ".mp4", ".wma", ".ape", ".alac", ".amr", ".mka", ".webm",
                                          ".ac3", ".mid", ".midi"})
# fmt: on
SILENCE_PEAK = 10 ** (-70 / 20)  # a clip whose loudest sample is below -70 dBFS counts as silent
PCM16_SCALE = 32768.0
RESAMPLE_QUALITY = "HQ"  # why HQ, not VHQ: the module docstring


class AudioReject(Exception):
    """An input (or one segment of it) that cannot become a clip; ``reason`` is a manifests.REASONS key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


AudioSource = str | Path | bytes | mmap.mmap  # a file path, or a whole file in memory (read or mapped)


def probe(src: AudioSource) -> AudioInfo:
    """Read the header of a file (no decoding). Raises AudioReject."""
    if (len(src) if isinstance(src, bytes) else os.path.getsize(src)) == 0:
        raise AudioReject("empty", "the file has 0 bytes")
    try:
        info = sf.info(_openable(src))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioReject("unreadable", f"not audio soundfile can read ({_why(err)})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioReject("unreadable", f"bad header: {info.samplerate} Hz, {info.channels} channels")
    if info.format in ("WAV", "WAVEX"):
        claimed = wav_claimed_frames(src)
        if claimed is not None and claimed > info.frames:
            raise AudioReject(
                "truncated",
                f"the WAV header claims {claimed / info.samplerate:.3f} s, the file holds "
                f"{info.frames / info.samplerate:.3f} s (cut short by an interrupted copy?); copy it again",
            )
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels), info.format, info.subtype)


def wav_claimed_frames(src: AudioSource) -> int | None:
    """Frames a RIFF/WAVE header's ``data`` chunk claims (libsndfile quietly reports only what the file
    holds); None when the header does not say (a streamed WAV's 0 or 0xFFFFFFFF size, or no chunk found)."""
    head = src[: 1 << 16] if isinstance(src, bytes) else _read_head(src, 1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20 : pos + 22], "little")
        elif cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def _read_head(path: str | Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def segment_bounds(frames: int, sample_rate: int, max_duration: float | None) -> list[tuple[int, int]]:
    """[(start, stop)) frame ranges: the whole file, or consecutive ``max_duration`` pieces
    (the last one shorter) when the file is longer than ``max_duration``."""
    if not max_duration or max_duration <= 0:
        return [(0, frames)]
    seg = max(1, int(round(max_duration * sample_rate)))
    if frames <= seg:
        return [(0, frames)]
    return [(s, min(s + seg, frames)) for s in range(0, frames, seg)]


def too_short(n_frames: int, sample_rate: int, min_duration: float) -> bool:
    return n_frames < max(1, math.ceil(min_duration * sample_rate - 1e-9))


def decode_segment(src: AudioSource, start: int, stop: int) -> tuple[np.ndarray, int]:
    """Decode frames [start, stop) of a file -> (float32 (frames, channels), sample rate)."""
    try:
        with sf.SoundFile(_openable(src)) as f:
            if start:
                f.seek(start)
            x = f.read(stop - start, dtype="float32", always_2d=True)
            return x, int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioReject("unreadable", f"decoding failed ({_why(err)})") from None


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) float32 -> (frames,) float32: the channels summed in order,
    divided by their number (for stereo, (L + R) / 2 is exact: halving is exact and the sum of two
    16- or 24-bit samples fits float32's 24-bit mantissa). A mono input comes back as it is."""
    if x.ndim == 1 or x.shape[1] == 1:
        return x.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: prepare_clip refuses what comes out
        acc = x[:, 0] + x[:, 1]  # (F,) fresh array: the loop below adds in place
        for c in range(2, x.shape[1]):
            acc += x[:, c]
        acc /= np.float32(x.shape[1])
    return acc


RESAMPLER = f"soxr-{RESAMPLE_QUALITY}"  # names the resampler in the keys of what it produces


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """(samples,) float32 at orig_sr -> (about samples * new_sr / orig_sr,) float32 at new_sr
    (libsoxr rounds the length to nearest). float32 only: another dtype would be a second engine."""
    if x.dtype != np.float32:
        raise TypeError(f"resample expects float32 samples, got {x.dtype}")
    if orig_sr == new_sr:
        return x
    return soxr.resample(np.ascontiguousarray(x), orig_sr, new_sr, quality=RESAMPLE_QUALITY)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1) -> int16, rounding to nearest and clipping (16-bit input maps back exactly).
    One float temporary of x's dtype (x * 32768 is exact in float32 too: a power of two)."""
    y = x * x.dtype.type(PCM16_SCALE)
    np.rint(y, out=y)
    np.clip(y, -32768, 32767, out=y)
    return y.astype(np.int16)


def from_pcm16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(PCM16_SCALE)


@dataclass(frozen=True)
class Clip:
    pcm: np.ndarray  # (samples,) int16 at the pack sample rate
    silent: bool


def prepare_clip(src: AudioSource, start: int, stop: int, sample_rate: int, min_duration: float) -> Clip:
    """Decode one planned clip and apply the checks that need the samples. Raises AudioReject."""
    x, orig_sr = decode_segment(src, start, stop)
    if x.shape[0] == 0:
        raise AudioReject("empty", "no samples could be decoded")
    if too_short(x.shape[0], orig_sr, min_duration):
        raise AudioReject(
            "too_short", f"{x.shape[0] / orig_sr:.3f} s decoded, below --min-duration {min_duration} s"
        )
    mono = to_mono(x)
    # Any NaN/Inf sample makes its frame's mean non-finite (so does a finite sum past float32's range,
    # ~3e38, which no audio holds): two passes over the mono signal, no temporary.
    if not (math.isfinite(float(mono.min())) and math.isfinite(float(mono.max()))):
        bad = int(x.size - np.isfinite(x).sum())
        raise AudioReject(
            "nan_inf", f"{bad} NaN/Inf sample values" if bad else "sample values beyond float32"
        )
    y = resample(mono, orig_sr, sample_rate)
    pcm = to_pcm16(y)
    peak = max(float(y.max()), -float(y.min())) if y.size else 0.0
    return Clip(pcm=pcm, silent=peak < SILENCE_PEAK)


def _openable(src: AudioSource) -> str | io.BytesIO | mmap.mmap:
    if isinstance(src, mmap.mmap):  # file-like already: soundfile reads it in place
        src.seek(0)
        return src
    return io.BytesIO(src) if isinstance(src, bytes) else str(src)


def _why(err: Exception) -> str:
    """libsndfile's message without the file name (the rejects table has the path already)."""
    text = str(err)
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text
