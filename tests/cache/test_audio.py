"""Decoding, checks, downmix, resampling and PCM_16 conversion on real encoded audio."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from ssondo_cache import audio as A
from ssondo_cache.shards import decode_audio, encode_audio, iter_shard, write_shard_file
from tests.cache.conftest import tone


def encoded(x: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_pcm16_round_trip_is_exact_for_every_value() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    np.testing.assert_array_equal(A.to_pcm16(A.from_pcm16(every)), every)
    assert A.to_pcm16(np.array([1.5, -2.0, 0.99999], np.float32)).tolist() == [32767, -32768, 32767]


def test_probe_reads_header_and_refuses_garbage() -> None:
    info = A.probe(encoded(tone(0.25, 16000, 2), 16000, "FLAC"))
    assert (info.frames, info.sample_rate, info.channels, info.format) == (4000, 16000, 2, "FLAC")
    with pytest.raises(A.AudioReject) as e:
        A.probe(b"RIFF not really a wave file")
    assert e.value.reason == "unreadable"
    with pytest.raises(A.AudioReject) as e:
        A.probe(b"")
    assert e.value.reason == "empty"


def test_segment_bounds() -> None:
    assert A.segment_bounds(100, 10, None) == [(0, 100)]
    assert A.segment_bounds(100, 10, 10.0) == [(0, 100)]
    assert A.segment_bounds(250, 10, 10.0) == [(0, 100), (100, 200), (200, 250)]
    assert A.segment_bounds(101, 10, 10.0) == [(0, 100), (100, 101)]
    assert A.too_short(1, 10, 0.1) is False and A.too_short(0, 10, 0.1) is True
    assert A.too_short(1599, 16000, 0.1) is True and A.too_short(1600, 16000, 0.1) is False


def test_prepare_clip_target_rate_mono_16bit_is_untouched() -> None:
    x = tone(0.3, 32000, 1)
    data = encoded(x, 32000)
    ref, _ = sf.read(io.BytesIO(data), dtype="int16")
    clip = A.prepare_clip(data, 0, len(ref), 32000, 0.1)
    np.testing.assert_array_equal(clip.pcm, ref)
    assert not clip.silent


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_prepare_clip_downmixes_then_resamples_with_soxr_hq_in_float32(subtype: str) -> None:
    """The exact chain: float32 decode, (L + R) / 2, libsoxr HQ on float32, rint to int16 (VHQ or a
    float64 chain gives other bits: issue 17 chose HQ float32, audio.py says why)."""
    x = tone(0.4, 44100, 2, seed=2)
    data = encoded(x, 44100, "FLAC", subtype)
    dec, _ = sf.read(io.BytesIO(data), dtype="float32")
    mono = (dec.astype(np.float64).mean(axis=1)).astype(np.float32)  # exact: (L + R) / 2 of <= 24-bit
    ref = soxr.resample(mono, 44100, 32000, quality="HQ")
    clip = A.prepare_clip(data, 0, len(dec), 32000, 0.1)
    assert len(clip.pcm) == round(len(dec) * 32000 / 44100)
    np.testing.assert_array_equal(clip.pcm, np.clip(np.rint(ref.astype(np.float64) * 32768), -32768, 32767))
    vhq = soxr.resample(mono.astype(np.float64), 44100, 32000, quality="VHQ")
    assert not np.array_equal(clip.pcm, np.clip(np.rint(vhq * 32768), -32768, 32767))  # the test can tell
    assert A.RESAMPLER == "soxr-HQ"  # names the chain in eval's decoded-audio keys


@pytest.mark.parametrize(("orig", "new"), [(11127, 32000), (44100, 32000), (22050, 16000), (8000, 32000)])
def test_resample_keeps_the_passband_at_any_rate_pair(orig: int, new: int) -> None:
    """A 1-kHz tone comes out as the same tone at the new rate, also at rates with gcd 1 (where an
    exact polyphase kernel has 32,000 phases and takes minutes on a 1.4-s clip)."""
    n = int(1.37 * orig)
    y = A.resample((0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / orig)).astype(np.float32), orig, new)
    assert y.dtype == np.float32 and abs(len(y) - n * new / orig) <= 1
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / new)
    assert np.abs(y - ref)[200:-200].max() < 1e-3  # edges: the filter's start-up


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    """Downsampling 44.1 -> 32 kHz: a 17-kHz tone is above the new Nyquist and must vanish, not fold
    back to 15 kHz (torchaudio's default kernel let it through at -11 dB)."""
    t = np.arange(44100) / 44100
    y = A.resample(np.sin(2 * np.pi * 17000 * t).astype(np.float32), 44100, 32000)[2000:-2000]
    assert 20 * np.log10(np.sqrt(2 * np.mean(y.astype(np.float64) ** 2))) < -100


def test_resample_is_deterministic_and_keeps_float32() -> None:
    x = np.random.default_rng(0).standard_normal(30011).astype(np.float32)
    a, b = A.resample(x, 48000, 11127), A.resample(x.copy(), 48000, 11127)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    assert A.resample(x, 16000, 16000) is x
    with pytest.raises(TypeError, match="float32"):  # one engine: a float64 input is not quietly converted
        A.resample(x.astype(np.float64), 48000, 11127)


def test_prepare_clip_segment_and_checks() -> None:
    x = tone(1.0, 16000, 1)
    data = encoded(x, 16000)
    full, _ = sf.read(io.BytesIO(data), dtype="float32")
    seg = A.prepare_clip(data, 8000, 12000, 16000, 0.1)
    np.testing.assert_array_equal(seg.pcm, A.to_pcm16(full[8000:12000]))
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(A.AudioReject) as e:
        A.prepare_clip(encoded(bad, 16000, subtype="FLOAT"), 0, 16000, 16000, 0.1)
    assert e.value.reason == "nan_inf"
    with pytest.raises(A.AudioReject) as e:
        A.prepare_clip(data, 0, 800, 16000, 0.1)
    assert e.value.reason == "too_short"
    quiet = A.prepare_clip(encoded(np.full((4000, 1), 1e-4, np.float32), 16000), 0, 4000, 16000, 0.1)
    assert quiet.silent


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=400), st.sampled_from(["flac", "wav"]))
def test_encode_decode_audio_exact(values: list[int], fmt: str) -> None:
    pcm = np.array(values, np.int16)
    x, sr = decode_audio(encode_audio(pcm, 16000, fmt), fmt)
    assert sr == 16000 and x.dtype == np.float32
    np.testing.assert_array_equal(A.to_pcm16(x), pcm)


