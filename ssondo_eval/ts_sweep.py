"""Temporal-support sweep: how the teacher's TS changes downstream score and teacher cost.

For each TS the teacher embeds the task audio in windows of TS seconds (hop = TS unless given), each
window pooled over time, the clip embedding the mean over windows; every task is probed. Reported per
(TS, task): score (mean ± 95 % CI over seeds), the number of window embeddings computed, and the
teacher's compute for the task (wall seconds, peak memory: CUDA allocator peak on a GPU, process peak
RSS on the CPU). Writes REPORT/ts_sweep.json, ts_sweep.md and ts_sweep.png (score vs TS per task,
and cost vs TS).

Reuse: when ``work`` holds a complete teacher cache at that TS and the task's clips are in its packed
corpus, the embeddings come from the cache (compute then reads "from cache": the extraction cost is
in the cache's own record, not re-measured); embeddings computed here are cached under
``REPORT/embeddings`` and a re-run reads them back with the compute figures measured the first time.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ssondo_cache.atomic import write_bytes
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.windows import TemporalSupport, format_seconds, parse_seconds
from ssondo_eval.cached_teacher import CachedTeacherEmbedder
from ssondo_eval.embedders import Embedder, TeacherEmbedder, embed_task
from ssondo_eval.evaluate import probe_task, write_report
from ssondo_eval.probe import ProbeConfig
from ssondo_eval.tasks.base import Task


def parse_ts_list(text: str) -> list[float | None]:
    """``"0.5,1,2,full"`` -> [0.5, 1.0, 2.0, None]."""
    values = [parse_seconds(v.strip(), "--ts") for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("--ts needs at least one value, e.g. 0.5,1,2")
    return values


def _cached_embedder(
    work: Path | None, teacher_id: str, support: TemporalSupport, task: Task
) -> Embedder | None:
    """The existing complete cache for this TS, if the task's clips are all in that packed corpus."""
    if work is None:
        return None
    path = Path(work) / "cache" / teacher_id / f"{support.name}.zarr"
    if not path.is_dir():
        return None
    emb = CachedTeacherEmbedder(work, f"{teacher_id}/{support.name}")
    if not emb.store.is_complete():
        return None
    try:
        emb.rows_for(task)
    except ValueError:  # the task's audio is not the packed corpus: embed live
        return None
    return emb


