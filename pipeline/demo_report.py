"""DIR/report/index.md: one page that links every artifact the demo made."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssondo_cache.atomic import write_text


def _link(report_dir: Path, target: Path, text: str | None = None) -> str:
    rel = os.path.relpath(target, report_dir)
    return f"[{text or target.name}]({rel})"


def _image(report_dir: Path, target: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(target, report_dir)})" if target.is_file() else f"({alt}: not made)"


def write_index(
    out: Path,
    *,
    stages: Sequence[Any],
    caches: Sequence[str],
    cluster_files: dict[str, Path],
    train_results: dict[str, Any],
    scores: dict[str, dict[str, float]],
    total_seconds: float,
) -> Path:
    report = out / "report"
    work = out / "work"
    lines = [
        "# ssondo demo report",
        "",
        f"Every stage of S-SONDO on the embedded demo corpus, in {total_seconds / 60:.1f} min.",
        "",
        "| stage | seconds | summary |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {s.stage} | {s.seconds:.1f} | {s.summary} |" for s in stages]
    lines += [
        "",
        "## Corpus",
        "",
        f"- {_link(report, out / 'corpus' / 'README.md', 'corpus README')} (sources, licences, sizes)",
        f"- {_link(report, work / 'manifests' / 'clips.parquet')} and "
        f"{_link(report, work / 'manifests' / 'rejects.parquet')}",
        f"- {_link(report, work / 'shards', 'WebDataset shards')}",
        "",
        "## Teacher caches",
        "",
    ]
    lines += [f"- {_link(report, work / 'cache' / (c + '.zarr'), c)}" for c in caches]
    lines += ["", "## Balanced sampling (k-means clusters of the teacher's clip embeddings)", ""]
    for name in ("manifest", "random", "metrics", "centroids"):
        if name in cluster_files:
            lines.append(f"- {name}: {_link(report, Path(cluster_files[name]))}")
    for name in ("sizes_png", "projection_png"):
        if name in cluster_files:
            lines.append(_image(report, Path(cluster_files[name]), name.replace("_png", "")))
    lines += ["", "## Students", ""]
    for label, result in train_results.items():
        run = Path(result.run)
        lines.append(f"### {label} sampling: {_link(report, run, run.name)}")
        lines.append("")
        lines.append(
            f"- validation cosine distance to the teacher: {result.val_cosine_distance_init:.3f} at start "
            f"-> {result.val_cosine_distance:.3f} at the end ({result.steps} steps, {result.samples} samples)"
        )
        lines.append(
            f"- {_link(report, run / 'student.pt')}, {_link(report, run / 'config.json')}, "
            f"{_link(report, run / 'metrics.jsonl')}"
        )
        lines.append(_image(report, run / "curves.png", f"{label} training curves"))
        lines.append("")
    lines += [
        "## Downstream probes (teacher, students, log-mel baseline)",
        "",
        f"Full table: {_link(report, report / 'eval' / 'results.md')} "
        f"({_link(report, report / 'eval' / 'results.json')})",
        "",
    ]
    if scores:
        tasks = sorted({t for per in scores.values() for t in per})
        lines.append("| model | " + " | ".join(tasks) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in tasks) + " |")
        for label, per in scores.items():
            lines.append(
                f"| {label} | " + " | ".join(f"{per.get(t, float('nan')):.3f}" for t in tasks) + " |"
            )
        lines.append("")
    lines.append(_image(report, report / "eval" / "results.png", "scores and retention"))
    lines += [
        "",
        "## Temporal-support sweep of the teacher",
        "",
        f"{_link(report, report / 'ts-sweep' / 'ts_sweep.md', 'ts_sweep.md')}",
        "",
        _image(report, report / "ts-sweep" / "ts_sweep.png", "score vs TS"),
        "",
    ]
    index = report / "index.md"
    write_text(index, "\n".join(lines) + "\n")
    return index
