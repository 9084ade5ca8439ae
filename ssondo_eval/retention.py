"""How much of its teacher a student keeps, as the paper and the reports state it.

``gain_retention`` is the share of the teacher's gain over the log-mel statistics baseline that the
student keeps; ``score_retention`` is the plain ratio of scores. Both take floats (point figures) or
arrays (bootstrap replicates, element-wise).

:func:`task_figures` gives one student's figures on one task with their confidence intervals, from the
paired bootstrap replicates of ``ssondo_eval.bootstrap`` (test items resampled, probe seeds drawn):
gain retention, score retention, and the gains over log-mel and over the untrained student (same
architecture, same initialisation). :func:`informative_average` averages them over the informative tasks only: those
where the teacher beats log-mel beyond the CI of their paired difference (:func:`teacher_gain`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ssondo_eval.bootstrap import CONFIDENCE, excludes_zero_above, percentile_ci


def gain_retention(student, teacher, logmel):
    """(student - logmel) / (teacher - logmel); NaN when the teacher does not beat log-mel (undefined)."""
    if np.ndim(student) == np.ndim(teacher) == np.ndim(logmel) == 0:
        gain = teacher - logmel
        if not gain > 0:
            return math.nan
        return (student - logmel) / gain
    s, t, b = (np.asarray(v, dtype=np.float64) for v in (student, teacher, logmel))
    gain = t - b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gain > 0, (s - b) / gain, np.nan)


def score_retention(student, teacher):
    """student / teacher; NaN when the teacher's score is not positive."""
    if np.ndim(student) == np.ndim(teacher) == 0:
        if not teacher > 0:
            return math.nan
        return student / teacher
    s, t = (np.asarray(v, dtype=np.float64) for v in (student, teacher))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t > 0, s / t, np.nan)


def teacher_gain(
    teacher: float, logmel: float, boot_teacher: np.ndarray, boot_logmel: np.ndarray, confidence=CONFIDENCE
) -> dict:
    """teacher - logmel with its paired CI, and whether the task is informative (CI above 0)."""
    gain = percentile_ci(teacher - logmel, boot_teacher - boot_logmel, confidence)
    return {"gain_over_logmel": gain, "informative": excludes_zero_above(gain)}


FIGURES = ("gain_retention", "score_retention", "gain_over_logmel", "gain_over_untrained")


def task_figures(
    means: Mapping[str, float],
    boot: Mapping[str, np.ndarray],
    student: str,
    teacher: str,
    logmel: str,
    untrained: str | None,
    confidence: float = CONFIDENCE,
) -> tuple[dict, dict[str, np.ndarray]]:
    """One student on one task: ({figure: {value, low, high}}, {figure: replicates}).

    ``means``: each system's probe mean (the point figures); ``boot``: its paired bootstrap replicates.
    Without an untrained student the gain over it is None."""
    s, t, b = means[student], means[teacher], means[logmel]
    reps = {
        "gain_retention": gain_retention(boot[student], boot[teacher], boot[logmel]),
        "score_retention": score_retention(boot[student], boot[teacher]),
        "gain_over_logmel": boot[student] - boot[logmel],
    }
    points = {
        "gain_retention": gain_retention(s, t, b),
        "score_retention": score_retention(s, t),
        "gain_over_logmel": s - b,
    }
    if untrained is not None:
        reps["gain_over_untrained"] = boot[student] - boot[untrained]
        points["gain_over_untrained"] = s - means[untrained]
    figures = {k: percentile_ci(points[k], reps[k], confidence) for k in reps}
    figures.setdefault("gain_over_untrained", None)
    return figures, reps


def informative_average(
    per_task: Mapping[str, tuple[dict, dict[str, np.ndarray]]],
    informative: Sequence[str],
    confidence: float = CONFIDENCE,
) -> dict:
    """Mean of each figure over the informative tasks, with the CI of the replicate-wise mean (tasks
    are resampled independently, so replicate b of the average is the mean of the tasks' replicates b).
    ``per_task``: task -> :func:`task_figures` output. No informative task: every figure None."""
    out: dict = {"tasks": list(informative)}
    for key in FIGURES:
        rows = [per_task[t] for t in informative if per_task[t][0].get(key) is not None]
        if not informative or len(rows) != len(informative):
            out[key] = None
            continue
        values = [r[0][key]["value"] for r in rows]
        point = math.nan if any(v is None for v in values) else float(np.mean(values))
        out[key] = percentile_ci(point, np.mean([r[1][key] for r in rows], axis=0), confidence)
    return out
