"""MATPAC(++) pretraining throughput on a GPU: segments/s of one ViT-B optimisation step.

The step is the loop's (ssondo_distill/pretrain/loop.py): log-mel of 6.08-s segments at 16 kHz,
random 70 % mask, online encoder on the visible patches, EMA target encoder on the masked ones,
predictor (5 MCL heads with --mcl), K=2048 prototype heads, both losses, backward, clipping, AdamW,
schedule, EMA updates. The batch is device-resident (the data path is gpu_train.py's business).
Baseline in the same run: the same encoder's inference forward over the same segments (what
extraction does per segment), so the ratio says what one training segment costs in forwards.

    .venv/bin/python benchmarks/gpu_pretrain.py                    # ViT-B, batch 128, MATPAC++, bf16
    .venv/bin/python benchmarks/gpu_pretrain.py --batch-size 256 --compile
    .venv/bin/python benchmarks/gpu_pretrain.py --cpu-smoke-test   # checks the script only: no figures
Without a CUDA device it exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from gpu_check import row, write_rows  # benchmarks/gpu_check.py: the table's rows

from ssondo_distill.pretrain.config import load_pretrain_config
from ssondo_distill.pretrain.data import chunk_samples
from ssondo_distill.pretrain.loop import lr_factor
from ssondo_distill.pretrain.model import MatpacModel

REPO = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    """Seconds per call after 3 warm-up calls."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "pretrain" / "matpac-vitb-gpu.yaml")
    ap.add_argument("--batch-size", type=int, default=128, help="segments per step on this GPU")
    ap.add_argument("--iters", type=int, default=10, help="timed steps")
    ap.add_argument("--mcl", action=argparse.BooleanOptionalAction, default=True, help="MATPAC++ heads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--json", default=None, help="also write the figures as table rows (gpu_check.py)")
    ap.add_argument("--cpu-smoke-test", action="store_true", help="tiny model on the CPU: no figures")
    a = ap.parse_args()
    over = {"work": "-", "out": "-", "batch_size": a.batch_size, "samples_per_epoch": 100 * a.batch_size}
    if a.cpu_smoke_test:
        device = torch.device("cpu")
        a.config, a.batch_size, a.iters = REPO / "configs" / "pretrain" / "matpac-tiny-cpu.yaml", 4, 2
        over.update(batch_size=4, samples_per_epoch=400)
        print("CPU SMOKE TEST: checks this script runs; the numbers below mean nothing")
    elif not torch.cuda.is_available():
        print("gpu_pretrain.py measures a CUDA GPU and none is visible here.", file=sys.stderr)
        sys.exit(2)
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_pretrain_config(a.config, over, mcl_enabled=a.mcl)
    torch.manual_seed(0)
    model = MatpacModel(cfg).to(device).train()
    if a.compile:
        model.compile_blocks()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 100, cfg.total_steps))
    bf16 = device.type == "cuda"
    audio = 0.1 * torch.randn(a.batch_size, chunk_samples(cfg.encoder.frames, 16000), device=device)
    gen = torch.Generator().manual_seed(0)
    step = [0]

    def train_step() -> None:
        mask = model.make_mask(a.batch_size, gen)
        mask = type(mask)(*(t.to(device, non_blocking=True) for t in (mask.keep, mask.masked, mask.restore)))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(model.log_mel(audio), mask, step[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step[0] += 1
        model.momentum_update(step[0])

    @torch.no_grad()
    def forward_only() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            model.online.encoder(model.log_mel(audio).unsqueeze(1))

    t_step = timed(train_step, a.iters, device)
    t_fwd = timed(forward_only, a.iters, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    e = cfg.encoder
    what = f"{'MATPAC++' if a.mcl else 'MATPAC'} ViT {e.embed_dim}x{e.depth}, {e.frames} frames, K {cfg.prototypes.prototypes}"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(
        f"device {name}; {what}; batch {a.batch_size}; {'bf16' if bf16 else 'fp32'}{'; compiled' if a.compile else ''}"
    )
    print(
        f"training step     : {a.batch_size / t_step:9.1f} segments/s ({1000 * t_step:.1f} ms/step, peak {peak:.1f} GiB)"
    )
    print(
        f"encoder forward   : {a.batch_size / t_fwd:9.1f} segments/s (baseline: inference on the same segments)"
    )
    print(f"ratio             : one training segment costs {t_step / t_fwd:.1f} forwards")
    setting = f"{what}, batch {a.batch_size}{', compiled' if a.compile else ''}"
    write_rows(
        a.json,
        [
            row("pretraining", f"step, {setting}", a.batch_size / t_step, "segments/s",
                f"{t_step / t_fwd:.1f} x the encoder's inference forward; peak {peak:.1f} GiB"),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
