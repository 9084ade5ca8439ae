import subprocess
import sys

from click.testing import CliRunner

from pipeline.cli import COMMANDS, main


def test_help_lists_the_stages_that_exist():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "pack" in result.output


def test_every_listed_command_has_help():
    runner = CliRunner()
    for name in main.list_commands(None):
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output
    assert set(main.list_commands(None)) <= set(COMMANDS)


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ssondo" in out.stdout


def test_train_dry_run_needs_no_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no WORK anywhere
    result = CliRunner().invoke(main, ["train", "--dry-run", "--student", "mn10", "--teacher-dim", "3840"])
    assert result.exit_code == 0, result.output
    assert "student mn10 into a 3840-d teacher" in result.output and "parameters" in result.output
    result = CliRunner().invoke(main, ["train", "--dry-run", "--student", "mn10"])
    assert result.exit_code != 0 and "--teacher-dim" in result.output  # says how to do without WORK
    result = CliRunner().invoke(main, ["train", "--student", "mn10", "--teacher-dim", "8", "--out", "r"])
    assert result.exit_code != 0 and "teacher_dim" in result.output and "dry run" in result.output
