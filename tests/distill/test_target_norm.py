"""Target normalisation: statistics from the training clips only, training and validation in the
normalised space, the statistics recorded in the student checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_cache.cache_index import open_cache
from ssondo_distill.checkpoint import load_student, read_meta
from ssondo_distill.sampling import split_holdout
from ssondo_distill.students import build_student
from ssondo_distill.trainer import train
from ssondo_distill.training_data import open_training_data, target_statistics
from tests.distill.test_stream import make_corpus, write_cache
from tests.distill.test_trainer import CACHE, tiny_cfg


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("target-norm")
    w = make_corpus(root, n_clips=24, shard_size=4, dim=8)
    write_cache(w, "wide", 16, 4)
    return w


def test_statistics_are_those_of_the_training_clips(work):
    data = open_training_data(work, CACHE, "random", "clip", 0.5)
    train_table, val_pos = split_holdout(data.table, 6, seed=1)
    positions = np.searchsorted(data.table.rows, train_table.rows)
    mean, std = target_statistics(data, positions)
    clip = open_cache(work, CACHE).read_clip(0, len(data.table)).astype(np.float64)
    expected = clip[train_table.rows]
    np.testing.assert_allclose(mean, expected.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, np.where(expected.std(0) > 1e-6, expected.std(0), 1.0), rtol=1e-6)
    assert not np.allclose(mean, clip.mean(0))  # the held-out clips are left out


def test_window_targets_are_standardised_with_window_statistics(work):
    data = open_training_data(work, CACHE, "random", "window", 0.5)
    train_table, _ = split_holdout(data.table, 6, seed=1)
    mean, std = target_statistics(data, np.searchsorted(data.table.rows, train_table.rows))
    emb, n_windows = open_cache(work, CACHE).read_windows(0, len(data.table))
    # by hand: each training clip's valid windows, every clip weighing one
    per_clip = [emb[r, : n_windows[r]].astype(np.float64) for r in train_table.rows]
    expected_mean = np.mean([w.mean(0) for w in per_clip], axis=0)
    expected_var = np.mean([np.square(w).mean(0) for w in per_clip], axis=0) - np.square(expected_mean)
    expected_std = np.sqrt(np.maximum(expected_var, 0.0))
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, np.where(expected_std > 1e-6, expected_std, 1.0), rtol=1e-6)
    _, clip_std = target_statistics(
        open_training_data(work, CACHE, "random", "clip", 0.5),
        np.searchsorted(data.table.rows, train_table.rows),
    )
    assert not np.allclose(std, clip_std)  # windows spread otherwise than clip means


def test_training_with_centred_targets_records_them_and_validates_raw(work, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(work, tmp_path / "run", target_norm="center", epochs=1, mixup_alpha=0.0)
    result = train(cfg, progress=False)
    norm = read_meta(result.student_path)["target_norm"]
    assert (
        norm["kind"] == "center"
        and len(norm["mean"]) == open_cache(work, CACHE).embed_dim
        and set(norm["std"]) == {1.0}
    )
    # validation in the centred space, where predicting the mean target scores exactly 1
    assert result.val_mean_baseline == 1.0 and 0.0 <= result.val_cosine_distance <= 2.0
    with pytest.raises(Exception, match="target_norm"):
        tiny_cfg(work, tmp_path / "bad", target_norm="whiten")


def test_bn_momentum_reaches_every_batch_norm(work):
    from ssondo_distill.step import build_parts

    cfg = tiny_cfg(work, work / "unused", bn_momentum=0.2)
    parts = build_parts(cfg, 8, 8000, torch.device("cpu"))
    momenta = {m.momentum for m in parts.student.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.2}
    with pytest.raises(Exception, match="bn_momentum"):
        tiny_cfg(work, work / "unused", bn_momentum=0.0)


def test_standardised_run_saves_a_teacher_space_projection(work, tmp_path):
    """student.pt of a target_norm: standardize run outputs std * y + mean, y the trained
    student's output in the normalised space (its last checkpoint holds those raw weights)."""
    torch.set_num_threads(1)
    cfg = tiny_cfg(work, tmp_path / "run", target_norm="standardize", epochs=1, mixup_alpha=0.0)
    result = train(cfg, progress=False)
    model, meta = load_student(result.student_path)
    norm = meta["target_norm"]
    assert norm["kind"] == "standardize" and "target_norm" not in meta["extra"]
    raw = build_student(cfg.student, 8, **cfg.student_options).eval()
    last = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1]
    raw.load_state_dict(torch.load(last, weights_only=True)["model"])
    audio = torch.randn(3, 4000)
    with torch.no_grad():
        y = raw(model.frontend(audio)).double()
        expected = (torch.tensor(norm["std"]) * y + torch.tensor(norm["mean"])).float()
        torch.testing.assert_close(model(audio), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
