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
mean 0.998; this module's choice, on the projection: min 0.994, mean 0.998).

TorchScript: torch.ao's FX flow (``prepare_fx`` / ``convert_fx``, histogram observers for the
activations, the x86 mapping's fixed ranges for sigmoid-like ops). The front-end stays fp32 (not
traced, not quantised): an int8 mel would change every input the student sees. PT2E is not used:
in torch 2.14 it lives in ``torchao``, not a dependency here.

ONNX: onnxruntime's ``quantize_static`` (QDQ, min-max ranges, ``reduce_range`` = the 7-bit
weights), every node upstream of the first convolution (the STFT front-end) excluded.

Rounding still differs between kernels (fbgemm, MLAS, per ISA): the int8 output is not
bit-identical across machines; what holds everywhere is its agreement with fp32 (the cosine).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
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


def quantize_module(deploy: nn.Module, clips: Tensor, student: str) -> tuple[nn.Module, int, int]:
    """Static int8 of ``deploy`` (its ``frontend`` left fp32) calibrated on ``clips`` (N, S).

    -> (quantised module, int8 weight layers, of which convolutions)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if FX_BACKEND not in torch.backends.quantized.supported_engines:
        raise ExportError(f"this torch build has no {FX_BACKEND!r} quantised engine for int8 on the CPU")
    qconfig = QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            quant_min=WEIGHT_RANGE[0],
            quant_max=WEIGHT_RANGE[1],
        ),
    )
    qmap = get_default_qconfig_mapping(FX_BACKEND).set_global(qconfig).set_module_name("frontend", None)
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


# ------------------------------------------------------------------------------- ONNX (onnxruntime)


def _frontend_nodes(graph: Any) -> list[str]:
    """Names of every node upstream of the first Conv's input: the front-end, kept fp32."""
    producer = {out: node for node in graph.node for out in node.output}
    first = next((n for n in graph.node if n.op_type == "Conv"), None)
    if first is None:
        raise ExportError("int8: the ONNX graph has no convolution to quantise; nothing written")
    seen: dict[str, Any] = {}
    stack = [first.input[0]]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in seen:
            seen[node.name] = node
            stack.extend(node.input)
    return list(seen)


class _ClipReader:
    """onnxruntime's CalibrationDataReader protocol: one {"audio": (1, S)} feed per clip."""

    def __init__(self, clips: Tensor) -> None:
        self._feeds = iter([{"audio": clip[None].numpy()} for clip in clips])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(fp32: Path, path: Path, clips: Tensor) -> tuple[int, int]:
    """Static int8 (QDQ) of the fp32 ONNX file ``fp32`` into ``path``, calibrated on ``clips``.

    -> (int8 weight layers, of which convolutions)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32)).graph
    frontend = _frontend_nodes(graph)
    logging.disable(logging.WARNING)  # its advice (shape pre-processing, Gemm biases), on the root logger
    try:
        quantize_static(
            str(fp32),
            str(path),
            _ClipReader(clips),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # 7-bit weights, as WEIGHT_RANGE
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=frontend,
        )
    finally:
        logging.disable(logging.NOTSET)
    return onnx_int8_layers(path)


def onnx_int8_layers(path: Path) -> tuple[int, int]:
    """(Conv / Gemm / MatMul nodes whose weight is dequantised from int8, of which Conv) in ``path``."""
    import onnx

    graph = onnx.load(str(path)).graph
    consts = {t.name for t in graph.initializer}
    dq_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    hit = [n for n in layers if any(i in dq_weights for i in n.input[1:2])]
    return len(hit), sum(n.op_type == "Conv" for n in hit)


__all__ = [
    "CALIBRATION_CLIPS",
    "CalibrationSet",
    "calibration_set",
    "held_out",
    "onnx_int8_layers",
    "quantize_module",
    "quantize_onnx",
    "resolve_workspace",
    "run_workspace",
]