def ts_sweep(
    work: str | Path | None,
    teacher: str,
    ts_list: list[float | None],
    tasks: list[Task],
    out: str | Path,
    checkpoint: str | Path | None = None,
    hop: float | None = None,
    device: str = "auto",
    batch_size: int = 32,
    probe_config: ProbeConfig | None = None,
    progress: bool = True,
    **teacher_options,
) -> dict:
    """Probe ``teacher`` at each TS of ``ts_list`` on ``tasks``; write REPORT/ts_sweep.{json,md,png}."""
    from ssondo_cache.devices import resolve_device
    from ssondo_cache.teachers import build_teacher

    if not ts_list or not tasks:
        raise ValueError("ts_sweep needs at least one TS and one task")
    out = Path(out)
    config = probe_config or ProbeConfig()
    dev = resolve_device(device)
    model = build_teacher(teacher, checkpoint=checkpoint, device=dev, **teacher_options)
    rows = []
    for ts in tqdm(ts_list, desc="ts-sweep", disable=not progress):
        ts_arg, hop_arg = ("full", None) if ts is None else (ts, hop)
        support = TemporalSupport.parse(ts_arg, hop_arg)
        live = TeacherEmbedder(
            teacher, ts=ts_arg, hop=hop_arg, device=str(dev), batch_size=batch_size, teacher=model
        )
        for task in tasks:
            embedder = _cached_embedder(Path(work) if work else None, model.teacher_id, support, task) or live
            X, info = embed_task(embedder, task, out / "embeddings", progress=progress)
            res = probe_task(X, task, config)
            compute = info.get("compute", {})
            from_cache = isinstance(embedder, CachedTeacherEmbedder)
            rows.append(
                {
                    "ts": support.ts,
                    "hop": support.hop,
                    "ts_name": support.name,
                    "task": task.name,
                    "metric": res.metric,
                    "mean": res.mean,
                    "ci95": res.ci95,
                    "scores": res.scores,
                    "source": "cache" if from_cache else "live",
                    "n_embeddings": None if from_cache else compute.get("n_embeddings"),
                    "seconds": None if from_cache else compute.get("seconds"),
                    "peak_memory_bytes": None if from_cache else compute.get("peak_memory_bytes"),
                    "memory_kind": None if from_cache else compute.get("memory_kind"),
                    "device": info.get("device"),
                }
            )
    report = {
        "created": now_iso(),
        "code_version": code_version(),
        "teacher": model.describe(),
        "device": str(dev),
        "probe": asdict(config),
        "tasks": [t.describe() for t in tasks],
        "rows": rows,
    }
    return write_report(report, out, "ts_sweep", sweep_markdown, sweep_chart)


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def sweep_markdown(report: dict) -> str:
    lines = [
        f"# Temporal-support sweep: {report['teacher']['teacher_id']} on {report['device']}",
        "",
        "Score in % (mean ± 95 % CI over seeds); embeddings = window embeddings the teacher computed for the "
        "task; seconds and peak memory of that computation (memory: see the memory column's kind).",
        "",
        "| TS (s) | hop (s) | task | score | embeddings | seconds | peak memory (MiB) | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        score = f"{100 * r['mean']:.1f}" + (f" ± {100 * r['ci95']:.1f}" if r["ci95"] is not None else "")
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(
            f"| {format_seconds(r['ts'])} | {format_seconds(r['hop'])} | {r['task']} | {score} | "
            f"{r['n_embeddings'] if r['n_embeddings'] is not None else '–'} | {secs} | "
            f"{_mib(r['peak_memory_bytes'])} | {r['source']} |"
        )
    kinds = sorted({r["memory_kind"] for r in report["rows"] if r["memory_kind"]})
    if kinds:
        lines += ["", "Peak memory measured as: " + "; ".join(kinds) + "."]
    return "\n".join(lines) + "\n"


def sweep_chart(report: dict, path: Path) -> None:
    """Left: score vs TS, one line per task. Right: teacher seconds vs TS, one line per task."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_score, ax_cost = fig.subplots(1, 2)
    tasks = list(dict.fromkeys(r["task"] for r in report["rows"]))
    finite = [r["ts"] for r in report["rows"] if r["ts"] is not None]
    full_at = 2 * max(finite) if finite else 1.0  # where "full" is drawn
    for task in tasks:
        rs = sorted((r for r in report["rows"] if r["task"] == task), key=lambda r: r["ts"] or full_at)
        xs = [r["ts"] if r["ts"] is not None else full_at for r in rs]
        ax_score.errorbar(
            xs,
            [100 * r["mean"] for r in rs],
            yerr=[100 * (r["ci95"] or 0) for r in rs],
            marker="o",
            capsize=3,
            label=task,
        )
        cost = [(x, r["seconds"]) for x, r in zip(xs, rs, strict=True) if r["seconds"] is not None]
        if cost:
            ax_cost.plot(*zip(*cost, strict=True), marker="o", label=task)
    ticks = sorted({r["ts"] if r["ts"] is not None else full_at for r in report["rows"]})
    names = [format_seconds(t) if t in finite else "full" for t in ticks]
    for ax in (ax_score, ax_cost):
        ax.set_xscale("log")
        ax.set_xticks(ticks, names)
        ax.minorticks_off()
        ax.set_xlabel("temporal support TS (s)")
        ax.legend(fontsize="small")
    ax_score.set_ylim(0, 100)
    ax_score.set_ylabel("score (%)")
    ax_score.set_title("probe score vs TS")
    ax_cost.set_ylabel("teacher seconds (live runs)")
    ax_cost.set_title("teacher compute vs TS")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def run_ts_sweep(
    work: str | Path | None,
    teacher: str,
    ts: str,
    task_specs: list[str],
    out: str | Path,
    task_names: list[str] = (),
    **kwargs,
) -> dict:
    """Everything ``ssondo eval ts-sweep`` does: parse ``ts`` ("0.5,1,2"), build the tasks (``task_names``:
    --task-name), sweep."""
    from ssondo_eval.tasks import load_tasks

    tasks = load_tasks(list(task_specs), task_names)
    return ts_sweep(work, teacher, parse_ts_list(ts), tasks, out, **kwargs)
