"""Starting weights (``ssondo train --init``): EfficientAT checkpoints in the official layout load
strictly into the backbone, the classifier is dropped and said so, the head is untouched, and any
file that does not fit is one line naming the file and the keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssondo_cache.errors import SsondoError
from ssondo_distill.init_weights import INIT_FORMATS, InitMismatch, apply_init
from ssondo_distill.students import build_student

LAYOUTS = (
    Path(__file__).resolve().parent.parent / "fixtures" / "official" / "official_state_dict_layouts.json"
)

torch.set_num_threads(1)


def official_state(key: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the official EfficientAT key names and shapes of ``key``, random values
    (fp16, as EfficientAT ships them), its 527-class classifier included."""
    g = torch.Generator().manual_seed(seed)
    layout = json.loads(LAYOUTS.read_text())[key]
    return {
        k: torch.randint(0, 100, shape, generator=g)
        if k.endswith("num_batches_tracked")
        else torch.randn(shape, generator=g).to(torch.float16)
        for k, shape in layout.items()
    }


@pytest.fixture(scope="module")
def mn04_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("efficientat") / "mn04_as.pt"
    torch.save(official_state("efficientat_mn04_as"), path)
    return path


def test_efficientat_mn04_loads_backbone_strictly_and_drops_the_classifier(mn04_file, caplog):
    state = torch.load(mn04_file, weights_only=True)
    torch.manual_seed(3)
    student = build_student("mn04", 16, hidden_dim=32)
    head_before = {k: v.clone() for k, v in student.head.state_dict().items()}
    with caplog.at_level("INFO", logger="ssondo_distill.init_weights"):
        report = apply_init(student, mn04_file)
    assert report.format == "efficientat"
    backbone = student.backbone.state_dict()
    classifier = sorted(k for k in state if k.startswith("classifier."))
    assert report.dropped == classifier and len(classifier) == 4
    assert report.loaded == sorted(f"backbone.{k}" for k in backbone)
    for k, v in backbone.items():  # every backbone tensor is the file's (fp16 values, cast)
        assert torch.equal(v, state[k].to(v.dtype)), k
    for k, v in student.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    assert student.init_info["sha256"] == report.sha256 and student.init_info["init"] == str(mn04_file)
    assert "classifier" in caplog.text and str(mn04_file) in caplog.text
    assert "dropped 4 key(s)" in report.summary()


def test_dymn_layout_loads_into_a_dymn_student(tmp_path):
    # the full-size layout is the only official DyMN one: width 1.0, checked by shapes only
    path = tmp_path / "dymn10_as.pt"
    torch.save(official_state("efficientat_dymn10_as"), path)
    student = build_student("dymn10", 8, hidden_dim=16)
    report = apply_init(student, path)
    assert len(report.dropped) == 4 and report.loaded == sorted(
        f"backbone.{k}" for k in student.backbone.state_dict()
    )
    assert "temperature starts at 30" in report.note  # the default schedule would undo a finished one
    settled = build_student("dymn10", 8, hidden_dim=16, temperature_max=1.0)
    assert "temperature" not in apply_init(settled, path).note


