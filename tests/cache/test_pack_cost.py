"""What `ssondo pack` spends per clip and per plan, counted (never timed): each source read and
decoded once, memory-mapped large files, each fingerprint once, no per-item dataclass copies."""

from __future__ import annotations

import io
from pathlib import Path

from ssondo_cache.pack import pack
from tests.cache.conftest import tree_digest, write_audio


def test_build_reads_each_source_once_and_decodes_the_hashed_bytes(tmp_path: Path, monkeypatch) -> None:
    """Issue 17: one open per source (its segments included) and one resample per clip; what is decoded
    is the buffer that was hashed, never the path again (a file changed between the two reads used to
    be decoded under the sha256 of its old bytes)."""
    from ssondo_cache import audio as A
    from ssondo_cache.pack import build_shard
    from ssondo_cache.plan import PackParams, make_plan
    from ssondo_cache.workspace import Workspace

    write_audio(tmp_path / "in" / "a.flac", 0.3, 44100, 2, seed=1)
    write_audio(tmp_path / "in" / "b.wav", 0.3, 48000, 1, seed=2)
    write_audio(tmp_path / "in" / "long.wav", 2.5, 44100, 2, seed=3)  # 3 segments of one file
    plan = make_plan([tmp_path / "in"], PackParams(32000, "flac", 10, 0.1, 1.0, False))
    sources = {it.source for it in plan.items}
    opened, decoded_from, resampled = [], [], []
    real_open, real_soundfile, real_resample = open, A.sf.SoundFile, A.soxr.resample
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])

    def soundfile(f, mode="r", *a, **k):  # reads only: encoding a FLAC member opens one to write
        if "r" in mode:
            decoded_from.append(f)
        return real_soundfile(f, mode, *a, **k)

    monkeypatch.setattr(A.sf, "SoundFile", soundfile)
    monkeypatch.setattr(A.soxr, "resample", lambda *a, **k: (resampled.append(1), real_resample(*a, **k))[1])
    ws = Workspace(tmp_path / "w")
    assert build_shard(ws, 0, plan.shard_items(0), plan.params, plan.shard_fingerprint(0)) == 5
    assert sorted(p for p in opened if p in sources) == sorted(sources)  # each exactly once
    assert len(decoded_from) == 5 and not any(isinstance(f, str | Path) for f in decoded_from)
    assert len(resampled) == 5


