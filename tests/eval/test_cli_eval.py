"""`ssondo eval` (default probe mode) and `ssondo eval ts-sweep` through click."""

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.eval.test_evaluate import TINY, tone_task

FAST = ["--seeds", "2", "--max-epochs", "30", "--patience", "5", "--device", "cpu", "--no-progress"]


def task_csv(tmp_path):
    task = tone_task(tmp_path)
    path = tmp_path / "tones.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split"])
        for item in task.items:
            w.writerow([item.path.relative_to(tmp_path), item.labels[0], item.split])
    return path


def test_eval_default_mode_teacher_and_baseline(tmp_path):
    path = task_csv(tmp_path)
    out = tmp_path / "report"
    args = [
        "eval",
        "--teacher",
        TINY,
        "--teacher-option",
        "dim=8",
        "--teacher-ts",
        "0.25",
        "--task",
        f"csv:{path}",
        "--out",
        str(out),
        *FAST,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in data["models"]] == ["teacher:tiny", "log-mel stats"]
    assert (
        data["probe"]["seeds"] == [0, 1]
        and (out / "results.md").is_file()
        and (out / "results.png").is_file()
    )
    # the explicit subcommand is the same command
    again = CliRunner().invoke(
        main,
        ["eval", "probe", "--baseline", "logmel", "--task", str(path), "--out", str(tmp_path / "r2"), *FAST],
    )
    assert again.exit_code == 0, again.output


def test_eval_errors_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--task", "nosuch:/x", "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code != 0 and "NAME:PATH" in result.output
    path = task_csv(tmp_path)
    result = CliRunner().invoke(
        main, ["eval", "--baseline", "none", "--task", str(path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0 and "nothing to evaluate" in result.output


def test_ts_sweep_command(tmp_path):
    path = task_csv(tmp_path)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "ts-sweep",
            str(tmp_path / "no-work"),
            "--teacher",
            TINY,
            "--teacher-option",
            "dim=8",
            "--ts",
            "0.25,full",
            "--task",
            str(path),
            "--out",
            str(out),
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "ts_sweep.json").read_text())["rows"]
    assert [r["ts_name"] for r in rows] == ["ts0.25-hop0.25", "tsfull-hopfull"]
    assert (out / "ts_sweep.png").is_file()


def test_eval_teacher_straight_from_a_cache(tmp_path):
    from ssondo_cache.extract import extract
    from ssondo_cache.pack import pack

    path = task_csv(tmp_path)
    work = tmp_path / "work"
    pack([tmp_path / "audio"], work, sample_rate=16000, fmt="wav", progress=False, min_duration=0.1)
    extract(work, TINY, ts="full", device="cpu", workers=0, progress=False, teacher_options={"dim": 8})
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--work",
            str(work),
            "--cache",
            "tsfull-hopfull",
            "--baseline",
            "none",
            "--task",
            str(path),
            "--out",
            str(out),
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    (model,) = json.loads((out / "results.json").read_text())["models"]
    assert model["label"] == "teacher:tiny" and model["cache_id"].endswith("tsfull-hopfull-cached")
    # a task whose audio is not in that packed corpus is refused with a clear message
    other = tmp_path / "other.csv"
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "audio" / "low0.wav", tmp_path / "elsewhere" / "x.wav")
    other.write_text("path,labels,split\nelsewhere/x.wav,low,train\naudio/low1.wav,low,test\n")
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--work",
            str(work),
            "--cache",
            "tsfull-hopfull",
            "--baseline",
            "none",
            "--task",
            str(other),
            "--out",
            str(tmp_path / "r2"),
            *FAST,
        ],
    )
    assert result.exit_code != 0 and "not in the packed corpus" in result.output


@pytest.mark.slow
def test_eval_adds_the_untrained_student_unless_told_not_to(tmp_path):
    from ssondo_eval.embedders import TeacherEmbedder
    from tests.eval.test_untrained import trained_checkpoint

    path = task_csv(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    trained_checkpoint(
        run / "student.pt", seed=4, teacher_id=TeacherEmbedder(TINY, ts=0.25, dim=8).teacher_id
    )
    base = [
        "eval",
        str(run),
        "--teacher",
        TINY,
        "--teacher-option",
        "dim=8",
        "--teacher-ts",
        "0.25",
        "--ts",
        "1",
        "--task",
        f"csv:{path}",
        "--bootstrap",
        "200",
        *FAST,
    ]
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [m["kind"] for m in data["models"]] == ["teacher", "student", "untrained", "baseline"]
    assert data["retention"]["student:run"]["untrained"] == "untrained mn04 (seed 4)"
    assert "untrained mn04 (seed 4)" in (tmp_path / "r" / "results.md").read_text()
    result = CliRunner().invoke(main, [*base, "--no-untrained", "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert [m["kind"] for m in data["models"]] == ["teacher", "student", "baseline"]
