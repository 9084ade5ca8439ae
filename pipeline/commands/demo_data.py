"""`ssondo demo-data`: build the embedded demo corpus (pipeline.demo_corpus.build_demo_corpus)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("demo-data")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the corpus into (audio/, manifests/demo/*.csv, README.md, corpus.json).",
)
@click.option(
    "--size",
    type=click.Choice(["full", "small", "large"]),
    default="full",
    show_default=True,
    help="full: ~1,100 clips (the demo); small: ~250 clips (the end-to-end test); large: ~19 h, "
    "~12,000 clips of at most 10 s from 24 packages (game music and effects, sample libraries, MIDI "
    "songs rendered; ~2 GB of downloads, ~5 GB written) with three more tasks: percussion, "
    "phrase_family, game_music, and a larger instrument_family.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where downloaded Debian packages are unpacked and kept "
    "[default: $SSONDO_CACHE, else $XDG_CACHE_HOME/ssondo, else ~/.cache/ssondo].",
)
@click.option(
    "--download/--offline",
    default=True,
    show_default=True,
    help="Fetch missing Debian packages with `apt-get download` (~260 MB once), or use only the cache.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    default=False,
    help="Exit 0 even when a Debian package was unavailable and its tasks were skipped.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a tqdm bar.")
def demo_data(
    out: Path, size: str, cache_dir: Path | None, download: bool, allow_partial: bool, progress: bool
) -> None:
    """Assemble the demo corpus offline: notes rendered from real soundfonts (TimGM6mb from PyPI
    pretty_midi, FluidR3_GM from Debian), Asterisk voice prompts and Sonic Pi samples (Debian),
    plus the distillation list and three development tasks (instrument_family, spoken_digit,
    sonicpi_category). Re-running a finished build is a no-op; an interrupted one resumes.

    Exit status 0 when complete; 2 when a package was missing and tasks were skipped (unless
    --allow-partial).
    """
    from pipeline.demo_corpus import DemoCorpusError, build_demo_corpus

    try:
        corpus = build_demo_corpus(out, size=size, cache_dir=cache_dir, progress=progress, download=download)
    except DemoCorpusError as err:
        raise click.ClickException(str(err)) from None
    for problem in corpus.problems:
        click.echo(f"WARNING: {problem}", err=True)
    tasks = ", ".join(
        f"{name} {sum(t['counts'].values())}" if not t["skipped"] else f"{name} SKIPPED"
        for name, t in sorted(corpus.tasks.items())
    )
    click.echo(
        f"demo-data: {corpus.n_clips} clips, {corpus.seconds / 60:.1f} min of audio in {corpus.out} "
        f"(tasks: {tasks}); see {Path(corpus.out) / 'README.md'}"
    )
    if not corpus.complete and not allow_partial:
        click.echo("demo-data: INCOMPLETE (see the warnings above); --allow-partial to accept", err=True)
        sys.exit(2)
