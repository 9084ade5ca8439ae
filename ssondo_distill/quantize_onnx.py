"""Static int8 of an fp32 ONNX export with onnxruntime (QDQ), calibrated on packed clips.

onnxruntime's ``quantize_static`` (min-max ranges, ``reduce_range`` = the 7-bit weights of
``quantize.WEIGHT_RANGE``) on every Conv / Gemm / MatMul except: every node upstream of the
backbone's first convolution (the STFT front-end), the nodes of the modules ``quantize.KEEP_FP32``
names (the same layers the TorchScript int8 keeps) and ``ONNX_EXTRA_ROLES`` (the stem: measured),
and the ops of ``KEEP_FP32_OPS``.

The legacy exporter names each node after the module scopes it was traced in
(``/features/features.4/block/block.2/conc_se_layers.0/fc1/Gemm``: each scope named relative to
an ancestor); ``_node_modules`` maps a node back to its module's qualified name, and a
kept module that matches no node is an error, never a silent int8.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from . import quantize
from .export_check import ExportError

ONNX_OPS = {"mean": "ReduceMean"}  # KEEP_FP32_OPS -> the ONNX op the exporter writes for it
# roles of quantize.OTHER_ROLES kept fp32 in ONNX too: onnxruntime's int8 stem (its QDQ log-mel input)
# measured worse than FX's (trained mn04, 10-s clips, 64 calibrating / 16 held out, per-clip cosine
# min / mean: projection 0.920 / 0.992 int8 stem, 0.984 / 0.998 fp32 stem; embedding 0.981 / 0.995,
# 0.992 / 0.998); pooled / mean keeps changed nothing there (docs/results/export.md)
ONNX_EXTRA_ROLES = ("stem",)


def _frontend_nodes(graph: Any, owner: dict[str, str]) -> list[str]:
    """Names of every node upstream of the backbone's first Conv: the front-end, kept fp32."""
    producer = {out: node for node in graph.node for out in node.output}
    first = next(
        (n for n in graph.node if n.op_type == "Conv" and owner[n.name].startswith("backbone.")), None
    )
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


def _node_module(node_name: str, modules: set[str]) -> str:
    """The qualified name of the module a node was traced in ("" = the root): each scope of the
    node's name is the shortest module under the enclosing one whose name ends with it (a scope
    is named relative to an ancestor, and a module called through a method, as ``backbone.embed``,
    opens no scope of its own)."""
    inside = ""
    for part in node_name.strip("/").split("/")[:-1]:
        found = [
            q
            for q in modules
            if (q == part or q.endswith("." + part)) and (not inside or q.startswith(inside + "."))
        ]
        if not found:
            raise ExportError(
                f"int8: ONNX node {node_name!r} names a scope {part!r} of no module of the export"
            )
        inside = min(found, key=len)
    return inside


def node_owners(graph: Any, deploy: nn.Module) -> dict[str, str]:
    """ONNX node name -> qualified name of the ``deploy`` module it was traced in ("" = the root)."""
    modules = {n for n, _ in deploy.named_modules() if n}
    return {node.name: _node_module(node.name, modules) for node in graph.node}


def kept_nodes(graph: Any, deploy: nn.Module) -> dict[str, list[str]]:
    """Role (``KEEP_FP32`` and ``ONNX_EXTRA_ROLES``, then each of ``KEEP_FP32_OPS``) -> names of the
    ONNX nodes kept fp32."""
    owner = node_owners(graph, deploy)
    kept: dict[str, list[str]] = {}
    roles = quantize.fp32_modules(deploy) | quantize.fp32_modules(deploy, ONNX_EXTRA_ROLES)
    for role, names in roles.items():
        kept[role] = []
        for name in names:
            hit = [n for n, m in owner.items() if m == name or m.startswith(name + ".")]
            if not hit:
                raise ExportError(
                    f"int8: module {name} ({role}, kept fp32) matches no node of the ONNX graph"
                )
            kept[role] += hit
    for op in quantize.KEEP_FP32_OPS:
        kept[op] = [n.name for n in graph.node if n.op_type == ONNX_OPS[op]]
    return kept


class _ClipReader:
    """onnxruntime's CalibrationDataReader protocol: one {"audio": (1, S)} feed per clip."""

    def __init__(self, clips: Tensor) -> None:
        self._feeds = iter([{"audio": clip[None].numpy()} for clip in clips])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(fp32: Path, path: Path, clips: Tensor, deploy: nn.Module) -> tuple[int, int]:
    """Static int8 (QDQ) of the fp32 ONNX file ``fp32`` (exported from ``deploy``) into ``path``,
    calibrated on ``clips`` (N, S). -> (int8 weight layers, of which convolutions)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32)).graph
    exclude = set(_frontend_nodes(graph, node_owners(graph, deploy)))
    for names in kept_nodes(graph, deploy).values():
        exclude.update(names)
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
            reduce_range=True,  # 7-bit weights, as quantize.WEIGHT_RANGE
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=sorted(exclude),
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


__all__ = ["ONNX_EXTRA_ROLES", "ONNX_OPS", "kept_nodes", "node_owners", "onnx_int8_layers", "quantize_onnx"]
