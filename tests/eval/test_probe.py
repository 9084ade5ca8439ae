import math

import numpy as np
import pytest

from ssondo_eval.probe import ProbeConfig, carve_validation, fit_and_score, probe_folds, run_probe
from ssondo_eval.probe_scores import average_precision, macro_map, mean_ci


def blobs(n_per_class: int, n_classes: int, dim: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return X[perm].astype(np.float32), y[perm]


def split3(X, y):
    n = len(y)
    a, b = int(0.6 * n), int(0.8 * n)
    return X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:]


def test_separable_embeddings_score_high():
    X, y = blobs(40, 4, 16, sep=4.0, seed=0)
    res = run_probe(*split3(X, y))
    assert res.metric == "accuracy"
    assert len(res.scores) == 3
    assert res.mean > 0.95
    assert res.ci95 is not None and res.ci95 >= 0


def test_random_embeddings_score_near_chance():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    res = run_probe(*split3(X, y))
    assert res.mean < 0.40  # chance is 0.25; separable data above scores > 0.95


def test_multilabel_separable_vs_random():
    rng = np.random.default_rng(2)
    Y = (rng.random((300, 5)) < 0.3).astype(np.float32)
    X_good = (Y @ rng.normal(size=(5, 12)) * 3 + rng.normal(size=(300, 12))).astype(np.float32)
    X_bad = rng.normal(size=(300, 12)).astype(np.float32)
    good = run_probe(*split3(X_good, Y), multilabel=True)
    bad = run_probe(*split3(X_bad, Y), multilabel=True)
    assert good.metric == "mAP"
    assert good.mean > 0.9
    assert bad.mean < 0.5  # mAP of random scores is about the positive rate (0.3)


def test_mean_ci_matches_t_formula():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, df=2) = 4.302653 (printed tables); std = 1, n = 3
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    mean, half = mean_ci([0.5, 0.7, 0.6, 0.8, 0.9])
    sd = np.std([0.5, 0.7, 0.6, 0.8, 0.9], ddof=1)
    assert half == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert mean_ci([0.4]) == (0.4, None)
    with pytest.raises(ValueError):
        mean_ci([])


def test_average_precision_matches_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(7)
    for _ in range(20):
        truth = (rng.random(40) < 0.3).astype(float)
        truth[0], truth[1] = 1, 0
        score = np.round(rng.random(40), 1)  # many ties
        assert average_precision(truth, score) == pytest.approx(average_precision_score(truth, score))


def test_masked_map_ignores_unannotated_entries():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.2]])
    y = np.array([[1, 0], [1, np.nan], [0, 1], [0, 0]], dtype=np.float32)
    # class 0: perfect ranking -> AP 1; class 1 over rows 0, 2, 3: positive (0.6) ranked first -> AP 1
    assert macro_map(scores, y) == pytest.approx(1.0)
    y_wrong = y.copy()
    y_wrong[1, 1] = 0  # annotated negative with the top score: AP of class 1 drops
    assert macro_map(scores, y_wrong) < 1.0


def test_test_split_never_chooses_anything():
    X, y = blobs(30, 3, 8, sep=1.0, seed=3)
    Xtr, ytr, Xva, yva, Xte, yte = split3(X, y)
    cfg = ProbeConfig(max_epochs=60, patience=10)
    a = fit_and_score(Xtr, ytr, Xva, yva, Xte, yte, multilabel=False, n_classes=3, config=cfg, seed=0)
    rng = np.random.default_rng(0)
    b = fit_and_score(
        Xtr,
        ytr,
        Xva,
        yva,
        rng.normal(size=Xte.shape) * 100,
        rng.permutation(yte),
        multilabel=False,
        n_classes=3,
        config=cfg,
        seed=0,
    )
    assert (a.best_epoch, a.val_score, a.epochs_run) == (b.best_epoch, b.val_score, b.epochs_run)


