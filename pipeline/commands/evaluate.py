"""`ssondo eval`: linear probes (default) and `ssondo eval ts-sweep` (temporal-support sweep).

`ssondo eval` is a group whose default subcommand is `probe`: `ssondo eval RUN --task ... --out R`
is `ssondo eval probe RUN --task ... --out R`; `ssondo eval ts-sweep WORK ...` is the sweep.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from pipeline.commands.options import key_values
from pipeline.stopping import stops_cleanly

PROBE_HELP = "Probe settings (EVAR protocol): StandardScaler on train, Adam, early stopping on valid."
LR_DEFAULT = "3e-4,1e-3,3e-3"  # ssondo_eval.probe.LR_GRID, written out so --help needs no torch import
TASK_HELP = (
    "Task (repeatable), ADAPTER:PATH with ADAPTER one of: esc50:DIR (meta/esc50.csv, 5 folds), "
    "us8k:DIR (UrbanSound8K, 10 folds), gtzan:DIR (fault-filtered split), nsynth:DIR (instrument family), "
    "openmic:DIR (masked mAP), mtt:DIR (MagnaTagATune top-50), fsd50k:DIR, folder:DIR (one sub-folder "
    "per class), csv:FILE (columns path, labels, split or fold), demo:DIR (every task CSV of "
    "`ssondo demo-data --out DIR`); a bare FILE.csv means csv:FILE.csv. ADAPTER is not a label: name a "
    "task with --task-name."
)


class DefaultGroup(click.Group):
    """A group that runs ``default`` when the first argument is not one of its subcommands; its --help
    also shows the default subcommand's usage and options."""

    default = "probe"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        command = self.commands[self.default]
        sub = click.Context(command, info_name=self.default, parent=ctx)
        formatter.write_paragraph()
        formatter.write_text(
            f"`{ctx.command_path} ARGS...` runs `{sub.command_path} ARGS...`, the default subcommand:"
        )
        formatter.write_paragraph()
        command.format_usage(sub, formatter)
        options = [p for p in command.get_params(sub) if isinstance(p, click.Option)]
        records = [r for p in options if (r := p.get_help_record(sub)) is not None]
        with formatter.section(f"Options of {sub.command_path}"):
            formatter.write_dl(records)


def _probe_config(seeds: int, hidden: str, max_epochs: int, patience: int, lr: str):
    from ssondo_eval.probe import ProbeConfig

    widths = tuple(int(w) for w in hidden.split(",") if w.strip()) if hidden else ()
    rates = tuple(float(r) for r in lr.split(",") if r.strip())
    return ProbeConfig(
        hidden=widths, lr=rates, max_epochs=max_epochs, patience=patience, seeds=tuple(range(seeds))
    )


def probe_options(f):
    """The options `probe` and `ts-sweep` share. The command receives them built: ``probe_config``
    (a ProbeConfig from --seeds/--hidden/--max-epochs/--patience/--lr) and ``teacher_options`` (a dict
    from the --teacher-option pairs), beside tasks, out, device, batch_size and progress."""

    @functools.wraps(f)
    def command(*, seeds, hidden, max_epochs, patience, lr, teacher_options, **kwargs):
        try:
            probe_config = _probe_config(seeds, hidden, max_epochs, patience, lr)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        return f(
            probe_config=probe_config,
            teacher_options=key_values(teacher_options, "--teacher-option"),
            **kwargs,
        )

    for opt in reversed(
        [
            click.option(
                "--task",
                "tasks",
                multiple=True,
                required=True,
                metavar="ADAPTER:PATH",
                help=TASK_HELP,
            ),
            click.option(
                "--task-name",
                "task_names",
                multiple=True,
                metavar="NAME",
                help="Display name of the task of the N-th --task (repeatable, in --task order; a --task "
                "that yields several tasks, demo:DIR, cannot be renamed) [default: the adapter's name, "
                "e.g. the CSV's stem].",
            ),
            click.option(
                "--out",
                type=click.Path(file_okay=False, path_type=Path),
                required=True,
                help="REPORT folder: results / sweep files, probe results, cached embeddings.",
            ),
            click.option(
                "--device",
                default="auto",
                show_default=True,
                help="auto (cuda if present), cpu or cuda[:N]; asking for cuda without one is an error.",
            ),
            click.option("--batch-size", default=32, show_default=True, help="Windows per model forward."),
            click.option("--seeds", default=3, show_default=True, help=f"Probe seeds. {PROBE_HELP}"),
            click.option(
                "--hidden",
                default="",
                show_default=True,
                help="Hidden widths of an MLP probe, e.g. 512 or 512,256; empty = linear probe.",
            ),
            click.option("--max-epochs", default=200, show_default=True, help="Probe epochs at most."),
            click.option(
                "--patience",
                default=20,
                show_default=True,
                help="Stop after this many epochs without a better validation score (best weights kept).",
            ),
            click.option(
                "--lr",
                default=LR_DEFAULT,
                show_default=True,
                help="Probe Adam learning rate(s), comma-separated: with several, each fold's rate is the one "
                "whose first-seed probe scores best on validation (EVAR fixes one per model); the chosen "
                "rates are in the report.",
            ),
            click.option(
                "--teacher-option",
                "teacher_options",
                multiple=True,
                metavar="KEY=VALUE",
                help="Build option for the teacher (repeatable), e.g. --teacher-option dim=8.",
            ),
            click.option("--progress/--no-progress", default=True, show_default=True, help="Show tqdm bars."),
        ]
    ):
        command = opt(command)
    return command


