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
