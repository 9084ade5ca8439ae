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
def info(work: Path) -> None:
    """List every cache in WORK: teacher, TS, hop, rows done / total, size on disk."""
    from ssondo_cache.store import list_caches
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
                f"{c.rows_done}/{c.rows_total}" + ("" if c.complete else " (incomplete)"),
                _size(c.size_bytes),
                match,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