@click.group("eval", cls=DefaultGroup, invoke_without_command=False)
def evaluate() -> None:
    """Judge students: linear probes per task vs their teacher and a log-mel baseline (`ssondo eval [probe]`),
    and the teacher's temporal-support sweep (`ssondo eval ts-sweep`). `ssondo eval RUN ...` means
    `ssondo eval probe RUN ...`."""


@evaluate.command("probe")
@click.argument("runs", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--teacher",
    default=None,
    help="Teacher to evaluate live: registry name, hear:<module> or "
    "py:<module>:<callable> (none: no live teacher).",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The teacher's checkpoint file (none: the teacher's default weights).",
)
@click.option(
    "--work",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Workspace whose teacher cache --cache names (for tasks whose audio is the packed corpus).",
)
@click.option(
    "--cache",
    default=None,
    help="Evaluate the teacher straight from this cache of --work "
    "(NAME as in `ssondo cache info`, e.g. ts10-hop10).",
)
@click.option(
    "--baseline",
    type=click.Choice(["logmel", "none"]),
    default="logmel",
    show_default=True,
    help="Log-mel statistics baseline column (mean + std of 64 log-mel bands).",
)
@click.option(
    "--ts",
    type=float,
    default=10.0,
    show_default=True,
    help="Students: seconds per embedding window (a shorter clip is embedded whole); the clip "
    "embedding is the mean over windows. The default suits 10-s task clips; `ssondo demo` embeds at "
    "the students' training clip length (2 s in configs/demo-cpu.yaml), and its report prints the "
    "exact command.",
)
@click.option(
    "--teacher-ts",
    default="full",
    show_default=True,
    help="Live teacher: temporal support in seconds (hop = TS, last window zero-padded, as in a "
    "cache), or 'full' = the whole clip in one forward (the teacher chunks it itself, as EVAR feeds "
    "it). `ssondo demo` uses its first cached TS (0.96 s, YAMNet's window): scores move with this "
    "choice (`ssondo eval ts-sweep` measures how much).",
)
@click.option(
    "--untrained/--no-untrained",
    default=True,
    show_default=True,
    help="Add each student's untrained twin (same architecture, same initialisation seed, rebuilt "
    "from its checkpoint) as a baseline column.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap replicates per task for the CIs (test items resampled, paired across models, "
    "probe seeds drawn).",
)
@click.option(
    "--embedding-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where (model, task) embeddings are cached [default: REPORT/embeddings].",
)
@probe_options
@stops_cleanly("eval")
def probe(
    runs,
    teacher,
    checkpoint,
    work,
    cache,
    baseline,
    ts,
    teacher_ts,
    untrained,
    bootstrap,
    embedding_cache,
    tasks,
    task_names,
    out,
    device,
    batch_size,
    probe_config,
    teacher_options,
    progress,
) -> None:
    """Probe student RUNs (folders holding student.pt, or the files), a teacher and the baseline on every
    --task, with each student's untrained twin; write REPORT/results.json, results.md (per task, average
    over informative tasks, % of teacher, gain retention, score retention and gain over the untrained
    student with bootstrap CIs) and results.png."""
    from ssondo_eval.evaluate import run_evaluation, summary_line

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per finished model
    try:
        report = run_evaluation(
            list(runs),
            list(tasks),
            out,
            task_names=list(task_names),
            teacher=teacher,
            checkpoint=checkpoint,
            work=work,
            cache=cache,
            baseline=baseline,
            ts=ts,
            teacher_ts=teacher_ts,
            device=device,
            batch_size=batch_size,
            probe_config=probe_config,
            cache_dir=embedding_cache,
            teacher_options=teacher_options,
            progress=progress,
            untrained=untrained,
            bootstrap=bootstrap,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(summary_line(report, out))


@evaluate.command("ts-sweep")
@click.argument("work", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--teacher", required=True, help="Teacher: registry name, hear:<module> or py:<module>:<callable>."
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The teacher's checkpoint file (none: the teacher's default weights).",
)
@click.option(
    "--ts",
    required=True,
    help="Comma-separated temporal supports in seconds, e.g. 0.5,1,2,5,10 ('full' = one window per clip).",
)
@click.option("--hop", type=float, default=None, help="Hop in seconds for every TS [default: hop = TS].")
@probe_options
@stops_cleanly("eval ts-sweep")
def ts_sweep(
    work,
    teacher,
    checkpoint,
    ts,
    hop,
    tasks,
    task_names,
    out,
    device,
    batch_size,
    probe_config,
    teacher_options,
    progress,
) -> None:
    """For each TS, embed the tasks' audio with the teacher (reusing WORK's caches when the task audio is
    WORK's packed corpus), probe, and report score, embedding count, teacher seconds and peak memory:
    REPORT/ts_sweep.json, ts_sweep.md, ts_sweep.png. WORK may be a folder without caches."""
    from ssondo_eval.ts_sweep import run_ts_sweep

    try:
        report = run_ts_sweep(
            work if work.exists() else None,
            teacher,
            ts,
            list(tasks),
            out,
            task_names=list(task_names),
            checkpoint=checkpoint,
            hop=hop,
            device=device,
            batch_size=batch_size,
            probe_config=probe_config,
            progress=progress,
            **teacher_options,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"ts-sweep: {len(report['rows'])} (TS, task) rows -> {out / 'ts_sweep.md'}")
