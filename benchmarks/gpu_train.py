"""Training throughput on a GPU: the training step alone vs the whole `ssondo train` loop.

- step alone: one fixed batch already on the device, repeated: front-end (log-mel), mixup,
  SpecAugment, student forward (bf16 autocast), cosine loss, backward, clipping, Adam, schedule;
- whole loop: `ssondo_distill.trainer.train` on a packed corpus (WAV shards + a zarr cache), its
  data-loader workers decoding and cropping while the GPU trains; samples/s from its
  metrics.jsonl, median over logging windows after the first (start-up excluded).
Target: whole loop >= 70 % of the step alone (the data path keeps the GPU fed).

    .venv/bin/python benchmarks/gpu_train.py                        # mn10, 3840-d teacher, batch 120
    .venv/bin/python benchmarks/gpu_train.py --student dymn10 --workers 14
    .venv/bin/python benchmarks/gpu_train.py --cpu-smoke-test       # checks the script only: no figures
Without a CUDA device it exits with status 2 (use --cpu-smoke-test to check the logic on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_check import row, write_rows  # benchmarks/gpu_check.py: the table's rows
from loader import make_data  # benchmarks/loader.py: the same synthetic corpus builder

from ssondo_distill.config import load_train_config
from ssondo_distill.schedule import build_scheduler
from ssondo_distill.step import batch_loss, build_parts
from ssondo_distill.trainer import train


def step_alone(
    cfg, teacher_dim: int, sample_rate: int, device: torch.device, batch: int, iters: int
) -> float:
    """Samples/s of the optimisation step on a device-resident batch."""
    parts = build_parts(cfg, teacher_dim, sample_rate, device)
    opt = torch.optim.Adam(parts.student.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg.schedule, 1000)
    length = int(cfg.clip_seconds * sample_rate)
    data = {
        "audio": torch.randint(-8000, 8000, (batch, length), dtype=torch.int16, device=device),
        "target": torch.randn(batch, teacher_dim, device=device),
        "cluster": torch.zeros(batch, dtype=torch.long, device=device),
    }

    def one() -> None:
        loss = batch_loss(parts, data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.student.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        sched.step()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return iters * batch / (time.perf_counter() - t0)


def whole_loop(cfg) -> float:
    """Median samples/s of the real trainer's logging windows, the first one left out."""
    train(cfg, progress=False)
    rates = [
        json.loads(line)["samples_per_s"]
        for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
        if "samples_per_s" in line
    ]
    if len(rates) < 2:
        raise SystemExit("too few logging windows to measure: raise --steps")
    return statistics.median(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="mn10")
    ap.add_argument("--teacher-dim", type=int, default=3840)
    ap.add_argument("--batch-size", type=int, default=120)
    ap.add_argument("--clips", type=int, default=960, help="unique clips in the corpus (10 s, 32 kHz, WAV)")
    ap.add_argument("--steps", type=int, default=120, help="steps of the whole loop")
    ap.add_argument("--iters", type=int, default=40, help="timed steps of the step alone")
    ap.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="data-loader workers"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the student in both measurements")
    ap.add_argument("--root", type=Path, default=None, help="keep the corpus here (default: temporary)")
    ap.add_argument("--json", default=None, help="also write the figures as table rows (gpu_check.py)")
    ap.add_argument(
        "--cpu-smoke-test", action="store_true", help="tiny run on the CPU: checks the script, no figures"
    )
    a = ap.parse_args()
    if a.cpu_smoke_test:
        device = torch.device("cpu")
        a.student, a.teacher_dim, a.batch_size, a.clips, a.steps, a.iters = "mn04", 32, 8, 32, 6, 2
        a.workers = min(a.workers, 2)
        print("CPU SMOKE TEST: checks this script runs; the numbers below mean nothing")
    elif not torch.cuda.is_available():
        print(
            "gpu_train.py measures a CUDA GPU and none is visible here (torch.cuda.is_available() is False).\n"
            "Run it on a GPU host; `--cpu-smoke-test` only checks the script's logic.",
            file=sys.stderr,
        )
        sys.exit(2)
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    root = a.root or Path(tempfile.mkdtemp(prefix="ssondo-bench-train-"))
    try:
        seconds = 10.0 if not a.cpu_smoke_test else 2.0
        t0 = time.perf_counter()
        work, *_ = make_data(root / "data", a.clips, seconds, 32000, a.teacher_dim, 1, k=16)
        print(
            f"corpus: {a.clips} clips of {seconds:g} s at 32 kHz (WAV shards), {a.teacher_dim}-d targets, "
            f"built in {time.perf_counter() - t0:.0f} s"
        )
        cfg = load_train_config(
            None,
            dict(
                work=str(work),
                cache="ts1-hop1",
                out=str(root / "run"),
                student=a.student,
                manifest="balanced-k16",
                clip_seconds=seconds,
                batch_size=a.batch_size,
                samples_per_epoch=a.steps * a.batch_size,
                epochs=1,
                num_workers=a.workers,
                val_clips=0,
                log_every=max(1, a.steps // 8),
                val_every=10**9,
                checkpoint_every=10**9,
                device=device.type,
                compile=a.compile,
                shuffle_buffer=1000,
            ),
        )
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        alone = step_alone(cfg, a.teacher_dim, 32000, device, a.batch_size, a.iters)
        print(
            f"device {name}; student {a.student}; batch {a.batch_size}; {a.workers} workers; "
            f"precision {'bf16' if device.type == 'cuda' else 'fp32'}{'; compiled' if a.compile else ''}"
        )
        print(f"training step alone : {alone:9.1f} samples/s")
        loop = whole_loop(cfg)
        print(f"whole training loop : {loop:9.1f} samples/s")
        ratio = loop / alone
        met = "met" if ratio >= 0.7 else "NOT met"
        print(f"ratio               : {100 * ratio:.0f} % (target >= 70 %: {met})")
        setting = f"{a.student}, batch {a.batch_size}{', compiled' if a.compile else ''}"
        write_rows(
            a.json,
            [
                row("training", f"step alone, {setting}", alone, "samples/s"),
                row(
                    "training", f"whole loop, {a.workers} workers", loop, "samples/s",
                    f"{100 * ratio:.0f} % of the step alone (target >= 70 %: {met})",
                ),
            ],
        )  # fmt: skip
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
