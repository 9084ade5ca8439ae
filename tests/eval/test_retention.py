"""Retention arithmetic, the paired bootstrap and the informative-task rule, against hand computations."""

import math

import numpy as np
import pytest

from ssondo_eval.bootstrap import excludes_zero_above, paired_bootstrap, percentile_ci
from ssondo_eval.retention import (
    gain_retention,
    informative_average,
    score_retention,
    task_figures,
    teacher_gain,
)


def test_retention_formulas_by_hand():
    # teacher 80 %, log-mel 40 %, student 70 %: the student keeps 30 of the teacher's 40 points of gain
    assert gain_retention(0.70, 0.80, 0.40) == pytest.approx(0.75)
    assert score_retention(0.70, 0.80) == pytest.approx(0.875)
    assert gain_retention(0.30, 0.80, 0.40) == pytest.approx(-0.25)  # below log-mel: negative
    assert math.isnan(gain_retention(0.5, 0.4, 0.4))  # no gain to keep: undefined
    assert math.isnan(score_retention(0.5, 0.0))
    # element-wise on replicates, NaN exactly where the teacher does not beat log-mel
    got = gain_retention(np.array([0.7, 0.5, 0.6]), np.array([0.8, 0.4, 0.9]), np.array([0.4, 0.4, 0.3]))
    np.testing.assert_allclose(got, [0.75, np.nan, 0.5])
    np.testing.assert_allclose(score_retention(np.array([0.4, 0.3]), np.array([0.8, 0.0])), [0.5, np.nan])


