"""Planning a pack: which clips exist, their keys and their order, from bytes and headers only.

Every input file is read once to hash it (sha256) and its header is parsed with
soundfile.info (no decoding). From that alone the plan decides keys, duplicates
(same sha256: the one with the smallest key is kept), too-short or empty inputs, and how
long files are split into segments. The plan is a pure function of the inputs and the
parameters, so every rank computes the same one without talking to the others; shard i
is plan.items[i * shard_size : (i + 1) * shard_size].
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssondo_cache import audio as A
from ssondo_cache.atomic import write_json
from ssondo_cache.inputs import PackInputError, Source, list_sources, read_labels_csv
from ssondo_cache.keys import check_unique, disambiguate, key_from_relpath, sanitize, segment_key
from ssondo_cache.provenance import sha256_file
from ssondo_cache.shards import FORMATS

DEFAULT_MIN_DURATION = 0.1  # seconds; spoken digits are ~0.4 s, so keep this low
LAYOUT_VERSION = 3  # bump when the bytes for the same plan change (2: libsoxr, 3: its HQ float32 engine): old shards get rebuilt


@dataclass(frozen=True)
class PlanItem:
    """One clip to pack: frames [start, stop) of a source file."""

    key: str
    source: str
    sha256: str
    start: int
    stop: int
    orig_sample_rate: int
    orig_channels: int
    labels: tuple[str, ...]
    split: str | None


@dataclass(frozen=True)
class PackParams:
    sample_rate: int
    fmt: str
    shard_size: int
    min_duration: float
    max_duration: float | None
    reject_silent: bool

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise PackInputError(f"--format must be one of {sorted(FORMATS)}, got {self.fmt!r}")
        if self.sample_rate <= 0 or self.shard_size <= 0 or self.min_duration < 0:
            raise PackInputError("sample_rate and shard_size must be > 0, min_duration >= 0")
        if self.max_duration is not None and self.max_duration > 0 and self.max_duration < self.min_duration:
            raise PackInputError(
                f"max_duration {self.max_duration} is below min_duration {self.min_duration}"
            )


@dataclass
class Plan:
    params: PackParams
    items: list[PlanItem]  # sorted by key
    rejects: list[dict[str, Any]]  # refused before decoding
    n_inputs: int
    scan_cache: tuple[str, ...] = ()  # names of the scan-cache files this plan used
    labels_unmatched: list[str] = field(default_factory=list)  # --labels rows that matched no kept input

    @property
    def n_shards(self) -> int:
        return -(-len(self.items) // self.params.shard_size)

    def shard_items(self, shard: int) -> list[PlanItem]:
        s = self.params.shard_size
        return self.items[shard * s : (shard + 1) * s]

    def shard_fingerprint(self, shard: int) -> str:
        """Identifies what shard ``shard`` must contain: its slice of the plan and the parameters."""
        return _items_sha(self.shard_items(shard), {"layout": LAYOUT_VERSION, "params": asdict(self.params)})

    @cached_property
    def fingerprint(self) -> str:
        head = {"layout": LAYOUT_VERSION, "params": asdict(self.params), "rejects": self.rejects}
        return _items_sha(self.items, head)


_ITEM_FIELDS = operator.attrgetter(*(f.name for f in fields(PlanItem)))


def _item_record(item: PlanItem) -> bytes:
    """One item as the repr of its field tuple (str, int, None and tuples of str: an exact,
    deterministic encoding). Not ``asdict`` + JSON: ~25 us a clip, 110 s of a 2 M-clip pack's
    start-up for the two fingerprints (issue 18); this is ~2 us."""
    return repr(_ITEM_FIELDS(item)).encode() + b"\n"


def _items_sha(items: Sequence[PlanItem], head: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode() + b"\n")
    for item in items:
        h.update(_item_record(item))
    return h.hexdigest()


def make_plan(
    inputs: Sequence[str | Path],
    params: PackParams,
    *,
    labels_csv: str | Path | None = None,
    exclude: Path | None = None,
    cache_dir: Path | None = None,
    reuse_scans: bool = True,
    rank: int = 0,
    world_size: int = 1,
    pool: Any = None,
    progress: bool = False,
) -> Plan:
    """Decide which clips exist, their keys and order, from bytes and headers only.

    ``cache_dir`` keeps what scanning found (per chunk of files, keyed by path, size and
    mtime), so a re-run or a finalize call does not hash the corpus again; ranks scan their
    own chunks first and read the others' from there when they are ready. ``reuse_scans=False``
    hashes every file again (and rewrites the cache): a rewrite keeping size and mtime is then seen."""
    sources, rejects = list_sources(inputs, exclude=exclude)
    n_inputs = len(sources) + len(rejects)  # listing refusals (missing, not audio, listed twice) count too
    scans, cache_names = scan_files(
        [s.path for s in sources],
        cache_dir,
        rank,
        world_size,
        pool=pool,
        progress=progress,
        reuse=reuse_scans,
    )
    readable: list[tuple[Source, str, A.AudioInfo]] = []
    for src, (sha, info_or_err) in zip(sources, scans, strict=True):
        if isinstance(info_or_err, A.AudioReject):
            rejects.append(reject(src.path, info_or_err.reason, info_or_err.detail, sha=sha))
        else:
            readable.append((src, sha, info_or_err))

    # Keys: a key given by a list is kept (a repeated given key is refused); derived ones are
    # made unique by a hash of the path, so keys do not depend on the order inputs were listed in.
    given_seen: set[str] = set()
    keep: list[tuple[Source, str, A.AudioInfo]] = []
    for src, sha, info in readable:
        if src.key is not None:
            k = sanitize(src.key)
            if k in given_seen:
                rejects.append(reject(src.path, "duplicate_key", f"key {k!r} given twice", key=k, sha=sha))
                continue
            given_seen.add(k)
        keep.append((src, sha, info))
    raw = [sanitize(s.key) if s.key is not None else key_from_relpath(s.rel) for s, _, _ in keep]
    fixed = [i for i, (s, _, _) in enumerate(keep) if s.key is not None]
    try:
        keys = disambiguate(raw, [s.path for s, _, _ in keep], fixed=fixed)
    except ValueError as err:
        raise PackInputError(str(err)) from None

    labels = read_labels_csv(labels_csv) if labels_csv else {}
    items: list[PlanItem] = []
    kept_sha: dict[str, str] = {}
    used_labels: set[str | None] = set()
    for key, (src, sha, info) in sorted(zip(keys, keep, strict=True), key=lambda t: t[0]):
        if sha in kept_sha:  # same bytes as an input with a smaller key: keep the first
            rejects.append(
                reject(src.path, "duplicate", f"same content as {kept_sha[sha]}", key=key, sha=sha)
            )
            continue
        if info.frames == 0:
            rejects.append(reject(src.path, "empty", "audio header with 0 samples", key=key, sha=sha))
            continue
        if A.too_short(info.frames, info.sample_rate, params.min_duration):
            rejects.append(
                reject(
                    src.path,
                    "too_short",
                    f"{info.duration_s:.3f} s, below --min-duration {params.min_duration} s",
                    key=key,
                    sha=sha,
                )
            )
            continue
        kept_sha[sha] = src.path
        hit = key if key in labels else src.path if src.path in labels else None
        lab, split = labels[hit] if hit is not None else (src.labels, src.split)
        used_labels.add(hit)
        bounds = A.segment_bounds(info.frames, info.sample_rate, params.max_duration)
        for i, (start, stop) in enumerate(bounds):
            k = key if len(bounds) == 1 else segment_key(key, i)
            if A.too_short(stop - start, info.sample_rate, params.min_duration):
                rejects.append(
                    reject(
                        src.path,
                        "too_short",
                        f"tail of {(stop - start) / info.sample_rate:.3f} s after splitting",
                        key=k,
                        sha=sha,
                        offset_s=start / info.sample_rate,
                    )
                )
                continue
            items.append(
                PlanItem(k, src.path, sha, start, stop, info.sample_rate, info.channels, tuple(lab), split)
            )
    items.sort(key=lambda it: it.key)
    try:
        check_unique([it.key for it in items], [f"{it.source}@{it.start}" for it in items])
    except ValueError as err:
        raise PackInputError(str(err)) from None
    rejects.sort(key=reject_order)
    unmatched = sorted(set(labels) - used_labels)
    return Plan(params, items, rejects, n_inputs, scan_cache=cache_names, labels_unmatched=unmatched)


ScanResult = tuple[str | None, A.AudioInfo | A.AudioReject]
SCAN_CHUNK = 512  # files per scan-cache file


def scan_files(
    paths: list[str],
    cache_dir: Path | None,
    rank: int = 0,
    world_size: int = 1,
    *,
    pool: Any = None,
    progress: bool = False,
    reuse: bool = True,
) -> tuple[list[ScanResult], tuple[str, ...]]:
    """(sha256, header or refusal) per path, in order, and the names of the cache files used.

    Cached per chunk of SCAN_CHUNK files, in ``cache_dir/scan-<id>.json``."""
    chunks = [paths[i : i + SCAN_CHUNK] for i in range(0, len(paths), SCAN_CHUNK)]
    # This rank's chunks first, then the others (cached by then if their rank is running too).
    order = sorted(range(len(chunks)), key=lambda c: ((c - rank) % world_size != 0, c))
    found: dict[int, list[ScanResult]] = {}
    names: list[str] = []
    bar = tqdm(total=len(paths), unit="file", desc="plan: hash + header", disable=not progress or not paths)
    for c in order:
        names.append(f"scan-{_chunk_id(chunks[c])}.json")
        cache = cache_dir / names[-1] if cache_dir is not None else None
        found[c] = _load_scan(cache) if cache is not None and reuse else None
        if found[c] is None:
            found[c] = list(pool.imap(_scan, chunks[c], chunksize=8) if pool else map(_scan, chunks[c]))
            if cache is not None:
                write_json(cache, [_scan_to_json(r) for r in found[c]])
        bar.update(len(chunks[c]))
    bar.close()
    return [r for c in range(len(chunks)) for r in found[c]], tuple(sorted(names))


def _chunk_id(paths: list[str]) -> str:
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((p, -1, -1))
    return _sha(stats)[:24]


def _load_scan(path: Path) -> list[ScanResult] | None:
    try:
        return [_scan_from_json(r) for r in json.loads(path.read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _scan_to_json(r: ScanResult) -> dict[str, Any]:
    sha, res = r
    if isinstance(res, A.AudioReject):
        return {"sha256": sha, "reject": [res.reason, res.detail]}
    return {"sha256": sha, "info": asdict(res)}


def _scan_from_json(d: dict[str, Any]) -> ScanResult:
    if "reject" in d:
        return d["sha256"], A.AudioReject(*d["reject"])
    return d["sha256"], A.AudioInfo(**d["info"])


def _scan(path: str) -> ScanResult:
    try:
        sha = sha256_file(path)
    except OSError as err:
        return None, A.AudioReject("unreadable", f"cannot read the file ({err.strerror})")
    try:
        return sha, A.probe(path)
    except A.AudioReject as rej:
        return sha, rej


def reject(
    path: str,
    reason: str,
    detail: str,
    *,
    key: str | None = None,
    sha: str | None = None,
    offset_s: float | None = None,
) -> dict[str, Any]:
    return {"path": path, "reason": reason, "detail": detail, "key": key, "offset_s": offset_s, "sha256": sha}


def reject_order(r: dict[str, Any]) -> tuple:
    return (r["path"], -1.0 if r["offset_s"] is None else r["offset_s"], r["reason"])


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
