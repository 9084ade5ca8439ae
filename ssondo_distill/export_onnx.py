"""The ONNX half of ``export``: a real-valued front-end, the legacy exporter, int8 and onnxruntime.

Front-end: the legacy exporter (the dynamo one needs ``onnxscript``, not a dependency) has no
complex tensors, so ``RealStftLogMel`` computes the eager log-mel from the same window and mel
banks with the real-valued STFT output, which maps to ONNX's STFT op (opset 17).

int8: static quantisation of the convolutions and Linear layers, calibrated on packed clips
(``quantize_onnx``); the front-end (STFT, mel banks, log) and ``quantize.KEEP_FP32`` stay fp32.

``onnx`` and ``onnxruntime`` are imported inside the functions that use them. This module builds
on ``export`` (its errors and warning filters); ``export`` imports it when it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .export_check import ExportError, quiet_export

OPSET = 17  # first opset with an STFT op


class RealStftLogMel(nn.Module):
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


def export_onnx(
    deploy: nn.Module,
    example: Tensor,
    path: Path,
    batch_dynamic: bool,
    what: str,
    calibration: Tensor | None = None,
) -> tuple[tuple[int, int], bool]:
    """Write ``deploy`` (traced on ``example``) to ``path`` as ONNX; static int8 calibrated on
    ``calibration`` (N, S) clips when given.

    -> ((int8 weight layers, of which convolutions), whether the samples axis is dynamic)."""
    from .quantize_onnx import quantize_onnx

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx" if calibration is not None else path
        with _stdout_to(Path(tmpdir) / "exporter.log"):
            samples_dynamic = _onnx_export(deploy, example, fp32, batch_dynamic, what)
        if calibration is None:
            return (0, 0), samples_dynamic
        return quantize_onnx(fp32, path, calibration, deploy), samples_dynamic


def load_onnx(path: Path) -> Callable[[Tensor], np.ndarray]:
    """The ONNX file as a function audio (B, S) -> np.ndarray (B, D), on onnxruntime's CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # same threads as the eager model it is timed against
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run_onnx(audio: Tensor) -> np.ndarray:
        return session.run(None, {"audio": audio.numpy()})[0]

    return run_onnx


def onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


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
            with quiet_export(), torch.no_grad():
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
