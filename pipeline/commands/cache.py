"""`ssondo cache`: look at the teacher caches of a WORK folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def cache() -> None:
    """Teacher caches (WORK/cache/<teacher_id>/ts<TS>-hop<HOP>.zarr)."""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _seconds(value, fmt) -> str:
    return fmt(float(value)) if isinstance(value, (int, float)) else str(value)


@cache.command("info")
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--verify",
    is_flag=True,
    help="Also read every done block and check its embeddings are finite (slow: reads the whole cache). "
    "Without it, only that every done block has its files is checked.",
)
def info(work: Path, verify: bool) -> None:
    """List every cache in WORK: teacher, TS, hop, rows done / total, size on disk.

    Exit status 1 when a block marked done has a missing file (or, with --verify, an unreadable or
    non-finite one); each such file or block is named."""
    from ssondo_cache.cache_index import list_caches, verify_cache
    from ssondo_cache.windows import format_seconds

    caches = list_caches(work)
    if not caches:
        click.echo(f"no caches in {work / 'cache'} (run `ssondo extract {work} --teacher NAME --ts SECONDS`)")
        return
    rows = [("cache", "teacher", "ts", "hop", "rows done/total", "size", "manifest")]
    for c in caches:
        match = {True: "ok", False: "MISMATCH", None: "-"}[c.matches_manifest]
        rows.append(
            (
                c.name,
                c.teacher,
                _seconds(c.ts, format_seconds),
                _seconds(c.hop, format_seconds),
                f"{c.rows_done}/{c.rows_total}"
                + ("" if c.rows_done == c.rows_total else " (incomplete)")
                + (f" ({len(c.missing_files)} file(s) MISSING)" if c.missing_files else ""),
                _size(c.size_bytes),
                match,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    problems = [
        f"{f} is missing but block {f.relative_to(c.path).parts[2]} is marked done: re-extract that block "
        f"(or delete {c.path} and run `ssondo extract` again)"
        for c in caches
        for f in c.missing_files
    ]
    if verify:
        problems += [p for c in caches if not c.missing_files for p in verify_cache(c.path, progress=True)]
    for line in problems:
        click.echo(f"error: {line}", err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} damaged cache file(s) or block(s), listed above")
