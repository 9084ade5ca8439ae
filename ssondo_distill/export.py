"""Export a trained student for deployment: raw 32 kHz audio (B, S) -> embedding (B, D), front-end
included, as TorchScript or ONNX, optionally with int8 dynamic quantisation of its Linear layers.

Every export is VERIFIED before it is published (nothing is written when it fails): the file is
run (torch.jit.load / onnxruntime) on seeded random audio next to the eager model, at the traced
shape (batch 1, one clip) and at another batch size and length where the graph allows them.
fp32: max |exported - eager| <= FP32_TOLERANCE * max |eager| + FP32_ATOL (ONNX runs its own STFT
and kernels: float rounding, not bit-exact); int8: cosine(exported, eager fp32) >= INT8_MIN_COSINE
per clip (or the fp32 bound).
CPU latency (median ms per clip at batch 1, eager vs exported) and file size go with the
provenance into ``<out>.json`` beside the export.

ONNX front-end: the legacy exporter (the dynamo one needs ``onnxscript``, not a dependency) has
no complex tensors, so ``_RealStftLogMel`` computes the eager log-mel from the same window and
mel banks with the real-valued STFT output, which maps to ONNX's STFT op (opset 17).

Fixed axes: tracing bakes Python ints into the graph. DyMN folds the batch into conv ``groups``
(per-sample kernels), so its graph runs at batch 1 only, and the legacy ONNX exporter needs a
static shape for a kernel computed from the input, so DyMN's ONNX graph also fixes the samples.
Both are probed, not assumed, and written as ``input.shape`` in the JSON (an int = fixed axis).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.provenance import code_version, now_iso, sha256_file

from .checkpoint import AudioStudent, load_student

FORMATS = ("onnx", "torchscript")
WHATS = ("embedding", "projection")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt"}
OPSET = 17  # first opset with an STFT op
FP32_TOLERANCE = 1e-4  # max abs difference relative to the output's scale,
FP32_ATOL = 1e-6  # plus this, for an (untrained) student whose outputs are all ~0
INT8_MIN_COSINE = 0.99
JSON_FORMAT = "ssondo-export"


class ExportError(RuntimeError):
    """The student cannot be exported as asked."""


class ExportVerificationError(ExportError):
    """The exported model does not compute what the eager model computes."""


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


class _RealStftLogMel(nn.Module):
    """The eager front-end's log-mel (``frontend._MelBase``) with a real-valued STFT, for ONNX.

    Shares the eager module's ``cfg``, ``window`` and ``banks``; its output is checked against
    the eager model by the export verification. audio (B, S) -> (B, 1, n_mels, T).
    """

    def __init__(self, mel: nn.Module) -> None:
        super().__init__()
        self.mel = mel
        # reflect padding as two gathers: F.pad(mode="reflect") becomes an ONNX Pad whose output
        # shape the exporter cannot infer, which DyMN's fixed-shape export needs
        half = mel.cfg.n_fft // 2
        self.register_buffer("reverse", torch.arange(half - 1, -1, -1), persistent=False)  # (half,)

    def forward(self, audio: Tensor) -> Tensor:
        c = self.mel.cfg
        x = audio.float()
        if c.preemphasis:
            x = x[:, 1:] - c.preemphasis * x[:, :-1]
        if c.center:  # what torch.stft(center=True, pad_mode="reflect") does itself
            half = c.n_fft // 2
            left, right = x[:, 1 : half + 1][:, self.reverse], x[:, -half - 1 : -1][:, self.reverse]
            x = torch.cat([left, x, right], dim=1)  # (B, S + 2 * half)
        spec = torch.stft(
            x, c.n_fft, c.hop_length, c.win_length, self.mel.window, center=False, return_complex=False
        )  # (B, n_fft//2+1, T, 2)
        power = spec.square().sum(-1)  # (B, n_fft//2+1, T)
        mel = torch.matmul(self.mel.banks, power)  # (B, n_mels, T)
        return ((torch.log(mel + c.log_offset) - c.norm_mean) / c.norm_std).unsqueeze(1)


class Deployable(nn.Module):
    """audio (B, S) -> (B, backbone_dim) [embedding] or (B, teacher_dim) [projection].

    Holds the front-end's mel module, the backbone and (projection only) the head directly, not
    the ``Student``: the Student's extra state (DyMN temperature, a dict) breaks the ONNX
    exporter, and the temperature already lives in the backbone's modules.
    """

    def __init__(self, model: AudioStudent, what: str, onnx_frontend: bool) -> None:
        super().__init__()
        mel = model.frontend.mel
        self.frontend = _RealStftLogMel(mel) if onnx_frontend else mel
        self.backbone = model.student.backbone
        self.head = model.student.head if what == "projection" else None

    def forward(self, audio: Tensor) -> Tensor:
        z = self.backbone.embed(self.frontend(audio))  # (B, backbone_dim)
        return z if self.head is None else self.head(z)


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
) -> ExportResult:
    """Export the student of a RUN folder (or a ``student.pt``) as ``fmt`` and verify it.

    clip_seconds: clip length used to trace, verify and time the model (any length runs after
    export). repeats: timed runs per model (median reported). threads: CPU threads for eager
    and exported alike while timing (None: torch's current setting). Re-running an export that
    is complete for the same checkpoint and options is a no-op (``reused=True``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if what not in WHATS:
        raise ValueError(f"unknown export output {what!r}; choose one of {', '.join(WHATS)}")
    if clip_seconds <= 0 or repeats < 1:
        raise ValueError(f"need clip_seconds > 0 and repeats >= 1, got {clip_seconds}, {repeats}")
    ckpt = resolve_checkpoint(run_or_checkpoint)
    out = Path(out) if out is not None else default_out(ckpt, fmt, int8, what)
    json_path = out.with_name(out.name + ".json")
    ckpt_sha = sha256_file(ckpt)
    options = {"fmt": fmt, "int8": int8, "what": what, "clip_seconds": clip_seconds}
    if (done := _finished(out, json_path, ckpt_sha, options)) is not None:
        return done

    model, meta = load_student(ckpt)
    if sha256_file(ckpt) != ckpt_sha:  # e.g. a trainer replacing student.pt right now
        raise ExportError(f"{ckpt} changed while it was being read; export again once it is final")
    sr = model.sample_rate
    n = int(round(clip_seconds * sr))
    if n < model.frontend.cfg.n_fft + 1:
        raise ValueError(f"clip_seconds {clip_seconds} is shorter than one front-end frame")
    deploy = Deployable(model, what, onnx_frontend=fmt == "onnx").eval()
    if int8:
        n_linear = sum(isinstance(m, nn.Linear) for m in deploy.modules())
        if n_linear == 0:  # refuse rather than write an "int8" file that is the fp32 model
            raise ExportError(
                f"--int8 quantises Linear layers, and the {what} of student "
                f"{meta['student']['name']!r} has none; export it in fp32, or the projection"
            )
        if fmt == "torchscript":
            with _quiet_export():
                deploy = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(deploy), {nn.Linear}, dtype=torch.qint8
                )
    gen = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(1, n, generator=gen)  # traced / timed: batch 1, one clip
    other = 0.1 * torch.randn(2, n * 3 // 4, generator=gen)  # verified too: other batch, other length
    traced = _trace(deploy, example)
    shape = {"batch": _runs_on(traced, other), "samples": True}

    with _threads(threads):
        with atomic_path(out) as tmp:
            if fmt == "torchscript":
                with _quiet_export():
                    torch.jit.save(traced, str(tmp))
                n_quantized = sum(
                    isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in deploy.modules()
                )
            else:
                n_quantized, shape["samples"] = _export_onnx(deploy, example, tmp, int8, shape["batch"], what)
            if not shape["samples"]:
                other = 0.1 * torch.randn(1, n, generator=gen)
            elif not shape["batch"]:
                other = other[:1]
            run = _load_exported(fmt, tmp)
            verification = _verify(model, what, run, [example, other], int8)
            verification["int8_quantized_ops"] = n_quantized
            latency = _latency(model, what, run, example, repeats, clip_seconds)
        size = out.stat().st_size

    in_shape = ["batch" if shape["batch"] else 1, "samples" if shape["samples"] else n]
    record = {
        "format": JSON_FORMAT,
        "export": {
            **options,
            "path": out.name,
            "sha256": sha256_file(out),
            "size_bytes": size,
            "opset": OPSET if fmt == "onnx" else None,
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
        "student": meta["student"],
        "frontend": meta["frontend"],
        "teacher_id": meta["teacher_id"],
        "teacher_dim": meta["teacher_dim"],
        "backbone_dim": meta["backbone_dim"],
        "checkpoint": {
            "path": str(ckpt.resolve()),
            "sha256": ckpt_sha,
            "code_version": meta.get("code_version"),
            "created": meta.get("created"),
            "extra": meta.get("extra", {}),
        },
        "verification": verification,
        "latency": latency,
        "versions": _versions(fmt),
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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Warnings the export raises about what the verification checks anyway (tracer: Python ints baked
# into the graph), or about deprecations of the only exporters this torch offers without onnxscript.
_EXPECTED_WARNINGS = (
    r".*return_complex=False.*",
    r".*quantized tensor creation functions.*",
    r".*Constant folding.*",
    r".*torch\.ao\.quantization is deprecated.*",
    r".*legacy TorchScript-based ONNX export.*",
    r".*torch\.jit\.\w+.* is deprecated.*",
)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _trace(deploy: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    with _quiet_export(), torch.inference_mode():
        return torch.jit.trace(deploy, example, check_trace=False)


def _runs_on(traced: torch.jit.ScriptModule, audio: Tensor) -> bool:
    """Whether the batch-1 trace runs at ``audio``'s batch size too (DyMN's does not)."""
    try:
        with torch.inference_mode():
            traced(audio)
    except RuntimeError:
        return False
    return True


def _export_onnx(
    deploy: nn.Module, example: Tensor, path: Path, int8: bool, batch_dynamic: bool, what: str
) -> tuple[int, bool]:
    """-> (int8 ops, whether the samples axis is dynamic)."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx" if int8 else path
        with _stdout_to(Path(tmpdir) / "exporter.log"):
            samples_dynamic = _onnx_export(deploy, example, fp32, batch_dynamic, what)
        return (_quantize_onnx(fp32, path, _linear_weight_keys(deploy)) if int8 else 0), samples_dynamic


@contextlib.contextmanager
def _stdout_to(path: Path) -> Iterator[None]:
    """Send file descriptor 1 to ``path``: when an export attempt fails, the legacy exporter prints
    the whole TorchScript graph (megabytes) to C++ stdout, its ONNX log being left on in torch 2.14."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _onnx_export(deploy: nn.Module, example: Tensor, path: Path, batch_dynamic: bool, what: str) -> bool:
    """Export with a dynamic samples (and batch) axis; where the exporter cannot (DyMN: a conv
    kernel computed from the input has no static shape), with the example's fixed shape, which the
    JSON, the summary and the verification all reflect. -> whether the samples axis is dynamic."""
    axes = (
        {"audio": {0: "batch", 1: "samples"}, what: {0: "batch"}}
        if batch_dynamic
        else {"audio": {1: "samples"}}
    )
    first = None
    for dynamic_axes in (axes, None):
        try:
            with _quiet_export(), torch.no_grad():
                torch.onnx.export(
                    deploy,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=["audio"],
                    output_names=[what],
                    dynamic_axes=dynamic_axes,
                )
            return dynamic_axes is not None
        except Exception as e:  # the exporter raises many types; report the first failure
            first = first or e
    raise ExportError(
        f"torch {torch.__version__} could not export the student to ONNX (opset {OPSET}, legacy "
        f"exporter), with dynamic or fixed shapes: {type(first).__name__}: {first}. "
        f"Try --format torchscript."
    ) from first


def _linear_weight_keys(model: nn.Module) -> set[bytes]:
    """Fingerprints of every nn.Linear weight, as stored (Gemm) and transposed (MatMul)."""
    keys = set()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().float().numpy()
            keys |= {hashlib.sha1(np.ascontiguousarray(a).tobytes()).digest() for a in (w, w.T)}
    return keys


def _quantize_onnx(fp32: Path, path: Path, linear_keys: set[bytes]) -> int:
    """ONNX dynamic int8 of the nodes that are the model's nn.Linear layers, as TorchScript's
    quantize_dynamic({nn.Linear}) does: a MatMul / Gemm whose constant weight is a Linear weight.
    Other constant-weight MatMuls stay fp32: the mel banks (an int8 mel would change every input
    the student sees) and DyMN's kernel bank (a conv weight)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32)).graph
    consts = {t.name: t for t in graph.initializer}

    def is_linear(node: onnx.NodeProto) -> bool:
        return any(
            i in consts
            and hashlib.sha1(
                np.ascontiguousarray(numpy_helper.to_array(consts[i]), dtype=np.float32).tobytes()
            ).digest()
            in linear_keys
            for i in node.input
        )

    # excluded by name, not included: the quantiser renames the Gemm nodes it rewrites as MatMul
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    others = [n.name for n in matmuls if not is_linear(n)]
    if len(others) == len(matmuls):
        raise ExportError("no Linear layer found in the ONNX graph to quantise; nothing written")
    logging.disable(logging.WARNING)  # its advice to run shape pre-processing, logged on the root logger
    try:
        quantize_dynamic(
            str(fp32),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=others,
        )
    finally:
        logging.disable(logging.NOTSET)
    quantized = onnx.load(str(path)).graph
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in quantized.node)


def _load_exported(fmt: str, path: Path) -> Callable[[Tensor], np.ndarray]:
    """The exported file as a function audio (B, S) -> np.ndarray (B, D)."""
    if fmt == "torchscript":
        with _quiet_export():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(audio: Tensor) -> np.ndarray:
            with torch.inference_mode():
                return module(audio).numpy()

        return run_ts
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # same threads as the eager model it is timed against
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run_onnx(audio: Tensor) -> np.ndarray:
        return session.run(None, {"audio": audio.numpy()})[0]

    return run_onnx


def _eager(model: AudioStudent, what: str) -> Callable[[Tensor], np.ndarray]:
    fn = model.embed if what == "embedding" else model.forward

    def run(audio: Tensor) -> np.ndarray:
        with torch.inference_mode():
            return fn(audio).numpy()

    return run


def _verify(
    model: AudioStudent, what: str, run: Callable[[Tensor], np.ndarray], inputs: list[Tensor], int8: bool
) -> dict[str, Any]:
    """Exported vs eager fp32 on each input; raise when outside the bound for fp32 / int8."""
    eager = _eager(model, what)
    max_abs = max_ref = 0.0
    min_cos = 1.0
    for audio in inputs:
        ref, got = eager(audio).astype(np.float64), run(audio).astype(np.float64)
        if got.shape != ref.shape:
            raise ExportVerificationError(
                f"exported model returns {got.shape} for audio {tuple(audio.shape)}, "
                f"the eager model {ref.shape}"
            )
        max_abs = max(max_abs, float(np.abs(got - ref).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        min_cos = min(min_cos, float(cos.min()))
    rel = max_abs / max(max_ref, 1e-12)
    fp32_ok = max_abs <= FP32_TOLERANCE * max_ref + FP32_ATOL
    bound = f"max |diff| <= {FP32_TOLERANCE:g} x max |eager| + {FP32_ATOL:g}"
    if int8:
        bound = f"min cosine >= {INT8_MIN_COSINE}, or {bound}"
    report = {
        "inputs": [list(a.shape) for a in inputs],
        "audio": "N(0, 0.1^2) noise, seed 0",
        "max_abs_diff": max_abs,
        "max_rel_diff": rel,
        "min_cosine": min_cos,
        "eager_max_abs": max_ref,
        "bound": bound,
    }
    ok = fp32_ok or (int8 and min_cos >= INT8_MIN_COSINE)
    if not ok or not np.isfinite(max_abs):
        raise ExportVerificationError(
            f"exported model disagrees with the eager student: max |diff| {max_abs:.3g} "
            f"(relative {rel:.3g}), min cosine {min_cos:.6f}; required: {bound}. "
            f"Nothing was written."
        )
    return report


def _latency(
    model: AudioStudent,
    what: str,
    run: Callable[[Tensor], np.ndarray],
    example: Tensor,
    repeats: int,
    clip_seconds: float,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median CPU ms per clip at batch 1, eager fp32 vs the export, timed alternately so that
    both see the same machine load."""
    fns = {"eager_ms": _eager(model, what), "exported_ms": run}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn(example)
            if i >= warmup:
                times[key].append((time.perf_counter() - t0) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {
        "clip_seconds": clip_seconds,
        "batch": 1,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        **ms,
        "speedup": ms["eager_ms"] / ms["exported_ms"],
        "device": "cpu",
    }


def _versions(fmt: str) -> dict[str, str]:
    v = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        v |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    return v


__all__ = [
    "FORMATS",
    "WHATS",
    "Deployable",
    "ExportError",
    "ExportResult",
    "ExportVerificationError",
    "default_out",
    "export_student",
    "resolve_checkpoint",
]
