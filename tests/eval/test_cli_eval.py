"""`ssondo eval` (default probe mode) and `ssondo eval ts-sweep` through click."""

import csv
import json
import shlex
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
    # the explicit subcommand is the same command; --task-name names a bare CSV's task
    again = CliRunner().invoke(
        main,
        ["eval", "probe", "--baseline", "logmel", "--task", str(path), "--task-name", "my tones",
         "--out", str(tmp_path / "r2"), *FAST],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    (task,) = json.loads((tmp_path / "r2" / "results.json").read_text())["tasks"]
    assert task["name"] == "my tones" and task["spec"] == f"csv:{path}" and task["renamed"]


def test_eval_help_shows_the_default_subcommands_options():
    from ssondo_eval.probe import LR_GRID
    from ssondo_eval.tasks import TASKS

    result = CliRunner().invoke(main, ["eval", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for option in ("--task ADAPTER:PATH", "--task-name", "--teacher-ts", "--ts FLOAT", "--out", "--lr"):
        assert option in text, option
    assert "eval probe ARGS...`, the default subcommand" in text
    for adapter in TASKS.names():  # every adapter is documented beside --task
        assert f"{adapter}:" in text, adapter
    from pipeline.commands.evaluate import LR_DEFAULT

    assert f"[default: {LR_DEFAULT}]" in text
    assert tuple(float(lr) for lr in LR_DEFAULT.split(",")) == LR_GRID  # --help's copy of the grid
    assert "0.96" in text and "2 s in configs/demo-cpu.yaml" in text  # CLI defaults vs the demo's


def test_a_label_in_place_of_the_adapter_is_refused_with_the_accepted_forms(tmp_path):
    path = task_csv(tmp_path)
    result = CliRunner().invoke(
        main, ["eval", "--task", f"drums:{path}", "--out", str(tmp_path / "r"), *FAST]
    )
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "'drums' is not a task adapter" in text and "not found" not in text
    assert "csv:/data/drums.csv" in text and "--task-name" in text and "ADAPTER:PATH" in text
    result = CliRunner().invoke(
        main,
        ["eval", "--task", str(path), "--task-name", "a", "--task-name", "b", "--out", str(tmp_path / "r")],
    )
    assert result.exit_code != 0 and "at most one name per task" in result.output


def test_eval_errors_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--task", "nosuch:/x", "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code != 0 and "ADAPTER:PATH" in result.output
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
    # the command the demo report prints rebuilds this very report: run it, nothing changes
    from pipeline.demo_report import demo_figures, eval_command, figures_markdown

    command = eval_command(data, tmp_path / "r")
    assert "--teacher-ts 0.25 --ts 1" in command and "--teacher-option dim=8" in command
    assert "--seeds 2" in command and "--bootstrap 200" in command and "--untrained" not in command
    stamp = (tmp_path / "r" / "results.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, shlex.split(command)[1:])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r" / "results.json").stat().st_mtime_ns == stamp  # the same report: not rewritten
    # the demo's figures carry that command, and their Markdown prints it
    fig = demo_figures(data, [], 1.0, True, {}, eval_out=tmp_path / "r")
    assert fig["eval_command"] == command and f"    {command}" in figures_markdown(fig)
    assert "bootstrap replicates over test clips" in figures_markdown(fig).split("|")[0]
    result = CliRunner().invoke(main, [*base, "--no-untrained", "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert [m["kind"] for m in data["models"]] == ["teacher", "student", "baseline"]


def test_the_demo_eval_command_from_the_in_memory_report():
    """evaluate() returns its report with tuples (probe seeds, lr grid), the demo passes it as is."""
    from dataclasses import asdict
    from pathlib import Path

    from pipeline.demo_report import eval_command
    from ssondo_eval.probe import ProbeConfig

    teacher = {"kind": "teacher", "spec": "yamnet", "ts": 0.96, "checkpoint": None, "options": {}}
    students = [{"kind": "student", "checkpoint": f"/d/runs/{s}/student.pt", "ts": 2.0} for s in ("a", "b")]
    report = {
        "models": [teacher, *students, {"kind": "untrained"}, {"kind": "baseline"}],
        "tasks": [
            {"name": f"demo-{n}", "spec": "demo:/d/corpus", "renamed": False} for n in ("kit", "pitch")
        ],
        "probe": asdict(ProbeConfig(seeds=(0, 1, 2))),
        "bootstrap": {"replicates": 1000},
    }
    assert eval_command(report, Path("/d/report/eval")) == (
        "ssondo eval /d/runs/a/student.pt /d/runs/b/student.pt --teacher yamnet --teacher-ts 0.96 --ts 2 "
        "--task demo:/d/corpus --device cpu --out /d/report/eval"
    )
