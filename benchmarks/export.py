"""CPU latency of an exported student vs the eager student, and the size of each export file.

A student (random weights, BatchNorm statistics from a forward pass over noise, as a trained one
would have real ones) is saved with ``save_student`` into a temporary RUN folder and exported with
``export_student`` as TorchScript and ONNX, fp32 and int8. Every export is verified against the
eager model before it is kept (``export_student`` raises otherwise), then timed by it: median ms
per clip at batch 1 on ``--threads`` CPU threads, eager fp32 and exported run alternately in this
process so that both see the same machine load. Ratio = eager ms / exported ms (> 1: the export
is faster). Sizes are those of the files written; the checkpoint's size is printed for reference.

    .venv/bin/python benchmarks/export.py                     # mn10 + 768-d head, 10-s clips, 10 repeats
    .venv/bin/python benchmarks/export.py --repeats 3         # quicker
    .venv/bin/python benchmarks/export.py --student dymn10 --what embedding

int8 (``--int8`` of ``ssondo export``) quantises the Linear layers only (SE gates and the head):
on a convolutional student most of the time is in convolutions, which stay fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ssondo_distill.checkpoint import save_student
from ssondo_distill.export import FORMATS, WHATS, export_student
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.students import build_student


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(prefix="ssondo-bench-export-") as tmp:
        run = make_run(Path(tmp), args.student, args.teacher_dim)
        ckpt_mb = (run / "student.pt").stat().st_size / 1e6
        for fmt in args.formats:
            for int8 in (False,) if args.no_int8 else (False, True):
                t0 = time.perf_counter()
                res = export_student(
                    run,
                    fmt,
                    int8=int8,
                    what=args.what,
                    clip_seconds=args.clip_seconds,
                    repeats=args.repeats,
                    threads=args.threads,
                )
                rows.append((res, time.perf_counter() - t0))

    lat = rows[0][0].latency
    print(
        f"student {args.student} ({args.what}, {rows[0][0].out_dim}-d; head -> {args.teacher_dim}-d), "
        f"random weights; CPU, batch 1, {lat['clip_seconds']:g}-s clip, {lat['threads']} thread(s), "
        f"median of {lat['repeats']}; checkpoint student.pt {ckpt_mb:.2f} MB"
    )
    print(
        f"{'export':<18} {'eager ms':>9} {'export ms':>10} {'ratio':>7} {'size MB':>8} "
        f"{'int8 ops':>8} {'max rel diff':>12} {'min cos':>9} {'took s':>7}"
    )
    for res, took in rows:
        lat, v = res.latency, res.verification
        name = f"{res.fmt} {'int8' if res.int8 else 'fp32'}"
        print(
            f"{name:<18} {lat['eager_ms']:>9.1f} {lat['exported_ms']:>10.1f} {lat['speedup']:>6.2f}x "
            f"{res.size_bytes / 1e6:>8.2f} {v['int8_quantized_ops']:>8d} {v['max_rel_diff']:>12.2e} "
            f"{v['min_cosine']:>9.6f} {took:>7.1f}"
        )
    print("ratio = eager ms / exported ms (> 1: the export is faster), both timed alternately in this run")


if __name__ == "__main__":
    main()
