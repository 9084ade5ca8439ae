"""Export a trained student for deployment: raw 32 kHz audio (B, S) -> embedding (B, D), front-end
included, as TorchScript or ONNX, optionally int8: static quantisation of its convolutions and
Linear layers, calibrated on packed clips (``quantize``).

Every export is VERIFIED before it is published (nothing is written when it fails): the file is
run (torch.jit.load / onnxruntime) on seeded random audio (int8: held-out packed clips) next to
the eager model, at the traced shape (batch 1, one clip) and at another batch size and length where
the graph allows them; the bounds (fp32 / int8) and the timing live in ``export_check``.
CPU latency (median ms per clip at batch 1, eager vs exported) and file size go with the
provenance into ``<out>.json`` beside the export.

The ONNX-only parts (a real-valued STFT front-end, the legacy exporter, int8 of the ONNX graph,
onnxruntime) live in ``export_onnx``.

Fixed axes: tracing bakes Python ints into the graph. DyMN folds the batch into conv ``groups``
(per-sample kernels), so its graph runs at batch 1 only, and the legacy ONNX exporter needs a
static shape for a kernel computed from the input, so DyMN's ONNX graph also fixes the samples.
Both are probed, not assumed, and written as ``input.shape`` in the JSON (an int = fixed axis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.provenance import code_version, now_iso, sha256_file

from . import export_check, export_onnx, quantize, quantize_qat, ssondo_ckpt
from .checkpoint import AudioStudent, load_student, source_record
from .export_check import ExportError, ExportVerificationError, quiet_export
from .ssondo_ckpt_export import export_ssondo_ckpt

# Formats that are another package's checkpoint, not a traced graph: name -> writer(checkpoint, out,
# options, repeats, threads) -> the export record (verified, like the graphs, before it is published).
CHECKPOINT_FORMATS = {ssondo_ckpt.FORMAT: export_ssondo_ckpt}
FORMATS = ("onnx", "torchscript", *CHECKPOINT_FORMATS)
WHATS = ("embedding", "projection")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt", ssondo_ckpt.FORMAT: ".ckpt"}
JSON_FORMAT = "ssondo-export"


@dataclass
class ExportResult:
    path: Path
    json_path: Path
    fmt: str
    int8: bool
    what: str
    input_shape: list[int | str]  # ["batch", "samples"]; an int where the graph fixes that axis
    out_dim: int
    size_bytes: int
    verification: dict[str, Any]
    latency: dict[str, Any]
    reused: bool = False  # True: an identical finished export was found and left as it was

    def summary(self) -> str:
        v, lat = self.verification, self.latency
        kind = f"{self.fmt} {'int8' if self.int8 else 'fp32'}"
        agree = (
            f"max|diff| {v['max_abs_diff']:.2e} (rel {v['max_rel_diff']:.2e}), min cos {v['min_cosine']:.6f}"
        )
        speed = (
            f"CPU {lat['clip_seconds']:g}-s clip, batch 1, {lat['threads']} thread(s): "
            f"{lat['exported_ms']:.1f} ms vs eager {lat['eager_ms']:.1f} ms ({lat['speedup']:.2f}x)"
        )
        shape = "x".join(str(d) for d in self.input_shape)
        return (
            f"{'already exported' if self.reused else 'exported'} {self.path} ({kind}, audio {shape} -> "
            f"{self.what} {self.out_dim}-d, {self.size_bytes / 1e6:.2f} MB): {agree}; {speed}"
        )


class Deployable(nn.Module):
    """audio (B, S) -> (B, backbone_dim) [embedding] or (B, teacher_dim) [projection].

    Holds the front-end (the student's mel module, or for ONNX ``export_onnx.RealStftLogMel``
    around it), the backbone and (projection only) the head directly, not the ``Student``: the
    Student's extra state (DyMN temperature, a dict) breaks the ONNX exporter, and the
    temperature already lives in the backbone's modules.
    """

    def __init__(self, model: AudioStudent, what: str, frontend: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = model.student.backbone
        self.head = model.student.head if what == "projection" else None

    def forward(self, audio: Tensor) -> Tensor:
        z = self.backbone.embed(self.frontend(audio))  # (B, backbone_dim)
        return z if self.head is None else self.head(z)


def int8_inputs(
    checkpoint: Path, what: str, work: Path, calibrate: int, clip_seconds: float, check: int | None = None
) -> tuple[Deployable, str, quantize.CalibrationSet]:
    """What a TorchScript int8 export of ``checkpoint`` starts from (for the int8 benchmarks): its fp32
    ``Deployable``, the student's name, and ``calibrate`` (+ ``check``, default ``quantize.held_out``)
    packed clips of ``clip_seconds`` from ``work``."""
    model, meta = load_student(checkpoint)
    sr = model.sample_rate
    cs = quantize.calibration_set(work, calibrate, int(clip_seconds * sr), sr, check)
    return Deployable(model, what, model.frontend.mel).eval(), meta["student"]["name"], cs


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """RUN folder -> RUN/student.pt; a file is taken as the checkpoint itself."""
    p = Path(run_or_checkpoint)
    ckpt = p / "student.pt" if p.is_dir() else p
    if not ckpt.is_file():
        where = (
            f"RUN folder {p} has no student.pt (has training finished?)"
            if p.is_dir()
            else f"{p} does not exist"
        )
        raise FileNotFoundError(f"no student checkpoint to export: {where}")
    return ckpt


def default_out(checkpoint: Path, fmt: str, int8: bool, what: str) -> Path:
    """RUN/export/student-<what>[-int8].onnx|.ts.pt"""
    return checkpoint.parent / "export" / f"student-{what}{'-int8' if int8 else ''}{SUFFIX[fmt]}"


def export_student(
    run_or_checkpoint: str | Path,
    fmt: str,
    int8: bool = False,
    out: str | Path | None = None,
    clip_seconds: float = 10.0,
    what: str = "embedding",
    repeats: int = 10,
    threads: int | None = None,
    calibrate: int = quantize.CALIBRATION_CLIPS,
    calibrate_from: str | Path | None = None,
    min_cosine: float | None = None,
    int8_finetune: int = quantize_qat.FINETUNE_STEPS,
) -> ExportResult:
    """Export the student of a RUN folder (or a ``student.pt``) as ``fmt`` and verify it.

    clip_seconds: clip length used to trace, verify and time the model (any length runs after
    export). repeats: timed runs per model (median reported). threads: CPU threads for eager
    and exported alike while timing (None: torch's current setting). Re-running an export that
    is complete for the same checkpoint and options is a no-op (``reused=True``).
    int8: calibrated on ``calibrate`` clips of the workspace ``calibrate_from`` (default: the one the
    RUN trained on), checked on held-out ones: per-clip cosine to fp32 >= ``min_cosine`` (default
    ``export_check.INT8_MIN_COSINE``). int8_finetune: TorchScript int8 only, steps of quantisation-aware
    fine-tuning on the calibration clips before conversion (``quantize_qat``; 0: static int8).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if what not in WHATS:
        raise ValueError(f"unknown export output {what!r}; choose one of {', '.join(WHATS)}")
    if clip_seconds <= 0 or repeats < 1:
        raise ValueError(f"need clip_seconds > 0 and repeats >= 1, got {clip_seconds}, {repeats}")

    if int8_finetune < 0 or (int8_finetune and not (int8 and fmt == "torchscript")):
        raise ValueError(
            f"--int8-finetune takes steps >= 0 and applies to --format torchscript --int8 only, got "
            f"{int8_finetune} with {fmt}{' --int8' if int8 else ''}"
        )
    ckpt = resolve_checkpoint(run_or_checkpoint)
    out = Path(out) if out is not None else default_out(ckpt, fmt, int8, what)
    json_path = out.with_name(out.name + ".json")
    ckpt_sha = sha256_file(ckpt)
    options = {"fmt": fmt, "int8": int8, "what": what, "clip_seconds": clip_seconds}
    if int8:
        work = quantize.resolve_workspace(ckpt, calibrate_from)
        options |= {"calibrate": calibrate, "calibrate_from": str(work.resolve())}
        options |= {"int8_finetune": int8_finetune} if fmt == "torchscript" else {}
    if (done := _finished(out, json_path, ckpt_sha, options)) is not None:
        return done
    if fmt in CHECKPOINT_FORMATS:
        record = {"format": JSON_FORMAT, **CHECKPOINT_FORMATS[fmt](ckpt, out, options, repeats, threads)}
        write_json(json_path, record)
        return _result(out, json_path, record, reused=False)

    model, meta = load_student(ckpt)
    if sha256_file(ckpt) != ckpt_sha:  # e.g. a trainer replacing student.pt right now
        raise ExportError(f"{ckpt} changed while it was being read; export again once it is final")
    sr = model.sample_rate
    n = int(round(clip_seconds * sr))
    if n < model.frontend.cfg.n_fft + 1:
        raise ValueError(f"clip_seconds {clip_seconds} is shorter than one front-end frame")
    mel = model.frontend.mel
    deploy = Deployable(model, what, export_onnx.RealStftLogMel(mel) if fmt == "onnx" else mel).eval()
    calib = quantize.calibration_set(work, calibrate, n, sr) if int8 else None
    n_int8, tuned = (0, 0), None  # (int8 weight layers, of which convolutions), fine-tune log
    if calib is not None and fmt == "torchscript":
        deploy, *n_int8, tuned = quantize_qat.quantize_module_qat(
            deploy, calib.calibrate, meta["student"]["name"], int8_finetune
        )
    gen = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(1, n, generator=gen)  # traced / timed: batch 1, one clip
    other = 0.1 * torch.randn(2, n * 3 // 4, generator=gen)  # verified too: other batch, other length
    if calib is not None:  # int8 is checked on held-out real clips instead of noise
        other = calib.check[:2, : n * 3 // 4]
    traced = _trace(deploy, example, freeze=calib is not None and fmt == "torchscript")
    shape = {"batch": _runs_on(traced, other), "samples": True}

    with export_check.torch_threads(threads):
        with atomic_path(out) as tmp:
            if fmt == "torchscript":
                with quiet_export():
                    torch.jit.save(traced, str(tmp))
            else:
                n_onnx, shape["samples"] = export_onnx.export_onnx(
                    deploy, example, tmp, shape["batch"], what, calib.calibrate if calib else None
                )
                n_int8 = n_int8 if calib is None else list(n_onnx)
            if not shape["samples"]:
                other = 0.1 * torch.randn(1, n, generator=gen) if calib is None else calib.check[:1]
            elif not shape["batch"]:
                other = other[:1]
            run = export_onnx.load_onnx(tmp) if fmt == "onnx" else export_check.load_torchscript(tmp)
            inputs, audio = [example, other], "N(0, 0.1^2) noise, seed 0"
            if calib is not None:
                inputs = [c[None] for c in calib.check] + [other]
                audio = f"{len(calib.check)} held-out packed clips of {work} (+ {len(other)} cut to {other.shape[1]})"
            verification = export_check.verify_export(model, what, run, inputs, int8, audio, min_cosine)
            verification["int8_quantized_ops"], verification["int8_quantized_convs"] = n_int8
            if calib is not None:
                verification["calibration"] = calib.describe()
            if tuned is not None:
                verification["int8_finetune"] = tuned.describe()
            latency = export_check.cpu_latency(model, what, run, example, repeats, clip_seconds)
        size = out.stat().st_size

    in_shape = ["batch" if shape["batch"] else 1, "samples" if shape["samples"] else n]
    record = {
        "format": JSON_FORMAT,
        "export": {
            **options,
            "path": out.name,
            "sha256": sha256_file(out),
            "size_bytes": size,
            "opset": export_onnx.OPSET if fmt == "onnx" else None,
        },
        "input": {
            "name": "audio",
            "shape": in_shape,
            "dtype": "float32",
            "sample_rate": sr,
            "note": f"mono audio in [-1, 1] at sample_rate, at least {model.frontend.cfg.n_fft} samples; "
            "front-end included" + ("" if shape["samples"] else "; this graph only runs at this exact shape"),
        },
        "output": {"name": what, "shape": [in_shape[0], _out_dim(model, what)]},
        **source_record(meta, ckpt, ckpt_sha),
        "verification": verification,
        "latency": latency,
        "versions": {"torch": torch.__version__, **(export_onnx.onnx_versions() if fmt == "onnx" else {})},
        "code_version": code_version(),
        "created": now_iso(),
    }
    write_json(json_path, record)
    return _result(out, json_path, record, reused=False)


def _out_dim(model: AudioStudent, what: str) -> int:
    return model.backbone_dim if what == "embedding" else model.teacher_dim


def _result(out: Path, json_path: Path, record: dict[str, Any], reused: bool) -> ExportResult:
    e = record["export"]
    return ExportResult(
        out,
        json_path,
        e["fmt"],
        e["int8"],
        e["what"],
        record["input"]["shape"],
        record["output"]["shape"][1],
        e["size_bytes"],
        record["verification"],
        record["latency"],
        reused,
    )


def _finished(out: Path, json_path: Path, ckpt_sha: str, options: dict[str, Any]) -> ExportResult | None:
    """The recorded result when ``out`` is a complete export of this checkpoint with these options."""
    if not (out.is_file() and json_path.is_file()):
        return None
    try:
        record = json.loads(json_path.read_text())
        e = record["export"]
        same = (
            record.get("format") == JSON_FORMAT
            and record["checkpoint"]["sha256"] == ckpt_sha
            and all(e.get(k) == v for k, v in options.items())
            and e["sha256"] == sha256_file(out)
        )
    except (ValueError, KeyError, TypeError):
        return None  # unreadable or foreign record: export again (the files are derived, nothing is lost)
    return _result(out, json_path, record, reused=True) if same else None


def _trace(deploy: nn.Module, example: Tensor, freeze: bool = False) -> torch.jit.ScriptModule:
    """``freeze`` (the int8 export): torch.jit.freeze, the int8 weights and qparams inlined as constants
    and the submodules' calls with them: the same outputs, about 7 % less time at batch 1 on one thread
    (docs/results/export.md)."""
    with quiet_export(), torch.inference_mode():
        traced = torch.jit.trace(deploy, example, check_trace=False)
        return torch.jit.freeze(traced.eval()) if freeze else traced


def _runs_on(traced: torch.jit.ScriptModule, audio: Tensor) -> bool:
    """Whether the batch-1 trace runs at ``audio``'s batch size too (DyMN's does not)."""
    try:
        with torch.inference_mode():
            traced(audio)
    except RuntimeError:
        return False
    return True


__all__ = [
    "FORMATS",
    "WHATS",
    "Deployable",
    "ExportError",
    "ExportResult",
    "ExportVerificationError",
    "default_out",
    "export_student",
    "int8_inputs",
    "resolve_checkpoint",
]
