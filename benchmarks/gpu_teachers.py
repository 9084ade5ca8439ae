"""Forward throughput of the full-size MATPAC++ teacher (ViT-B/16, 80x608, random weights) on one GPU.

Prints 6-s segments per second, from audio (front-end included) to the (B, 38, 3840) frame embeddings,
for four settings measured in this same run:
  fp32 eager (the baseline), bf16 autocast eager, bf16 autocast + torch.compile, and the same in "fast"
  mode; then each one's ratio to the baseline and the achieved TFLOP/s (matmul FLOPs of the encoder
  counted by torch.utils.flop_counter on one forward; the mel front-end is a few % and not counted).
Also checks that bf16 embeddings stay close to fp32 ones (mean cosine similarity).

    .venv/bin/python benchmarks/gpu_teachers.py                 # batch 256, 20 timed forwards each
    .venv/bin/python benchmarks/gpu_teachers.py --batch-size 512 --iters 30 --no-compile
    .venv/bin/python benchmarks/gpu_teachers.py --cpu-smoke-test   # checks the script only: no figures

Needs a CUDA device: without one it exits with status 1 and says so (never a CPU figure).
`--json PATH` writes the figures as rows of `make gpu-check`'s table.
DESIGN.md's target: ~12,000 segments/s on one H200 (compiled, bf16).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

SEGMENT_SECONDS = 6.0


def _time_forward(fn, audio: torch.Tensor, iters: int, warmup: int) -> float:
    """Seconds per forward (CUDA-synchronised wall clock, after warm-up forwards)."""
    sync = torch.cuda.synchronize if audio.is_cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(audio)
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            fn(audio)
        sync()
    return (time.perf_counter() - start) / iters


def _encoder_flops(teacher, audio: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        teacher(audio)
    return counter.get_total_flops()


def _analytic_flops(batch: int, tokens: int, dim: int, depth: int, patch_area: int) -> int:
    """2 x multiply-adds: per block qkv 3D^2 + proj D^2 + MLP 8D^2 per token, and 2 N^2 D for attention."""
    per_block = 2 * tokens * 12 * dim * dim + 4 * tokens * tokens * dim
    return batch * (depth * per_block + 2 * (tokens - 1) * patch_area * dim)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256, help="6-s segments per forward (default 256)")
    p.add_argument("--iters", type=int, default=20, help="timed forwards per setting (default 20)")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed forwards first (default 3; compile adds its own)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument("--no-fast", action="store_true", help="skip the compiled fast-mode setting")
    p.add_argument(
        "--json", default=None, help="also write the figures as table rows (benchmarks/gpu_check.py)"
    )
    p.add_argument(
        "--cpu-smoke-test", action="store_true", help="tiny ViT on the CPU: checks the script, no figures"
    )
    args = p.parse_args()

    size: dict = {}  # ViT-B
    if args.cpu_smoke_test:
        device, size = torch.device("cpu"), {"embed_dim": 64, "depth": 1, "num_heads": 1}
        args.batch_size, args.iters, args.warmup = 2, 2, 1
        print("CPU SMOKE TEST: checks this script runs; the numbers below mean nothing")
    elif not torch.cuda.is_available():
        print(
            "gpu_teachers: no CUDA device is available; this benchmark only measures GPU throughput.",
            file=sys.stderr,
        )
        return 1
    else:
        device = torch.device("cuda")

    from gpu_check import row, write_rows

    from ssondo_cache.teachers import build_teacher
    from ssondo_cache.teachers.base import compile_teacher

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baseline is true fp32
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    sr = 16000
    audio = torch.randn(args.batch_size, int(SEGMENT_SECONDS * sr), device=device) * 0.1
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, batch {args.batch_size} x 6-s segments")

    settings = [("fp32 eager (baseline)", {"amp": False}), ("bf16 eager", {"amp": True})]
    if not args.no_compile:
        settings += [("bf16 compiled", {"amp": True, "compile": True})]
        if not args.no_fast:
            settings += [("bf16 compiled, fast mode", {"amp": True, "compile": True, "mode": "fast"})]

    reference = None
    results = []
    for label, opts in settings:
        compiled = opts.pop("compile", False)
        teacher = build_teacher("matpac", device=device, random_init=True, seed=0, **size, **opts)
        forward = compile_teacher(teacher) if compiled else teacher
        warmup = args.warmup + (2 if compiled else 0)
        t0 = time.perf_counter()
        seconds = _time_forward(forward, audio, args.iters, warmup)
        setup = time.perf_counter() - t0 - seconds * args.iters
        with torch.inference_mode():
            out = forward(audio)[:16].float()  # same batch size: no recompilation
        if reference is None:
            reference = out
            flops = _encoder_flops(teacher, audio)
            c = teacher.encoder.cfg
            analytic = _analytic_flops(
                args.batch_size, 1 + c.num_patches, c.embed_dim, c.depth, c.patch_size[0] * c.patch_size[1]
            )
            print(
                f"encoder FLOPs per forward: {flops / 1e12:.2f} T counted, {analytic / 1e12:.2f} T analytic; "
                f"output {tuple(out.shape[1:])} per segment"
            )
        cosine = torch.nn.functional.cosine_similarity(out, reference, dim=-1).mean().item()
        rate = args.batch_size / seconds
        results.append((label, rate, flops / seconds / 1e12, cosine, setup))

    base = results[0][1]
    print(
        f"{'setting':28s} {'segments/s':>11s} {'x baseline':>10s} {'TFLOP/s':>8s} {'cos vs fp32':>11s} {'warm-up s':>9s}"
    )
    for label, rate, tflops, cosine, setup in results:
        print(f"{label:28s} {rate:11.0f} {rate / base:10.2f} {tflops:8.1f} {cosine:11.4f} {setup:9.1f}")
    write_rows(
        args.json,
        [
            row(
                "teacher forward",
                f"MATPAC {label}",
                rate,
                "segments/s",
                f"{rate / base:.2f}x fp32 eager; cos {cos:.4f}",
            )
            for label, rate, _, cos, _ in results
        ],
    )
    worst = min(r[3] for r in results)
    if worst < 0.99:
        print(f"WARNING: a setting's embeddings drift from fp32 (mean cosine {worst:.4f} < 0.99)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
