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

Activation ranges: the full range the calibration clips reach (``ACTIVATION_OBSERVER`` "minmax"), not
a histogram-fitted one that clips the rare large values: on a trained mn04 (/tmp/lever
noaug_steps8k_balanced, projection, 10-s clips, 64 calibrating, 64 held out; per-clip cosine to fp32,
min / mean) histogram ranges gave 0.710 / 0.968, min-max ranges 0.975 / 0.998 with the same fp32
keeps (``benchmarks/export.py --sensitivity --observers histogram minmax``).

Not every layer is worth its error: ``KEEP_FP32`` names the roles left in fp32, chosen by putting
one role at a time back to int8 on that student with min-max ranges: the head's last Linear, whose
output is the export's output (int8: 0.947 / 0.996). The first convolution (it reads the log-mel)
was kept fp32 while ranges were histogram-fitted, where quantising the log-mel was most of the
error; with min-max ranges keeping it costs accuracy (int8: 0.988 / 0.9986), so it is int8 now,
as are the activation the embedding pools and the mean pooling (<= 1e-4 either way). Keeping one
more layer fp32 buys little and about as much whichever layer it is (``--greedy``: the best,
block 6's squeeze-excitation fc2, raises the min 0.975 -> 0.982, the next best 0.982): the error
left is spread over the network, not in one layer.

Speed (TorchScript only, ``FX_EXTRA_ROLES``): the squeeze-excitation gates stay fp32 too. At batch 1
on one thread their int8 form is slower than fp32: the channel scaling ``x * gate`` is a broadcast
``quantized::mul`` (0.20-0.28 ms each on mn04's 16 x 78 maps, about 10 % of the int8 forward, where
dequantize, fp32 multiply and quantize take 0.04 ms), and the pool and two tiny Linear layers each pay
a quantised op's overhead. fp32 gates measured no worse: the demo's trained mn04, 64 calibrating and
64 held-out 10-s clips, min / mean cosine to fp32 0.970 / 0.9964 -> 0.976 / 0.9969 (projection) and
0.977 / 0.9959 -> 0.979 / 0.9963 (embedding). ONNX keeps its own choice (``quantize_onnx``). The
converted model's front-end is ``banded_mel.BandedLogMel``: the same log-mel, the mel projection
without its multiplications by zero. ``benchmarks/export_profile.py`` shows where the time goes.

TorchScript: torch.ao's FX flow (``prepare_fx`` / ``convert_fx``, the x86 mapping's fixed ranges
for sigmoid-like ops). The front-end stays fp32 (not traced, not quantised): an int8 mel would change
every input the student sees. PT2E is not used: in torch 2.14 it lives in ``torchao``, not a
dependency here. ONNX: ``quantize_onnx``.

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

from ssondo_cache.logmel import LogMel
from ssondo_cache.shards import iter_shard
from ssondo_cache.workspace import Workspace

from .banded_mel import BandedLogMel
from .export_check import ExportError, quiet_export

CALIBRATION_CLIPS = 64  # default number of calibration clips
FX_BACKEND = "x86"
WEIGHT_RANGE = (-64, 63)  # 7-bit symmetric weights (see the module doc)
BIAS_CORRECTION = True  # convolutions' per-channel output means corrected (module doc)


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


def calibration_set(
    work: Path, n: int, samples: int, sample_rate: int, check: int | None = None
) -> CalibrationSet:
    """``n`` calibration + ``check`` (default ``held_out(n)``) check clips of ``samples`` samples
    from WORK's shards."""
    if n < 1:
        raise ValueError(f"need at least 1 calibration clip, got {n}")
    shards = sorted(Workspace(work).shards_dir.glob("clips-*.tar"))
    check = held_out(n) if check is None else check
    want = n + check
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
            f"{want} ({n} to calibrate, {check} held out to check); pass a smaller --calibrate"
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


def _gates(deploy: nn.Module) -> list[str]:
    """The squeeze-excitation gates (pool, two Linear, sigmoid and the channel scaling)."""
    from .students.mobilenetv3 import SqueezeExcitation

    return [n for n, m in deploy.named_modules() if isinstance(m, SqueezeExcitation)]


# role -> the Deployable's modules that play it (qualified names); kept fp32 in both formats
KEEP_FP32: dict[str, Callable[[nn.Module], list[str]]] = {"output": _output}
KEEP_FP32_OPS: tuple[str, ...] = ()  # tensor methods kept fp32 (none: measured, module doc)
# roles a caller may add to keep (``fp32_modules(deploy, roles)``): stem and pooled measured not worth
# it (module doc); gates: kept in TorchScript for speed (FX_EXTRA_ROLES)
OTHER_ROLES: dict[str, Callable[[nn.Module], list[str]]] = {
    "stem": _stem,
    "pooled": _pooled,
    "gates": _gates,
}
# roles of OTHER_ROLES kept fp32 in the TorchScript (FX) export too: there the int8 gates cost more
# than fp32 ones (a broadcast quantized::mul of 0.2-0.3 ms per early block; module doc)
FX_EXTRA_ROLES: tuple[str, ...] = ("gates",)