def test_early_stopping_restores_best_epoch_within_patience():
    X, y = blobs(30, 3, 8, sep=0.5, seed=4)
    cfg = ProbeConfig(max_epochs=200, patience=5, seeds=(0,), lr=(1e-3,))
    res = run_probe(*split3(X, y), config=cfg)
    s = res.splits[0][0]
    assert s.epochs_run <= s.best_epoch + cfg.patience + 1
    assert s.epochs_run < 200


def test_folds_carve_validation_from_train_only():
    X, y = blobs(10, 2, 4, sep=3.0, seed=5)
    train, val = carve_validation(np.arange(15), y, 0.2, seed=0, multilabel=False)
    assert set(train) | set(val) == set(range(15)) and not set(train) & set(val)
    assert set(np.unique(y[val])) == set(np.unique(y[:15]))  # stratified
    folds = [(np.arange(10, 20), None, np.arange(10)), (np.arange(10), None, np.arange(10, 20))]
    res = probe_folds(X, y, folds, config=ProbeConfig(seeds=(0, 1)))
    assert len(res.splits) == 2 and len(res.splits[0]) == 2
    assert res.scores[0] == pytest.approx(np.mean([s.test_score for s in res.splits[0]]))


def test_refuses_nan_embeddings():
    X, y = blobs(10, 2, 4, sep=3.0, seed=6)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_probe(*split3(X, y))


def test_batches_are_min_200_n_rows():
    """EVAR's batch: 450 training rows train in 3 steps per epoch (200, 200, 50); 150 rows in one."""
    import torch

    steps = []

    class Counting(torch.optim.Adam):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    X, y = blobs(250, 2, 4, sep=2.0, seed=7)
    cfg = ProbeConfig(max_epochs=1, seeds=(0,), lr=(1e-3,))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "Adam", Counting)
        fit_and_score(X[:450], y[:450], X[450:], y[450:], X[450:], y[450:], multilabel=False, n_classes=2,
                      config=cfg, seed=0)  # fmt: skip
        assert len(steps) == 3
        fit_and_score(X[:150], y[:150], X[450:], y[450:], X[450:], y[450:], multilabel=False, n_classes=2,
                      config=cfg, seed=0)  # fmt: skip
        assert len(steps) == 4


def test_learning_rate_is_picked_on_validation_and_recorded():
    X, y = blobs(30, 3, 8, sep=0.8, seed=8)
    Xtr, ytr, Xva, yva, Xte, yte = split3(X, y)
    grid = (1e-4, 1e-2, 3e-1)
    cfg = ProbeConfig(max_epochs=30, patience=5, seeds=(0, 1), lr=grid)
    res = run_probe(Xtr, ytr, Xva, yva, Xte, yte, config=cfg)
    # by hand: the first seed's probe at each rate, the best validation score (then lower loss) wins
    tried = [fit_and_score(Xtr, ytr, Xva, yva, Xte, yte, multilabel=False, n_classes=3, config=cfg, seed=0, lr=lr)
             for lr in grid]  # fmt: skip
    best = max(range(3), key=lambda i: (tried[i].val_score, -tried[i].val_loss, -i))
    assert [s.lr for s in res.splits[0]] == [grid[best]] and [s.lr for s in res.splits[1]] == [grid[best]]
    assert res.splits[0][0].test_score == tried[best].test_score
    assert res.to_dict()["lr_chosen"] == [grid[best]]
    assert len({t.val_score for t in tried}) > 1  # the grid matters on this task
    # the test rows never pick it, and the choice is deterministic
    rng = np.random.default_rng(0)
    noisy = run_probe(Xtr, ytr, Xva, yva, rng.normal(size=Xte.shape) * 100, rng.permutation(yte), config=cfg)
    assert (
        noisy.splits[0][0].lr == grid[best]
        and run_probe(Xtr, ytr, Xva, yva, Xte, yte, config=cfg).scores == res.scores
    )
    with pytest.raises(ValueError, match="positive"):
        ProbeConfig(lr=(1e-3, 0.0))
