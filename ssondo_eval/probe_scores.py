"""Scores of probe predictions: accuracy, (macro) average precision, and the t interval over seeds.

Kept apart from the probe's training (``ssondo_eval.probe``) because the bootstrap and the ablation
report score predictions without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and half width of the two-sided t confidence interval (None for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    sem = x.std(ddof=1) / math.sqrt(x.size)
    t = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)
    return mean, float(t * sem)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """logits (N, C), y (N,) int -> fraction of argmax hits."""
    return float((logits.argmax(axis=1) == y).mean())


def average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """AP = sum over thresholds of (R_n - R_{n-1}) * P_n, tied scores forming one threshold.

    The same definition as sklearn's ``average_precision_score``, vectorised: the probe scores validation
    mAP every epoch, and sklearn's per-call overhead dominated multi-label probes."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], truth[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each run of equal scores
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_map(scores: np.ndarray, y: np.ndarray) -> float:
    """scores (N, C), y (N, C) in {0,1} with NaN = unannotated -> mean AP over classes.

    A class counts only where its annotated rows hold at least one positive and one negative
    (AP is undefined otherwise).
    """
    aps = []
    for c in range(y.shape[1]):
        known = ~np.isnan(y[:, c])
        truth = y[known, c]
        if truth.size == 0 or truth.min() == truth.max():
            continue
        aps.append(average_precision(truth, scores[known, c]))
    if not aps:
        raise ValueError("no class has both positive and negative annotated examples: mAP is undefined")
    return float(np.mean(aps))


def task_score(logits: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    return macro_map(logits, y) if multilabel else accuracy(logits, y)


def prediction(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """What a test row's score is computed from: its class (argmax) or, multi-label, its C scores."""
    return logits.astype(np.float32) if multilabel else logits.argmax(axis=1).astype(np.int32)


def score_predictions(pred: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    """The task metric from :func:`prediction` output: accuracy of classes, or macro mAP of scores."""
    return macro_map(pred, y) if multilabel else float((pred == y).mean())
