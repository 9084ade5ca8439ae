"""The paper authors' ``ssondo`` package (0.3.1, a dev extra) and its .ckpt format, both ways.

Ours -> theirs: ``ssondo export --format ssondo-ckpt`` writes a file their ``get_ssondo`` loads
strictly, with the same embeddings and teacher-space outputs (target normalisation folded) on real
audio. Theirs -> ours: a checkpoint built by their own code (``_build_student_model``, their
Lightning state_dict prefix) is a student here: loaded, probed by ``ssondo eval``, taken by the
HEAR module and by ``ssondo export``. What one side cannot represent is refused, naming the setting.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from ssondo_distill.checkpoint import load_student, save_student
from ssondo_distill.export import export_student
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.ssondo_ckpt import (
    SsondoCkptError,
    is_ssondo_ckpt,
    sliced,
    student_payload,
    to_ssondo_ckpt,
)
from ssondo_distill.students import build_student

SR = 32000
TOL = 1e-5  # the bound, on embeddings and outputs


def real_audio(tmp_path: Path, seconds: float, n: int = 2) -> torch.Tensor:
    """(n, samples) of recorded-like sound read back from 16-bit WAV: harmonic tones with vibrato,
    an attack/decay envelope and background noise, different per clip."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * SR)) / SR
    clips = []
    for i in range(n):
        f0 = 110.0 * 2 ** (i + rng.uniform(0, 1))
        phase = 2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 5.0 * t)
        tone = sum(np.sin(k * phase) / k for k in range(1, 6))
        env = np.exp(-3.0 * (t % 1.0)) * (1 - np.exp(-60.0 * (t % 1.0)))
        x = 0.3 * env * tone + 0.02 * rng.normal(size=t.size)
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (x / np.abs(x).max() * 0.8).astype(np.float32), SR, subtype="PCM_16")
        clips.append(sf.read(path, dtype="float32")[0])
    return torch.from_numpy(np.stack(clips))


