"""The eval's counted work: model forwards per task, probe passes, memory of the cached-teacher read.

Each test counts what the cheaper path does (calls, epochs, bytes held) and checks that its results
are those of the plain computation."""

import numpy as np
import pytest
import soundfile as sf
import torch

from ssondo_eval.embedders import TeacherEmbedder
from ssondo_eval.tasks.base import Task, TaskItem

TINY = "py:tests.helpers.tiny_teacher:make"


def alternating_task(tmp_path, n=16, sr=16000):
    """Clips whose lengths alternate (0.5 s, 0.4 s, 0.3 s, ...), as a task CSV sorted by path gives them."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        x = 0.1 * rng.normal(size=int((0.5 - 0.1 * (i % 3)) * sr)).astype(np.float32)
        p = tmp_path / f"c{i:02d}.wav"
        sf.write(p, x, sr)
        items.append(TaskItem(path=p, labels=("ab"[i % 2],), split="train"))
    return Task(name="alt", items=items, classes=["a", "b"], multilabel=False, clip_seconds=None)


def test_windows_of_alternating_lengths_run_in_full_batches(tmp_path):
    task = alternating_task(tmp_path)
    teacher = TeacherEmbedder(TINY, ts="full", dim=8, batch_size=32)
    calls = []
    model = teacher.window_embedder.forward

    def counted(x):
        calls.append(x.shape)
        return model(x)

    teacher.window_embedder.forward = counted
    X, stats = teacher.embed_task(task, progress=False)
    assert len(calls) == 3 and stats.n_forwards == 3  # one per length (one forward per clip before)
    assert sorted(c[0] for c in calls) == [5, 5, 6]
    with torch.inference_mode():  # each clip alone: the plain computation
        ref = np.stack(
            [
                model(torch.from_numpy(sf.read(it.path, dtype="float32")[0])[None]).mean(dim=1)[0].numpy()
                for it in task.items
            ]
        )
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)


class FakeStore:
    """A complete cache of ``n_shards`` x ``per`` rows: clip row r is a fresh array from r alone."""

    def __init__(self, n_shards: int, per: int, dim: int) -> None:
        self.n_shards, self.per, self.dim = n_shards, per, dim
        self.attrs = {"teacher_id": "fake-000000000000", "teacher": "fake", "ts": None, "hop": None}
        self.name, self.path = "fake", "fake.zarr"

    def is_complete(self) -> bool:
        return True

    def shard_rows(self, shard: int) -> tuple[int, int]:
        return shard * self.per, (shard + 1) * self.per

    def read_clip(self, a: int, b: int) -> np.ndarray:
        rows = np.arange(a, b, dtype=np.float64)[:, None]
        return np.cos(rows * 0.37 + np.arange(self.dim) * 0.11).astype(np.float32)  # (b - a, D)


def cached_corpus(tmp_path, monkeypatch, n_shards, per, dim):
    """WORK with a clips manifest (key, row, shard, source, duration_s) and FakeStore as its cache;
    every third source file is packed as two clips."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import ssondo_cache.cache_index
    from ssondo_eval.cached_teacher import CachedTeacherEmbedder

    n = n_shards * per
    rows = np.arange(n)
    files = [tmp_path / f"src{r - (r % 3 == 1):06d}.wav" for r in rows]  # rows 3k and 3k+1 share a file
    (tmp_path / "manifests").mkdir()
    table = {
        "key": [f"k{r:06d}" for r in rows],
        "row": rows,
        "shard": rows // per,
        "source": [str(f) for f in files],
        "duration_s": 1.0 + (rows % 7) * 0.5,
    }
    pq.write_table(pa.table(table), tmp_path / "manifests" / "clips.parquet", row_group_size=per)
    store = FakeStore(n_shards, per, dim)
    monkeypatch.setattr(ssondo_cache.cache_index, "open_cache", lambda work, cache: store)
    return CachedTeacherEmbedder(tmp_path, "fake"), store, table


