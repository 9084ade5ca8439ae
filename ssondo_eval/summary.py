"""What a report concludes from the probe scores: informative tasks, retention, gains, with their CIs.

Per task, the per-item test predictions of every model are resampled together (paired bootstrap over
test items, combined with probe seeds: ``ssondo_eval.bootstrap``). A task is informative when some
teacher beats log-mel beyond the CI of their paired difference; per student and task the report gives
the gain retention ``(student - log-mel) / (teacher - log-mel)``, the score retention ``student /
teacher`` and the gain over the untrained student, each with its CI. Every score's CI is the same
bootstrap's (``score_ci``), never the probe seeds' spread alone. Averages are over the informative
tasks only: none informative gives no average (None); all tasks only when the report has no teacher
or no log-mel to judge by (``average_over``: informative | all).
A student's teacher is the evaluated teacher with its ``teacher_id``; its untrained twin is the
``untrained`` model rebuilt from its checkpoint (``ssondo_eval.untrained``).
"""

from __future__ import annotations

import numpy as np

from ssondo_eval.bootstrap import CONFIDENCE, N_BOOT, paired_bootstrap, percentile_ci
from ssondo_eval.retention import informative_average, task_figures, teacher_gain
from ssondo_eval.tasks.base import Task

FIGURE_TITLES = {
    "gain_retention": "gain retention",
    "score_retention": "score retention",
    "gain_over_logmel": "gain over log-mel (pp)",
    "gain_over_untrained": "gain over untrained (pp)",
}


def bootstrap_task(task: Task, preds: dict[str, list[list[np.ndarray]]], n_boot: int, seed: int) -> dict:
    """Paired replicates (n_boot,) per model label on ``task``; the generator is keyed by the task's
    fingerprint, so a task's replicates do not depend on which other tasks are in the report."""
    rng = np.random.default_rng([seed, int(task.fingerprint()[:12], 16)])
    test_rows = [fold[2] for fold in task.folds()]
    return paired_bootstrap(preds, test_rows, task.targets(), task.multilabel, n_boot, rng)