def _refusal(student_name: str, state: dict, tmp_path: Path, **opts) -> str:
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(InitMismatch) as err:
        apply_init(build_student(student_name, 8, hidden_dim=16, **opts), path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_everything_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    good = official_state("efficientat_mn04_as")
    gone = "features.5.block.0.1.running_var"
    assert f"1 missing: {gone}" in _refusal("mn04", {k: v for k, v in good.items() if k != gone}, tmp_path)
    extra = {**good, "features.17.0.weight": torch.zeros(3)}
    assert "1 unexpected: features.17.0.weight" in _refusal("mn04", extra, tmp_path)
    bent = {**good, "features.0.0.weight": torch.zeros(8, 1, 5, 5)}
    assert "features.0.0.weight (8, 1, 5, 5) vs (8, 1, 3, 3)" in _refusal("mn04", bent, tmp_path)
    wide = _refusal("mn10", good, tmp_path)  # wrong width: the file's width is named
    assert "width_mult 0.4 (384-d)" in wide and "'mn10' (width_mult 1.0, 960-d)" in wide
    assert "of another shape" in wide
    dymn = _refusal("dymn04", good, tmp_path)
    assert "mobilenetv3 weights" in dymn and "cannot start student 'dymn04'" in dymn
    assert "not 'eres2net'" in _refusal("eres2net", good, tmp_path, n_mels=32, m_channels=4)
    assert "not a known starting-weights format" in _refusal("mn04", {"state_dict": {"x": 1}}, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SsondoError, match="cannot read the starting weights .*junk.pt: truncated or damaged"):
        apply_init(build_student("mn04", 8), tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        apply_init(build_student("mn04", 8), tmp_path / "absent.pt")


def test_registry_lists_the_formats():
    assert "efficientat" in INIT_FORMATS.names()


# ---------------------------------------------------------------- in a training run


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from tests.distill.test_stream import make_corpus

    return make_corpus(tmp_path_factory.mktemp("init-train"), n_clips=24, shard_size=4, dim=8)


def _run_cfg(work: Path, out: Path, init: Path | None, **over):
    from tests.distill.test_trainer import tiny_cfg

    opts = dict(epochs=2, samples_per_epoch=16, val_clips=0, checkpoint_every=2, log_every=2)
    return tiny_cfg(work, out, init=None if init is None else str(init), **{**opts, **over})


def test_untrained_twin_of_a_checkpoint_from_the_removed_student_option(mn04_file, tmp_path):
    """Checkpoints written when ``student_options.efficientat_weights`` existed record
    ``init_info = {efficientat_weights, sha256, dropped_keys}``: their untrained baseline is still
    the seeded student with the file's backbone, now loaded through init_weights."""
    from ssondo_cache.provenance import sha256_file
    from ssondo_distill.checkpoint import read_meta, save_student
    from ssondo_distill.frontend import StudentFrontEnd
    from ssondo_distill.students.mobilenetv3 import load_efficientat_state_dict
    from ssondo_eval.untrained import initial_student

    torch.manual_seed(3)
    student = build_student("mn04", 8)
    dropped = load_efficientat_state_dict(student.backbone, torch.load(mn04_file, weights_only=True))
    student.init_info = {
        "efficientat_weights": str(mn04_file),
        "sha256": sha256_file(mn04_file),
        "dropped_keys": dropped,
    }
    start = {k: v.clone() for k, v in student.state_dict().items() if isinstance(v, torch.Tensor)}
    frontend = StudentFrontEnd(sample_rate=16000, f_max=8000.0)
    save_student(tmp_path / "student.pt", student, frontend, "tiny-0123456789ab", 8, extra={"seed": 3})
    twin = initial_student(read_meta(tmp_path / "student.pt")).student.state_dict()
    assert all(torch.equal(twin[k], v) for k, v in start.items()), "untrained twin differs from the start"


@pytest.mark.slow
def test_train_init_fresh_run_loads_it_resume_never_reads_it(work, mn04_file, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main
    from ssondo_cache.provenance import sha256_file
    from ssondo_cache.typed_config import to_dict
    from ssondo_distill import trainer as trainer_module
    from ssondo_distill.checkpoint import CheckpointMismatch, read_meta
    from ssondo_distill.trainer import train
    from ssondo_eval.untrained import initial_student

    init = tmp_path / "mn04_im.pt"
    init.write_bytes(mn04_file.read_bytes())
    file_state = torch.load(init, weights_only=True)
    seen = []

    def spy(student, path):  # what the trainer's student holds right after --init
        report = apply_init(student, path)
        seen.append({k: v.clone() for k, v in student.state_dict().items() if isinstance(v, torch.Tensor)})
        return report

    monkeypatch.setattr(trainer_module, "apply_init", spy)
    run = tmp_path / "run"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(to_dict(_run_cfg(work, run, None, max_steps=2))))
    out = CliRunner().invoke(
        main, ["train", str(work), "--config", str(config), "--init", str(init), "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    assert f"started from {init}" in out.output and "dropped 4 key(s): classifier." in out.output
    (state,) = seen
    torch.manual_seed(7)  # tiny_cfg's seed: the head is the run's own initialisation, not the file's
    fresh = build_student("mn04", 8).state_dict()
    for k, v in file_state.items():
        if not k.startswith("classifier."):
            assert torch.equal(state[f"backbone.{k}"], v.to(state[f"backbone.{k}"].dtype)), k
    for k in (k for k in state if k.startswith("head.")):
        assert torch.equal(state[k], fresh[k]), k
    record = json.loads((run / "config.json").read_text())["init"]
    assert record["init"] == str(init) and record["sha256"] == sha256_file(init)
    assert record["format"] == "efficientat" and len(record["dropped_keys"]) == 4
    assert read_meta(run / "student.pt")["init_info"] == record
    # the untrained baseline of this student is the same start (file weights, seeded head)
    twin = initial_student(read_meta(run / "student.pt")).student.state_dict()
    assert all(torch.equal(twin[k], v) for k, v in state.items()), "untrained twin differs from the start"

    # resume: the file is not read again (it may be gone); the start stays recorded
    init.rename(tmp_path / "moved.pt")
    config.write_text(json.dumps(to_dict(_run_cfg(work, run, None))))
    args = ["train", str(work), "--config", str(config), "--init", str(init), "--resume", "--no-progress"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    result = json.loads((run / "result.json").read_text())["result"]
    assert result["steps"] == 4 and result["resumed_from"] == 2 and len(seen) == 1
    assert json.loads((run / "config.json").read_text())["init"] == record
    assert read_meta(run / "student.pt")["init_info"] == record and result["init"] == record
    assert all(
        torch.isfinite(v).all()
        for v in torch.load(run / "student.pt", weights_only=True)["state_dict"].values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )
    # a run begun from --init resumes only with it (it is part of the run's identity)
    (run / "result.json").unlink()
    with pytest.raises(CheckpointMismatch, match="init: "):
        train(_run_cfg(work, run, None, resume=True, max_steps=None), progress=False)