def trained_like(student: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A student whose outputs are not ~0: weights and BN statistics perturbed, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.state_dict().items():
            if not torch.is_tensor(p):  # the Student's extra state
                continue
            if name.endswith("running_var"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("running_mean"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.is_floating_point() and "head" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return student.eval()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert want.abs().max() > 1e-2  # the comparison is not between near-zero vectors
    assert (got - want).abs().max().item() <= TOL, (got - want).abs().max().item()


# ---------------------------------------------------------------- ours -> theirs


@pytest.mark.slow
def test_get_ssondo_loads_our_export_strictly(tmp_path: Path) -> None:
    ssondo = pytest.importorskip("ssondo")
    assert ssondo.__version__ == "0.3.1"
    torch.manual_seed(0)
    student = trained_like(build_student("mn04", 16))
    gen = torch.Generator().manual_seed(1)
    norm = {
        "kind": "standardize",
        "mean": torch.randn(16, generator=gen),
        "std": 0.5 + torch.rand(16, generator=gen),
    }
    run = tmp_path / "run"
    save_student(run / "student.pt", student, LogMelConfig(), "tiny-0123456789ab", 16,
                 target_norm={k: v.tolist() if torch.is_tensor(v) else v for k, v in norm.items()})  # fmt: skip
    from pipeline.cli import main

    cli = CliRunner().invoke(main, ["export", str(run), "--format", "ssondo-ckpt", "--clip-seconds", "2",
                                    "--repeats", "1"])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    result = export_student(run, "ssondo-ckpt", clip_seconds=2.0, repeats=1)
    assert result.reused and f"already exported {result.path}" in result.summary()
    theirs = ssondo.get_ssondo(str(result.path), return_logits=True)  # strict load_state_dict inside
    ours, _ = load_student(run / "student.pt")
    fe = StudentFrontEnd()
    audio = real_audio(tmp_path, 2.0)  # one of their 2-s windows
    with torch.no_grad():
        _close(theirs.get_embeddings(audio), ours.embed(audio))
        raw = student(fe(audio))  # the head's output in the normalised space it was trained in
        teacher_space = raw * norm["std"] + norm["mean"]
        _close(theirs(audio)[1], teacher_space)
        _close(theirs(audio)[1], ours(audio))
        # longer clips: their windows, the tail dropped, averaged; ``sliced`` is that with our model
        longer = real_audio(tmp_path, 5.3)
        window = 2 * SR
        _close(theirs.get_embeddings(longer), sliced(ours.embed, longer, window, window))
        _close(theirs(longer)[1], sliced(ours.forward, longer, window, window))
        _close(theirs.preprocess(audio)[:, 0], fe(audio)[:, 0])  # their log-mel is ours
    record = json.loads(result.json_path.read_text())
    assert record["export"]["fmt"] == "ssondo-ckpt" and record["verification"]["max_abs_diff"] <= TOL
    # a student the package cannot represent: one line naming the file and the setting, nothing written
    old = tmp_path / "old"
    save_student(
        old / "student.pt", build_student("mn04", 16, hidden_dim=1280), LogMelConfig(), "t-0123456789ab", 16
    )
    cli = CliRunner().invoke(main, ["export", str(old), "--format", "ssondo-ckpt", "--repeats", "1"])
    assert (
        cli.exit_code == 1 and f"{old / 'student.pt'}: student 'mn04' has head hidden_dim 1280" in cli.output
    )
    assert not (old / "export").exists() or not any((old / "export").iterdir())


def test_export_refusals_name_the_setting() -> None:
    def model(name="mn04", frontend=None, **opts):
        s = build_student(name, 8, **opts)
        from ssondo_distill.checkpoint import AudioStudent

        return AudioStudent(StudentFrontEnd(**(frontend or {})), s)

    meta = {"teacher_id": "t-0123456789ab"}
    ok = to_ssondo_ckpt(model(), meta, 2.0)
    assert ok["training_config"]["classification_head"]["hidden_features_size"] == 512
    cases = [
        (model(hidden_dim=1280), "hidden_dim 1280"),
        (model("dymn04", hidden_dim=16), "'dymn04' has head hidden_dim 16"),  # DyMN, ERes2Net: the other file
        (model(frontend=dataclasses.asdict(LogMelConfig.efficientat())), "EfficientAT-style front-end kind"),
        (model(frontend={"n_fft": 2048}), "n_fft=2048 != win_length=1024"),
        (model(frontend={"log_offset": 1e-5}), "log_offset=1e-05"),
        (model(frontend={"norm_mean": -4.5}), "norm_mean=-4.5"),
        (model(frontend={"norm_std": 5.0}), "norm_std=5.0"),
        (model(frontend={"center": True}), "center=True"),
        (model(frontend={"preemphasis": 0.97}), "preemphasis=0.97"),
    ]
    for m, match in cases:
        with pytest.raises(SsondoCkptError, match=match):
            to_ssondo_ckpt(m, meta, 2.0)


# ---------------------------------------------------------------- theirs -> ours


def their_config(width_mult: float = 0.4, n_classes: int = 24) -> dict:
    """A training_config as their training writes it (the reference's MATPAC / mn10_im entries,
    at another width), slicing 10-s windows."""
    return {
        "seed": 42,
        "preprocess": {
            "slice_audio": {"win_len": 10, "step_size": 10},
            "logmelspec": {"win_len": 0.032, "hop_len": 0.016, "n_mels": 128, "f_min": 50, "f_max": 16000},
            "normalize": {"mean": 0.0, "std": 1.0},
        },
        "student_model": {
            "model_name": "mn04_im",
            "sr": SR,
            "pretrained_name": "mn04_im.pt",
            "width_mult": width_mult,
            "reduced_tail": False,
            "dilated": False,
            "strides": (2, 2, 2, 2),
            "relu_only": False,
            "input_dim_f": 128,
            "input_dim_t": 998,
            "se_dims": "c",
            "se_agg": "max",
            "se_r": 4,
        },
        "classification_head": {
            "head_type": "mlp",
            "n_classes": n_classes,
            "pooling": "mean",
            "activation_att": None,
            "last_activation": "",
        },
    }


def their_checkpoint(path: Path, conf: dict) -> Path:
    """A checkpoint as their training saves it: their model built by their own code, its weights
    under the Lightning module's ``student_model.`` prefix, ``training_config`` beside them."""
    from ssondo.model import _build_student_model

    torch.manual_seed(3)
    model = trained_like(_build_student_model(copy.deepcopy(conf)), seed=5)
    state = {f"student_model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
         "training_config": conf},
        path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def their_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ssondo")
    return their_checkpoint(tmp_path_factory.mktemp("theirs") / "matpac_mn04.ckpt", their_config())


@pytest.mark.slow
def test_their_checkpoint_is_one_of_our_students(their_ckpt: Path, tmp_path: Path) -> None:
    import ssondo

    theirs = ssondo.get_ssondo(str(their_ckpt), return_logits=True)  # it is their format
    ours, meta = load_student(their_ckpt, expect_teacher_dim=24)
    assert meta["student"] == {"name": "mn04", "teacher_dim": 24, "width_mult": 0.4, "hidden_dim": 512,
                               "dropout": 0.2}  # fmt: skip
    assert meta["extra"]["ssondo-ckpt"]["slice_audio"] == {"win_len": 10, "step_size": 10}
    audio = real_audio(tmp_path, 10.0)  # one of their 10-s windows
    with torch.no_grad():
        _close(ours.embed(audio), theirs.get_embeddings(audio))
        _close(ours(audio), theirs(audio)[1])
        longer = real_audio(tmp_path, 23.0)  # two windows and a dropped 3-s tail
        window = 10 * SR
        _close(sliced(ours.embed, longer, window, window), theirs.get_embeddings(longer))
    with pytest.raises(ValueError, match="shorter than one 320000-sample window"):
        sliced(ours.embed, audio[:, : 5 * SR], window, window)  # their code gets zero segments here

    # the HEAR module takes it
    from ssondo_eval import hear

    model = hear.load_model(str(their_ckpt))
    assert hear.get_scene_embeddings(audio, model).shape == (2, 384)

    # and `ssondo export`: back to their format, the same tensors
    result = export_student(
        their_ckpt, "ssondo-ckpt", clip_seconds=10.0, repeats=1, out=tmp_path / "again.ckpt"
    )
    again = torch.load(result.path, weights_only=True)
    original = torch.load(their_ckpt, weights_only=True)
    assert again["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(again["state_dict"][k], v) for k, v in original["state_dict"].items())
    conf = again["training_config"]
    assert conf["preprocess"]["logmelspec"] == {"win_len": 0.032, "hop_len": 0.016, "n_mels": 128,
                                                "f_min": 50.0, "f_max": 16000.0}  # fmt: skip


@pytest.mark.slow
def test_ssondo_eval_probes_their_checkpoint_beside_the_teacher(their_ckpt: Path, tmp_path: Path) -> None:
    from pipeline.cli import main
    from tests.eval.test_cli_eval import FAST, task_csv
    from tests.eval.test_evaluate import TINY

    tasks = task_csv(tmp_path)
    args = ["eval", str(their_ckpt), "--teacher", TINY, "--teacher-option", "dim=8", "--teacher-ts", "0.25",
            "--ts", "1", "--task", f"csv:{tasks}", "--no-untrained", "--out", str(tmp_path / "r"), *FAST]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [m["kind"] for m in data["models"]] == ["teacher", "student", "baseline"]
    assert data["models"][1]["label"] == "student:matpac_mn04"


def test_import_refusals_name_the_setting(tmp_path: Path) -> None:
    """Each setting of theirs that our students cannot represent is refused by name (no package needed:
    the refusals come before any weight is read)."""
    cases = [
        (("classification_head", "pooling"), "attention", "classification_head.pooling='attention'"),
        (("classification_head", "pooling"), None, "classification_head.pooling=None"),
        (("classification_head", "last_activation"), "sigmoid", "last_activation='sigmoid'"),
        (("classification_head", "last_activation"), "softmax", "last_activation='softmax'"),
        (("classification_head", "head_type"), "lstm", "head_type='lstm'"),
        (("student_model", "reduced_tail"), True, "student_model.reduced_tail=True"),
        (("student_model", "dilated"), True, "student_model.dilated=True"),
        (("student_model", "relu_only"), True, "student_model.relu_only=True"),
        (("student_model", "strides"), (2, 2, 1, 2), r"student_model.strides=\(2, 2, 1, 2\)"),
        (("student_model", "se_dims"), "cf", "student_model.se_dims='cf'"),
        (("student_model", "se_r"), 8, "student_model.se_r=8"),
        (("preprocess", "normalize"), {"mean": -4.0, "std": 4.0}, "preprocess.normalize"),
    ]
    for (section, key), value, match in cases:
        conf = their_config()
        conf[section][key] = value
        ckpt = {"training_config": conf, "state_dict": {}}
        assert is_ssondo_ckpt(ckpt)
        with pytest.raises(SsondoCkptError, match=match):
            student_payload(ckpt, tmp_path / "x.ckpt")
    conf = their_config()
    del conf["student_model"]["sr"]
    with pytest.raises(SsondoCkptError, match="training_config has no student_model.sr"):
        student_payload({"training_config": conf, "state_dict": {}}, tmp_path / "x.ckpt")
    # weights that do not fit: named, never a partial load
    path = tmp_path / "partial.ckpt"
    torch.save({"training_config": their_config(), "state_dict": {"student_model.model.features.0.0.weight":
                torch.zeros(1)}}, path)  # fmt: skip
    with pytest.raises(SsondoCkptError, match=r"partial.ckpt: state_dict does not fit mn04: missing"):
        load_student(path)


def test_mapping_round_trip_without_their_package(tmp_path: Path) -> None:
    """ours -> theirs -> ours is the identity on weights, student and front-end (what the export
    checks when the ssondo package is not installed)."""
    from ssondo_distill.checkpoint import AudioStudent

    torch.manual_seed(0)
    s = trained_like(build_student("mn05", 12))
    fe = StudentFrontEnd(f_min=0.0, hop_length=320)
    ckpt = to_ssondo_ckpt(AudioStudent(fe, s), {"teacher_id": "t-0123456789ab"}, 10.0)
    path = tmp_path / "mn05.ckpt"
    torch.save(ckpt, path)
    back = student_payload(torch.load(path, weights_only=True), path)
    assert back["student"] == s.config() and back["frontend"] == fe.config()
    assert back["teacher_id"] == "t-0123456789ab"
    mine = s.state_dict()
    assert back["state_dict"].keys() == mine.keys()
    assert all(torch.equal(back["state_dict"][k], v) for k, v in mine.items() if torch.is_tensor(v))


@pytest.mark.slow
def test_train_init_continues_from_their_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssondo train --init FILE.ckpt``: the run starts from their weights, backbone and head (same
    teacher dimension), recorded as format ssondo-ckpt; another dimension drops the head and says so;
    another architecture is refused."""
    pytest.importorskip("ssondo")
    from ssondo_distill import trainer as trainer_module
    from ssondo_distill.checkpoint import read_meta
    from ssondo_distill.init_weights import InitMismatch, apply_init
    from ssondo_distill.trainer import train
    from tests.distill.test_stream import make_corpus
    from tests.distill.test_trainer import FRONTEND, tiny_cfg

    conf = their_config(n_classes=8)
    conf["student_model"]["sr"] = FRONTEND["sample_rate"]
    conf["preprocess"]["logmelspec"] = {
        "win_len": 0.032,
        "hop_len": 0.008,
        "n_mels": 64,
        "f_min": 50,
        "f_max": 4000,
    }
    ckpt = their_checkpoint(tmp_path / "theirs.ckpt", conf)
    seen = []

    def spy(student, path):  # what the trainer's student holds right after --init
        report = apply_init(student, path)
        seen.append({k: v.clone() for k, v in student.state_dict().items() if torch.is_tensor(v)})
        return report

    monkeypatch.setattr(trainer_module, "apply_init", spy)
    work = make_corpus(tmp_path / "work", n_clips=24, shard_size=4, dim=8)
    run = tmp_path / "run"
    opts = dict(epochs=2, samples_per_epoch=16, val_clips=0, checkpoint_every=2, log_every=2, max_steps=2)
    result = train(tiny_cfg(work, run, init=str(ckpt), **opts), progress=False)
    assert result.steps == 2
    (state,) = seen
    file_state = student_payload(torch.load(ckpt, weights_only=True), ckpt)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in file_state.items() if torch.is_tensor(v))
    assert {k for k in state if k.startswith("head.")} <= set(file_state)
    record = read_meta(run / "student.pt")["init_info"]
    assert record["format"] == "ssondo-ckpt" and record["dropped_keys"] == []

    other = apply_init(build_student("mn04", 16), ckpt)  # a 16-d teacher: their 8-d head does not fit
    assert other.dropped == ["head.0.bias", "head.0.weight", "head.3.bias", "head.3.weight"]
    assert "head dropped: the file projects to 8 dims, the student to 16" in other.note
    with pytest.raises(InitMismatch, match="cannot start student 'mn05'"):
        apply_init(build_student("mn05", 8), ckpt)
