"""Where the int8 TorchScript export of a student spends its time: torch.profiler over the traced
int8 model at batch 1 (one clip), each op's self CPU time summed into segments (front-end, int8
convolutions, quantize / dequantize, Linear layers, pooling, hardswish, elementwise, the rest).

The int8 model is ``quantize.quantize_module``'s, as ``ssondo export --int8`` traces it; bias
correction is left out (it changes biases, not the graph). ``--gates-int8``, ``--dense-mel`` and
``--no-freeze`` put back what the export used to do (squeeze-excitation gates in int8, the dense mel
projection, an unfrozen trace),
so that each lever's share shows in the same process. Profiled times include the profiler's own
overhead and the machine's load: read the shares, time with ``benchmarks/export.py``.

    .venv/bin/python benchmarks/export_profile.py --run RUN --what projection
    .venv/bin/python benchmarks/export_profile.py --student mn10 --work WORK --gates-int8 --dense-mel --no-freeze
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ssondo_distill import quantize
from ssondo_distill.export import WHATS, int8_inputs

# profiler op name -> segment (first matching rule wins; else "other")
SEGMENTS = (
    ("front-end: STFT", ("aten::_fft_r2c", "aten::stft", "aten::real", "aten::imag")),
    (
        "front-end: power, mel, log",
        ("aten::pow", "aten::bmm", "aten::mm", "aten::matmul", "aten::log", "aten::cat"),
    ),
    ("int8 convolutions", ("quantized::conv",)),
    (
        "quantize / dequantize",
        ("aten::quantize_per_tensor", "aten::dequantize", "aten::_empty_affine_quantized"),
    ),
    ("Linear layers", ("quantized::linear", "aten::addmm", "aten::linear")),
    ("hardswish", ("quantized::hardswish",)),
    ("pooling (mean)", ("aten::mean", "aten::sum", "aten::div_")),
    (
        "elementwise (add, mul, sigmoid)",
        ("quantized::add", "quantized::mul", "aten::mul", "aten::add", "aten::sigmoid"),
    ),
)


def segment(op: str) -> str:
    for name, prefixes in SEGMENTS:
        if any(op == p or op.startswith(p) for p in prefixes):
            return name
    return "other"


def profile(
    ckpt: Path,
    work: Path,
    what: str,
    clip_seconds: float,
    calibrate: int,
    repeats: int,
    gates_int8: bool,
    dense_mel: bool,
    freeze: bool,
) -> None:
    deploy, name, cs = int8_inputs(ckpt, what, work, calibrate, clip_seconds, check=1)
    qmap = quantize.qconfig_mapping(deploy, quantize.fp32_modules(deploy)) if gates_int8 else None
    q, n, convs = quantize.quantize_module(deploy, cs.calibrate, name, qmap, bias_correction=False)
    if dense_mel:
        q.frontend = deploy.frontend
    x = cs.check[:1]  # (1, S)
    with torch.inference_mode():
        traced = torch.jit.trace(q, x, check_trace=False)
        traced = torch.jit.freeze(traced.eval()) if freeze else traced  # as export._trace does
        for _ in range(3):
            traced(x)
        with torch.profiler.profile() as prof:
            for _ in range(repeats):
                traced(x)
    per = {}
    for e in prof.key_averages():
        per[segment(e.key)] = per.get(segment(e.key), 0.0) + e.self_cpu_time_total / repeats / 1e3
    total = sum(per.values())
    print(
        f"{name} {what} int8 TorchScript ({n} int8 layers, {convs} convolutions; gates "
        f"{'int8' if gates_int8 else 'fp32'}, {'dense' if dense_mel else 'banded'} mel, {'frozen' if freeze else 'not frozen'}), batch 1, "
        f"{clip_seconds:g}-s clip, {torch.get_num_threads()} thread(s): {total:.2f} ms per forward "
        f"(profiled self CPU, mean of {repeats})"
    )
    for name, ms in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34} {ms:6.2f} ms  {100 * ms / total:5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a trained RUN (default: random weights)")
    ap.add_argument("--student", default="mn04", help="student with random weights when no --run")
    ap.add_argument("--work", type=Path, default=None, help="calibration workspace (default: the RUN's)")
    ap.add_argument("--what", choices=WHATS, default="projection")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--calibrate", type=int, default=8, help="calibration clips (default 8)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--gates-int8", action="store_true", help="squeeze-excitation gates int8 (the old export)"
    )
    ap.add_argument("--dense-mel", action="store_true", help="the dense mel projection (the old export)")
    ap.add_argument(
        "--no-freeze", action="store_true", help="trace without torch.jit.freeze (the old export)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or (quantize.run_workspace(args.run / "student.pt") if args.run else None)
    if work is None:
        ap.error("pass --work WORK (a folder made by `ssondo pack`) to calibrate on")
    with tempfile.TemporaryDirectory(prefix="ssondo-profile-") as tmp:
        if args.run is not None:
            ckpt = args.run / "student.pt"
        else:
            from export import make_run  # benchmarks/export.py, beside this script

            ckpt = make_run(Path(tmp), args.student, 768) / "student.pt"
        profile(
            ckpt,
            work,
            args.what,
            args.clip_seconds,
            args.calibrate,
            args.repeats,
            args.gates_int8,
            args.dense_mel,
            not args.no_freeze,
        )


if __name__ == "__main__":
    main()
