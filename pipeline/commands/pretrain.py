"""`ssondo pretrain matpac`: MATPAC / MATPAC++ self-supervised pretraining of a teacher -> RUN/encoder.pt."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import run_options
from pipeline.ranks import detect_rank
from pipeline.stopping import stops_cleanly
from ssondo_distill.pretrain.config import PretrainConfig, load_pretrain_config

_D = PretrainConfig()  # defaults shown in --help come from the dataclass


def _default(name: str) -> str:
    return f"(config file, else {getattr(_D, name)!r})"


@click.group()
def pretrain() -> None:
    """Pretrain your own teacher on WORK's unlabelled audio, then distil it with the other stages."""


@pretrain.command(context_settings={"show_default": True})
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="RUN folder (required).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML/JSON PretrainConfig (configs/pretrain/); flags given here override it.",
)
@click.option("--resume", is_flag=True, default=None, help="Continue the unfinished run in RUN.")
@click.option(
    "--mcl/--no-mcl",
    default=None,
    help="MATPAC++'s multiple-choice heads (mcl.enabled) (config file, else MATPAC: off).",
)
@click.option("--seed", type=int, help=f"Seed of weights, data order and masks {_default('seed')}.")
@click.option("--epochs", type=click.IntRange(min=1), help=f"Epochs the schedules span {_default('epochs')}.")
@click.option(
    "--samples-per-epoch",
    type=click.IntRange(min=1),
    help=f"Segments per epoch (your corpus' size) {_default('samples_per_epoch')}.",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), help="Stop after this many steps (config file, else never)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help=f"Global batch; lr = base_lr x batch / base_batch_size {_default('batch_size')}.",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    help=f"Data-loader workers per rank {_default('num_workers')}.",
)
@run_options(_default, "the model")
@stops_cleanly("pretrain matpac", resume="run the same command with --resume")
def matpac(
    work: Path, config_file: Path | None, mcl: bool | None, compile_: bool | None, no_progress: bool, **flags
) -> None:
    """MATPAC (--mcl: MATPAC++): masked latent prediction + unsupervised classification on K prototypes,
    on random crops of WORK's packed shards. Writes RUN/encoder.pt in the official MATPAC++ encoder-only
    layout: `ssondo extract WORK --teacher matpac --checkpoint RUN/encoder.pt` uses it as is.

    Under torchrun every rank trains its share of each batch (DDP). A finished RUN is a no-op; an
    interrupted one continues exactly with --resume."""
    from ssondo_distill.pretrain.loop import pretrain as run_pretraining  # torch loads only now

    info = detect_rank()
    rank, world_size = (info.rank, info.world_size) if info.source == "torchrun" else (0, 1)
    try:
        cfg = load_pretrain_config(config_file, {"work": work, "compile": compile_, **flags}, mcl_enabled=mcl)
        result = run_pretraining(cfg, progress=not no_progress, rank=rank, world_size=world_size)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    if rank == 0:
        click.echo(result.summary())