def fp32_modules(deploy: nn.Module, roles: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Role -> qualified names of ``deploy``'s modules that an int8 export leaves in fp32 (``roles``:
    names of ``KEEP_FP32`` / ``OTHER_ROLES``; default every role of ``KEEP_FP32``)."""
    found = KEEP_FP32 | OTHER_ROLES
    return {role: found[role](deploy) for role in (KEEP_FP32 if roles is None else roles)}


def fx_fp32_modules(deploy: nn.Module) -> dict[str, list[str]]:
    """What the TorchScript (FX) int8 export leaves fp32: ``KEEP_FP32`` and ``FX_EXTRA_ROLES``."""
    return fp32_modules(deploy) | fp32_modules(deploy, FX_EXTRA_ROLES)


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


def _histogram() -> Any:
    from torch.ao.quantization.observer import HistogramObserver

    return HistogramObserver.with_args(dtype=torch.quint8, reduce_range=False)


def _minmax() -> Any:
    from torch.ao.quantization.observer import MinMaxObserver

    return MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False)


# activation observer name -> its factory: the range each activation gets from the calibration clips
# (histogram: the range that minimises the L2 rounding + clipping error of the histogram seen;
# minmax: the full range seen)
ACTIVATION_OBSERVERS: dict[str, Callable[[], Any]] = {"histogram": _histogram, "minmax": _minmax}
ACTIVATION_OBSERVER = "minmax"  # measured (module doc)


def int8_qconfig(observer: str = ACTIVATION_OBSERVER) -> Any:
    """torch.ao QConfig: 8-bit activations (ranges by ``observer`` of ``ACTIVATION_OBSERVERS``),
    per-channel 7-bit symmetric weights."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    if observer not in ACTIVATION_OBSERVERS:
        raise ValueError(
            f"unknown activation observer {observer!r}; choose one of {', '.join(ACTIVATION_OBSERVERS)}"
        )
    return QConfig(
        activation=ACTIVATION_OBSERVERS[observer](),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            quant_min=WEIGHT_RANGE[0],
            quant_max=WEIGHT_RANGE[1],
        ),
    )


def qconfig_mapping(
    deploy: nn.Module,
    keep: Mapping[str, Sequence[str]] | None = None,
    keep_ops: Sequence[str] | None = None,
    observer: str = ACTIVATION_OBSERVER,
) -> Any:
    """The FX mapping of an int8 export: everything int8 (``int8_qconfig(observer)``) but the
    front-end, the modules of ``keep`` (role -> qualified names; default ``fx_fp32_modules(deploy)``)
    and the ops ``keep_ops`` (default ``KEEP_FP32_OPS``)."""
    from torch.ao.quantization import get_default_qconfig_mapping

    keep = fx_fp32_modules(deploy) if keep is None else keep
    qmap = (
        get_default_qconfig_mapping(FX_BACKEND)
        .set_global(int8_qconfig(observer))
        .set_module_name("frontend", None)
    )
    for names in keep.values():
        for name in names:
            qmap = qmap.set_module_name(name, None)
    for op in KEEP_FP32_OPS if keep_ops is None else keep_ops:
        qmap = qmap.set_object_type(op, None).set_object_type(getattr(torch, op), None)
    return qmap


def calibrate_module(deploy: nn.Module, clips: Tensor, student: str, qmap: Any = None) -> Any:
    """``deploy`` with observers (FX ``prepare_fx`` under ``qmap``, default ``qconfig_mapping(deploy)``)
    that have seen ``clips`` (N, S) one at a time: ready for ``convert_module``."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import prepare_fx

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
    return prepared


def convert_module(prepared: Any, student: str, qmap: Any = None) -> tuple[nn.Module, int, int]:
    """The int8 model of a ``calibrate_module`` result (left untouched). ``qmap``: None, the
    calibration's own mapping; or that mapping with more modules / ops set to None (fp32), so that
    one calibration serves every choice of what stays fp32.

    -> (quantised module, int8 weight layers, of which convolutions)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_export():
        quantized = convert_fx(copy.deepcopy(prepared), qconfig_mapping=qmap)
    n, convs = _weighted_int8(quantized)
    if n == 0:
        raise ExportError(f"int8: no layer of student {student!r} was quantised; export it in fp32")
    if isinstance(getattr(quantized, "frontend", None), LogMel):  # same log-mel, less work (banded_mel)
        quantized.frontend = BandedLogMel(quantized.frontend)
    return quantized.eval(), n, convs


def quantize_module(
    deploy: nn.Module, clips: Tensor, student: str, qmap: Any = None, bias_correction: bool = BIAS_CORRECTION
) -> tuple[nn.Module, int, int]:
    """Static int8 of ``deploy`` calibrated on ``clips`` (N, S), as ``qmap`` says (default
    ``qconfig_mapping(deploy)``: front-end and ``KEEP_FP32`` fp32), its convolutions bias-corrected
    on the same clips when ``bias_correction`` (``quantize_bias``).

    -> (quantised module, int8 weight layers, of which convolutions)."""
    prepared = calibrate_module(deploy, clips, student, qmap)
    quantized, n, convs = convert_module(prepared, student)
    if bias_correction:
        from .quantize_bias import correct_bias

        correct_bias(prepared, quantized, clips, kinds=("conv",))
    return quantized, n, convs


__all__ = [
    "ACTIVATION_OBSERVER",
    "ACTIVATION_OBSERVERS",
    "BIAS_CORRECTION",
    "CALIBRATION_CLIPS",
    "KEEP_FP32",
    "KEEP_FP32_OPS",
    "OTHER_ROLES",
    "WEIGHT_RANGE",
    "FX_EXTRA_ROLES",
    "CalibrationSet",
    "calibrate_module",
    "calibration_set",
    "convert_module",
    "fp32_modules",
    "fx_fp32_modules",
    "held_out",
    "int8_qconfig",
    "qconfig_mapping",
    "quantize_module",
    "resolve_workspace",
    "run_workspace",
]
