"""Static post-training int8 of an export: convolutions and Linear layers, calibrated on packed clips.

Calibration clips come from a workspace's shards (``WORK/shards``, the clips the student was
trained on, or any other packed set at the student's sample rate): the first ``n`` clips taken
round-robin over the shards (deterministic), cut to the export's clip length (a centred crop;
a shorter clip is repeated to fill it, so that no stretch of digital silence skews the ranges).
A further ``held_out(n)`` clips, never seen by calibration, check the int8 model against fp32.

Both flows use 8-bit unsigned activations and per-channel symmetric weights on 7 bits
([-64, 63]). Why 7-bit weights: x86 int8 kernels without VNNI (AVX2) multiply uint8 x int8 pairs
into a saturating int16 (vpmaddubsw); 255 x 64 x 2 fits, 255 x 128 x 2 does not, so results would
depend on the CPU's ISA. torch's own "x86" qconfig avoids it with 7-bit activations instead, which
measured worse on the demo's trained mn04 (per-clip cosine of the embedding to fp32 on 8 held-out
2-s demo clips: min 0.969, mean 0.993; 8-bit activations with per-tensor 8-bit weights: min 0.995,
mean 0.998; 7-bit per-channel weights, on the projection: min 0.994, mean 0.998).

Not every layer is worth its error: ``KEEP_FP32`` names the roles left in fp32 (the first
convolution, whose input is the log-mel itself; the activation the embedding pools; the head's last
Linear, whose output is the export's output) and ``KEEP_FP32_OPS`` the ops (the mean pooling),
chosen by putting one part at a time back to int8 (``benchmarks/export.py --sensitivity``) on a
trained mn04 (/tmp/lever noaug_steps2k_balanced; projection, 2-s crops; per-clip cosine to fp32,
min / mean): everything int8 0.890 / 0.982 on 32 held-out clips (32 calibrating), 0.835 / 0.971 on 16
(64 calibrating); this choice 0.997 / 0.9997 and 0.972 / 0.9978. Put back to int8, the stem alone
costs the most (0.890 / 0.986, 0.869 / 0.977), then the output Linear (0.979 / 0.996, 0.972 / 0.995);
the pooled activation and the mean change little (<= 1e-4 in mean); the squeeze-excitation gates
nothing (so they are int8). The kept layers are a small share of the compute.

TorchScript: torch.ao's FX flow (``prepare_fx`` / ``convert_fx``, histogram observers for the
activations, the x86 mapping's fixed ranges for sigmoid-like ops). The front-end stays fp32 (not
traced, not quantised): an int8 mel would change every input the student sees. PT2E is not used:
in torch 2.14 it lives in ``torchao``, not a dependency here. ONNX: ``quantize_onnx``.

Rounding still differs between kernels (fbgemm, MLAS, per ISA): the int8 output is not
bit-identical across machines; what holds everywhere is its agreement with fp32 (the cosine).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssondo_cache.shards import iter_shard
from ssondo_cache.workspace import Workspace

from .export_check import ExportError, quiet_export

CALIBRATION_CLIPS = 64  # default number of calibration clips
FX_BACKEND = "x86"
WEIGHT_RANGE = (-64, 63)  # 7-bit symmetric weights (see the module doc)


def held_out(n: int) -> int:
    """Clips kept apart from ``n`` calibration clips to check int8 against fp32."""
    return max(2, n // 4)


@dataclass(frozen=True)
class CalibrationSet:
    work: Path
    calibrate: Tensor  # (n, samples) float32, packed clips the quantiser sees
    check: Tensor  # (m, samples) float32, held-out packed clips for the int8 vs fp32 check
    keys: tuple[str, ...]  # n + m clip keys, calibration first

    def describe(self) -> dict[str, Any]:
        return {
            "work": str(self.work.resolve()),
            "clips": len(self.calibrate),
            "check_clips": len(self.check),
            "samples": self.calibrate.shape[1],
            "first_keys": list(self.keys[:3]),
            "selection": "round-robin over WORK/shards in shard order; centred crop, shorter clips repeated",
        }


def run_workspace(checkpoint: Path) -> Path | None:
    """The workspace a training RUN read (``RUN/config.json`` -> config.work), if recorded."""
    cfg = checkpoint.parent / "config.json"
    try:
        work = json.loads(cfg.read_text())["config"]["work"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(work) if work else None


def resolve_workspace(checkpoint: Path, work: str | Path | None) -> Path:
    """``work`` when given, else the RUN's own workspace; a clear error when neither is usable."""
    chosen = Path(work) if work is not None else run_workspace(checkpoint)
    if chosen is None:
        raise ExportError(
            f"int8 calibrates on packed clips, and {checkpoint.parent / 'config.json'} names no workspace; "
            "pass --calibrate-from WORK (a folder made by `ssondo pack`)"
        )
    if not Workspace(chosen).shards_dir.is_dir():
        raise ExportError(f"calibration workspace {chosen} has no shards/ folder (made by `ssondo pack`)")
    return chosen


