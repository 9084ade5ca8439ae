"""Where a static int8 export loses its agreement with fp32: layer by layer, and clip by clip.

The int8 model of ``ssondo export --int8`` (``quantize.calibrate_module`` + ``convert_module``, with or
without ``quantize_bias.correct_bias``) and the fp32 model it came from run the same held-out packed
clips; a forward hook on every leaf module the two share by name records its output (int8 outputs
dequantised). Per layer: the relative error ||int8 - fp32|| / ||fp32|| over the clips and the least
per-clip cosine, each int8 layer fed by the int8 layers before it (the error as it accumulates, not
each layer alone). Per clip: the cosine of the export's output and both output norms. With
``--channel-ranges``, for every BatchNorm / activation output: the per-tensor range that one 8-bit
activation scale must cover over the median per-channel range (a large ratio is what cross-layer
equalisation would fix).

    .venv/bin/python benchmarks/int8_layers.py --run RUN --what embedding
    .venv/bin/python benchmarks/int8_layers.py --run RUN --no-bias-correction --channel-ranges

Accuracy only: nothing is timed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

from ssondo_distill import quantize
from ssondo_distill.export import WHATS, int8_inputs
from ssondo_distill.quantize_bias import correct_bias


def _record(models: dict[str, nn.Module], names: list[str]) -> dict[str, dict[str, list[Tensor]]]:
    """tag -> layer name -> its (1, N) outputs, one per forward, filled by hooks."""
    outs: dict[str, dict[str, list[Tensor]]] = {tag: {} for tag in models}
    for tag, model in models.items():
        modules = dict(model.named_modules())
        for name in names:

            def hook(_m: nn.Module, _i: object, o: object, tag: str = tag, name: str = name) -> None:
                if isinstance(o, Tensor):
                    o = o.dequantize() if o.is_quantized else o
                    outs[tag].setdefault(name, []).append(o.detach().double().flatten(1))

            modules[name].register_forward_hook(hook)
    return outs


def _shared_leaves(a: nn.Module, b: nn.Module) -> list[str]:
    mb = dict(b.named_modules())
    return [
        n
        for n, m in a.named_modules()
        if n and not list(m.children()) and n in mb and not n.startswith("frontend")
    ]


def _channel_ranges(deploy: nn.Module, clips: Tensor) -> None:
    seen: dict[str, list[Tensor]] = {}

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def record(_m: nn.Module, _i: object, o: Tensor) -> None:
            a = o.detach().transpose(0, 1).flatten(1)  # (C, B * H * W)
            hi, lo = a.amax(1), a.amin(1)
            s = seen.setdefault(name, [hi, lo])
            s[0], s[1] = torch.maximum(s[0], hi), torch.minimum(s[1], lo)

        return record

    for name, m in deploy.backbone.named_modules():
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.Hardswish)):
            m.register_forward_hook(hook(name))
    with torch.inference_mode():
        for clip in clips:
            deploy(clip[None])
    print(
        "\nper-channel ranges (calibration clips): layer, channels, tensor range, median channel range, ratio"
    )
    for name, (hi, lo) in seen.items():
        span = hi - lo.clamp(max=0)
        whole, median = float(span.max()), float(span.median())
        print(f"{name:45s} {len(hi):5d} {whole:8.3f} {median:8.3f} {whole / max(median, 1e-9):6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="training RUN folder (student.pt)")
    ap.add_argument("--work", type=Path, default=None, help="calibration workspace (default: the RUN's own)")
    ap.add_argument("--what", choices=WHATS, default="embedding")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--calibrate", type=int, default=quantize.CALIBRATION_CLIPS)
    ap.add_argument("--check", type=int, default=16, help="held-out clips compared")
    ap.add_argument("--no-bias-correction", action="store_true", help="int8 as converted, not bias-corrected")
    ap.add_argument("--channel-ranges", action="store_true", help="also the per-channel activation ranges")
    args = ap.parse_args()
    torch.set_num_threads(1)

    ckpt = args.run / "student.pt"
    work = quantize.resolve_workspace(ckpt, args.work)
    deploy, name, cs = int8_inputs(ckpt, args.what, work, args.calibrate, args.clip_seconds, args.check)
    prepared = quantize.calibrate_module(deploy, cs.calibrate, name)  # fp32 forward, observers only
    int8, _, _ = quantize.convert_module(prepared, name)
    if not args.no_bias_correction:
        correct_bias(prepared, int8, cs.calibrate, kinds=("conv",))
    names = _shared_leaves(prepared, int8)
    outs = _record({"fp32": prepared, "int8": int8}, names)

    bc = "without" if args.no_bias_correction else "with"
    print(
        f"{name} {args.what}, int8 {bc} bias correction; {len(cs.calibrate)} calibrating, {len(cs.check)} "
        f"held-out {args.clip_seconds:g}-s clips of {work}"
    )
    print("\nper clip: key, cosine int8 vs fp32, |fp32|, |int8|")
    with torch.inference_mode():
        for key, clip in zip(cs.keys[len(cs.calibrate) :], cs.check, strict=True):
            ref, got = prepared(clip[None]).double(), int8(clip[None]).double()
            cos = float(nn.functional.cosine_similarity(ref, got))
            print(f"{key[:48]:48s} {cos:8.4f} {float(ref.norm()):8.3f} {float(got.norm()):8.3f}")
    print("\nper layer (int8 fed by int8): layer, int8 type, relative error, least per-clip cosine")
    for layer in names:
        a, b = outs["fp32"].get(layer), outs["int8"].get(layer)
        if not a or not b or a[0].shape != b[0].shape:
            continue
        ref, got = torch.cat(a), torch.cat(b)
        rel = float((got - ref).norm() / ref.norm().clamp(min=1e-12))
        cos = float(nn.functional.cosine_similarity(ref, got, dim=1).min())
        print(f"{layer:55s} {type(dict(int8.named_modules())[layer]).__name__:20s} {rel:8.4f} {cos:8.4f}")
    if args.channel_ranges:
        _channel_ranges(deploy, cs.calibrate)


if __name__ == "__main__":
    main()
