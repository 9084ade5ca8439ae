"""`ssondo demo`: the embedded default, every stage on real audio."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    help="Folder for the corpus, the workspace, the runs and the report.",
)
@click.option(
    "--size",
    type=click.Choice(["full", "small"]),
    default="full",
    help="Demo corpus size: full (the default demo) or small (the quick end-to-end test).",
)
@click.option(
    "--config",
    "train_config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Training config for both students [default: configs/demo-cpu.yaml].",
)
@click.option("--quiet", is_flag=True, help="No progress bars, only the one-line stage summaries.")
def demo(out: Path, size: str, train_config: Path | None, quiet: bool) -> None:
    """Build the real demo corpus and run pack, extract (two temporal supports), cluster, train
    (balanced and random sampling), eval (teacher, students, the untrained student, log-mel baseline,
    with bootstrap CIs) and the TS sweep, then write OUT/report/index.md and OUT/report/demo-figures.json
    (what the run measured, with its commit and machine). Re-running resumes: finished stages are
    no-ops."""
    from pipeline.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=out, size=size, train_config=train_config, progress=not quiet), echo=click.echo)
