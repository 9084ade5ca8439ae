"""`ssondo pack`: audio files/folders/lists -> WORK/shards/*.tar + WORK/manifests/{clips,rejects}.parquet."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.ranks import detect_rank
from pipeline.stopping import stops_cleanly
from ssondo_cache.inputs import PackInputError
from ssondo_cache.pack import DEFAULT_MIN_DURATION
from ssondo_cache.pack import pack as pack_corpus


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "work",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="WORK folder: shards/ and manifests/ are written inside it.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV/Parquet with `labels` (';'-separated) and `key` or `path` (optional `split`).",
)
@click.option(
    "--sample-rate", type=click.IntRange(min=1), default=32000, help="Sample rate of the packed clips (Hz)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["flac", "wav"]),
    default="flac",
    help="Audio in the shards (mono PCM_16). WAV decodes 3-4x faster; FLAC is 1.3-2x smaller.",
)
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, help="Clips per tar shard.")
@click.option(
    "--min-duration",
    type=click.FloatRange(min=0),
    default=DEFAULT_MIN_DURATION,
    help="Refuse inputs (and tails of split files) shorter than this many seconds.",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0),
    default=10.0,
    help="Split longer files into segments of this many seconds (0: never split).",
)
@click.option(
    "--reject-silent", is_flag=True, help="Refuse all-silent clips (by default they are packed and flagged)."
)
@click.option(
    "--verify-sources",
    is_flag=True,
    help="Hash every input again instead of trusting the scan cache, which keys on path, size and mtime: "
    "without it a file rewritten with the same size and mtime keeps its old audio and sha256.",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Parallel processes packing shards.")
@click.option(
    "--finalize",
    is_flag=True,
    help="Only write the manifests, once every rank's shards exist (pass the same INPUTs and options).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@stops_cleanly("pack")
def pack(
    inputs: tuple[Path, ...],
    work: Path,
    labels_csv: Path | None,
    sample_rate: int,
    fmt: str,
    shard_size: int,
    min_duration: float,
    max_duration: float,
    reject_silent: bool,
    verify_sources: bool,
    workers: int,
    finalize: bool,
    no_progress: bool,
) -> None:
    """Pack audio INPUTs (folders, files, CSV/Parquet lists with a `path` column) into WebDataset shards.

    Under torchrun or a SLURM array each rank packs its own shards and the last rank to
    finish writes the manifests. Re-running resumes an interrupted pack; a finished pack is a no-op.
    """
    ranks = detect_rank()
    try:
        result = pack_corpus(
            inputs,
            work,
            labels_csv=labels_csv,
            sample_rate=sample_rate,
            fmt=fmt,
            shard_size=shard_size,
            min_duration=min_duration,
            max_duration=max_duration or None,
            reject_silent=reject_silent,
            verify_sources=verify_sources,
            workers=workers,
            rank=ranks.rank,
            world_size=ranks.world_size,
            pack_shards=not finalize,
            finalize=True,
            progress=not no_progress,
        )
    except PackInputError as err:
        raise click.ClickException(str(err)) from None
    click.echo(result.summary())
    # A rank whose own shards are all written has done its work; the manifests come with the last one.
    own_done = ranks.world_size > 1 and not finalize and result.own_missing == 0
    if not (result.complete or own_done):
        raise SystemExit(1)
    if result.complete and result.n_packed == 0:
        raise click.ClickException(
            "nothing was packed: every input was refused (see manifests/rejects.parquet)"
        )
