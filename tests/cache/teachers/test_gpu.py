"""On CUDA: bf16 autocast + fused attention + torch.compile give the fp32 CPU embeddings (marked gpu)."""

import pytest
import torch

from ssondo_cache.teachers import build_teacher
from ssondo_cache.teachers.base import compile_teacher

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("spec", ["matpac", "m2d"])
def test_cuda_bf16_matches_cpu_fp32(spec, compile):
    opts = {"random_init": True, "embed_dim": 128, "depth": 2, "num_heads": 2}
    cpu = build_teacher(spec, **opts)
    gpu = build_teacher(spec, device="cuda", **opts)
    forward = compile_teacher(gpu) if compile else gpu
    audio = torch.randn(3, 16000 * 7) * 0.1  # two chunks, the second one shorter
    ref = cpu(audio)
    with torch.inference_mode():
        out = forward(audio.cuda())
    assert out.dtype == torch.float32 and out.device.type == "cuda" and out.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(out.cpu(), ref, dim=-1)
    assert cos.min() > 0.99, cos.min()


def test_amp_off_is_fp32_exact_enough():
    opts = {"random_init": True, "embed_dim": 64, "depth": 2, "num_heads": 2}
    cpu = build_teacher("matpac", **opts)
    gpu = build_teacher("matpac", device="cuda", amp=False, **opts)
    audio = torch.randn(2, 16000 * 3) * 0.1
    out, ref = gpu(audio.cuda()).cpu(), cpu(audio)
    # fp32 on both sides (cuDNN may still use TF32 for the patch convolution): near-identical
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).min() > 0.9999