def test_a_memory_mapped_source_packs_the_same_bytes(small_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """Sources above READ_WHOLE_MAX are mapped, not read into memory: the shards do not change."""
    import ssondo_cache.pack_shards as pack_shards

    pack([small_corpus], tmp_path / "read", shard_size=4, progress=False)
    monkeypatch.setattr(pack_shards, "READ_WHOLE_MAX", 0)
    pack([small_corpus], tmp_path / "mapped", shard_size=4, progress=False)
    assert tree_digest(tmp_path / "read") == tree_digest(tmp_path / "mapped")


def test_each_shard_fingerprint_is_computed_once_per_pack(
    small_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    """A fingerprint hashes its whole plan slice (~0.2 ms per clip): pack used to compute each one 4-5 times."""
    from ssondo_cache.plan import Plan

    calls: list[int] = []
    real = Plan.shard_fingerprint
    monkeypatch.setattr(Plan, "shard_fingerprint", lambda self, s: (calls.append(s), real(self, s))[1])
    res = pack([small_corpus], tmp_path / "w", shard_size=2, progress=False)
    assert res.complete and sorted(calls) == list(range(res.n_shards))


def test_plan_fingerprints_do_not_copy_every_item(monkeypatch) -> None:
    """A 2,000-shard plan's start-up hashed 2 M items through ``dataclasses.asdict`` twice (120 s
    measured in benchmarks/scale.py): the fingerprints now encode each item as one JSON line, and
    still tell any change of an item, of the parameters or of the rejects."""
    import dataclasses

    import ssondo_cache.plan as plan_mod
    from ssondo_cache.plan import PackParams, Plan, PlanItem

    calls = []
    real = dataclasses.asdict
    monkeypatch.setattr(plan_mod, "asdict", lambda obj: (calls.append(type(obj).__name__), real(obj))[1])
    params = PackParams(32000, "flac", 4, 0.1, None, False)
    items = [
        PlanItem(f"k{i:03d}", f"/d/{i}.wav", "0" * 64, 0, 100 * i + 1, 44100, 2, ("a",), None)
        for i in range(12)
    ]

    def plan(items=items, params=params, rejects=()):
        return Plan(params, list(items), list(rejects), n_inputs=len(items))

    base = plan()
    shards = [base.shard_fingerprint(s) for s in range(base.n_shards)]
    assert calls == ["PackParams"] * base.n_shards  # the parameters only, never an item
    calls.clear()
    _ = base.fingerprint
    assert calls == ["PackParams"]

    moved = plan(items[:5] + [dataclasses.replace(items[5], stop=7)] + items[6:])
    assert moved.fingerprint != base.fingerprint
    assert [moved.shard_fingerprint(s) == f for s, f in enumerate(shards)] == [True, False, True]
    assert plan(params=dataclasses.replace(params, fmt="wav")).fingerprint != base.fingerprint
    assert plan(rejects=[{"path": "/d/x.wav", "reason": "too short"}]).fingerprint != base.fingerprint
    assert plan().fingerprint == base.fingerprint and plan().shard_fingerprint(2) == shards[2]


class _CountingFile(io.BytesIO):
    """A file that counts its write calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data) -> int:
        self.writes += 1
        return super().write(data)


def test_a_tar_member_is_written_in_three_writes_with_tarfiles_bytes() -> None:
    """Each member is written as header, bytes, padding (tarfile copied every member through a BytesIO in
    16-KiB writes: ~0.5 CPU ms per 10-s clip); the tar stays byte-identical to what tarfile writes, PAX
    headers (long or non-ASCII names) and the end-of-archive record included."""
    import tarfile

    from ssondo_cache.shards import TAR_MTIME, ShardWriter, meta_bytes

    members = [
        ("a", b"x" * 640_044, "wav", {"key": "a"}),  # a 10-s 32-kHz WAV member
        ("b" * 150, b"", "wav", {"key": "b" * 150}),  # a name past ustar's 100 bytes: a PAX header
        ("caf\u00e9", b"y" * 512, "wav", {"key": "caf\u00e9"}),
    ]
    out = _CountingFile()
    with ShardWriter(out) as w:
        for key, audio, fmt, meta in members:
            w.add(key, audio, fmt, meta)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for key, audio, fmt, meta in members:
            for name, data in ((f"{key}.{fmt}", audio), (f"{key}.json", meta_bytes(meta))):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), TAR_MTIME, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    assert out.getvalue() == ref.getvalue()
    assert out.writes <= 3 * 2 * len(members) + 1  # header + data + padding per member, one end record


def test_hashing_a_file_reads_into_a_reused_buffer(tmp_path: Path, monkeypatch) -> None:
    """The plan hashes every input: sha256_file used to allocate a fresh 1-MiB bytes object per read
    (~0.5 CPU ms of page faults per 1.4-MB file); it now reads into one buffer. Same digest."""
    import builtins
    import hashlib

    from ssondo_cache.provenance import sha256_file

    data = bytes(range(256)) * 12_000  # 3 MB: several buffers' worth
    (tmp_path / "f").write_bytes(data)
    reads: list[str] = []
    real_open = builtins.open

    class Recording:
        def __init__(self, f) -> None:
            self._f = f

        def __getattr__(self, name: str):
            if name in ("read", "readinto"):
                reads.append(name)
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._f.close()

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Recording(real_open(*a, **k)))
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert "readinto" in reads and "read" not in reads
