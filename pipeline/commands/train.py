"""`ssondo train`: distil a cache's teacher targets into a student -> RUN/student.pt."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import run_options
from pipeline.ranks import detect_rank
from pipeline.stopping import stops_cleanly
from ssondo_distill.config import TrainConfig, load_train_config

_D = TrainConfig()  # defaults shown in --help come from the dataclass, not from copies here


def _default(name: str) -> str:
    return f"(config file, else {getattr(_D, name)!r})"


@click.command(context_settings={"show_default": True})
@click.argument("work", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cache", help="Cache NAME: <teacher_id>/ts<TS>-hop<HOP> or a unique suffix such as ts1-hop1.")
@click.option(
    "--student",
    help=f"Student from the registry (mobilenetv3, mn10, mn04, dymn, eres2net...) {_default('student')}.",
)
@click.option(
    "--manifest",
    help="'random' (uniform), a name in WORK/manifests (balanced-k50) or a .parquet path "
    f"{_default('manifest')}.",
)
@click.option(
    "--allow-foreign-manifest",
    is_flag=True,
    default=None,
    help="Accept a --manifest clustered on another cache of this pack (other teacher, TS or hop); "
    "refused by default.",
)
@click.option(
    "--loss", help=f"Distillation loss (cosine, mse, l1, kl, clap, cluster_contrastive) {_default('loss')}."
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False, path_type=Path),  # not checked here: --resume never reads it
    help="Start the student from these weights: an EfficientAT checkpoint (mn10_im.pt, mn10_as.pt, "
    "dymn10_as.pt...; the backbone loads strictly, the classifier is dropped). Used by a fresh run "
    "only; --resume continues from the run's checkpoint (config file, else none).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="RUN folder (required).")
@click.option(
    "--resume",
    is_flag=True,
    default=None,
    help="Continue the unfinished run in RUN from its last checkpoint.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML/JSON TrainConfig (see configs/); flags given here override it.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    default=None,
    help="Build the student, print its parameter counts, train nothing.",
)
@click.option(
    "--teacher-dim",
    type=click.IntRange(min=1),
    help="Dry run without a workspace: the teacher's embedding dimension (e.g. 3840 for MATPAC++) "
    "[default: the cache's].",
)
@click.option(
    "--teacher", help="Refuse a cache that is not from this teacher (registry name) (config file, else any)."
)
@click.option(
    "--target",
    type=click.Choice(["clip", "window"]),
    help=f"Clip embedding or one TS window {_default('target')}.",
)
@click.option(
    "--clip-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Audio crop for target=clip {_default('clip_seconds')}.",
)
@click.option("--seed", type=int, help=f"Seed of weights, data order and augmentation {_default('seed')}.")
@click.option(
    "--epochs", type=click.IntRange(min=1), help=f"Epochs (the schedule spans them) {_default('epochs')}."
)
@click.option(
    "--samples-per-epoch",
    type=click.IntRange(min=1),
    help=f"Samples per epoch {_default('samples_per_epoch')}.",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), help="Stop after this many steps (config file, else never)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help=f"Global batch size, split over ranks {_default('batch_size')}.",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), help=f"Peak learning rate (Adam) {_default('lr')}."
)
@click.option(
    "--mixup-alpha",
    type=click.FloatRange(min=0),
    help=f"Mixup Beta(a, a); 0 = off {_default('mixup_alpha')}.",
)
@click.option(
    "--shuffle-buffer",
    type=click.IntRange(min=1),
    help=f"Samples per shuffle window {_default('shuffle_buffer')}.",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    help=f"Data-loader workers per rank {_default('num_workers')}.",
)
@click.option(
    "--val-clips", type=click.IntRange(min=0), help=f"Held-out validation clips {_default('val_clips')}."
)
@click.option(
    "--val-every", type=click.IntRange(min=1), help=f"Steps between validations {_default('val_every')}."
)
@run_options(_default, "the student")
@stops_cleanly("train", resume="run the same command with --resume")
def train(
    work: Path | None, config_file: Path | None, compile_: bool | None, no_progress: bool, **flags
) -> None:
    """Train a student against the cached teacher embeddings of WORK, streaming its tar shards
    (`--dry-run --teacher-dim D` needs no WORK).

    Under torchrun every rank trains its share of each batch (DDP; gloo on CPU, nccl on GPU).
    A finished RUN is a no-op; an interrupted one continues exactly with --resume.
    """
    from ssondo_distill.trainer import train as run_training  # torch loads only when the command runs

    info = detect_rank()
    rank, world_size = (info.rank, info.world_size) if info.source == "torchrun" else (0, 1)
    try:  # refusals (bad config, data that does not belong together) are messages, not tracebacks
        cfg = load_train_config(config_file, {"work": work, "compile": compile_, **flags})
        result = run_training(cfg, progress=not no_progress, rank=rank, world_size=world_size)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    if rank == 0:
        click.echo(result.summary())
