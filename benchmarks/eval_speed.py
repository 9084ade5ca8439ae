"""`ssondo eval` end to end on clips at mixed odd sample rates: today's data path against the one before.

    python benchmarks/eval_speed.py                        # 4 models x 200 clips (issue 17: 1,000)
    python benchmarks/eval_speed.py --clips 1000 --teacher yamnet
    python benchmarks/eval_speed.py --tasks A.csv B.csv --student RUN/student.pt --every 4   # issue 15

``--tasks``: the quality benchmark's eval instead (``run_evaluation`` as benchmarks/quality.py runs it:
live YAMNet at TS 0.96 s, the student at 2-s windows and its untrained twin, log-mel, 3 probe seeds,
1,000 bootstrap replicates) on every ``--every``-th row of each task CSV, into a fresh report folder;
prints CPU seconds (this process, all threads) and wall seconds, one JSON line. Run it with
``PYTHONPATH=<a worktree of another commit>`` to time that commit's eval on the same inputs.

Four models, as in a real report: a live teacher, a student (mn04, random weights, 32 kHz front-end),
its untrained twin (added by ``evaluate``) and the log-mel baseline, on one generated two-class task
(tones + noise, 1.0-1.8 s, mono and stereo) at the ``--rates`` given, so every model resamples: by
default half at common rates, half at odd ones (gcd 5-10 with 16/32 kHz: torchaudio's exact kernel
then costs 0.1-0.6 s per clip and model, measured here).

- new: ``evaluate`` as shipped: each file decoded and resampled (libsoxr) once per target rate for all
  models, into REPORT/decoded;
- old, measured in the same run: every model decodes every file again and resamples it with
  torchaudio's exact polyphase kernel (what ``tasks.audio.read_audio`` did before).

Same models, probe and bootstrap for both, after one untimed warm-up run on a few clips (first
calls into torch cost more); each run writes its own report folder (no shared embedding cache). Prints seconds end to end (``--clock cpu``: CPU seconds, for a loaded machine), per-model embedding seconds and the ratios. The
default rates leave out rates whose ratio to 16/32 kHz has gcd 1 (11,127 Hz): there the old path
spends 15 s to minutes on every clip (give ``--rates 11127`` to see it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import soundfile as sf
import torch

from ssondo_eval.embedders import LogMelStatsEmbedder, StudentEmbedder, TeacherEmbedder
from ssondo_eval.evaluate import embedding_seconds, evaluate
from ssondo_eval.probe import ProbeConfig
from ssondo_eval.tasks.audio import fit_length
from ssondo_eval.tasks.base import Task, TaskItem


def old_read_audio(path, sample_rate: int, clip_seconds: float | None = None) -> np.ndarray:
    """The reading before: float32 channel mean, torchaudio's resample, per model."""
    import torchaudio.functional as AF

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = data.mean(axis=1)
    if sr != sample_rate:
        audio = AF.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
    return fit_length(audio, sample_rate, clip_seconds)


