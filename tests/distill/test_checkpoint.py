"""Student checkpoints: round trip, weights_only loading, and refusals naming both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssondo_distill.checkpoint import AudioStudent, CheckpointMismatch, load_student, read_meta, save_student
from ssondo_distill.frontend import LogMelConfig
from ssondo_distill.students import build_student

torch.set_num_threads(1)


def _trained_like(name: str, teacher_dim: int = 16, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    s = build_student(name, teacher_dim, hidden_dim=32, **opts)
    s.train()
    with torch.no_grad():  # populate BN running statistics so they are not the defaults
        s(torch.randn(4, 1, 64, 40))
    return s.eval()


@pytest.mark.parametrize("name", ["mn04", "dymn04"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    s = _trained_like(name)
    s.set_step(123, steps_per_epoch=10)  # DyMN: temperature 17.7, must survive the trip
    fe_cfg = LogMelConfig(n_mels=64)
    path = save_student(tmp_path / "student.pt", s, fe_cfg, "tiny-0123456789ab", 16, extra={"epoch": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["student"]["name"] == name and raw["teacher_dim"] == 16

    model, meta = load_student(path, expect_student=name, expect_teacher_dim=16)
    assert isinstance(model, AudioStudent) and not model.training
    assert model.sample_rate == 32000 and model.teacher_dim == 16 and model.backbone_dim == s.backbone_dim
    assert meta["teacher_id"] == "tiny-0123456789ab" and meta["extra"] == {"epoch": 3}
    assert meta["frontend"]["n_mels"] == 64 and "state_dict" not in meta
    assert read_meta(path)["student"] == s.config()
    if name == "dymn04":
        assert (
            model.student.backbone.temperature == pytest.approx(s.backbone.temperature) == pytest.approx(17.7)
        )
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        mel = model.frontend(audio)
        torch.testing.assert_close(model(audio), s(mel))
        torch.testing.assert_close(model.embed(audio), s.embed(mel))
    assert model(audio).shape == (2, 16) and model.embed(audio).shape == (2, s.backbone_dim)


def test_refusals_name_both_sides(tmp_path: Path) -> None:
    s = _trained_like("mn04")
    path = save_student(tmp_path / "s.pt", s, LogMelConfig(n_mels=64), "teacherA-abc", 16)
    with pytest.raises(CheckpointMismatch, match=r"holds student 'mn04', but 'dymn04' was expected"):
        load_student(path, expect_student="dymn04")
    with pytest.raises(CheckpointMismatch, match=r"16-d teacher.*but a 3840-d teacher was expected"):
        load_student(path, expect_teacher_dim=3840)
    with pytest.raises(CheckpointMismatch, match=r"projects to 16 dims, but teacher 'big' has 768"):
        save_student(tmp_path / "t.pt", s, LogMelConfig(), "big", 768)
    assert not (tmp_path / "t.pt").exists()
    with pytest.raises(ValueError, match="JSON-like"):
        save_student(tmp_path / "t.pt", s, LogMelConfig(), "t", 16, extra={"when": object()})
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointMismatch, match="not an ssondo student checkpoint"):
        load_student(other)
    with pytest.raises(FileNotFoundError):
        load_student(tmp_path / "missing.pt")


def test_weights_must_match_exactly(tmp_path: Path) -> None:
    """A checkpoint whose weights do not fit its declared student is refused, not half-loaded."""
    s = _trained_like("mn04")
    path = save_student(tmp_path / "s.pt", s, LogMelConfig(n_mels=64), "t", 16)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"].pop("head.3.bias")
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match="head.3.bias"):
        load_student(path)


def test_frontend_kind_travels(tmp_path: Path) -> None:
    s = _trained_like("mn04")
    path = save_student(tmp_path / "s.pt", s, LogMelConfig.efficientat(), "t", 16)
    model, meta = load_student(path)
    assert meta["frontend"]["kind"] == "efficientat" and model.frontend.cfg == LogMelConfig.efficientat()


def _norm(dim: int = 16) -> dict:
    g = torch.Generator().manual_seed(3)
    mean = (5 * torch.randn(dim, generator=g, dtype=torch.float64)).tolist()
    std = (0.1 + 3 * torch.rand(dim, generator=g, dtype=torch.float64)).tolist()
    return {"kind": "standardize", "mean": mean, "std": std}


def _teacher_space(s: torch.nn.Module, model: AudioStudent, audio: torch.Tensor, norm: dict) -> torch.Tensor:
    """What the student trained on normalised targets means in the teacher's space: std * y + mean."""
    with torch.no_grad():
        y = s(model.frontend(audio)).double()
    return (torch.tensor(norm["std"]) * y + torch.tensor(norm["mean"])).float()


def test_target_norm_is_folded_into_the_projection(tmp_path: Path) -> None:
    """forward() of a student trained on standardised targets outputs teacher-space vectors;
    a version-1 file (normalisation unfolded, in extra) is folded when loaded."""
    s, norm = _trained_like("mn04"), _norm()
    path = save_student(tmp_path / "s.pt", s, LogMelConfig(n_mels=64), "t", 16, target_norm=norm)
    model, meta = load_student(path)
    assert meta["version"] == 2 and meta["target_norm"] == norm
    audio = torch.randn(3, 16000)
    expected = _teacher_space(s, model, audio, norm)
    # folded in float64, stored in float32: ~1 ulp per weight, far below the 1e-5 of the scale checked
    scale = expected.abs().max().item()
    with torch.no_grad():
        torch.testing.assert_close(model(audio), expected, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(model.embed(audio), s.embed(model.frontend(audio)))  # backbone untouched
    # a version-1 file: unfolded weights, the statistics in extra
    old = torch.load(path, weights_only=True)
    old.update(version=1, state_dict=s.state_dict(), extra={"target_norm": norm})
    old.pop("target_norm")
    torch.save(old, tmp_path / "v1.pt")
    v1, _ = load_student(tmp_path / "v1.pt")
    with torch.no_grad():
        torch.testing.assert_close(v1(audio), expected, rtol=1e-5, atol=1e-5 * scale)
    plain = save_student(tmp_path / "plain.pt", s, LogMelConfig(n_mels=64), "t", 16)  # no target_norm
    with torch.no_grad():
        torch.testing.assert_close(load_student(plain)[0](audio), s(model.frontend(audio)))
    with pytest.raises(CheckpointMismatch, match="statistics for a"):
        save_student(tmp_path / "bad.pt", s, LogMelConfig(n_mels=64), "t", 16, target_norm=_norm(8))
