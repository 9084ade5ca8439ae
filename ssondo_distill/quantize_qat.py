"""Quantisation-aware fine-tuning of an int8 export: the FX int8 model of ``quantize``, simulated in
fp32 (fake quantisation), trained for a few steps so that its output matches the fp32 model's, then
converted to the same int8 module as ``quantize.quantize_module`` returns.

The mapping is ``quantize.qconfig_mapping(deploy)`` (front-end and ``KEEP_FP32`` fp32) with every
observer wrapped in its fake-quantising counterpart (``fake_quant_mapping``): 8-bit activations on
min-max ranges, per-channel symmetric weights on ``quantize.WEIGHT_RANGE``, the fixed-range ops
(sigmoid-like) on their fixed ranges. Ranges: the activations' are those a calibration pass over the
clips records (observers on, rounding off: the ranges of static int8) and stay frozen while training;
the weights' follow the weights (each step's own per-channel min-max, also at conversion).

Training (self-distillation): random crops of the calibration clips, the fp32 model's output on
the same crop as the target, loss = mean (1 - cosine) + MSE / mean square of the target; Adam; the
model in eval mode throughout, so BatchNorm keeps its running statistics (folded into the convolutions
at conversion as in static int8) and nothing depends on the batch. Deterministic for a seed (crops
from one generator; CPU kernels at a fixed thread count).

Gradients pass the rounding straight through (torch's FakeQuantize); the ranges are not learned.
Start (``STARTS``): the static int8 model, or (default) that model with the convolution biases moved
by ``quantize_bias``'s corrections, so that training starts where static int8 stands today.

Measured (docs/results/export.md, "Quantisation-aware fine-tuning"; the demo's trained mn04, 64
calibrating and 16 held-out 10-s clips): no step count beats static int8 with bias correction clearly
(min / mean cosine to fp32 of the projection 0.977 / 0.9967 static; 0.910-0.939 / 0.987-0.989 after
100 or 1000 steps, 0.788 after 300), and more steps do not help steadily. On that student the int8
agreement hangs on rounding ties (each channel's largest weight sits on one at scale = max / 63.5):
the bias-corrected start, whose int8 weights differ from static int8's only there, by one step,
measured -0.18 where static int8 with bias correction measures 0.977. So fine-tuning is off by default
(``FINETUNE_STEPS = 0``, static int8 unchanged) and bias correction is not applied after it (it
helped in three of six measured cases and hurt in the other three).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import quantize
from .export_check import ExportError, quiet_export

FINETUNE_STEPS = 0  # default of `ssondo export --int8-finetune` (docs/results/export.md)
LR = 1e-5
BATCH = 4  # crops per step
CROP_SECONDS = 3.0  # crop length at the front-end's sample rate (whole clips when shorter)
SEED = 0
STARTS = ("static", "bias-corrected")  # the int8 model fine-tuning starts from (module doc)
START = "bias-corrected"


@dataclass
class FinetuneLog:
    steps: int
    lr: float
    batch: int
    crop_samples: int
    seed: int
    loss_before: float  # loss of the fake-quant model on the whole calibration clips, before training
    loss_after: float  # the same, after
    seconds: float  # wall time of the fine-tune (calibration pass and training)
    losses: list[float] = field(default_factory=list)  # training loss of each step

    def describe(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "batch": self.batch,
            "crop_samples": self.crop_samples,
            "seed": self.seed,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "seconds": round(self.seconds, 1),
            "loss": "mean(1 - cosine) + MSE / mean(target^2), fp32 output as target",
        }


def _weight_fake_quantize() -> type:
    """FakeQuantize of weights that rounds as the conversion does.

    The int8 weights of a conversion are ``torch.quantize_per_channel``'s: on the observer's scale
    (max|w| / 63.5 for ``quantize.WEIGHT_RANGE``) but clamped to qint8's range, so a channel's largest
    weight becomes +-64, not the observer's 63. torch's FakeQuantize clamps to the observer's range:
    each channel's largest weight would differ by one step between the trained model and its int8
    conversion (measured: up to 3 steps of the first convolution's output on the demo mn04)."""
    from torch.ao.quantization.fake_quantize import FakeQuantize

    class WeightFakeQuantize(FakeQuantize):
        def forward(self, X: Tensor) -> Tensor:
            on = int(self.fake_quant_enabled[0])
            self.fake_quant_enabled[0] = 0
            super().forward(X)  # observes (when on) and updates scale / zero point
            self.fake_quant_enabled[0] = on
            if not on:
                return X
            lo, hi = torch.iinfo(self.dtype).min, torch.iinfo(self.dtype).max
            if self.is_per_channel:
                return torch.fake_quantize_per_channel_affine(
                    X, self.scale, self.zero_point, self.ch_axis, lo, hi
                )
            return torch.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point, lo, hi)

    return WeightFakeQuantize


