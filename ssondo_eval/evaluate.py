"""Probe every (model, task) pair and write the report: REPORT/results.json, results.md, results.png.

The table reads like the paper's: one row per task, one column per model (teachers, students, their
untrained twins, the log-mel baseline), an Average row, and for each student the share of its
teacher's score it keeps ("% of teacher": per task 100 x student / teacher). Beside it, with CIs from
a paired bootstrap over test items and probe seeds (``ssondo_eval.summary``): which tasks are
informative (the teacher beats log-mel beyond the CI; the others are flagged), the gain retention,
the score retention and the gain over the untrained student; averages over informative tasks only.
Every checkpoint student gets its untrained twin (same architecture, same initialisation seed) as a
column unless ``untrained=False``.

Embeddings are cached per (model, task) under ``cache_dir`` and probe results (scores + per-item test
predictions) per (embeddings, probe settings) under ``REPORT/probes/``, so re-running a finished
report only re-reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssondo_cache.atomic import write_bytes, write_json, write_text
from ssondo_cache.provenance import code_version, now_iso
from ssondo_eval.bootstrap import N_BOOT
from ssondo_eval.decoded_audio import with_decoded_audio
from ssondo_eval.embedders import Embedder, embed_task
from ssondo_eval.probe import ProbeConfig, ProbeResult, probe_folds
from ssondo_eval.summary import retention_markdown, score_markdown, summarise
from ssondo_eval.tasks.base import Task

log = logging.getLogger("ssondo.eval")


def probe_task(X: np.ndarray, task: Task, config: ProbeConfig, progress: bool = False) -> ProbeResult:
    """Probe one task's embeddings X (N, D), rows in ``task``'s order, on its folds and targets."""
    return probe_folds(
        X,
        task.targets(),
        task.folds(),
        multilabel=task.multilabel,
        n_classes=len(task.classes),
        config=config,
        progress=progress,
    )


def probe_pair(
    embedder: Embedder, task: Task, out: Path, cache_dir: Path, config: ProbeConfig, progress: bool
) -> tuple[dict, list[list[np.ndarray]]]:
    """Embeddings (cached) + probe (cached) for one (model, task): (probe result dict, [seed][fold]
    per-item test predictions); the predictions live beside the result as an .npz."""
    key = hashlib.sha256(
        json.dumps(
            [embedder.cache_id, task.fingerprint(), asdict(config)], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:16]
    path = out / "probes" / embedder.cache_id / f"{task.name}-{key}.json"
    npz = path.with_suffix(".npz")
    if path.is_file() and npz.is_file():
        result = json.loads(path.read_text())
        with np.load(npz) as f:
            n_folds = len(result["splits"][0])
            preds = [[f[f"s{i}_f{j}"] for j in range(n_folds)] for i in range(len(result["splits"]))]
        return result, preds
    X, info = embed_task(embedder, task, cache_dir, progress=progress)
    probe = probe_task(X, task, config, progress=progress)
    result = probe.to_dict()
    result["embedding"] = {"dim": int(X.shape[1]), "compute": info.get("compute", {})}
    preds = probe.test_predictions()
    buf = io.BytesIO()
    np.savez(buf, **{f"s{i}_f{j}": p for i, row in enumerate(preds) for j, p in enumerate(row)})
    write_bytes(npz, buf.getvalue())
    write_json(path, result)  # last: the pair is complete only when the result exists
    return result, preds


def _labels(models: list[Embedder]) -> list[str]:
    """Unique column labels (a repeated name gets #2, #3 ...)."""
    seen: dict[str, int] = {}
    out = []
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
        out.append(m.name if seen[m.name] == 1 else f"{m.name} #{seen[m.name]}")
    return out


def results_markdown(report: dict) -> str:
    tasks = report["tasks"]
    lines = [f"# ssondo evaluation — {report['created']}", "", *score_markdown(report)]
    lines += retention_markdown(report)
    for lab, r in report["retention"].items():
        if not r.get("teacher"):
            lines += [f"{lab}: no retention figure, {r['note']} (teacher_id {r['teacher_id']}).", ""]
    lines += [
        "## Tasks",
        "",
        "| task | items | classes | clip (s) | protocol | splits |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        clip = "whole file" if t["clip_seconds"] is None else f"{t['clip_seconds']:g}"
        splits = ", ".join(f"{k} {v}" for k, v in t["splits"].items())
        lines.append(
            f"| {t['name']} | {t['n_items']} | {t['n_classes']} | {clip} | {t['protocol']} | {splits} |"
        )
    refused = [(t["name"], r) for t in tasks for r in t.get("refused", [])]
    outside = [(t["name"], p) for t in tasks for p in t.get("outside_root", [])]
    shown = 20  # results.json lists them all
    if refused:
        lines += ["", f"Refused items ({len(refused)}, left out of every score; all in results.json):", ""]
        lines += [f"- {n}: `{r['path']}` {r['reason']} ({r['detail']})" for n, r in refused[:shown]]
    if outside:
        lines += ["", f"Audio outside its task's folder ({len(outside)}, used; all in results.json):", ""]
        lines += [f"- {n}: `{p}`" for n, p in outside[:shown]]
    lines += ["", "## Models", ""]
    for m in report["models"]:
        lines.append(f"- **{m['label']}** ({m['kind']}): `{m['cache_id']}`")
    return "\n".join(lines) + "\n"


def results_chart(report: dict, path: Path) -> None:
    """Grouped bars: one group per task (and the informative average), one bar per model, bootstrap CI bars."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    labels = [m["label"] for m in report["models"]]
    tasks = [t["name"] for t in report["tasks"]]
    averaged = all(report["average"][lab] is not None for lab in labels)
    groups = [*tasks, "average"] if averaged else tasks
    width = 0.8 / len(labels)
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(labels)) / 2), 4.0), dpi=100)
    ax = fig.subplots()
    x = np.arange(len(groups))
    for i, lab in enumerate(labels):
        cis = [report["score_ci"][lab][t] for t in tasks] + ([report["average_ci"][lab]] if averaged else [])
        means = np.array([100 * c["value"] for c in cis])
        ends = np.array(
            [
                [100 * c[k] if c[k] is not None else m for k in ("low", "high")]
                for c, m in zip(cis, means, strict=True)
            ]
        )
        errs = np.abs(ends - means[:, None]).T  # (2, groups): below, above
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=lab)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (%): accuracy or mAP")
    ax.set_title("linear-probe scores per task")
    ax.legend(fontsize="small")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def evaluate(
    models: list[Embedder],
    tasks: list[Task],
    out: str | Path,
    probe_config: ProbeConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    untrained: bool = True,
    bootstrap: int = N_BOOT,
) -> dict:
    """Probe every model on every task; write REPORT/results.{json,md,png}; return the report dict.

    ``cache_dir`` holds the per-(model, task) embeddings (default ``REPORT/embeddings``); task clips are
    decoded once per sample rate for all models into ``REPORT/decoded`` (``decoded_audio``); one line per
    finished model is logged (``ssondo.eval``); ``untrained``: add each checkpoint student's untrained
    twin; ``bootstrap``: replicates per task."""
    from ssondo_eval.untrained import pair_untrained, with_untrained

    if not models or not tasks:
        raise ValueError("evaluate needs at least one model and one task")
    out = Path(out)
    config = probe_config or ProbeConfig()
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "embeddings"
    tasks = with_decoded_audio(list(tasks), out / "decoded")
    models = with_untrained(list(models)) if untrained else list(models)
    labels = _labels(models)
    untrained_of = {labels[i]: labels[j] for i, j in pair_untrained(models).items()}
    scores: dict[str, dict[str, dict]] = {lab: {} for lab in labels}
    preds: dict[str, dict[str, list]] = {lab: {} for lab in labels}
    pairs = [(m, lab, t) for m, lab in zip(models, labels, strict=True) for t in tasks]
    for m, lab, t in tqdm(pairs, desc="eval", disable=not progress):
        scores[lab][t.name], preds[lab][t.name] = probe_pair(m, t, out, cache_dir, config, progress)
        if t is tasks[-1]:
            log.info(
                f"eval: {lab} done, {len(tasks)} task(s), embedding {embedding_seconds(scores[lab]):.1f} s"
            )
    report = {
        "created": now_iso(),
        "code_version": code_version(),
        "probe": asdict(config),
        "tasks": [t.describe() for t in tasks],
        "models": [{"label": lab, **m.describe()} for m, lab in zip(models, labels, strict=True)],
        "scores": scores,
        **summarise(models, labels, tasks, scores, preds, untrained_of, n_boot=bootstrap),
    }
    return write_report(report, out, "results", results_markdown, results_chart)


def embedding_seconds(scores_of_model: dict[str, dict]) -> float:
    """Seconds one model spent embedding its tasks (decoding included), from its probe results."""
    return sum(
        r.get("embedding", {}).get("compute", {}).get("seconds", 0.0) for r in scores_of_model.values()
    )


def summary_line(report: dict, out: Path) -> str:
    """The command's last line: what was probed, where the report is, each model's embedding time."""
    times = ", ".join(
        f"{m['label']} {embedding_seconds(report['scores'][m['label']]):.1f}" for m in report["models"]
    )
    return (
        f"eval: {len(report['models'])} model(s) x {len(report['tasks'])} task(s) -> {out / 'results.md'}; "
        f"embedding s: {times}"
    )


def write_report(
    report: dict,
    out: Path,
    stem: str,
    markdown: Callable[[dict], str],
    chart: Callable[[dict, Path], None],
) -> dict:
    """Write OUT/STEM.json, STEM.md (``markdown(report)``) and STEM.png (``chart``); return the report.

    A finished report re-run (same but for date and code version, chart present) is left as it was
    and the one on disk is returned: nothing changed, nothing rewritten."""
    previous = read_json(out / f"{stem}.json")
    if previous is not None and same_report(previous, report) and (out / f"{stem}.png").is_file():
        return previous
    write_json(out / f"{stem}.json", report)
    write_text(out / f"{stem}.md", markdown(report))
    chart(report, out / f"{stem}.png")
    return report


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def same_report(a: dict, b: dict) -> bool:
    """Equal but for when and by which code version they were written."""

    def strip(r: dict) -> str:
        return json.dumps(
            {k: v for k, v in r.items() if k not in ("created", "code_version")}, sort_keys=True, default=str
        )

    return strip(a) == strip(b)


def build_models(
    runs: list[str | Path] = (),
    teacher: str | None = None,
    checkpoint: str | Path | None = None,
    work: str | Path | None = None,
    cache: str | None = None,
    baseline: str | None = "logmel",
    ts: float = 10.0,
    teacher_ts: float | str | None = "full",
    device: str = "auto",
    batch_size: int = 32,
    teacher_options: dict | None = None,
) -> list[Embedder]:
    """The models of a report, in column order: teacher (live, or from WORK's cache), students, baseline.

    ``ts``: the students' window (s); ``teacher_ts``: the live teacher's TS ("full" = the whole clip, which
    the teacher chunks itself, as EVAR feeds it)."""
    from ssondo_eval.cached_teacher import CachedTeacherEmbedder
    from ssondo_eval.embedders import LogMelStatsEmbedder, StudentEmbedder, TeacherEmbedder

    models: list[Embedder] = []
    if cache is not None:
        if work is None:
            raise ValueError("--cache needs --work (the workspace holding the cache)")
        models.append(CachedTeacherEmbedder(work, cache))
    if teacher is not None:
        models.append(
            TeacherEmbedder(
                teacher,
                checkpoint=checkpoint,
                ts=teacher_ts,
                device=device,
                batch_size=batch_size,
                **(teacher_options or {}),
            )
        )
    elif checkpoint is not None:
        raise ValueError("--checkpoint is the teacher's: give --teacher NAME with it")
    models += [StudentEmbedder(r, ts=float(ts), device=device, batch_size=batch_size) for r in runs]
    if baseline == "logmel":
        models.append(LogMelStatsEmbedder())
    elif baseline not in (None, "none"):
        raise ValueError(f"unknown baseline {baseline!r}; known: logmel, none")
    if not models:
        raise ValueError(
            "nothing to evaluate: give student RUNs, --teacher NAME, --cache NAME or --baseline logmel"
        )
    return models


def run_evaluation(
    runs: list[str | Path],
    task_specs: list[str],
    out: str | Path,
    *,
    task_names: list[str] = (),
    teacher: str | None = None,
    checkpoint: str | Path | None = None,
    work: str | Path | None = None,
    cache: str | None = None,
    baseline: str | None = "logmel",
    ts: float = 10.0,
    teacher_ts: float | str | None = "full",
    device: str = "auto",
    batch_size: int = 32,
    probe_config: ProbeConfig | None = None,
    cache_dir: str | Path | None = None,
    teacher_options: dict | None = None,
    progress: bool = True,
    untrained: bool = True,
    bootstrap: int = N_BOOT,
) -> dict:
    """Everything ``ssondo eval`` does: build the tasks (``task_names``: --task-name) and the models,
    probe, write the report."""
    from ssondo_eval.tasks import load_tasks

    tasks = load_tasks(list(task_specs), task_names)
    models = build_models(
        runs, teacher, checkpoint, work, cache, baseline, ts, teacher_ts, device, batch_size, teacher_options
    )
    return evaluate(
        models,
        tasks,
        out,
        probe_config=probe_config,
        cache_dir=cache_dir,
        progress=progress,
        untrained=untrained,
        bootstrap=bootstrap,
    )
