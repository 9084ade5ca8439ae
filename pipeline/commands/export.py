"""`ssondo export`: RUN/student.pt -> a verified TorchScript / ONNX file (+ .json) with its CPU latency."""

from __future__ import annotations

from pathlib import Path

import click

from ssondo_distill.export import FORMATS, WHATS, export_student
from ssondo_distill.export_check import INT8_MIN_COSINE
from ssondo_distill.quantize import CALIBRATION_CLIPS
from ssondo_distill.quantize_qat import FINETUNE_STEPS


@click.command(context_settings={"show_default": True})
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="onnx: runs in onnxruntime (no torch needed); torchscript: runs with torch.jit.load; ssondo-ckpt: "
    "the paper authors' package format (`ssondo.get_ssondo(path)`; MobileNetV3 students; audio cut into "
    "--clip-seconds windows as that package does).",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Static int8 of the convolutions and Linear layers (front-end fp32), calibrated on packed clips; "
    "checked on held-out clips: cosine to fp32 >= --min-cosine per clip.",
)
@click.option(
    "--calibrate",
    type=click.IntRange(min=1),
    default=CALIBRATION_CLIPS,
    help="--int8: calibration clips (a quarter as many more, at least 2, are held out to check).",
)
@click.option(
    "--calibrate-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="--int8: workspace (made by `ssondo pack`) whose clips calibrate; default: the one RUN trained on.",
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(min=-1, max=1),
    default=INT8_MIN_COSINE,
    help="--int8: least per-clip cosine to fp32 on the held-out clips.",
)
@click.option(
    "--int8-finetune",
    type=click.IntRange(min=0),
    default=FINETUNE_STEPS,
    help="--int8 --format torchscript: steps of quantisation-aware fine-tuning toward the fp32 output on the "
    "calibration clips before conversion (0: static int8).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Export file (default RUN/export/student-<what>[-int8].onnx|.ts.pt); <out>.json is written beside it.",
)
@click.option(
    "--what",
    type=click.Choice(WHATS),
    default="embedding",
    help="embedding: the backbone embedding for downstream use; projection: the head's teacher-space output.",
)
@click.option(
    "--clip-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    help="Clip length to trace, verify and time with (the export accepts other lengths when its JSON says so).",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=10, help="Timed runs per model; the median is reported."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    help="CPU threads while timing, eager and export alike.",
)
def export(
    run: Path,
    fmt: str,
    int8: bool,
    out: Path | None,
    what: str,
    clip_seconds: float,
    repeats: int,
    threads: int,
    calibrate: int,
    calibrate_from: Path | None,
    min_cosine: float,
    int8_finetune: int,
) -> None:
    """Export the student of RUN (a training RUN folder, or a student.pt) for deployment: raw 32 kHz
    audio in, embedding out, front-end included.

    The export is checked against the eager model before it is written and timed on CPU; a
    finished export of the same checkpoint with the same options is left as it is.
    """
    try:
        result = export_student(
            run,
            fmt,
            int8=int8,
            out=out,
            clip_seconds=clip_seconds,
            what=what,
            repeats=repeats,
            threads=threads,
            calibrate=calibrate,
            calibrate_from=calibrate_from,
            min_cosine=min_cosine,
            int8_finetune=int8_finetune,
        )
    except (ValueError, OSError, RuntimeError) as err:  # bad input, no checkpoint, export or check failed
        raise click.ClickException(str(err)) from err
    click.echo(result.summary())