def _fake_quant(factory: Any, weight: bool = False) -> Any:
    """The fake-quantising counterpart of an observer factory (unchanged when it is none of torch's
    range observers: reuse-input, placeholder and no-op observers stay as they are)."""
    from torch.ao.quantization.fake_quantize import FakeQuantize, FixedQParamsFakeQuantize
    from torch.ao.quantization.observer import FixedQParamsObserver, UniformQuantizationObserverBase

    if factory is None:
        return None
    probe = factory()
    if isinstance(probe, FixedQParamsObserver):
        return FixedQParamsFakeQuantize.with_args(observer=factory)
    if isinstance(probe, UniformQuantizationObserverBase):
        return (_weight_fake_quantize() if weight else FakeQuantize).with_args(observer=factory)
    return factory


def _fake_quant_qconfig(qconfig: Any) -> Any:
    from torch.ao.quantization import QConfig

    if qconfig is None:
        return None
    return QConfig(
        activation=_fake_quant(qconfig.activation), weight=_fake_quant(qconfig.weight, weight=True)
    )


def fake_quant_mapping(qmap: Any) -> Any:
    """``qmap`` (a static-int8 ``QConfigMapping``, e.g. ``quantize.qconfig_mapping(deploy)``) with every
    observer replaced by the FakeQuantize that observes the same way: the QAT mapping of that export."""
    out = copy.deepcopy(qmap)
    out.global_qconfig = _fake_quant_qconfig(qmap.global_qconfig)
    for table in ("object_type_qconfigs", "module_name_regex_qconfigs", "module_name_qconfigs"):
        target = getattr(out, table)
        for key, qc in getattr(qmap, table).items():
            target[key] = _fake_quant_qconfig(qc)
    for key, qc in qmap.module_name_object_type_order_qconfigs.items():
        out.module_name_object_type_order_qconfigs[key] = _fake_quant_qconfig(qc)
    return out


def prepare_qat(deploy: nn.Module, clips: Tensor, student: str, qmap: Any = None) -> nn.Module:
    """The fake-quant (QAT) model of ``deploy`` under ``fake_quant_mapping(qmap)`` (default
    ``quantize.qconfig_mapping(deploy)``), its activation ranges recorded on ``clips`` (N, S) one at a
    time and frozen; in eval mode, rounding on."""
    from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if quantize.FX_BACKEND not in torch.backends.quantized.supported_engines:
        raise ExportError(
            f"this torch build has no {quantize.FX_BACKEND!r} quantised engine for int8 on the CPU"
        )
    qmap = fake_quant_mapping(quantize.qconfig_mapping(deploy) if qmap is None else qmap)
    custom = PrepareCustomConfig().set_non_traceable_module_names(["frontend"])
    model = copy.deepcopy(deploy).train()  # prepare_qat_fx fuses conv + BatchNorm into QAT modules
    try:
        with quiet_export():
            qat = prepare_qat_fx(model, qmap, (clips[:1],), prepare_custom_config=custom)
    except Exception as err:  # torch.fx raises TraceError, TypeError, ... on untraceable Python
        raise ExportError(
            f"int8 fine-tuning needs a student torch.fx can trace, and student {student!r} cannot be "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); export it without "
            "--int8-finetune"
        ) from err
    qat.eval()  # BatchNorm on its running statistics from here on
    qat.apply(disable_fake_quant)  # the ranges of static int8: observed in fp32
    with torch.no_grad():
        for clip in clips:
            qat(clip[None])
    qat.apply(disable_observer)
    qat.apply(enable_fake_quant)
    _track_weights(qat)
    return qat


def bias_corrected_start(qat: nn.Module, deploy: nn.Module, clips: Tensor, student: str) -> int:
    """Move the QAT model's convolution biases by the corrections ``quantize_bias`` finds for the
    static int8 model of ``deploy`` on ``clips`` (same calibration, same layer names): fine-tuning then
    starts where static int8 with bias correction stands. -> layers moved."""
    from .quantize_bias import correct_bias

    prepared = quantize.calibrate_module(deploy, clips, student)
    static, _, _ = quantize.convert_module(prepared, student)
    moved = correct_bias(prepared, static, clips, kinds=("conv",))
    reference, _, _ = quantize.convert_module(prepared, student)  # the same, uncorrected
    with torch.no_grad():
        for name in moved:
            before, after = reference.get_submodule(name).bias(), static.get_submodule(name).bias()
            delta = after - (torch.zeros_like(after) if before is None else before)
            layer = qat.get_submodule(name)
            if hasattr(layer, "bn"):  # fused conv + BatchNorm: its shift is the folded bias's shift
                layer.bn.bias.add_(delta)
            elif layer.bias is not None:
                layer.bias.add_(delta)
            else:
                layer.bias = nn.Parameter(delta.clone())
    return len(moved)


