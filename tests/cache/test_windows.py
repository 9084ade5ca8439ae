"""Temporal-support window arithmetic: properties that must hold for any clip length, TS and hop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssondo_cache.windows import (
    TemporalSupport,
    cut_windows,
    format_seconds,
    n_windows,
    n_windows_array,
    padded_length,
    parse_seconds,
    resampled_length,
    window_starts,
)


@st.composite
def clip_and_windows(draw):
    win = draw(st.integers(1, 400))
    hop = draw(st.integers(1, win))  # hop <= TS is enforced by TemporalSupport.parse
    length = draw(st.integers(0, 3000))
    return length, win, hop


@given(clip_and_windows())
@settings(max_examples=300, deadline=None)
def test_windows_cover_the_clip_minimally(args):
    length, win, hop = args
    n = n_windows(length, win, hop)
    starts = window_starts(length, win, hop)
    assert n >= 1 and len(starts) == n
    # every sample of the clip lies in some window
    assert starts[-1] + win >= length
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + win] = True
    assert covered.all()
    # minimal: without the last window some sample is left out (unless it is the only window)
    if n > 1:
        assert starts[-2] + win < length
        # and no window is padding only: each starts inside the clip
        assert starts[-1] < length
    # padding covers exactly the last window's overhang, less than one window
    pad = padded_length(length, win, hop) - length
    assert 0 <= pad < win or (length == 0 and pad == win)


@given(clip_and_windows())
@settings(max_examples=150, deadline=None)
def test_cut_windows_are_slices_of_the_zero_padded_clip(args):
    length, win, hop = args
    audio = torch.arange(1, length + 1, dtype=torch.float32)  # nonzero samples: padding is visible
    windows = cut_windows(audio, win, hop)
    n = n_windows(length, win, hop)
    assert windows.shape == (n, win)
    for i, s in enumerate(window_starts(length, win, hop)):
        real = audio[s : s + win]
        assert torch.equal(windows[i, : len(real)], real)
        assert torch.count_nonzero(windows[i, len(real) :]) == 0  # zero padding after the end


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=50), st.integers(1, 300), st.data())
@settings(max_examples=100, deadline=None)
def test_vectorised_count_matches_scalar(lengths, win, data):
    hop = data.draw(st.integers(1, win))
    got = n_windows_array(np.array(lengths), win, hop)
    assert got.dtype == np.int32
    assert got.tolist() == [n_windows(n, win, hop) for n in lengths]
    assert n_windows_array(np.array(lengths), None, None).tolist() == [1] * len(lengths)


@given(st.integers(0, 10_000), st.integers(1, 100))
def test_short_clip_gives_one_window(length, extra):
    assert n_windows(length, length + extra, 1) == 1
    assert n_windows(length, None, None) == 1


def test_known_counts():
    sr = 16000
    ts = TemporalSupport.parse("4")
    win, hop = ts.in_samples(sr)
    assert n_windows(10 * sr, win, hop) == 3  # 0-4, 4-8, 8-12 (last padded)
    assert n_windows(8 * sr, win, hop) == 2
    assert n_windows(8 * sr + 1, win, hop) == 3
    win, hop = TemporalSupport.parse(2, 1).in_samples(sr)
    assert n_windows(10 * sr, win, hop) == 9  # starts 0..8; 8-10 reaches the end


@given(
    st.integers(0, 10**7),
    st.sampled_from([8000, 16000, 22050, 32000, 44100, 48000]),
    st.sampled_from([8000, 16000, 22050, 32000, 44100, 48000]),
)
def test_resampled_length_matches_ceil(n, a, b):
    got = resampled_length(n, a, b)
    assert got * a >= n * b and (got - 1) * a < n * b or (n == 0 and got == 0)


def test_resampled_length_agrees_with_torchaudio():
    import torchaudio.functional as AF

    for n in (1, 999, 32000, 32001, 44100 * 3 + 7):
        for a, b in ((32000, 16000), (44100, 16000), (16000, 32000)):
            out = AF.resample(torch.zeros(n), a, b)
            assert out.shape[-1] == resampled_length(n, a, b)


@given(st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False))
def test_format_seconds_round_trips(x):
    text = format_seconds(x)
    assert float(text) == x
    assert "/" not in text and " " not in text
    assert not text.endswith(".0")


def test_format_and_names():
    assert format_seconds(1.0) == "1"
    assert format_seconds(0.5) == "0.5"
    assert format_seconds(None) == "full"
    assert TemporalSupport.parse("1").name == "ts1-hop1"
    assert TemporalSupport.parse(2, 0.5).name == "ts2-hop0.5"
    assert TemporalSupport.parse("full").name == "tsfull-hopfull"


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "abc", ""])
def test_bad_ts_is_refused(bad):
    with pytest.raises(ValueError, match="positive number"):
        parse_seconds(bad)


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="skip audio"):
        TemporalSupport.parse(1, 2)
    with pytest.raises(ValueError, match="full"):
        TemporalSupport.parse("full", 1)
    with pytest.raises(ValueError, match="less than one sample"):
        TemporalSupport.parse(1e-6).in_samples(16000)
    assert parse_seconds("FULL") is None
    assert TemporalSupport.parse("full").in_samples(16000) is None


def test_cut_windows_batches_like_one_clip_at_a_time():
    audio = torch.randn(3, 1000)
    batched = cut_windows(audio, 300, 200)
    assert batched.shape == (3, n_windows(1000, 300, 200), 300)
    for i in range(3):
        assert torch.equal(batched[i], cut_windows(audio[i], 300, 200))
    assert cut_windows(audio, None, None).shape == (3, 1, 1000)