def _loop_bootstrap(systems, test_rows, y, n_boot, seed):
    """The module doc's procedure written as a plain loop, drawing from the same generator."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(rows), size=(n_boot, len(rows))) for rows in test_rows]
    names = list(systems)
    seed_of = rng.integers(0, len(systems[names[0]]), size=(n_boot, len(names)))
    out = {name: [] for name in names}
    for b in range(n_boot):
        for j, name in enumerate(names):
            fold_scores = []
            for f, rows in enumerate(test_rows):
                pred = systems[name][seed_of[b, j]][f]
                hits = 0
                for i in idx[f][b]:
                    hits += int(pred[i] == y[rows[i]])
                fold_scores.append(hits / len(rows))
            out[name].append(sum(fold_scores) / len(fold_scores))
    return {k: np.array(v) for k, v in out.items()}


def test_paired_bootstrap_matches_a_plain_loop():
    y = np.array([0, 1, 1, 0, 2, 2, 1])
    test_rows = [np.array([0, 1, 2]), np.array([3, 4, 5, 6])]  # two folds
    systems = {  # [seed][fold] predicted classes, two probe seeds each
        "teacher": [
            [np.array([0, 1, 1]), np.array([0, 2, 2, 1])],
            [np.array([0, 1, 0]), np.array([0, 2, 1, 1])],
        ],
        "student": [
            [np.array([0, 0, 1]), np.array([1, 2, 2, 1])],
            [np.array([1, 1, 1]), np.array([0, 0, 2, 0])],
        ],
        "log-mel": [
            [np.array([2, 1, 0]), np.array([0, 0, 0, 0])],
            [np.array([0, 0, 0]), np.array([0, 1, 2, 1])],
        ],
    }
    got = paired_bootstrap(systems, test_rows, y, multilabel=False, n_boot=200, rng=np.random.default_rng(7))
    want = _loop_bootstrap(systems, test_rows, y, 200, 7)
    for name in systems:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12)
    ci = percentile_ci(0.5, got["teacher"] - got["log-mel"])
    assert ci["low"] == pytest.approx(np.percentile(want["teacher"] - want["log-mel"], 2.5))
    assert ci["high"] == pytest.approx(np.percentile(want["teacher"] - want["log-mel"], 97.5))


def test_bootstrap_distribution_is_the_enumerated_one():
    # one seed, 3 test items of which 2 are right: a replicate's hit count is Binomial(3, 2/3)
    y = np.array([0, 1, 0])
    systems = {"m": [[np.array([0, 1, 1])]]}
    reps = paired_bootstrap(systems, [np.arange(3)], y, False, n_boot=20000, rng=np.random.default_rng(0))
    exact = {
        k: math.comb(3, k) * (2 / 3) ** k * (1 / 3) ** (3 - k) for k in range(4)
    }  # 1/27, 6/27, 12/27, 8/27
    for k, p in exact.items():
        assert np.mean(np.isclose(reps["m"], k / 3)) == pytest.approx(p, abs=0.01)
    # P(0 hits) = 1/27 > 2.5 % and P(3 hits) = 8/27 > 2.5 %: the 95 % interval is [0, 1]
    ci = percentile_ci(2 / 3, reps["m"])
    assert (ci["low"], ci["value"], ci["high"]) == (0.0, pytest.approx(2 / 3), 1.0)


def test_multilabel_replicates_recompute_the_map():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.6]], dtype=np.float32)
    reps = paired_bootstrap(
        {"m": [[scores]]}, [np.arange(4)], y, True, n_boot=50, rng=np.random.default_rng(3)
    )
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 4, size=(50, 4))
    from ssondo_eval.probe_scores import macro_map

    np.testing.assert_allclose(reps["m"], [macro_map(scores[i], y[i]) for i in idx])


def _hits(n, right):
    """Predictions of a 2-class task (all labels 0) that are right on the rows in ``right``."""
    pred = np.ones(n, dtype=np.int32)
    pred[list(right)] = 0
    return pred


def test_informative_rule_uses_the_paired_ci():
    n = 40
    y = np.zeros(n, dtype=np.int64)
    rows = [np.arange(n)]
    logmel = _hits(n, range(20))  # 50 %
    strong = _hits(n, range(28))  # 70 %: right on every item log-mel gets, and 8 more
    barely = _hits(n, range(21))  # 52.5 %: one more item
    reps = paired_bootstrap(
        {"strong": [[strong]], "barely": [[barely]], "logmel": [[logmel]]},
        rows,
        y,
        False,
        n_boot=2000,
        rng=np.random.default_rng(1),
    )
    # separately, the two scores' CIs overlap (each about +-15 points) ...
    assert percentile_ci(0.7, reps["strong"])["low"] < percentile_ci(0.5, reps["logmel"])["high"]
    # ... but paired, every replicate counts the same 8 extra items: the difference is above 0
    assert teacher_gain(0.7, 0.5, reps["strong"], reps["logmel"])["informative"] is True
    # one extra item is missed by (39/40)^40 = 36 % of the replicates: the CI reaches 0
    gain = teacher_gain(0.525, 0.5, reps["barely"], reps["logmel"])
    assert gain["gain_over_logmel"]["low"] == 0.0 and gain["informative"] is False
    assert not excludes_zero_above({"low": None, "high": None})


def test_task_figures_and_the_average_over_informative_tasks_by_hand():
    rng = np.random.default_rng(0)
    boot = {k: rng.uniform(0.2, 0.9, size=500) for k in ("s", "t", "b", "u")}
    means = {"s": 0.7, "t": 0.8, "b": 0.4, "u": 0.5}
    fig, reps = task_figures(means, boot, "s", "t", "b", "u")
    assert fig["gain_retention"]["value"] == pytest.approx(0.75)
    assert fig["score_retention"]["value"] == pytest.approx(0.875)
    assert fig["gain_over_untrained"]["value"] == pytest.approx(0.2)
    assert fig["gain_over_logmel"]["value"] == pytest.approx(0.3)
    np.testing.assert_allclose(reps["gain_over_logmel"], boot["s"] - boot["b"])
    np.testing.assert_allclose(reps["gain_over_untrained"], boot["s"] - boot["u"])
    ratio = (boot["s"] - boot["b"]) / (boot["t"] - boot["b"])
    finite = ratio[boot["t"] > boot["b"]]
    assert fig["gain_retention"]["low"] == pytest.approx(np.percentile(finite, 2.5))
    assert fig["gain_retention"]["high"] == pytest.approx(np.percentile(finite, 97.5))

    other = {k: rng.uniform(0.2, 0.9, size=500) for k in ("s", "t", "b", "u")}
    fig2 = task_figures({"s": 0.5, "t": 0.6, "b": 0.2, "u": 0.4}, other, "s", "t", "b", "u")
    uninformative = task_figures({"s": 0.9, "t": 0.3, "b": 0.3, "u": 0.1}, other, "s", "t", "b", "u")
    per_task = {"a": (fig, reps), "b": fig2, "c": uninformative}
    avg = informative_average(per_task, ["a", "b"])
    assert avg["tasks"] == ["a", "b"]  # task c never enters the average
    assert avg["score_retention"]["value"] == pytest.approx((0.875 + 0.5 / 0.6) / 2)
    assert avg["gain_over_untrained"]["value"] == pytest.approx((0.2 + 0.1) / 2)
    mean_reps = (reps["score_retention"] + fig2[1]["score_retention"]) / 2
    assert avg["score_retention"]["low"] == pytest.approx(
        np.percentile(mean_reps[np.isfinite(mean_reps)], 2.5)
    )
    assert informative_average(per_task, [])["gain_retention"] is None


# ---------------------------------------------------------------- the report's summary (summary.py)
def _task(name: str, n_test: int):
    from ssondo_eval.tasks.base import Task, TaskItem

    items = [TaskItem(path=None, key=f"{name}{i}", labels=("a",), split="train") for i in range(2)]
    items += [TaskItem(path=None, key=f"{name}t{i}", labels=("a",), split="test") for i in range(n_test)]
    items[0] = TaskItem(path=None, key=f"{name}0", labels=("b",), split="train")
    return Task(name=name, items=items, classes=["a", "b"], multilabel=False, clip_seconds=None)


def _report(hits: dict[str, dict[str, int]], n_test: int = 40, n_seeds: int = 3) -> dict:
    """A report from predictions right on the first ``hits[label][task]`` test items, the same for
    every probe seed (so the seeds' t interval is 0 wide)."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from ssondo_eval.probe import ProbeConfig
    from ssondo_eval.probe_scores import mean_ci
    from ssondo_eval.summary import summarise

    labels = list(hits)
    tasks = [_task(t, n_test) for t in next(iter(hits.values()))]
    models = [
        SimpleNamespace(kind="baseline" if lab == "log-mel" else "teacher", teacher_id=lab) for lab in labels
    ]
    preds = {
        lab: {t.name: [[_hits(n_test, range(hits[lab][t.name]))]] * n_seeds for t in tasks} for lab in labels
    }
    scores = {}
    for lab in labels:
        scores[lab] = {}
        for t in tasks:
            mean, ci = mean_ci([hits[lab][t.name] / n_test] * n_seeds)
            scores[lab][t.name] = {"mean": mean, "ci95": ci}
    return (
        {
            "models": [{"label": lab, "kind": m.kind} for lab, m in zip(labels, models, strict=True)],
            "tasks": [t.describe() for t in tasks],
            "probe": asdict(ProbeConfig(seeds=tuple(range(n_seeds)))),
            "scores": scores,
            **summarise(models, labels, tasks, scores, preds, {}, n_boot=500),
        },
        tasks,
        preds,
    )


def test_score_cis_resample_the_test_items_not_only_the_seeds():
    from ssondo_eval.summary import bootstrap_task, score_markdown

    report, tasks, preds = _report({"teacher": {"t": 7}, "log-mel": {"t": 2}}, n_test=84)
    assert report["scores"]["teacher"]["t"]["ci95"] == 0.0  # every seed agrees: "8.3 ± 0.0"
    reps = bootstrap_task(tasks[0], {lab: preds[lab]["t"] for lab in ("teacher", "log-mel")}, 500, 0)
    ci = report["score_ci"]["teacher"]["t"]
    assert ci == percentile_ci(7 / 84, reps["teacher"])
    assert ci["low"] < 7 / 84 < ci["high"] and ci["high"] - ci["low"] > 0.05  # 84 clips: +- ~6 points
    md = "\n".join(score_markdown(report))
    assert f"{100 * 7 / 84:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" in md and "± 0.0" not in md
    assert "bootstrap replicates over test items" in md


def test_the_average_is_over_informative_tasks_only_and_the_others_are_listed_apart():
    from ssondo_eval.summary import score_markdown

    # "clear": teacher 40/40 vs log-mel 20/40, beyond any CI; "close": one item apart, inside it
    report, _, _ = _report({"teacher": {"clear": 40, "close": 21}, "log-mel": {"clear": 20, "close": 20}})
    assert report["informative"] == {"clear": True, "close": False}
    assert report["average"]["teacher"] == pytest.approx(1.0)  # "close" is not in it
    assert report["average"]["log-mel"] == pytest.approx(0.5)
    lines = score_markdown(report)
    avg = next(i for i, line in enumerate(lines) if line.startswith("| **Average** (1 informative task(s))"))
    clear = next(i for i, line in enumerate(lines) if line.startswith("| clear |"))
    close = next(i for i, line in enumerate(lines) if line.startswith("| close † |"))
    assert clear < avg < close  # the uninformative task sits in its own table, after the average
    assert "left out of the average: close" in "\n".join(lines)

    none, _, _ = _report({"teacher": {"close": 21}, "log-mel": {"close": 20}})
    assert none["informative"] == {"close": False} and none["average"] == {"teacher": None, "log-mel": None}
    assert "No task is informative: no average." in score_markdown(none)
