"""DyMN and ERes2Net students in the paper authors' ``.ckpt`` format, both ways, with their ``ssondo``
package (0.3.1, a dev extra): our export loads strictly with their ``get_ssondo`` and computes what our
student does; a checkpoint built by their ``_build_student_model`` is one of our students. Small widths
so that it stays fast; the MobileNetV3 side is in test_ssondo_ckpt.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ssondo_distill.checkpoint import AudioStudent, load_student, save_student
from ssondo_distill.export import export_student
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.ssondo_ckpt import SsondoCkptError, sliced, student_payload, to_ssondo_ckpt
from ssondo_distill.students import build_student
from tests.distill.test_ssondo_ckpt import SR, _close, real_audio, their_checkpoint, trained_like

ERES = dict(n_mels=32, m_channels=4, num_blocks=[1, 1, 1, 1, 1], hidden_dim=96)  # 256-d embedding


def dymn() -> torch.nn.Module:
    s = trained_like(build_student("dymn04", 8, hidden_dim=512))
    s.backbone.set_epoch(20.0)  # the attention temperature mid-schedule (11.58), not the start's 30
    return s


def eres2net() -> torch.nn.Module:
    return trained_like(build_student("eres2net", 8, **ERES))


STUDENTS = {"dymn": (dymn, {}), "eres2net": (eres2net, {"n_mels": 32})}  # builder, front-end options


def their_conf(student_model: dict, n_mels: int = 128, hidden: int | None = None) -> dict:
    """A training_config as their training writes the DyMN / ERes2Net entries (their config.py), 1-s
    windows, at small widths."""
    head = {
        "head_type": "mlp",
        "n_classes": 8,
        "pooling": "mean",
        "activation_att": None,
        "last_activation": "",
    }
    return {
        "preprocess": {
            "slice_audio": {"win_len": 1, "step_size": 1},
            "logmelspec": {"win_len": 0.032, "hop_len": 0.016, "n_mels": n_mels, "f_min": 50, "f_max": 16000},
        },
        "student_model": {"sr": SR, **student_model},
        "classification_head": {**head, **({} if hidden is None else {"hidden_features_size": hidden})},
    }


THEIR_DYMN = {"model_name": "dymn04_im", "width_mult": 0.4, "pretrained_name": "dymn04_im",
              "strides": (2, 2, 2, 2), "pretrain_final_temp": 30.0}  # fmt: skip
THEIR_ERES = {"model_name": "ERes2Net", "m_channels": 4, "feat_dim": 32, "num_blocks": [1, 1, 1, 1, 1],
              "pooling_func": "TSTP", "add_layer": True}  # fmt: skip


# ---------------------------------------------------------------- ours -> theirs


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(STUDENTS))
def test_get_ssondo_loads_our_export_strictly(family: str, tmp_path: Path) -> None:
    ssondo = pytest.importorskip("ssondo")
    build, fe_opts = STUDENTS[family]
    torch.manual_seed(0)
    student = build()
    run = tmp_path / "run"
    save_student(run / "student.pt", student, LogMelConfig(**fe_opts), "tiny-0123456789ab", 8)
    result = export_student(run, "ssondo-ckpt", clip_seconds=1.0, repeats=1)  # verified by get_ssondo
    record = json.loads(result.json_path.read_text())
    assert record["verification"]["verified_with"] == "ssondo 0.3.1 get_ssondo"
    theirs = ssondo.get_ssondo(str(result.path), return_logits=True)  # strict load_state_dict inside
    ours, _ = load_student(run / "student.pt")
    audio = real_audio(tmp_path, 1.0)  # one of their 1-s windows
    longer = real_audio(tmp_path, 2.4)  # two windows and a dropped tail
    with torch.no_grad():
        _close(theirs.get_embeddings(audio), ours.embed(audio))
        _close(theirs(audio)[1], ours(audio))
        _close(theirs(audio)[1], student(StudentFrontEnd(**fe_opts)(audio)))
        if family == "eres2net":
            _close(theirs.get_embeddings(longer), sliced(ours.embed, longer, SR, SR))
            _close(theirs(longer)[1], sliced(ours.forward, longer, SR, SR))
        else:  # their DyMN feeds the windows as channels to its 1-channel stem: said in the record
            with pytest.raises(RuntimeError, match="to have 1 channels, but got 2"):
                theirs.get_embeddings(longer)
            assert "clips of one window only" in record["input"]["note"]
    if family == "dymn":
        conf = torch.load(result.path, weights_only=True)["training_config"]
        assert conf["student_model"]["pretrain_final_temp"] == pytest.approx(student.backbone.temperature)


def test_export_refusals_name_the_setting() -> None:
    meta = {"teacher_id": "t-0123456789ab"}
    wide = AudioStudent(StudentFrontEnd(), build_student("dymn04", 8, hidden_dim=1280))  # an older default
    with pytest.raises(SsondoCkptError, match="'dymn04' has head hidden_dim 1280.*train with hidden_dim 512"):
        to_ssondo_ckpt(wide, meta, 1.0)
    default = to_ssondo_ckpt(AudioStudent(StudentFrontEnd(), build_student("dymn04", 8)), meta, 1.0)
    assert default["training_config"]["classification_head"]["hidden_features_size"] == 512  # last_channel
    fine = AudioStudent(
        StudentFrontEnd(n_mels=32), build_student("eres2net", 8, **{**ERES, "hidden_dim": 40})
    )
    conf = to_ssondo_ckpt(fine, meta, 1.0)["training_config"]  # their ERes2Net head takes any width
    assert conf["classification_head"]["hidden_features_size"] == 40
    assert conf["student_model"] == {"sr": SR, **THEIR_ERES, "feat_dim": 32}


@pytest.mark.parametrize("family", sorted(STUDENTS))
def test_mapping_round_trip_without_their_package(family: str, tmp_path: Path) -> None:
    """ours -> theirs -> ours is the identity on weights, options (DyMN's schedule included, from the
    file's record of our student) and the attention temperature."""
    build, fe_opts = STUDENTS[family]
    torch.manual_seed(0)
    s = build()
    fe = StudentFrontEnd(**fe_opts)
    path = tmp_path / f"{family}.ckpt"
    torch.save(to_ssondo_ckpt(AudioStudent(fe, s), {"teacher_id": "t-0123456789ab"}, 1.0), path)
    back = student_payload(torch.load(path, weights_only=True), path)
    assert back["student"] == s.config() and back["frontend"] == fe.config()
    mine = s.state_dict()
    assert back["state_dict"].keys() == mine.keys()
    assert back["state_dict"]["_extra_state"] == mine["_extra_state"]
    assert all(torch.equal(back["state_dict"][k], v) for k, v in mine.items() if torch.is_tensor(v))
    assert back["extra"]["ssondo-ckpt"]["family"] == family


# ---------------------------------------------------------------- theirs -> ours


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, student_model, n_mels, hidden, expect",
    [
        (
            "dymn",
            THEIR_DYMN,
            128,
            1280,
            {"name": "dymn04", "width_mult": 0.4, "hidden_dim": 512, "temperature_max": 30.0},
        ),  # fmt: skip
        (
            "eres2net",
            THEIR_ERES,
            32,
            48,
            {
                "name": "eres2net",
                "n_mels": 32,
                "m_channels": 4,
                "num_blocks": [1, 1, 1, 1, 1],
                "hidden_dim": 48,
            },
        ),  # fmt: skip
    ],
)
def test_their_checkpoint_is_one_of_our_students(
    family: str, student_model: dict, n_mels: int, hidden: int, expect: dict, tmp_path: Path
) -> None:
    ssondo = pytest.importorskip("ssondo")
    from ssondo_distill.init_weights import InitMismatch, apply_init

    path = their_checkpoint(
        tmp_path / f"{family}.ckpt", their_conf(copy.deepcopy(student_model), n_mels, hidden)
    )
    theirs = ssondo.get_ssondo(str(path), return_logits=True)
    ours, meta = load_student(path, expect_teacher_dim=8)
    assert {k: meta["student"][k] for k in expect} == expect
    audio, longer = real_audio(tmp_path, 1.0), real_audio(tmp_path, 2.4)
    with torch.no_grad():
        _close(ours.embed(audio), theirs.get_embeddings(audio))
        _close(ours(audio), theirs(audio)[1])
        if family == "eres2net":
            _close(sliced(ours.embed, longer, SR, SR), theirs.get_embeddings(longer))
    if (
        family == "dymn"
    ):  # their DyMN attends at pretrain_final_temp: so does ours, and its schedule starts there
        assert ours.student.backbone.temperature == 30.0
    # `ssondo train --init FILE.ckpt`: a student of the same architecture starts from it, another is refused
    opts = {k: v for k, v in meta["student"].items() if k not in ("name", "teacher_dim")}
    fresh = build_student(meta["student"]["name"], 8, **opts)
    loaded = apply_init(fresh, path)
    assert loaded.dropped == [] and all(
        torch.equal(fresh.state_dict()[k], v)
        for k, v in ours.student.state_dict().items()
        if torch.is_tensor(v)
    )
    other = build_student("eres2net", 8, **{**ERES, "m_channels": 8}) if family == "eres2net" else \
        build_student("dymn", 8, width_mult=0.5, hidden_dim=640)  # fmt: skip
    with pytest.raises(InitMismatch, match="cannot start student"):
        apply_init(other, path)


