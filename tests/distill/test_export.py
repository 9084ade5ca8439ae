"""`ssondo export`: every format agrees with the eager student on audio it was not verified on;
the checks can fail; refusals; re-running is a no-op; the CLI. int8: tests/distill/test_quantize.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from ssondo_cache.provenance import sha256_file
from ssondo_distill import export_check
from ssondo_distill.checkpoint import load_student, save_student
from ssondo_distill.export import ExportVerificationError, export_student
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.students import build_student

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*is deprecated:FutureWarning")
CLIP = 0.5  # seconds: short audio keeps every export ~1-2 s


def _make_run(
    root: Path, name: str = "mn04", frontend: LogMelConfig | None = None, seed: int = 0, **opts
) -> Path:
    """A RUN folder with a student.pt whose BatchNorm statistics come from real front-end output."""
    torch.manual_seed(seed)
    frontend = frontend or LogMelConfig(n_mels=64)
    student = build_student(name, 16, hidden_dim=32, **opts)
    fe = StudentFrontEnd.from_config(frontend)
    student.train()
    with torch.no_grad():
        student(fe(0.1 * torch.randn(4, 32000)))
    run = root / "run"
    save_student(run / "student.pt", student.eval(), frontend, "tiny-0123456789ab", 16)
    return run


def _run_exported(fmt: str, path: Path, audio: torch.Tensor) -> np.ndarray:
    if fmt == "torchscript":
        with torch.inference_mode():
            return torch.jit.load(str(path)).eval()(audio).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"audio": audio.numpy()})[0]


def _clips(n: int) -> torch.Tensor:
    """(3, n): noise, a harmonic tone with a little noise, near-silence (log-mel close to its floor)."""
    t = torch.arange(n) / 32000
    g = torch.Generator().manual_seed(7)
    tone = sum(0.3 / k * torch.sin(2 * torch.pi * 220 * k * t) for k in range(1, 6))
    return torch.stack(
        [
            0.1 * torch.randn(n, generator=g),
            tone + 0.01 * torch.randn(n, generator=g),
            1e-4 * torch.randn(n, generator=g),
        ]
    )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_agrees_with_eager_student(run: Path, fmt: str) -> None:
    res = export_student(run, fmt, what="projection", clip_seconds=CLIP, repeats=1)
    suffix = ".onnx" if fmt == "onnx" else ".ts.pt"
    assert res.path == run / "export" / f"student-projection{suffix}"
    assert res.path.is_file() and res.json_path == res.path.with_name(res.path.name + ".json")
    assert not [p for p in res.path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert res.input_shape == ["batch", "samples"] and res.out_dim == 16 and not res.reused

    # fresh audio: another batch size and length than the export was traced and verified with
    model, _ = load_student(run / "student.pt")
    audio = _clips(20000)
    with torch.inference_mode():
        ref = model(audio).numpy()
    got = _run_exported(fmt, res.path, audio)
    assert got.shape == ref.shape == (3, 16)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * scale)
    assert res.verification["max_rel_diff"] <= 1e-4

    record = json.loads(res.json_path.read_text())
    assert record["checkpoint"]["sha256"] == sha256_file(run / "student.pt")
    assert record["export"]["sha256"] == sha256_file(res.path)
    assert record["export"]["size_bytes"] == res.size_bytes == res.path.stat().st_size
    assert record["teacher_id"] == "tiny-0123456789ab" and record["student"]["name"] == "mn04"
    assert record["frontend"]["n_mels"] == 64 and record["input"]["sample_rate"] == 32000
    lat = record["latency"]
    assert (
        lat["eager_ms"] > 0 and lat["exported_ms"] > 0 and lat["batch"] == 1 and lat["clip_seconds"] == CLIP
    )
    assert str(res.path) in res.summary() and "fp32" in res.summary()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_embedding_export_is_the_backbone_embedding(run: Path, tmp_path: Path, fmt: str) -> None:
    res = export_student(run / "student.pt", fmt, out=tmp_path / f"emb.{fmt}", clip_seconds=CLIP, repeats=1)
    model, _ = load_student(run / "student.pt")
    audio = 0.1 * torch.randn(2, 24000, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.embed(audio).numpy()
    got = _run_exported(fmt, res.path, audio)
    assert res.out_dim == model.backbone_dim and got.shape == (2, model.backbone_dim)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_rerun_is_a_no_op_and_a_new_checkpoint_is_exported_again(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    first = export_student(run, "onnx", clip_seconds=CLIP, repeats=1)
    stamp = first.path.stat().st_mtime_ns
    again = export_student(run, "onnx", clip_seconds=CLIP, repeats=1)
    assert again.reused and again.path.stat().st_mtime_ns == stamp and "already exported" in again.summary()
    assert again.verification == first.verification
    _make_run(tmp_path, seed=1)  # retrained: other weights in the same RUN
    third = export_student(run, "onnx", clip_seconds=CLIP, repeats=1)
    assert not third.reused
    assert json.loads(third.json_path.read_text())["checkpoint"]["sha256"] == sha256_file(run / "student.pt")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_verification_writes_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setattr(export_check, "FP32_TOLERANCE", -1.0)  # a bound no export can meet
    out = tmp_path / "x" / "model.bin"
    with pytest.raises(
        ExportVerificationError, match="disagrees with the eager student.*Nothing was written"
    ):
        export_student(run, fmt, out=out, clip_seconds=CLIP, repeats=1)
    assert list(out.parent.iterdir()) == []


def test_refusals(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown export format 'tflite'; choose one of onnx, torchscript"):
        export_student(run, "tflite")
    with pytest.raises(ValueError, match=r"unknown export output 'logits'"):
        export_student(run, "onnx", what="logits")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no student.pt"):
        export_student(tmp_path / "empty", "onnx")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        export_student(tmp_path / "nope.pt", "onnx")
    with pytest.raises(ValueError, match=r"shorter than one front-end frame"):
        export_student(run, "onnx", clip_seconds=0.01)


@pytest.mark.slow
def test_dymn_exports_at_its_fixed_shapes(tmp_path: Path) -> None:
    """DyMN's per-sample kernels pin the batch to 1 (both formats) and, in ONNX, the samples too;
    with EfficientAT's centred front-end (the reflect padding path of the ONNX front-end)."""
    run = _make_run(tmp_path, "dymn04", frontend=LogMelConfig.efficientat(n_mels=64))
    ts = export_student(run, "torchscript", clip_seconds=CLIP, repeats=1)
    assert ts.input_shape == [1, "samples"]
    from tests.distill.test_quantize import make_work

    work = make_work(tmp_path / "calib")
    onnx_res = export_student(
        run,
        "onnx",
        int8=True,
        clip_seconds=CLIP,
        repeats=1,
        calibrate=4,
        calibrate_from=work,
        min_cosine=0.99,
    )
    assert onnx_res.input_shape == [1, int(CLIP * 32000)]
    model, _ = load_student(run / "student.pt")
    audio = 0.1 * torch.randn(1, int(CLIP * 32000), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model.embed(audio).numpy()
    np.testing.assert_allclose(
        _run_exported("torchscript", ts.path, audio), ref, rtol=0, atol=1e-4 * np.abs(ref).max()
    )
    assert _cosines(_run_exported("onnx", onnx_res.path, audio), ref).min() > 0.99


def test_cli(run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    res = runner.invoke(
        main,
        [
            "export",
            str(run),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--clip-seconds",
            str(CLIP),
            "--repeats",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"exported {out} (onnx fp32") and len(res.output.strip().splitlines()) == 1
    assert out.is_file() and out.with_name("cli.onnx.json").is_file()
    bad = runner.invoke(main, ["export", str(run), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output
    (tmp_path / "empty").mkdir()
    missing = runner.invoke(main, ["export", str(tmp_path / "empty"), "--format", "onnx"])
    assert missing.exit_code == 1 and "has no student.pt" in missing.output
    assert runner.invoke(main, ["export", "--help"]).exit_code == 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_projection_export_speaks_the_teachers_space(tmp_path: Path, fmt: str) -> None:
    """A student trained on standardised targets: the exported projection is std * y + mean of
    the student's own output y (the normalisation is folded into the checkpoint)."""
    torch.manual_seed(0)
    student = build_student("mn04", 16, hidden_dim=32)
    fe = StudentFrontEnd.from_config(LogMelConfig(n_mels=64))
    student.train()
    with torch.no_grad():
        student(fe(0.1 * torch.randn(4, 32000)))
    student.eval()
    g = torch.Generator().manual_seed(1)
    mean, std = (
        4 * torch.randn(16, generator=g, dtype=torch.float64),
        0.2 + torch.rand(16, generator=g, dtype=torch.float64),
    )
    norm = {"kind": "standardize", "mean": mean.tolist(), "std": std.tolist()}
    path = save_student(
        tmp_path / "student.pt", student, LogMelConfig(n_mels=64), "t-0", 16, target_norm=norm
    )
    res = export_student(
        path, fmt, what="projection", out=tmp_path / f"p.{fmt}", clip_seconds=CLIP, repeats=1
    )
    audio = _clips(20000)
    with torch.no_grad():
        teacher_space = (std * student(fe(audio)).double() + mean).numpy()
    got = _run_exported(fmt, res.path, audio)
    scale = np.abs(teacher_space).max()
    np.testing.assert_allclose(got, teacher_space, rtol=0, atol=1e-4 * scale)  # as the eager check above
