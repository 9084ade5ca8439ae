"""What `ssondo pack` was given: folders (walked recursively), audio files, CSV/Parquet lists.

Listing only looks at names and file types, never at contents, and records what it refuses (a
listed path that does not exist, a file that is not an audio format, something that is not a regular
file (a FIFO would block the first ``open`` forever), the same file listed twice).
Hidden files and folders (name starting with ".") are skipped, and so is the WORK folder.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ssondo_cache.audio import AUDIO_EXTENSIONS, UNSUPPORTED_AUDIO_EXTENSIONS
from ssondo_cache.keys import sanitize

LIST_SUFFIXES = (".csv", ".parquet")


class PackInputError(ValueError):
    """What pack was given cannot be used as it is (the message says why and what to do)."""


LABEL_SEPARATOR = ";"  # "dog;bark" -> ["dog", "bark"] (AudioSet names contain commas)


@dataclass(frozen=True)
class Source:
    path: str  # absolute, normalised
    rel: str  # what the derived key is made from
    key: str | None  # given by a list
    labels: tuple[str, ...] = ()
    split: str | None = None


def list_sources(
    inputs: Sequence[str | Path], exclude: Path | None = None
) -> tuple[list[Source], list[dict]]:
    """(sources to scan, rejects) in input order. Raises PackInputError for a missing INPUT."""
    sources: list[Source] = []
    rejects: list[dict[str, Any]] = []
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise PackInputError(f"input {given} does not exist")
        if p.is_dir():
            candidates = [(f, os.path.relpath(f, p)) for f in _walk(p, exclude)]
            sources.extend(_filter(candidates, rejects))
        elif p.suffix.lower() in LIST_SUFFIXES:
            if (kind := _not_regular(str(p))) is not None:
                raise PackInputError(f"input list {given} is a {kind}, not a regular file")
            sources.extend(_filter_rows(_read_list(p), rejects))
        else:
            sources.extend(_filter([(str(p), p.name)], rejects))
    seen: set[str] = set()
    unique: list[Source] = []
    for s in sources:
        if s.path in seen:
            rejects.append(_listing_reject(s.path, "duplicate", "listed more than once"))
        else:
            seen.add(s.path)
            unique.append(s)
    return unique, rejects


def read_labels_csv(path: str | Path) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """A labels table (CSV or Parquet) with `labels` and `key` or `path` (optional `split`) ->
    {key or absolute path: (labels, split)}."""
    if (kind := _not_regular(str(path))) is not None:
        raise PackInputError(f"labels table {path} is a {kind}, not a regular file")
    rows = _read_rows(Path(path))
    if rows and "labels" not in rows[0]:
        raise PackInputError(f"{path}: a labels table needs a `labels` column (found {sorted(rows[0])})")
    out: dict[str, tuple[tuple[str, ...], str | None]] = {}
    for r in rows:
        value = (parse_labels(r.get("labels")), _or_none(r.get("split")))
        if _or_none(r.get("key")) is not None:
            out[sanitize(str(r["key"]))] = value
        elif _or_none(r.get("path")) is not None:
            out[_abs(Path(path).parent, str(r["path"]))] = value
        else:
            raise PackInputError(f"{path}: each labels row needs a `key` or a `path` ({r})")
    return out


def parse_labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(LABEL_SEPARATOR) if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(v).strip() for v in items):
        if item and item not in out:
            out.append(item)
    return tuple(out)


def _walk(root: Path, exclude: Path | None) -> list[str]:
    """Files under root, sorted, following symlinked folders (each real folder once)."""
    skip = os.path.realpath(exclude) if exclude is not None else None
    seen: set[str] = set()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real == skip:  # a link loop, or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return found


def _filter(candidates: list[tuple[str, str]], rejects: list[dict]) -> list[Source]:
    return _filter_rows([{"path": path, "rel": rel} for path, rel in candidates], rejects)


def _filter_rows(rows: list[dict[str, Any]], rejects: list[dict]) -> list[Source]:
    out: list[Source] = []
    for r in rows:
        path = _abs(Path.cwd(), r["path"])
        ext = Path(path).suffix.lower()
        if "missing" in r:
            rejects.append(_listing_reject(path, "missing", "listed path does not exist"))
        elif ext in UNSUPPORTED_AUDIO_EXTENSIONS:
            rejects.append(
                _listing_reject(
                    path,
                    "unsupported_format",
                    f"{ext} cannot be decoded by soundfile; convert it to FLAC or WAV first",
                )
            )
        elif ext not in AUDIO_EXTENSIONS:
            rejects.append(
                _listing_reject(
                    path, "unsupported_format", f"extension {ext or '(none)'!r} is not an audio format"
                )
            )
        elif (kind := _not_regular(path)) is not None:
            rejects.append(
                _listing_reject(
                    path, "not_a_file", f"a {kind}, not a regular file: skipped without opening it"
                )
            )
        else:
            out.append(
                Source(
                    path,
                    r["rel"],
                    _or_none(r.get("key")),
                    parse_labels(r.get("labels")),
                    _or_none(r.get("split")),
                )
            )
    return out


def _read_list(path: Path) -> list[dict[str, Any]]:
    rows = _read_rows(path)
    if not rows:
        return []
    if "path" not in rows[0]:
        raise PackInputError(f"{path}: a list needs a `path` column (found {sorted(rows[0])})")
    base = path.parent
    out = []
    for r in rows:
        p = _abs(base, str(r["path"]))
        rel = os.path.relpath(p, base) if p.startswith(os.path.abspath(base) + os.sep) else p.lstrip(os.sep)
        row = {**r, "path": p, "rel": rel}
        if not os.path.exists(p):  # a broken symlink too
            row["missing"] = True
        out.append(row)
    return out


_FILE_TYPES = {
    stat.S_ISDIR: "folder",
    stat.S_ISFIFO: "FIFO (named pipe)",
    stat.S_ISSOCK: "socket",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
}


def _not_regular(path: str) -> str | None:
    """None for a regular file (or a symlink to one), else what it is; stat only, never open."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except OSError as err:
        return f"path that cannot be examined ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_TYPES.items() if test(mode)), "special file")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: lists saved by spreadsheets
        return list(csv.DictReader(f))


def _abs(base: Path, p: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(p)))


def _or_none(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip() == "") else str(v)


def _listing_reject(path: str, reason: str, detail: str) -> dict[str, Any]:
    return {"path": path, "reason": reason, "detail": detail, "key": None, "offset_s": None, "sha256": None}