def test_import_refusals_name_the_setting(tmp_path: Path) -> None:
    """What their DyMN / ERes2Net config can say that our students cannot be, refused by name before
    any weight is read (no package needed)."""
    cases = [
        (THEIR_DYMN, 128, "strides", (2, 2, 1, 2), r"student_model.strides=\(2, 2, 1, 2\).*our DyMN"),
        (THEIR_DYMN, 128, "pretrain_final_temp", 0.0, "pretrain_final_temp=0.0"),
        (THEIR_ERES, 32, "add_layer", False, "student_model.add_layer=False.*fifth stage"),
        (THEIR_ERES, 32, "pooling_func", "ASTP", "student_model.pooling_func='ASTP'"),
        (THEIR_ERES, 32, "num_blocks", [3, 4, 6, 3], r"num_blocks=\[3, 4, 6, 3\].*5 stages"),
        (THEIR_ERES, 64, "feat_dim", 32, "feat_dim=32.*the log-mel has 64 bands"),
        (THEIR_ERES, 40, "feat_dim", 40, "feat_dim=40.*multiple of 16"),
    ]
    for student_model, n_mels, key, value, match in cases:
        conf = their_conf({**student_model, key: value}, n_mels, hidden=48)
        with pytest.raises(SsondoCkptError, match=match):
            student_payload({"training_config": conf, "state_dict": {}}, tmp_path / "x.ckpt")
    conf = their_conf(dict(THEIR_ERES), 32)  # their loader reads the ERes2Net head width from the config
    with pytest.raises(
        SsondoCkptError, match="training_config has no classification_head.hidden_features_size"
    ):
        student_payload({"training_config": conf, "state_dict": {}}, tmp_path / "x.ckpt")
    # a DyMN file whose weights are a MobileNetV3's: named, never a partial load
    conf = their_conf(dict(THEIR_DYMN))
    state = {"student_model.model.features.0.0.weight": torch.zeros(1)}
    with pytest.raises(
        SsondoCkptError, match=r"does not fit dymn04: missing: .*; unexpected: backbone\.features"
    ):
        student_payload({"training_config": conf, "state_dict": state}, tmp_path / "x.ckpt")
