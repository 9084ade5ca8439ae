"""MATPAC++ and M2D reproduce the official implementations' outputs (tests/fixtures/official/)."""

from pathlib import Path

import pytest
import torch

from ssondo_cache.teachers import build_teacher

OFFICIAL = Path(__file__).parents[2] / "fixtures" / "official"
TOL = 2e-5  # relative to the reference's largest value; fp32 on both sides


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def matpac_golden(tmp_path_factory):
    d = torch.load(OFFICIAL / "matpac_tiny_official.pt", weights_only=True)
    path = tmp_path_factory.mktemp("ckpt") / "matpac_plus_6s_2048_enconly.pt"
    torch.save(d["state_dict"], path)  # a flat state_dict, as the official checkpoints
    return d, path


@pytest.mark.parametrize("mode", ["precise", "fast"])
def test_matpac_matches_official_all_layers_and_pooling(matpac_golden, mode):
    d, path = matpac_golden
    teacher = build_teacher("matpac", checkpoint=path, mode=mode, num_heads=4)
    assert teacher.embed_dim == 320 and teacher.chunk_seconds == pytest.approx(6.08)
    x = teacher.frontend(d["audio"])[:, 0]  # (B, n_mels, frames)
    layers = teacher.encode_log_mel(x, all_layers=True)  # (B, 3, steps incl. fast padding, 320), time order
    b, n_layers, steps, dim = layers.shape
    if mode == "fast":
        # the official fast mode orders time steps as (step, chunk): index = t * n_chunks + chunk
        n_chunks = steps // 38
        official_order = layers.reshape(b, n_layers, n_chunks, 38, dim).transpose(2, 3).reshape(layers.shape)
        assert _rel(layers, d["layers_fast_pull0"]) > 0.1  # the order does matter
    else:
        official_order = layers
    assert _rel(official_order, d[f"layers_{mode}_pull0"]) < TOL
    assert _rel(official_order[:, -1], d[f"emb_{mode}_pull0"]) < TOL
    assert _rel(layers.mean(2), d[f"layers_{mode}_pull1"]) < TOL
    assert _rel(layers[:, -1].mean(1), d[f"emb_{mode}_pull1"]) < TOL
    # the teacher's own outputs: valid steps only (58 = ceil(928 frames / 16)), in time order
    out = teacher(d["audio"])
    assert out.shape == (2, 58, 320)
    torch.testing.assert_close(out, layers[:, -1, :58])
    torch.testing.assert_close(teacher.forward_layers(d["audio"]), layers[:, :, :58])
    if mode == "precise":
        assert _rel(out, d["emb_precise_pull0"]) < TOL


def test_m2d_matches_official_frame_and_scene_embeddings(tmp_path):
    d = torch.load(OFFICIAL / "m2d_tiny_official.pt", weights_only=True)
    path = tmp_path / "m2d_vit_base-80x608p16x16-golden" / "checkpoint-300.pth"
    path.parent.mkdir()
    torch.save({"model": {"backbone." + k: v for k, v in d["encoder_only_state_dict"].items()}}, path)
    teacher = build_teacher("m2d", checkpoint=path, num_heads=4)
    assert (teacher.frontend.cfg.norm_mean, teacher.frontend.cfg.norm_std) == pytest.approx((-7.1, 4.2))
    frames = teacher(d["audio"])
    assert frames.shape == d["frame_embeddings"].shape == (2, 59, 320)
    assert _rel(frames, d["frame_embeddings"]) < TOL
    assert _rel(teacher.get_scene_embeddings(d["audio"]), d["scene_embeddings"]) < TOL


@pytest.mark.parametrize(
    ("spec", "n_samples"), [("matpac", 400 + (2 * 608 - 1) * 160), ("m2d", (2 * 608 - 1) * 160)]
)
def test_precise_and_fast_agree_on_whole_chunks(spec, n_samples):
    opts = {"random_init": True, "embed_dim": 32, "depth": 2, "num_heads": 2}
    precise = build_teacher(spec, mode="precise", **opts)
    fast = build_teacher(spec, mode="fast", **opts)
    assert precise.teacher_id != fast.teacher_id  # fast outputs differ: never the same cache folder
    torch.testing.assert_close(precise.encoder.state_dict(), fast.encoder.state_dict())  # same seed
    audio = torch.randn(2, n_samples) * 0.1
    assert precise.frontend.n_frames(n_samples) == 2 * 608
    a, b = precise(audio), fast(audio)
    assert a.shape == (2, 76, 5 * 32)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # on a length that is not a whole number of chunks they differ (fast attends to padding), same shape
    short = audio[:, : n_samples - 16000]
    assert precise(short).shape == fast(short).shape
    assert not torch.allclose(precise(short), fast(short), atol=1e-4)


def test_short_audio_gives_one_step():
    t = build_teacher("matpac", random_init=True, embed_dim=32, depth=1, num_heads=2)
    assert t(torch.randn(1, 100)).shape == (1, 1, 160)