def _weight_fake_quants(model: nn.Module) -> list[nn.Module]:
    return [m.weight_fake_quant for m in model.modules() if hasattr(m, "weight_fake_quant")]


def _track_weights(model: nn.Module) -> None:
    """Each weight fake-quant observes afresh at its next call: its range is the weight's own min-max."""
    for fq in _weight_fake_quants(model):
        fq.activation_post_process.reset_min_max_vals()
        fq.enable_observer()


def _loss(y: Tensor, target: Tensor) -> Tensor:
    cos = F.cosine_similarity(y, target, dim=1)
    return (1 - cos).mean() + F.mse_loss(y, target) / target.pow(2).mean().clamp_min(1e-12)


def eval_loss(qat: nn.Module, deploy: nn.Module, clips: Tensor) -> float:
    """``_loss`` of the fake-quant model against fp32 on whole ``clips``, one at a time."""
    with torch.no_grad():
        y = torch.cat([qat(c[None]) for c in clips])
        target = torch.cat([deploy(c[None]) for c in clips])
    _track_weights(qat)
    return float(_loss(y, target))


def _params(qat: nn.Module) -> list[Tensor]:
    """Every parameter but the front-end's (it stays the fp32 front-end)."""
    return [p for n, p in qat.named_parameters() if not n.startswith("frontend.")]


def finetune(
    deploy: nn.Module,
    clips: Tensor,
    steps: int,
    student: str,
    lr: float = LR,
    batch: int = BATCH,
    crop: int | None = None,
    seed: int = SEED,
    start: str = START,
) -> tuple[nn.Module, FinetuneLog]:
    """The fake-quant model of ``deploy`` (``prepare_qat``) after ``steps`` Adam steps toward fp32 on
    random ``crop``-sample crops (default ``CROP_SECONDS``) of ``clips`` (N, S). -> (model, log)."""
    if steps < 0 or batch < 1 or lr <= 0:
        raise ValueError(f"need steps >= 0, batch >= 1, lr > 0; got {steps}, {batch}, {lr}")
    t0 = time.perf_counter()
    deploy = deploy.eval()
    n_clips, samples = clips.shape
    if crop is None:
        crop = int(round(CROP_SECONDS * deploy.frontend.cfg.sample_rate))
    crop = min(crop, samples)
    if start not in STARTS:
        raise ValueError(f"unknown fine-tuning start {start!r}; choose one of {', '.join(STARTS)}")
    qat = prepare_qat(deploy, clips, student)
    if start == "bias-corrected":
        bias_corrected_start(qat, deploy, clips, student)
    before = eval_loss(qat, deploy, clips)
    for p in qat.parameters():
        p.requires_grad_(False)
    params = _params(qat)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        rows = torch.randint(n_clips, (batch,), generator=gen)
        starts = torch.randint(samples - crop + 1, (batch,), generator=gen)
        x = torch.stack([clips[r, s : s + crop] for r, s in zip(rows.tolist(), starts.tolist(), strict=True)])
        with torch.no_grad():
            target = deploy(x)
        _track_weights(qat)
        loss = _loss(qat(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in qat.parameters():
        p.requires_grad_(False)
    _track_weights(qat)
    after = eval_loss(qat, deploy, clips) if steps else before
    log = FinetuneLog(steps, lr, batch, crop, seed, before, after, time.perf_counter() - t0, losses)
    return qat, log


def quantize_module_qat(
    deploy: nn.Module,
    clips: Tensor,
    student: str,
    steps: int,
    bias_correction: bool = False,
    **options: Any,
) -> tuple[nn.Module, int, int, FinetuneLog | None]:
    """Static int8 of ``deploy`` as ``quantize.quantize_module`` makes it, fine-tuned first for
    ``steps`` steps (``finetune``; ``options``: its lr, batch, crop, seed). ``steps=0`` is
    ``quantize.quantize_module`` itself (bias-corrected as it does; log None). ``bias_correction``
    after fine-tuning: toward the fp32 model's layer means (measured: not better, module doc).

    -> (int8 module, int8 weight layers, of which convolutions, fine-tune log)."""
    if steps < 0:
        raise ValueError(f"--int8-finetune takes a number of steps >= 0, got {steps}")
    if steps == 0:
        return (*quantize.quantize_module(deploy, clips, student), None)
    qat, log = finetune(deploy, clips, steps, student, **options)
    quantized, n, convs = quantize.convert_module(qat, student)
    if bias_correction:
        from .quantize_bias import correct_bias

        reference = quantize.calibrate_module(deploy, clips, student)
        correct_bias(reference, quantized, clips, kinds=("conv",))
    return quantized, n, convs, log


__all__ = [
    "BATCH",
    "CROP_SECONDS",
    "FINETUNE_STEPS",
    "LR",
    "START",
    "STARTS",
    "FinetuneLog",
    "eval_loss",
    "fake_quant_mapping",
    "finetune",
    "prepare_qat",
    "quantize_module_qat",
]