def summarise(
    models: list,
    labels: list[str],
    tasks: list[Task],
    scores: dict,
    preds: dict,
    untrained_of: dict[str, str],
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict:
    """Report fields: average, informative, teacher_gain, retention, bootstrap (see module doc).

    ``preds``: label -> task -> [seed][fold] test predictions; ``untrained_of``: student label -> twin label."""
    names = [t.name for t in tasks]
    kind = {lab: m.kind for m, lab in zip(models, labels, strict=True)}
    teachers = {m.teacher_id: lab for m, lab in zip(models, labels, strict=True) if m.kind == "teacher"}
    logmel = next((lab for lab in labels if kind[lab] == "baseline"), None)
    means = {t: {lab: scores[lab][t]["mean"] for lab in labels} for t in names}
    boot = {
        t.name: bootstrap_task(t, {lab: preds[lab][t.name] for lab in labels}, n_boot, seed) for t in tasks
    }

    gains: dict[str, dict] = {}
    informative: dict[str, bool] = {}
    if logmel is not None and teachers:
        for t in names:
            gains[t] = {
                lab: teacher_gain(means[t][lab], means[t][logmel], boot[t][lab], boot[t][logmel], confidence)
                for lab in teachers.values()
            }
            informative[t] = any(g["informative"] for g in gains[t].values())
    chosen = [t for t in names if informative.get(t)]
    judged = bool(informative)  # a teacher and log-mel are both in the report
    over = chosen if judged else names
    average = {lab: float(np.mean([means[t][lab] for t in over])) if over else None for lab in labels}
    score_ci = {
        lab: {t: percentile_ci(means[t][lab], boot[t][lab], confidence) for t in names} for lab in labels
    }
    average_ci = {
        lab: percentile_ci(average[lab], np.mean([boot[t][lab] for t in over], axis=0), confidence)
        if over
        else None
        for lab in labels
    }

    retention = {}
    for m, lab in zip(models, labels, strict=True):
        if m.kind != "student":
            continue
        t_lab = teachers.get(m.teacher_id)
        if t_lab is None:
            retention[lab] = {
                "teacher": None,
                "teacher_id": m.teacher_id,
                "note": "its teacher was not evaluated in this report",
            }
            continue
        twin = untrained_of.get(lab)
        entry = {
            "teacher": t_lab,
            "teacher_id": m.teacher_id,
            "untrained": twin,
            "per_task": {
                t: 100.0 * means[t][lab] / means[t][t_lab] if means[t][t_lab] > 0 else None for t in names
            },
            "average": 100.0 * average[lab] / average[t_lab] if over and average[t_lab] > 0 else None,
        }
        if logmel is not None:
            per_task = {
                t: task_figures(means[t], boot[t], lab, t_lab, logmel, twin, confidence) for t in names
            }
            entry["figures"] = {t: per_task[t][0] for t in names}
            entry["informative_average"] = informative_average(per_task, chosen, confidence)
        retention[lab] = entry
    return {
        "score_ci": score_ci,
        "average": average,
        "average_ci": average_ci,
        "average_over": "informative" if judged else "all",
        "informative": informative,
        "teacher_gain": gains,
        "retention": retention,
        "bootstrap": {
            "replicates": n_boot,
            "seed": seed,
            "confidence": confidence,
            "method": "paired over test items (same resampled items for every model), one probe seed "
            "drawn per model and replicate; percentile intervals",
        },
    }


def _interval(x: dict | None, scale: float = 100.0, unit: str = "") -> str:
    if x is None or x.get("value") is None:
        return "–"
    if x.get("low") is None:
        return f"{scale * x['value']:.1f}{unit}"
    return f"{scale * x['value']:.1f}{unit} [{scale * x['low']:.1f}, {scale * x['high']:.1f}]"


def _unit(figure: str) -> str:
    return "" if figure.startswith("gain_over") else " %"


def retention_markdown(report: dict) -> list[str]:
    """The 'against the baselines' section of results.md (empty without a log-mel baseline)."""
    if not report.get("teacher_gain"):
        return []
    students = [s for s, r in report["retention"].items() if r.get("figures")]
    b = report["bootstrap"]
    lines = [
        "## Against the baselines",
        "",
        f"Point figure [{100 * b['confidence']:.0f} % CI]: {b['replicates']} bootstrap replicates, {b['method']}. "
        "A task is informative when the teacher beats log-mel beyond that CI; averages are over the "
        "informative tasks only. Retentions in %, gains in percentage points.",
        "",
    ]
    head = ["task", "teacher − log-mel (pp)", "informative"]
    for s in students:
        head += [f"{s}: {title}" for title in FIGURE_TITLES.values()]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in [t["name"] for t in report["tasks"]]:
        gains = report["teacher_gain"][t]
        row = [t, "; ".join(_interval(g["gain_over_logmel"]) for g in gains.values())]
        row.append("yes" if report["informative"][t] else "no")
        for s in students:
            fig = report["retention"][s]["figures"][t]
            row += [
                _interval(fig.get(k), unit=" %" if k != "gain_over_untrained" else "") for k in FIGURE_TITLES
            ]
        lines.append("| " + " | ".join(row) + " |")
    avg = ["**average (informative tasks)**", "", ""]
    for s in students:
        a = report["retention"][s]["informative_average"]
        avg += [_interval(a.get(k), unit=_unit(k)) for k in FIGURE_TITLES]
    lines += ["| " + " | ".join(avg) + " |", ""]
    if not any(report["informative"].values()):
        lines += ["No task is informative: the averages say nothing about the students.", ""]
    for s in students:
        if report["retention"][s].get("untrained") is None:
            lines += [f"{s}: no untrained twin in this report (not rebuilt from a checkpoint).", ""]
    return lines


def _score(report: dict, lab: str, task: str) -> str:
    ci = (report.get("score_ci") or {}).get(lab, {}).get(task)
    return _interval(ci) if ci is not None else f"{100 * report['scores'][lab][task]['mean']:.1f}"


def _probe_line(p: dict) -> str:
    kind = "linear" if not p["hidden"] else f"MLP {p['hidden']}"
    grid = ", ".join(f"{lr:g}" for lr in p["lr"])
    lr = f"Adam lr {grid}" if len(p["lr"]) == 1 else f"Adam lr picked on validation from {{{grid}}}"
    return (
        f"Linear probe ({kind}, {len(p['seeds'])} seeds, batch min({p['batch_size']}, n), {lr}, early "
        f"stopping on validation, patience {p['patience']}, at most {p['max_epochs']} epochs)."
    )


def score_markdown(report: dict) -> list[str]:
    """The score tables of results.md: informative tasks with the Average and "% of teacher" rows, then
    the tasks left out of the average (no teacher beats log-mel beyond the CI), then the chosen lrs."""
    labels = [m["label"] for m in report["models"]]
    names = [t["name"] for t in report["tasks"]]
    metric = {t["name"]: t["metric"] for t in report["tasks"]}
    students = [lab for lab in labels if (report["retention"].get(lab) or {}).get("teacher")]
    b = report["bootstrap"]
    head = ["task", "metric", *labels, *[f"{s}: % of teacher" for s in students]]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(t: str, mark: str = "") -> str:
        cells = [t + mark, metric[t], *[_score(report, lab, t) for lab in labels]]
        for s in students:
            pct = report["retention"][s]["per_task"][t]
            cells.append("–" if pct is None else f"{pct:.1f} %")
        return "| " + " | ".join(cells) + " |"

    left_out = [t for t in names if report["informative"].get(t) is False]
    kept = [t for t in names if t not in left_out]
    judged = report.get("average_over") == "informative"
    lines = [
        _probe_line(report["probe"]) + f" Scores in %: mean over probe seeds [{100 * b['confidence']:.0f} % "
        f"CI from {b['replicates']} bootstrap replicates over test items, a probe seed drawn per replicate].",
        "",
        *table,
        *[row(t) for t in kept],
    ]
    over = f"{len(kept)} informative task(s)" if judged else "all tasks: no teacher and log-mel to judge by"
    avg = [f"**Average** ({over})", ""]
    for lab in labels:
        avg.append("–" if report["average"][lab] is None else f"**{_interval(report['average_ci'][lab])}**")
    for s in students:
        pct = report["retention"][s]["average"]
        avg.append("–" if pct is None else f"**{pct:.1f} %**")
    lines += ["| " + " | ".join(avg) + " |", ""]
    if judged and not kept:
        lines += ["No task is informative: no average.", ""]
    if left_out:
        lines += [
            f"Not informative († no teacher beats the log-mel statistics baseline beyond the CI: those "
            f"scores say nothing about what the embeddings add), left out of the average: {', '.join(left_out)}.",
            "",
            *table,
            *[row(t, " †") for t in left_out],
            "",
        ]
    if len(report["probe"]["lr"]) > 1:
        lines += ["Probe learning rate chosen on validation (first probe seed, per fold):", ""]
        lines += ["| task | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
        for t in names:
            chosen = [report["scores"][lab][t].get("lr_chosen") or [] for lab in labels]
            lines.append(f"| {t} | " + " | ".join(", ".join(f"{v:g}" for v in c) for c in chosen) + " |")
        lines.append("")
    return lines
