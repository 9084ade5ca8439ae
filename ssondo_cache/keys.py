"""Clip keys: stable names derived from relative paths (or given), unique, with no dots.

WebDataset groups tar members by the part of the name before the first dot, so a key
must never contain one; keys also become file names, so they stay in [A-Za-z0-9_-].
A key depends only on the clip's own path (never on the order files were found), so
re-listing the same corpus on another machine gives the same keys.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import PurePath

MAX_KEY_LEN = 160  # file names stay well under the usual 255-byte limit
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_VALID = re.compile(r"^[A-Za-z0-9_-]+$")


def sanitize(text: str) -> str:
    """Map any string onto the key alphabet: runs of other characters become one ``_``."""
    key = _UNSAFE.sub("_", text).strip("_") or "clip"
    if len(key) > MAX_KEY_LEN:  # keep it unique by appending a hash of the full text
        key = f"{key[: MAX_KEY_LEN - 9]}-{_short_hash(text)}"
    return key


def key_from_relpath(relpath: str | PurePath) -> str:
    """``dogs/bark 01.wav`` -> ``dogs__bark_01``: folders joined by ``__``, extension dropped."""
    parts = list(PurePath(relpath).parts)
    if parts:
        parts[-1] = PurePath(parts[-1]).stem or parts[-1]
    return sanitize("__".join(_UNSAFE.sub("_", p).strip("_") for p in parts if p not in ("", "/")))


def is_valid_key(key: str) -> bool:
    return bool(_VALID.match(key)) and len(key) <= MAX_KEY_LEN + 16


def segment_key(key: str, index: int) -> str:
    """Key of segment ``index`` of a long file split into several clips."""
    return f"{key}-s{index:04d}"


def disambiguate(keys: Sequence[str], identities: Sequence[str], fixed: Iterable[int] = ()) -> list[str]:
    """Make ``keys`` unique without depending on their order.

    Every key that collides gets ``-<8 hex of sha1(identity)>`` appended (identity is
    e.g. the absolute source path), except positions in ``fixed`` (keys the user gave),
    which are kept as they are. Raises ValueError if keys still collide afterwards.
    """
    fixed = set(fixed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    out = list(keys)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        for i in members:
            if i not in fixed:
                out[i] = f"{key}-{_short_hash(identities[i])}"
    check_unique(out, identities)
    return out


def check_unique(keys: Sequence[str], identities: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise ValueError(
                f"two inputs map to the same clip key {k!r}: {identities[seen[k]]!r} and {identities[i]!r}; "
                "give explicit keys in a CSV list (column `key`) or rename one of them"
            )
        seen[k] = i


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]