def _round_robin(shards: list[Path]) -> Iterator[tuple[str, np.ndarray, int]]:
    readers = [iter_shard(p) for p in shards]
    while readers:
        for r in list(readers):
            clip = next(r, None)
            if clip is None:
                readers.remove(r)
            else:
                yield clip.key, clip.audio, clip.sample_rate


def _fit(audio: np.ndarray, samples: int) -> np.ndarray:
    """(S,) -> (samples,): centred crop, or the clip repeated until it fills ``samples``."""
    if len(audio) >= samples:
        start = (len(audio) - samples) // 2
        return audio[start : start + samples]
    return np.tile(audio, -(-samples // len(audio)))[:samples]


def calibration_set(work: Path, n: int, samples: int, sample_rate: int) -> CalibrationSet:
    """``n`` calibration + ``held_out(n)`` check clips of ``samples`` samples from WORK's shards."""
    if n < 1:
        raise ValueError(f"need at least 1 calibration clip, got {n}")
    shards = sorted(Workspace(work).shards_dir.glob("clips-*.tar"))
    want = n + held_out(n)
    keys, clips = [], []
    for key, audio, sr in _round_robin(shards):
        if sr != sample_rate:
            raise ExportError(
                f"calibration workspace {work} is packed at {sr} Hz, the student takes {sample_rate} Hz; "
                f"pack at {sample_rate} Hz or pass another --calibrate-from"
            )
        if len(audio) == 0:
            continue
        keys.append(key)
        clips.append(_fit(audio, samples))
        if len(clips) == want:
            break
    if len(clips) < want:
        raise ExportError(
            f"calibration workspace {work} has {len(clips)} usable clips; int8 with --calibrate {n} needs "
            f"{want} ({n} to calibrate, {held_out(n)} held out to check); pass a smaller --calibrate"
        )
    x = torch.from_numpy(np.stack(clips).astype(np.float32))  # (want, samples)
    return CalibrationSet(work, x[:n], x[n:], tuple(keys))


# ------------------------------------------------------------------------------- what stays fp32


def _stem(deploy: nn.Module) -> list[str]:
    """The backbone's first convolution: the one that reads the log-mel."""
    first = next((n for n, m in deploy.backbone.named_modules() if isinstance(m, nn.Conv2d)), None)
    return [] if first is None else [f"backbone.{first}"]


def _output(deploy: nn.Module) -> list[str]:
    """The head's last Linear (a projection export's output layer); none for an embedding export."""
    head = getattr(deploy, "head", None)
    if head is None:
        return []
    last = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1:]
    return [f"head.{n}" for n in last]


def _pooled(deploy: nn.Module) -> list[str]:
    """The backbone's last activation, whose output the embedding mean-pools: fp32, so that the pooling
    averages fp32 values (a mean of an int8 tensor is rounded back to that tensor's 8-bit grid)."""
    leaves = [(n, m) for n, m in deploy.backbone.named_modules() if not list(m.children())]
    if not leaves or isinstance(leaves[-1][1], (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
        return []
    return [f"backbone.{leaves[-1][0]}"]


# role -> the Deployable's modules that play it (qualified names); kept fp32 in both formats
KEEP_FP32: dict[str, Callable[[nn.Module], list[str]]] = {
    "stem": _stem,
    "pooled": _pooled,
    "output": _output,
}
KEEP_FP32_OPS = ("mean",)  # tensor methods kept fp32 where their input is fp32: the embedding's pooling


def fp32_modules(deploy: nn.Module) -> dict[str, list[str]]:
    """Role -> qualified names of ``deploy``'s modules that an int8 export leaves in fp32."""
    return {role: find(deploy) for role, find in KEEP_FP32.items()}


# ------------------------------------------------------------------------------- TorchScript (FX)


def _weighted_int8(module: nn.Module) -> tuple[int, int]:
    """(quantised modules with int8 weights, of which convolutions) in an FX-converted model."""
    n = convs = 0
    for m in module.modules():
        where = type(m).__module__
        if (
            where.startswith("torch.ao.nn.")
            and ".quantized" in where
            and callable(getattr(m, "weight", None))
        ):
            n += 1
            convs += "Conv" in type(m).__name__
    return n, convs


def int8_qconfig() -> Any:
    """torch.ao QConfig: 8-bit activations (histogram ranges), per-channel 7-bit symmetric weights."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    return QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            quant_min=WEIGHT_RANGE[0],
            quant_max=WEIGHT_RANGE[1],
        ),
    )


def qconfig_mapping(
    deploy: nn.Module, keep: Mapping[str, Sequence[str]] | None = None, keep_ops: Sequence[str] | None = None
) -> Any:
    """The FX mapping of an int8 export: everything int8 but the front-end, the modules of ``keep``
    (role -> qualified names; default ``fp32_modules(deploy)``) and the ops ``keep_ops`` (default
    ``KEEP_FP32_OPS``)."""
    from torch.ao.quantization import get_default_qconfig_mapping

    keep = fp32_modules(deploy) if keep is None else keep
    qmap = (
        get_default_qconfig_mapping(FX_BACKEND).set_global(int8_qconfig()).set_module_name("frontend", None)
    )
    for names in keep.values():
        for name in names:
            qmap = qmap.set_module_name(name, None)
    for op in KEEP_FP32_OPS if keep_ops is None else keep_ops:
        qmap = qmap.set_object_type(op, None).set_object_type(getattr(torch, op), None)
    return qmap


def quantize_module(
    deploy: nn.Module, clips: Tensor, student: str, qmap: Any = None
) -> tuple[nn.Module, int, int]:
    """Static int8 of ``deploy`` calibrated on ``clips`` (N, S), as ``qmap`` says (default
    ``qconfig_mapping(deploy)``: front-end and ``KEEP_FP32`` fp32).

    -> (quantised module, int8 weight layers, of which convolutions)."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if FX_BACKEND not in torch.backends.quantized.supported_engines:
        raise ExportError(f"this torch build has no {FX_BACKEND!r} quantised engine for int8 on the CPU")
    qmap = qconfig_mapping(deploy) if qmap is None else qmap
    custom = PrepareCustomConfig().set_non_traceable_module_names(["frontend"])
    try:
        with quiet_export():
            prepared = prepare_fx(copy.deepcopy(deploy), qmap, (clips[:1],), prepare_custom_config=custom)
    except Exception as err:  # torch.fx raises TraceError, TypeError, ... on untraceable Python
        raise ExportError(
            f"int8 (static) needs a student torch.fx can trace, and student {student!r} cannot be "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); export it in fp32"
        ) from err
    with torch.inference_mode():
        for clip in clips:
            prepared(clip[None])  # (1, S): observers record activation ranges
    with quiet_export():
        quantized = convert_fx(prepared)
    n, convs = _weighted_int8(quantized)
    if n == 0:
        raise ExportError(f"int8: no layer of student {student!r} was quantised; export it in fp32")
    return quantized.eval(), n, convs


__all__ = [
    "CALIBRATION_CLIPS",
    "KEEP_FP32",
    "KEEP_FP32_OPS",
    "WEIGHT_RANGE",
    "CalibrationSet",
    "calibration_set",
    "fp32_modules",
    "held_out",
    "int8_qconfig",
    "qconfig_mapping",
    "quantize_module",
    "resolve_workspace",
    "run_workspace",
]
