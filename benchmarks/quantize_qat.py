"""int8 agreement with fp32 of a trained student: static int8 (with and without bias correction) vs
quantisation-aware fine-tuning (``ssondo_distill.quantize_qat``) for a few step counts.

Per-clip cosine of the int8 output to fp32 on held-out packed clips (``quantize.calibration_set``:
``--calibrate`` calibrating clips, ``held_out`` of them checked), min / mean; for each fine-tune also
the fake-quant model's cosine (the fp32 simulation it trains), its loss on the calibration clips before
and after, the CPU seconds it took, and the int8 model bias-corrected after fine-tuning.

    .venv/bin/python benchmarks/quantize_qat.py --run RUN --what projection --steps 0 100 300 1000

Step count 0 is static int8 (``quantize.quantize_module``'s calibration and conversion). Accuracy only:
nothing here is timed against anything else.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ssondo_distill import quantize, quantize_qat
from ssondo_distill.export import WHATS, int8_inputs
from ssondo_distill.quantize_bias import correct_bias


def _cosines(model: torch.nn.Module, clips: torch.Tensor, ref: torch.Tensor) -> str:
    with torch.inference_mode():
        got = torch.cat([model(c[None]) for c in clips]).double()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    return f"{cos.min():.5f} / {cos.mean():.5f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="training RUN folder (student.pt)")
    ap.add_argument("--work", type=Path, default=None, help="calibration workspace (default: the RUN's own)")
    ap.add_argument("--what", choices=WHATS, default="projection")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--calibrate", type=int, default=quantize.CALIBRATION_CLIPS)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 100, 300, 1000])
    ap.add_argument("--lr", type=float, default=quantize_qat.LR)
    ap.add_argument("--batch", type=int, default=quantize_qat.BATCH)
    ap.add_argument("--crop-seconds", type=float, default=quantize_qat.CROP_SECONDS)
    ap.add_argument("--start", choices=quantize_qat.STARTS, default=quantize_qat.START)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = args.run / "student.pt"
    work = quantize.resolve_workspace(ckpt, args.work)
    deploy, name, cs = int8_inputs(ckpt, args.what, work, args.calibrate, args.clip_seconds)
    sr = deploy.frontend.cfg.sample_rate
    with torch.inference_mode():
        ref = torch.cat([deploy(c[None]) for c in cs.check]).double()
    print(
        f"{name} {args.what}: {len(cs.calibrate)} calibrating, {len(cs.check)} held-out {args.clip_seconds:g}-s "
        f"clips of {work}; lr {args.lr}, batch {args.batch}, crops {args.crop_seconds:g} s, start {args.start}; "
        "per-clip cosine to fp32, min / mean",
        flush=True,
    )
    for steps in args.steps:
        t0 = time.process_time()
        if steps == 0:
            prepared = quantize.calibrate_module(deploy, cs.calibrate, name)
            static, _, _ = quantize.convert_module(prepared, name)
            print(f"static int8: {_cosines(static, cs.check, ref)}", flush=True)
            correct_bias(prepared, static, cs.calibrate, kinds=("conv",))
            cpu = time.process_time() - t0
            print(
                f"static int8 + bias correction: {_cosines(static, cs.check, ref)}  cpu {cpu:.0f} s",
                flush=True,
            )
            continue
        qat, log = quantize_qat.finetune(
            deploy,
            cs.calibrate,
            steps,
            name,
            lr=args.lr,
            batch=args.batch,
            crop=int(args.crop_seconds * sr),
            start=args.start,
        )
        cpu = time.process_time() - t0
        tuned, _, _ = quantize.convert_module(qat, name)
        print(
            f"fine-tuned {steps}: int8 {_cosines(tuned, cs.check, ref)}  fake-quant {_cosines(qat, cs.check, ref)}"
            f"  loss {log.loss_before:.5f} -> {log.loss_after:.5f}  cpu {cpu:.0f} s",
            flush=True,
        )
        correct_bias(
            quantize.calibrate_module(deploy, cs.calibrate, name), tuned, cs.calibrate, kinds=("conv",)
        )
        print(f"fine-tuned {steps} + bias correction: int8 {_cosines(tuned, cs.check, ref)}", flush=True)


if __name__ == "__main__":
    main()
