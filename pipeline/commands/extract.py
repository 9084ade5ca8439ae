"""`ssondo extract`: run a teacher once over WORK's packed corpus into WORK/cache/<teacher_id>/ts<TS>-hop<HOP>.zarr."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.commands.options import key_values
from pipeline.ranks import detect_rank
from pipeline.stopping import stops_cleanly


@click.command(context_settings={"show_default": True})
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--teacher",
    required=True,
    help="Teacher: a registry name (matpac, m2d, yamnet), hear:<module> or py:<module>:<callable>.",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Teacher weights (none: the teacher's default, e.g. packaged weights).",
)
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Teacher build option (repeatable), e.g. -o inference_type=fast.",
)
@click.option(
    "--ts",
    required=True,
    help="Temporal support: seconds of audio per embedding (any positive number), or 'full' (whole clip).",
)
@click.option("--hop", default=None, help="Seconds between window starts (at most TS). [default: TS]")
@click.option(
    "--device",
    default="auto",
    help="auto (cuda if present, else cpu), cpu, cuda or cuda:N. cuda without a GPU is an error.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    help="Windows per teacher forward. Part of the cache identity: resume with the same value.",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the teacher (fixed-shape forwards).")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=4,
    help="DataLoader processes decoding tar shards (0: decode in the main process).",
)
@click.option(
    "--redo-block",
    "redo_blocks",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="N",
    help="Compute block N again although it is marked done, e.g. one whose cache file was damaged "
    "(repeatable; an error message names the block).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@stops_cleanly("extract")
def extract(
    work: Path,
    teacher: str,
    checkpoint: Path | None,
    options: tuple[str, ...],
    ts: str,
    hop: str | None,
    device: str,
    batch_size: int,
    compile_: bool,
    workers: int,
    redo_blocks: tuple[int, ...],
    no_progress: bool,
) -> None:
    """Embed every clip of WORK with a teacher at temporal support TS (one embedding per window, plus
    the clip mean), into a resumable zarr cache.

    Under torchrun or a SLURM array each rank does its share of the tar shards; jobs started twice on
    one WORK split the blocks between them (claim files beside the cache). Killed and re-run, it
    resumes; re-running a finished extraction is a no-op. Exit status 0 once this rank's share is done.
    """
    from ssondo_cache.extract import extract as run_extract

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ranks = detect_rank()
    result = run_extract(  # its refusals and faults become one line in pipeline/cli.py
        work,
        teacher,
        checkpoint=checkpoint,
        ts=ts,
        hop=hop,
        device=device,
        batch_size=batch_size,
        compile=compile_,
        workers=workers,
        rank=ranks.rank,
        world_size=ranks.world_size,
        progress=not no_progress,
        teacher_options=key_values(options),
        redo_blocks=redo_blocks,
    )
    state = "complete" if result.cache_complete else "rank done; other ranks still running"
    click.echo(
        f"{result.name} on {result.device}: {result.clips} clips in {result.seconds:.1f} s "
        f"({result.clips_per_second:.1f} clips/s); {result.blocks_written} blocks written, "
        f"{result.blocks_skipped} already done; cache {state}\n{result.cache}"
    )
    if not result.rank_complete:
        raise SystemExit(1)
