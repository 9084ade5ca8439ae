"""What `ssondo pack` spends per clip and per plan, counted (never timed): each source read and
decoded once, memory-mapped large files, each fingerprint once, no per-item dataclass copies."""

from __future__ import annotations

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
    import ssondo_cache.pack as pack_mod

    pack([small_corpus], tmp_path / "read", shard_size=4, progress=False)
    monkeypatch.setattr(pack_mod, "READ_WHOLE_MAX", 0)
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
