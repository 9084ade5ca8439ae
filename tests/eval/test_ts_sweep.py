import json

import numpy as np
import pytest

from ssondo_eval.probe import ProbeConfig
from ssondo_eval.ts_sweep import parse_ts_list, ts_sweep
from tests.eval.test_evaluate import TINY, tone_task

FAST = ProbeConfig(max_epochs=40, patience=8, seeds=(0, 1))


def test_parse_ts_list():
    assert parse_ts_list("0.5, 1,2,full") == [0.5, 1.0, 2.0, None]
    with pytest.raises(ValueError):
        parse_ts_list("0.5,-1")
    with pytest.raises(ValueError):
        parse_ts_list("")


def test_sweep_reports_score_count_and_cost_per_ts(tmp_path):
    task = tone_task(tmp_path)  # 16 clips of 0.5 s
    out = tmp_path / "sweep"
    report = ts_sweep(
        None, TINY, [0.1, 0.25, None], [task], out, device="cpu", probe_config=FAST, progress=False, dim=8
    )
    rows = {r["ts_name"]: r for r in report["rows"]}
    assert set(rows) == {"ts0.1-hop0.1", "ts0.25-hop0.25", "tsfull-hopfull"}
    # window embeddings per clip: 0.5 s / 0.1 s = 5, / 0.25 s = 2, full clip = 1
    assert [rows[k]["n_embeddings"] for k in ("ts0.1-hop0.1", "ts0.25-hop0.25", "tsfull-hopfull")] == [
        80,
        32,
        16,
    ]
    for r in rows.values():
        assert r["source"] == "live" and r["seconds"] > 0 and r["peak_memory_bytes"] > 0
        assert 0.0 <= r["mean"] <= 1.0 and len(r["scores"]) == 2
    saved = json.loads((out / "ts_sweep.json").read_text())
    assert saved["rows"] == report["rows"]
    md = (out / "ts_sweep.md").read_text()
    assert "| 0.1 | 0.1 | tones |" in md and "| full | full | tones |" in md
    assert (out / "ts_sweep.png").read_bytes()[:4] == b"\x89PNG"
    # re-running the same sweep leaves the finished report untouched
    stamp = (out / "ts_sweep.json").stat().st_mtime_ns
    ts_sweep(
        None, TINY, [0.1, 0.25, None], [task], out, device="cpu", probe_config=FAST, progress=False, dim=8
    )
    assert (out / "ts_sweep.json").stat().st_mtime_ns == stamp
    # a different sweep reuses the embeddings (and the compute measured the first time)
    again = ts_sweep(None, TINY, [0.25], [task], out, device="cpu", probe_config=FAST, progress=False, dim=8)
    assert again["rows"][0]["seconds"] == rows["ts0.25-hop0.25"]["seconds"]


def test_sweep_reads_an_existing_cache_for_the_packed_corpus(tmp_path):
    from ssondo_cache.extract import extract
    from ssondo_cache.pack import pack
    from ssondo_eval.cached_teacher import CachedTeacherEmbedder
    from ssondo_eval.embedders import TeacherEmbedder

    task = tone_task(tmp_path)
    work = tmp_path / "work"
    pack([tmp_path / "audio"], work, sample_rate=16000, fmt="wav", progress=False, min_duration=0.1)
    extract(work, TINY, ts=0.25, device="cpu", workers=0, progress=False, teacher_options={"dim": 8})
    report = ts_sweep(
        work,
        TINY,
        [0.25, 0.5],
        [task],
        tmp_path / "sweep",
        device="cpu",
        probe_config=FAST,
        progress=False,
        dim=8,
    )
    src = {r["ts_name"]: r["source"] for r in report["rows"]}
    assert src == {"ts0.25-hop0.25": "cache", "ts0.5-hop0.5": "live"}
    name = next(p for p in (work / "cache").iterdir()).name + "/ts0.25-hop0.25"
    X_cache, _ = CachedTeacherEmbedder(work, name).embed_task(task, progress=False)
    X_live, _ = TeacherEmbedder(TINY, ts=0.25, dim=8).embed_task(task, progress=False)
    # same audio, same windows: the cache (float16) and the live teacher agree
    np.testing.assert_allclose(X_cache, X_live, atol=2e-3)