def test_cached_teacher_memory_follows_the_task_not_the_corpus(tmp_path, monkeypatch):
    import tracemalloc

    n_shards, per, dim = 80, 25, 512
    emb, store, table = cached_corpus(tmp_path, monkeypatch, n_shards, per, dim)
    picked = np.arange(0, n_shards * per, 40)  # one task item in every 40 rows: 50 of the 80 shards
    items = [TaskItem(None, ("a",), "train", key=table["key"][r]) for r in picked[picked % 3 != 0]]
    by_file = [r for r in picked if r % 3 == 0]  # unknown key: matched by its file (packed as 2 clips)
    items += [TaskItem(tmp_path / f"src{r:06d}.wav", ("b",), "test", key="not-packed") for r in by_file]
    task = Task("cached", items, ["a", "b"], multilabel=False, clip_seconds=None)
    emb.embed_task(task, progress=False)  # untraced: the lazy imports (pyarrow.compute ...) happen here
    tracemalloc.start()
    X, _ = emb.embed_task(task, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    corpus_bytes = n_shards * per * dim * 4  # the cache's clip array as float32
    assert peak < corpus_bytes / 4, f"peak {peak} B for a corpus of {corpus_bytes} B"
    full = store.read_clip(0, n_shards * per)
    dur = np.asarray(table["duration_s"])
    ref = [full[r] for r in picked if r % 3] + [
        np.average([full[r], full[r + 1]], axis=0, weights=[dur[r], dur[r + 1]]).astype(np.float32)
        for r in by_file
    ]
    np.testing.assert_array_equal(X, np.stack(ref))  # the old arithmetic, bit for bit


def probe_data(n=420, dim=12, classes=3, seed=0):
    """Three Gaussian classes, overlapping enough that the probe trains for a while."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim))
    X = (centres[y] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32)
    return X, y.astype(np.int64)


@pytest.mark.parametrize("multilabel", [False, True])
def test_stacked_probes_are_the_probes_trained_one_by_one(multilabel):
    from ssondo_eval.probe import ProbeConfig, fit_and_score, fit_many

    X, y = probe_data()
    if multilabel:  # two labels per row at most, some entries not annotated (NaN)
        y = np.stack([y == 0, y == 1, (y == 2) | (X[:, 0] > 0)], axis=1).astype(np.float32)
        y[np.random.default_rng(1).random(y.shape) < 0.05] = np.nan
    rows = (X[:300], y[:300], X[300:360], y[300:360], X[360:], y[360:])  # 300 rows: a full + a part batch
    config = ProbeConfig(max_epochs=40, patience=6)
    runs = [(0, 3e-4), (0, 1e-3), (0, 3e-3), (1, 1e-3), (2, 1e-3)]
    opts = {"multilabel": multilabel, "n_classes": 3, "config": config}
    together = fit_many(*rows, **opts, runs=runs)
    for (seed, lr), got in zip(runs, together, strict=True):
        ref = fit_and_score(*rows, **opts, seed=seed, lr=lr)
        assert (got.best_epoch, got.epochs_run, got.lr) == (ref.best_epoch, ref.epochs_run, ref.lr)
        np.testing.assert_allclose(
            [got.val_score, got.test_score], [ref.val_score, ref.test_score], rtol=1e-6
        )
        np.testing.assert_allclose(got.test_pred, ref.test_pred, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.val_loss, ref.val_loss, rtol=1e-5)


def test_probe_grid_and_seeds_take_two_passes_over_the_data(monkeypatch):
    from ssondo_eval.probe import ProbeConfig, fit_and_score, probe_folds

    X, y = probe_data()
    folds = [(np.arange(300), np.arange(300, 360), np.arange(360, 420))]
    config = ProbeConfig(max_epochs=30, patience=5)  # 3 learning rates x 3 seeds
    steps = []
    backward = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda t, *a, **k: (steps.append(1), backward(t, *a, **k)))
    result = probe_folds(X, y, folds, n_classes=3, config=config)
    monkeypatch.undo()
    rows = (X[:300], y[:300], X[300:360], y[300:360], X[360:], y[360:])
    opts = {"multilabel": False, "n_classes": 3, "config": config}
    grid = [fit_and_score(*rows, **opts, seed=0, lr=lr) for lr in config.lr]
    chosen = result.splits[0][0].lr
    seeds = [fit_and_score(*rows, **opts, seed=s, lr=chosen) for s in (1, 2)]
    per_epoch = 2  # 300 training rows in batches of 200
    # pass 1: the grid with seed 0, as long as its longest probe; pass 2: seeds 1 and 2 together
    assert len(steps) == per_epoch * (max(f.epochs_run for f in grid) + max(f.epochs_run for f in seeds))
    assert len(steps) < per_epoch * sum(f.epochs_run for f in grid + seeds)  # one probe at a time
