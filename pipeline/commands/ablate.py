"""`ssondo ablate GRID.yaml --out DIR`: a resumable grid of trainings and evaluations;
`ssondo ablate report DIR`: its tables and plots (also written at the end of every launch)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.commands.evaluate import DefaultGroup
from pipeline.commands.options import key_values
from pipeline.stopping import stops_cleanly


class AblateGroup(DefaultGroup):
    default = "run"


@click.group("ablate", cls=AblateGroup)
def ablate() -> None:
    """Train and evaluate a grid of settings from GRID.yaml (`ssondo ablate [run] GRID --out DIR`), and
    report it (`ssondo ablate report DIR`). `ssondo ablate GRID ...` means `ssondo ablate run GRID ...`."""


@ablate.command("run", context_settings={"show_default": True})
@click.argument("grid", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Grid folder DIR (plan, runs, report)."
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=1, help="Local processes, each claiming cells in turn."
)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per job [default: the CPU cores split evenly over the jobs].")  # fmt: skip
@click.option("--array", is_flag=True,
              help="Run only this SLURM array task's (or torchrun rank's) share: cell i in task i mod COUNT.")  # fmt: skip
@click.option(
    "--print-sbatch", is_flag=True, help="Print the sbatch script (array sized to the grid); run nothing."
)
@click.option("--sbatch", "sbatch_options", multiple=True, metavar="KEY=VALUE",
              help="An #SBATCH line for --print-sbatch (repeatable), e.g. --sbatch partition=gpu --sbatch time=8:00:00.")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a GRID key (repeatable; dotted, value read as YAML), e.g. --set workspace=/data/work "
              "--set 'eval.tasks=[demo:/data/demo]' --set base.epochs=2.")  # fmt: skip
@click.option(
    "--force", is_flag=True, help="Run a grid whose plan differs from DIR/plan.json (old cells stay on disk)."
)
@click.option("--no-report", is_flag=True, help="Do not write DIR/report at the end.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@stops_cleanly("ablate", "run the same command again (finished cells are kept, the one in flight resumes)")
def run(grid: Path, out: Path | None, jobs: int, threads: int | None, array: bool, print_sbatch: bool,
        sbatch_options: tuple[str, ...], sets: tuple[str, ...], force: bool, no_report: bool, no_progress: bool) -> None:  # fmt: skip
    """Every cell of GRID (crossed axes, zip groups) is one RUN folder DIR/runs/<slug>-<hash>, trained with
    the trainer and probed with the evaluation; DIR/plan.json is written first. Re-running skips finished
    cells, resumes an interrupted one exactly, and retries failed ones; two launches on one DIR split the
    cells (claim files). Under torchrun each rank runs its share, as with --array."""
    from pipeline.ablate.launch import run_grid, sbatch_script
    from pipeline.ranks import detect_rank

    if out is None:
        raise click.UsageError("--out DIR is required")
    try:
        overrides = key_values(sets, "--set")
        if print_sbatch:
            click.echo(sbatch_script(grid, out, key_values(sbatch_options, "--sbatch"), overrides), nl=False)
            return
        info = detect_rank()
        static = array or info.source == "torchrun"
        if array and info.source == "single":
            raise click.UsageError(
                "--array needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (an array job)"
            )
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        result = run_grid(
            grid, out, jobs=jobs, threads=threads, rank=info.rank if static else 0,
            world_size=info.world_size if static else 1, static=static, force=force,
            report=not no_report, progress=not no_progress, overrides=overrides,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(result.summary())
    if result.failed:
        raise SystemExit(1)


@ablate.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(out: Path) -> None:
    """Write DIR/report: one table per varied axis and one per setting (Markdown, CSV, Parquet), mean and
    95 % CI over seeds, gain and score retention per task, score-vs-axis PNGs and the loss curves overlaid."""
    from pipeline.ablate.report import write_ablation_report

    try:
        path = write_ablation_report(out)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"ablate report -> {path}")
