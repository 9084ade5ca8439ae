"""Paired bootstrap over test items, combined with probe seeds: the uncertainty of every report figure.

A probe score varies for two reasons: which probe seed trained it, and which clips happen to be in the
test set. The seeds' t interval sees only the first; with a few hundred test clips the second is often
the larger. One replicate ``b`` of a task:

1. every fold's test rows are resampled with replacement (``idx_f[b]``, shape (n_f,)), ONCE for all
   systems: the systems are scored on the same resampled clips, so their differences are paired;
2. each system draws one of its probe seeds at random (``seed_of[b, system]``), which carries the
   seed-to-seed spread into the replicate;
3. the system's replicate score is the task metric of that seed's predictions on the resampled rows,
   averaged over folds as the probe itself averages them.

Draw order (what a hand computation repeats with the same generator): the item indices of every fold,
fold by fold, as ``rng.integers(0, n_f, size=(n_boot, n_f))``; then the seed choices as
``rng.integers(0, n_seeds, size=(n_boot, n_systems))``, systems in the order given.
Confidence intervals are percentile intervals of the replicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ssondo_eval.probe_scores import score_predictions

N_BOOT = 1000
CONFIDENCE = 0.95


def paired_bootstrap(
    systems: Mapping[str, Sequence[Sequence[np.ndarray]]],
    test_rows: Sequence[np.ndarray],
    y: np.ndarray,
    multilabel: bool,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Replicate scores (n_boot,) per system, paired over resampled test items (see module doc).

    ``systems``: name -> [seed][fold] per-item test predictions (``probe_scores.prediction``);
    ``test_rows``: per fold, the task rows of its test set (the rows those predictions are in order of);
    ``y``: the task's targets (``Task.targets()``)."""
    if not systems:
        raise ValueError("paired_bootstrap needs at least one system")
    rng = rng if rng is not None else np.random.default_rng(0)
    names = list(systems)
    for name in names:
        preds = systems[name]
        if not preds or any(len(per_seed) != len(test_rows) for per_seed in preds):
            raise ValueError(f"{name}: predictions for {len(test_rows)} fold(s) expected per seed")
        for per_seed in preds:
            for f, pred in enumerate(per_seed):
                if pred is None or len(pred) != len(test_rows[f]):
                    raise ValueError(
                        f"{name}: fold {f} predictions do not cover its {len(test_rows[f])} rows"
                    )
    idx = [rng.integers(0, len(rows), size=(n_boot, len(rows))) for rows in test_rows]  # [f] (n_boot, n_f)
    n_seeds = {name: len(systems[name]) for name in names}
    if len(set(n_seeds.values())) != 1:
        raise ValueError(f"every system needs the same number of probe seeds, got {n_seeds}")
    seed_of = rng.integers(0, n_seeds[names[0]], size=(n_boot, len(names)))  # (n_boot, n_systems)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        per_fold = []
        for f, rows in enumerate(test_rows):
            truth = y[rows]
            if multilabel:
                per_fold.append(
                    [
                        score_predictions(systems[name][seed_of[b, j]][f][idx[f][b]], truth[idx[f][b]], True)
                        for b in range(n_boot)
                    ]
                )
            else:  # accuracy: one gather over a (n_seeds, n_f) table of hits
                hits = np.stack([np.asarray(per_seed[f]) == truth for per_seed in systems[name]])
                per_fold.append(hits[seed_of[:, j][:, None], idx[f]].mean(axis=1))
        out[name] = np.mean(np.asarray(per_fold, dtype=np.float64), axis=0)
    return out


def percentile_ci(
    point: float, replicates: np.ndarray, confidence: float = CONFIDENCE
) -> dict[str, float | None]:
    """{value, low, high}: the point estimate and the percentile interval of the finite replicates
    (a replicate whose ratio is undefined, NaN, is left out; no finite one gives low = high = None)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    value = None if point is None or not np.isfinite(point) else float(point)
    if r.size == 0:
        return {"value": value, "low": None, "high": None}
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(r, [tail, 100 - tail])
    return {"value": value, "low": float(low), "high": float(high)}


def excludes_zero_above(interval: Mapping[str, float | None]) -> bool:
    """True when the whole interval lies above 0 (the difference is positive beyond its CI)."""
    low = interval.get("low")
    return low is not None and low > 0
