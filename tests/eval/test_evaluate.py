"""The report: results.json / results.md / results.png from real embedders on a tiny real-audio task."""

import json

import numpy as np
import pytest
import soundfile as sf

from ssondo_eval.embedders import ComputeStats, Embedder, LogMelStatsEmbedder, TeacherEmbedder, embed_task
from ssondo_eval.evaluate import evaluate
from ssondo_eval.probe import ProbeConfig
from ssondo_eval.tasks.base import Task, TaskItem

TINY = "py:tests.helpers.tiny_teacher:make"
FAST = ProbeConfig(max_epochs=60, patience=10)


def tone_task(tmp_path, name="tones", n=8, sr=16000):
    """Two classes of real recorded-like signals: low vs high harmonic tones with noise."""
    rng = np.random.default_rng(0)
    items = []
    for cls, f0 in (("low", 220.0), ("high", 1760.0)):
        for i in range(n):
            t = np.arange(int(0.5 * sr)) / sr
            x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.02 * i) * t) + 0.01 * rng.normal(size=t.size)
            p = tmp_path / "audio" / f"{cls}{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, x.astype(np.float32), sr)
            split = "test" if i < 2 else "valid" if i < 4 else "train"
            items.append(TaskItem(path=p, labels=(cls,), split=split))
    return Task(name=name, items=items, classes=["high", "low"], multilabel=False, clip_seconds=0.5)


class FakeStudent(Embedder):
    """Deterministic 'student': the tiny teacher's embedding plus noise, claiming that teacher."""

    kind = "student"

    def __init__(self, teacher: TeacherEmbedder, noise: float) -> None:
        self.teacher, self.noise = teacher, noise
        self.teacher_id = teacher.teacher_id
        self.name = "student:fake"
        self.cache_id = f"fake-student-{noise}"

    def embed_task(self, task, progress=True):
        X, _ = self.teacher.embed_task(task, progress=False)
        rng = np.random.default_rng(1)
        return X + self.noise * rng.normal(size=X.shape).astype(np.float32), ComputeStats()


def test_embeddings_are_cached_once(tmp_path):
    task = tone_task(tmp_path)
    teacher = TeacherEmbedder(TINY, ts=0.25, dim=8)
    X1, info1 = embed_task(teacher, task, tmp_path / "cache", progress=False)
    assert X1.shape == (16, 8) and info1["compute"]["n_embeddings"] == 16 * 2  # 0.5 s clip / 0.25 s TS
    assert info1["compute"]["peak_memory_bytes"] > 0
    X2, info2 = embed_task(teacher, task, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(X1, X2)
    assert info2["created"] == info1["created"]  # read back, not recomputed


def test_logmel_baseline_shape_and_separation(tmp_path):
    task = tone_task(tmp_path)
    X, stats = LogMelStatsEmbedder(n_mels=32).embed_task(task, progress=False)
    assert X.shape == (16, 64) and np.isfinite(X).all()
    y = task.targets()
    # the mean log-mel of the two classes differs far more than within a class
    assert np.linalg.norm(X[y == 0].mean(0) - X[y == 1].mean(0)) > 3 * X[y == 0].std(0).mean()


def test_report_files_and_retention(tmp_path):
    task = tone_task(tmp_path)
    teacher = TeacherEmbedder(TINY, ts=0.25, dim=8)
    student = FakeStudent(teacher, noise=0.0)
    models = [teacher, student, LogMelStatsEmbedder(n_mels=16)]
    report = evaluate(models, [task], tmp_path / "report", probe_config=FAST, progress=False)
    out = tmp_path / "report"
    data = json.loads((out / "results.json").read_text())
    labels = [m["label"] for m in data["models"]]
    assert labels == ["teacher:tiny", "student:fake", "log-mel stats"]
    t_score = data["scores"]["teacher:tiny"]["tones"]["mean"]
    s_score = data["scores"]["student:fake"]["tones"]["mean"]
    assert len(data["scores"]["teacher:tiny"]["tones"]["scores"]) == 3
    # a student identical to its teacher keeps exactly 100 %
    assert s_score == pytest.approx(t_score)
    assert data["retention"]["student:fake"]["per_task"]["tones"] == pytest.approx(100.0)
    assert data["retention"]["student:fake"]["teacher"] == "teacher:tiny"
    md = (out / "results.md").read_text()
    assert "% of teacher" in md and "log-mel stats" in md and "**Average**" in md
    assert "| tones |" in md or "| tones † |" in md
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    # the average is over informative tasks only: none informative, no average
    expected = pytest.approx(t_score) if report["informative"]["tones"] else None
    assert report["average"]["teacher:tiny"] == expected
    # re-running reads the cached probes: same numbers, and the finished report is left untouched
    stamp = (out / "results.json").stat().st_mtime_ns
    again = evaluate(models, [task], out, probe_config=FAST, progress=False)
    assert again["scores"] == report["scores"]
    assert (out / "results.json").stat().st_mtime_ns == stamp


def test_uninformative_task_is_flagged(tmp_path):
    task = tone_task(tmp_path)

    class Useless(Embedder):
        """A 'teacher' whose embedding is the same for every clip: it can only guess one class."""

        kind, name, cache_id, teacher_id = "teacher", "teacher:const", "const-teacher", "const-0"

        def embed_task(self, task, progress=True):
            return np.ones((len(task.items), 4), dtype=np.float32), ComputeStats()

    data = evaluate(
        [Useless(), LogMelStatsEmbedder(n_mels=16)], [task], tmp_path / "r", probe_config=FAST, progress=False
    )
    assert data["scores"]["teacher:const"]["tones"]["mean"] == pytest.approx(0.5)  # balanced test, one class
    assert data["scores"]["log-mel stats"]["tones"]["mean"] > 0.9
    assert data["informative"]["tones"] is False
    assert "tones †" in (tmp_path / "r" / "results.md").read_text()
