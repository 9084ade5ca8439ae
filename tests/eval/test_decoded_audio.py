"""Task clips decoded once per sample rate for all the models of a run, and the eval's per-model lines."""

import logging
import os

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from ssondo_cache import audio as A
from ssondo_eval.decoded_audio import DecodedAudio
from ssondo_eval.embedders import LogMelStatsEmbedder
from ssondo_eval.evaluate import evaluate, summary_line
from ssondo_eval.tasks import audio as task_audio
from ssondo_eval.tasks.audio import read_audio
from tests.eval.test_cli_eval import FAST as CLI_FAST
from tests.eval.test_cli_eval import task_csv
from tests.eval.test_evaluate import FAST, tone_task


def count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = task_audio.sf.read

    def read(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(task_audio.sf, "read", read)
    return calls


def test_each_file_is_decoded_once_per_rate_for_all_models(tmp_path, monkeypatch):
    task = tone_task(tmp_path, sr=22050)  # 16 clips at a rate no model runs at
    models = [LogMelStatsEmbedder(n_mels=16), LogMelStatsEmbedder(n_mels=24), LogMelStatsEmbedder(32000, 16)]
    plain = [m.embed_task(task, progress=False)[0] for m in models]  # no cache: read_audio per model
    calls = count_decodes(monkeypatch)
    report = evaluate(models, [task], tmp_path / "r", probe_config=FAST, progress=False, bootstrap=100)
    assert sorted(calls) == sorted(2 * [str(i.path) for i in task.items])  # 16 kHz once, 32 kHz once
    assert {p.name for p in (tmp_path / "r" / "decoded").iterdir()} == {"sr16000", "sr32000"}
    for m, X in zip(models, plain, strict=True):  # the same embeddings as without the cache
        np.testing.assert_array_equal(
            np.load(next((tmp_path / "r" / "embeddings" / m.cache_id).glob("*.npy"))), X
        )
    assert len(report["models"]) == 3


def test_changed_file_is_decoded_again(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    sf.write(path, np.full(4000, 0.25, np.float32), 11127)
    cache = DecodedAudio(tmp_path / "decoded")
    first = cache.read(path, 16000, 0.5)
    np.testing.assert_array_equal(first, read_audio(path, 16000, 0.5))
    calls = count_decodes(monkeypatch)
    np.testing.assert_array_equal(cache.read(path, 16000, 0.5), first)
    assert (cache.hits, cache.misses, calls) == (1, 1, [])
    sf.write(path, np.full(4000, -0.5, np.float32), 11127)  # same size, new samples
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock may not see the rewrite
    again = cache.read(path, 16000, 0.5)
    assert cache.misses == 2 and len(calls) == 1
    np.testing.assert_array_equal(again, read_audio(path, 16000, 0.5))
    assert again[2000] < 0 < first[2000]


def test_unreadable_entry_is_decoded_again_and_replaced(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.full(3000, 0.25, np.float32), 8000)
    cache = DecodedAudio(tmp_path / "decoded")
    want = cache.read(path, 16000)
    entry = cache.entry(path, 16000, None)
    entry.write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(cache.read(path, 16000), want)
    assert cache.misses == 2
    np.testing.assert_array_equal(np.load(entry), want)


def test_task_clips_are_mixed_down_and_resampled_as_packed_clips(tmp_path):
    """A stereo 44.1-kHz file holding 1 kHz (kept) and 17 kHz (above 32 kHz's Nyquist: removed)."""
    sr = 44100
    t = np.arange(sr) / sr
    low, high = 0.3 * np.sin(2 * np.pi * 1000 * t), 0.3 * np.sin(2 * np.pi * 17000 * t)
    path = tmp_path / "s.flac"
    sf.write(path, np.stack([low + high, low - 0.5 * high], axis=1).astype(np.float32), sr, subtype="PCM_24")
    got = read_audio(path, 32000)
    packed = A.from_pcm16(A.prepare_clip(str(path), 0, sr, 32000, 0.1).pcm)
    np.testing.assert_allclose(got, packed, atol=0.5 / 32768 + 1e-6)
    ref = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(len(got)) / 32000)
    assert np.abs(got - ref)[500:-500].max() < 1e-3  # no 17-kHz alias folded back to 15 kHz


def test_one_line_per_finished_model_and_embedding_times_in_the_summary(tmp_path, caplog):
    task = tone_task(tmp_path)
    models = [LogMelStatsEmbedder(n_mels=16), LogMelStatsEmbedder(n_mels=24)]
    with caplog.at_level(logging.INFO, logger="ssondo.eval"):
        report = evaluate(
            models,
            [task, tone_task(tmp_path, "tones2")],
            tmp_path / "r",
            probe_config=FAST,
            progress=False,
            bootstrap=100,
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "ssondo.eval"]
    assert len(lines) == 2 and all(" done, 2 task(s), embedding " in line for line in lines)
    line = summary_line(report, tmp_path / "r")
    for m in report["models"]:
        secs = sum(s["embedding"]["compute"]["seconds"] for s in report["scores"][m["label"]].values())
        assert f"{m['label']} {secs:.1f}" in line


def test_cli_no_progress_prints_the_models_and_their_times(tmp_path, caplog):
    from pipeline.cli import main

    path = task_csv(tmp_path)
    with caplog.at_level(logging.INFO, logger="ssondo.eval"):
        result = CliRunner().invoke(
            main,
            [
                "eval",
                "--baseline",
                "logmel",
                "--task",
                f"csv:{path}",
                "--out",
                str(tmp_path / "r"),
                *CLI_FAST,
            ],
        )
    assert result.exit_code == 0, result.output
    assert [r.getMessage().split(" done")[0] for r in caplog.records if r.name == "ssondo.eval"] == [
        "eval: log-mel stats"
    ]
    assert "embedding s: log-mel stats " in result.output
