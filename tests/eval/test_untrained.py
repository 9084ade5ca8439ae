"""The untrained student: the trainer's own initialisation, rebuilt from a checkpoint, in every report."""

import json

import pytest
import torch

from ssondo_distill.checkpoint import read_meta, save_student
from ssondo_distill.config import TrainConfig
from ssondo_distill.step import build_parts
from ssondo_eval.embedders import LogMelStatsEmbedder, StudentEmbedder, TeacherEmbedder
from ssondo_eval.evaluate import evaluate
from ssondo_eval.untrained import initial_student, with_untrained
from tests.eval.test_evaluate import FAST, TINY, tone_task


def trained_checkpoint(path, seed: int, teacher_id: str = "tiny-0123456789ab"):
    """A student as the trainer starts it (build_parts), then 'trained' (weights moved), then saved."""
    cfg = TrainConfig(
        student="mn04", seed=seed, device="cpu", frontend={"sample_rate": 16000, "f_max": 8000.0}
    )
    parts = build_parts(cfg, teacher_dim=8, stream_rate=16000, device=torch.device("cpu"))
    start = {k: v.clone() if torch.is_tensor(v) else v for k, v in parts.student.state_dict().items()}
    with torch.no_grad():
        for p in parts.student.parameters():
            p.add_(0.1)
    save_student(path, parts.student, parts.frontend, teacher_id, 8, extra={"seed": seed})
    return start


def same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_initial_student_is_the_trainers_step_zero(tmp_path):
    start = trained_checkpoint(tmp_path / "student.pt", seed=5)
    before = torch.random.get_rng_state()
    model = initial_student(read_meta(tmp_path / "student.pt"))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    rebuilt = model.student.state_dict()
    assert rebuilt.keys() == start.keys()
    assert all(same(rebuilt[k], start[k]) for k in start)
    other = initial_student({**read_meta(tmp_path / "student.pt"), "extra": {"seed": 6}}).student.state_dict()
    assert not all(same(other[k], start[k]) for k in start)  # the seed is what fixes it


def test_a_checkpoint_without_seed_is_refused(tmp_path):
    trained_checkpoint(tmp_path / "student.pt", seed=0)
    meta = {**read_meta(tmp_path / "student.pt"), "extra": {}}
    with pytest.raises(ValueError, match="no training seed"):
        initial_student(meta)


@pytest.fixture(scope="module")
def two_students(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    teacher_id = TeacherEmbedder(TINY, ts=0.25, dim=8).teacher_id
    for name in ("a", "b"):
        (root / name).mkdir()
        trained_checkpoint(root / name / "student.pt", seed=1, teacher_id=teacher_id)
    return root


@pytest.mark.slow
def test_report_shows_the_untrained_student(tmp_path, two_students):
    task = tone_task(tmp_path)
    teacher = TeacherEmbedder(TINY, ts=0.25, dim=8)
    students = [StudentEmbedder(two_students / n, ts=1.0) for n in ("a", "b")]
    models = [teacher, *students, LogMelStatsEmbedder(n_mels=16)]
    report = evaluate(models, [task], tmp_path / "r", probe_config=FAST, progress=False, bootstrap=200)
    kinds = [m["kind"] for m in report["models"]]
    # one twin for the two students: same architecture, same seed
    assert kinds == ["teacher", "student", "student", "untrained", "baseline"]
    twin = report["models"][3]["label"]
    assert twin == "untrained mn04 (seed 1)"
    for s in ("student:a", "student:b"):
        r = report["retention"][s]
        assert r["untrained"] == twin
        fig = r["figures"]["tones"]["gain_over_untrained"]
        want = report["scores"][s]["tones"]["mean"] - report["scores"][twin]["tones"]["mean"]
        assert fig["value"] == pytest.approx(want)
        assert fig["low"] <= fig["high"]
    md = (tmp_path / "r" / "results.md").read_text()
    assert twin in md and "gain over untrained" in md and "gain retention" in md
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["bootstrap"]["replicates"] == 200

    off = evaluate(models, [task], tmp_path / "r2", probe_config=FAST, progress=False, untrained=False)
    assert "untrained" not in [m["kind"] for m in off["models"]]
    assert off["retention"]["student:a"]["figures"]["tones"]["gain_over_untrained"] is None


def test_with_untrained_keeps_one_twin_per_initialisation(two_students, tmp_path):
    trained_checkpoint(tmp_path / "student.pt", seed=2)
    models = [StudentEmbedder(two_students / "a"), StudentEmbedder(tmp_path / "student.pt")]
    out = with_untrained(models)
    assert [m.kind for m in out] == ["student", "student", "untrained", "untrained"]
    assert with_untrained(out) == out  # already there: nothing added


def test_a_student_without_seed_gets_no_twin_and_a_warning(tmp_path, caplog):
    """An imported checkpoint (their .ckpt) records no seed: the report goes on without its twin."""
    trained_checkpoint(tmp_path / "student.pt", seed=0)
    student = StudentEmbedder(tmp_path / "student.pt")
    student.meta = {**student.meta, "extra": {}}
    with caplog.at_level("WARNING", logger="ssondo.eval"):
        out = with_untrained([student, LogMelStatsEmbedder()])
    assert [m.kind for m in out] == ["student", "baseline"]
    assert "no untrained baseline" in caplog.text and student.name in caplog.text