def test_iter_shard_reads_what_was_written(tmp_path) -> None:
    pcms = [np.arange(n, dtype=np.int16) * 7 for n in (5, 9, 3)]
    clips = [
        (f"k{i}", encode_audio(p, 8000, "flac" if i % 2 else "wav"), "flac" if i % 2 else "wav", {"i": i})
        for i, p in enumerate(pcms)
    ]
    path = tmp_path / "s.tar"
    write_shard_file(path, clips)
    got = list(iter_shard(path))
    assert [c.key for c in got] == ["k0", "k1", "k2"] and [c.meta for c in got] == [
        {"i": 0},
        {"i": 1},
        {"i": 2},
    ]
    for c, p in zip(got, pcms, strict=True):
        assert c.sample_rate == 8000
        np.testing.assert_array_equal(A.to_pcm16(c.audio), p)
    again = tmp_path / "again.tar"
    write_shard_file(again, clips)
    assert again.read_bytes() == path.read_bytes()


def test_packing_needs_no_torch(tmp_path) -> None:
    """libsoxr resamples: a pack (here 22.05 -> 32 kHz) in a fresh interpreter never imports torch,
    so pack's spawned workers start in a fraction of the time."""
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", tone(0.5, 22050, 2), 22050)
    code = (
        "import sys; from ssondo_cache.pack import pack; "
        f"r = pack([{str(tmp_path / 'in')!r}], {str(tmp_path / 'work')!r}, progress=False); "
        "assert r.n_packed == 1, r; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("channels", [1, 2, 3, 7, 8, 9])
def test_to_mono_is_the_float32_channel_mean(channels: int) -> None:
    """Exact for mono and stereo 24-bit samples (the mean of two needs 25 bits, then halving is exact);
    within float32 rounding of the float64 mean for more channels; float32 out, no float64 copy."""
    rng = np.random.default_rng(channels)
    x = rng.integers(-(2**23), 2**23, (5001, channels)).astype(np.float32) / np.float32(2**23)
    mono, mean = A.to_mono(x), x.astype(np.float64).mean(axis=1)
    assert mono.dtype == np.float32 and mono.shape == (5001,)
    if channels <= 2:
        assert mono.tobytes() == mean.astype(np.float32).tobytes()
    else:
        np.testing.assert_allclose(mono, mean, rtol=0, atol=channels * 2.0**-23)
    if channels == 1:
        assert np.shares_memory(mono, x)  # a view, not a copy


def test_opposite_infinities_in_two_channels_are_refused() -> None:
    x = tone(0.2, 16000, 2)
    x[5, 0], x[5, 1], x[9, 0] = np.inf, -np.inf, np.inf
    with pytest.raises(A.AudioReject) as e:
        A.prepare_clip(encoded(x, 16000, subtype="FLOAT"), 0, len(x), 16000, 0.1)
    assert e.value.reason == "nan_inf" and e.value.detail.startswith("3 ")


@settings(deadline=None, max_examples=60)  # a loaded machine makes a first call slow
@given(st.lists(st.integers(-32768, 32767), max_size=300), st.sampled_from([8000, 11127, 32000, 44100]))
def test_wav_members_are_the_bytes_libsndfile_writes_without_calling_it(values: list[int], sr: int) -> None:
    """Issue 17: packed WAV members are written directly (soundfile writes through a Python callback
    per block: 0.6 ms of a 10-s clip), byte-identical to libsndfile's file, so WAV shards keep their bytes."""
    from unittest import mock

    from ssondo_cache import shards

    pcm = np.array(values, np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="WAV", subtype="PCM_16")
    with mock.patch.object(shards.sf, "write", side_effect=AssertionError("libsndfile called")):
        assert encode_audio(pcm, sr, "wav") == buf.getvalue()