def make_task(root: Path, n: int, rates: list[int]) -> Task:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        sr, cls = rates[i % len(rates)], ("low", "high")[(i // len(rates)) % 2]
        t = np.arange(int(rng.uniform(1.0, 1.8) * sr)) / sr
        f0 = (220.0 if cls == "low" else 1760.0) * rng.uniform(0.9, 1.1)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
        x = x[:, None] if i % 3 else np.stack([x, 0.9 * x], axis=1)  # every third clip stereo
        path = root / f"clip{i:05d}.wav"
        sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
        split = ("train",) * 6 + ("valid", "valid", "test", "test")
        items.append(TaskItem(path=path, labels=(cls,), split=split[i % 10]))
    return Task(name="odd-rates", items=items, classes=["high", "low"], multilabel=False, clip_seconds=None)


def student_checkpoint(path: Path) -> Path:
    from ssondo_distill.checkpoint import save_student
    from ssondo_distill.config import TrainConfig
    from ssondo_distill.step import build_parts

    cfg = TrainConfig(student="mn04", seed=0, device="cpu")
    parts = build_parts(cfg, teacher_dim=64, stream_rate=32000, device=torch.device("cpu"))
    return save_student(path, parts.student, parts.frontend, "bench-000000000000", 64, extra={"seed": 0})


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU s (all threads)


def run(
    models, task: Task, out: Path, probe: ProbeConfig, bootstrap: int, old: bool, clock
) -> tuple[float, dict]:
    with ExitStack() as stack:
        if old:
            stack.enter_context(mock.patch("ssondo_eval.tasks.audio.read_audio", old_read_audio))
            stack.enter_context(mock.patch("ssondo_eval.evaluate.with_decoded_audio", lambda tasks, _: tasks))
        t0 = clock()
        report = evaluate(models, [task], out, probe_config=probe, progress=False, bootstrap=bootstrap)
        return clock() - t0, report


def subset_csvs(csvs: list[Path], every: int, out: Path) -> list[Path]:
    """Every ``every``-th row of each task CSV (file order kept), paths made absolute, into ``out``."""
    import csv

    out.mkdir(parents=True)
    written = []
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [r for i, r in enumerate(reader) if i % every == 0]
            fields = reader.fieldnames
        for r in rows:
            r["path"] = str((path.parent / r["path"]).resolve())
        written.append(out / path.name)
        with open(written[-1], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return written


def quality_eval(args: argparse.Namespace) -> None:
    """The quality benchmark's eval stage on (a subset of) its tasks: CPU and wall seconds."""
    from ssondo_eval.evaluate import run_evaluation

    tmp = Path(tempfile.mkdtemp(prefix="ssondo-bench-qeval-"))
    try:
        csvs = subset_csvs([Path(c) for c in args.tasks], args.every, tmp / "tasks")
        for c in csvs:  # a warm page cache for every run
            for line in c.read_text().splitlines()[1:]:
                Path(line.split(",")[0]).read_bytes()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = run_evaluation(
            [args.student],
            [str(c) for c in csvs],
            tmp / "report",
            teacher="yamnet",
            teacher_ts=0.96,
            ts=2.0,
            device="cpu",
            progress=False,
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        emb = {m["label"]: embedding_seconds(report["scores"][m["label"]]) for m in report["models"]}
        means = {
            lab: {t: round(100 * r["mean"], 2) for t, r in v.items()} for lab, v in report["scores"].items()
        }
        clips = {t["name"]: t["n_items"] for t in report["tasks"]}
        print(f"quality eval on {clips} clips: {cpu:.1f} CPU s, {wall:.1f} s wall; embedding wall s {emb}")
        print(json.dumps({"benchmark": "eval_speed quality", "every": args.every, "clips": clips,
                          "torch_threads": torch.get_num_threads(), "cpu_s": cpu, "wall_s": wall,
                          "embedding_wall_s": emb, "scores": means}))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", help="task CSVs: time the quality benchmark's eval on them")
    ap.add_argument("--student", help="with --tasks: the student checkpoint (student.pt)")
    ap.add_argument("--every", type=int, default=1, help="with --tasks: keep every N-th row of each CSV")
    ap.add_argument("--clips", type=int, default=200, help="clips in the task (issue 17's target: 1000)")
    ap.add_argument("--rates", default="11025,22050,44100,24010,30030,12345", help="input sample rates")
    ap.add_argument("--teacher", default="yamnet", help="live teacher spec (yamnet: real, offline, 16 kHz)")
    ap.add_argument("--teacher-option", action="append", default=[], help="KEY=VALUE for the teacher")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument(
        "--probe-option", action="append", default=[], help="KEY=JSON for ProbeConfig, e.g. max_epochs=20"
    )
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU seconds (loaded machine)"
    )
    args = ap.parse_args()
    if args.tasks:
        if not args.student:
            ap.error("--tasks needs --student")
        return quality_eval(args)
    torch.set_num_threads(1)
    rates = [int(r) for r in args.rates.split(",")]
    options = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.teacher_option)}

    tmp = Path(tempfile.mkdtemp(prefix="ssondo-bench-eval-"))
    try:
        (tmp / "audio").mkdir()
        task = make_task(tmp / "audio", args.clips, rates)
        for item in task.items:  # both runs start from a warm page cache
            item.path.read_bytes()
        models = [
            TeacherEmbedder(args.teacher, ts="full", device="cpu", **options),
            StudentEmbedder(student_checkpoint(tmp / "student.pt"), ts=10.0, device="cpu"),
            LogMelStatsEmbedder(),
        ]
        probe = ProbeConfig(**{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.probe_option)})
        print(
            f"task: {args.clips} clips of 1.0-1.8 s at {rates} Hz; models: teacher {args.teacher}, "
            "student mn04 + its untrained twin, log-mel; 1 torch thread"
        )
        (tmp / "warm").mkdir()  # untimed warm-up on 10 clips
        run(
            models,
            make_task(tmp / "warm", 10, rates),
            tmp / "report-warm",
            probe,
            args.bootstrap,
            False,
            time.time,
        )
        results = {}
        for name, old in (("new", False), ("old", True)):
            wall, report = run(
                models, task, tmp / f"report-{name}", probe, args.bootstrap, old, CLOCKS[args.clock]
            )
            per_model = {
                m["label"]: embedding_seconds(report["scores"][m["label"]]) for m in report["models"]
            }
            results[name] = {"seconds": wall, "embedding_s": per_model}
            print(
                f"{name}: {wall:7.1f} s end to end ({args.clock} clock); embedding s (wall): "
                + ", ".join(f"{k} {v:.1f}" for k, v in per_model.items())
            )
        new, old = results["new"], results["old"]
        emb_new, emb_old = sum(new["embedding_s"].values()), sum(old["embedding_s"].values())
        print(
            f"speed-up old/new: x{old['seconds'] / new['seconds']:.2f} end to end (target >= 5), "
            f"x{emb_old / emb_new:.2f} embedding (decode + resample + model) over the {len(per_model)} models"
        )
        decoded = sum(p.stat().st_size for p in (tmp / "report-new" / "decoded").rglob("*.npy"))
        print(
            json.dumps(
                {
                    "benchmark": "eval_speed",
                    "clips": args.clips,
                    "rates": rates,
                    "teacher": args.teacher,
                    "clock": args.clock,
                    "probe_options": args.probe_option,
                    "decoded_cache_mb": decoded / 1e6,
                    **results,
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
