"""`ssondo pack` on bad and unusual inputs: what is refused or flagged (and why, in rejects.parquet),
keys and labels, the scan cache, symlinks, and a file that changes between plan and pack."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import webdataset as wds

from ssondo_cache.pack import pack
from tests.cache.conftest import tone, tree_digest, write_audio


def make_gauntlet(root: Path) -> dict[str, str]:
    """Good clips plus every kind of bad input; returns {file name: expected reason}."""
    root.mkdir(parents=True)
    write_audio(root / "good1.wav", 0.3, 16000, seed=1)
    write_audio(root / "good2.flac", 0.3, 32000, 2, seed=2)
    write_audio(root / "all_zeros.wav", 0.3, 32000, data=np.zeros((9600, 1), np.float32))
    (root / "not_audio.wav").write_text("this is not a wav file\n" * 20)
    (root / "truncated.flac").write_bytes((root / "good2.flac").read_bytes()[:30])
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "zero_frames.wav", np.zeros((0, 1), np.float32), 16000)
    write_audio(root / "short.wav", 0.05, 16000, seed=3)
    nan = tone(0.3, 16000, seed=4)
    nan[100, 0] = np.nan
    write_audio(root / "nan.wav", 0.3, 16000, subtype="FLOAT", data=nan)
    inf = tone(0.3, 16000, seed=5)
    inf[7, 0] = np.inf
    write_audio(root / "inf.wav", 0.3, 16000, subtype="FLOAT", data=inf)
    write_audio(root / "silent.wav", 0.3, 16000, data=np.zeros((4800, 1), np.float32))
    shutil.copy(root / "good1.wav", root / "zz_copy_of_good1.wav")
    (root / "movie.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    (root / "notes.txt").write_text("hello\n")
    write_audio(root / "long_tail.wav", 1.02, 16000, seed=6)  # 1 s segment + a 0.02 s tail
    listed = root.parent / "listed"  # a CSV list beside the folder, with given keys
    write_audio(listed / "audio" / "k1.wav", 0.3, 16000, seed=7)
    write_audio(listed / "audio" / "k2.wav", 0.3, 16000, seed=8)
    with open(listed / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "key", "labels", "split"])
        w.writerow(["audio/k1.wav", "same_key", "dog;bark", "train"])
        w.writerow(["audio/k2.wav", "same_key", "cat", "test"])
        w.writerow(["audio/nowhere.wav", "gone", "", ""])
    return {
        "not_audio.wav": "unreadable",
        "truncated.flac": "unreadable",
        "empty.wav": "empty",
        "zero_frames.wav": "empty",
        "short.wav": "too_short",
        "nan.wav": "nan_inf",
        "inf.wav": "nan_inf",
        "silent.wav": "silent",
        "zz_copy_of_good1.wav": "duplicate",
        "movie.m4a": "unsupported_format",
        "notes.txt": "unsupported_format",
        "long_tail.wav": "too_short",
        "k2.wav": "duplicate_key",
        "nowhere.wav": "missing",
        "all_zeros.wav": "silent",
    }


def test_gauntlet_of_bad_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected = make_gauntlet(data)
    work = tmp_path / "work"
    # The folder (recursively), the list, and one file of the folder again.
    res = pack(
        [data, tmp_path / "listed" / "list.csv", data / "good1.wav"],
        work,
        shard_size=3,
        max_duration=1.0,
        reject_silent=True,
        progress=False,
    )
    assert res.complete
    rejects = pq.read_table(work / "manifests" / "rejects.parquet").to_pylist()
    clips = pq.read_table(work / "manifests" / "clips.parquet").to_pylist()
    got = {(Path(r["path"]).name, r["reason"]) for r in rejects}
    for name, reason in expected.items():
        assert (name, reason) in got, (name, reason, sorted(got))
    assert len({reason for reason in expected.values()}) >= 9
    assert ("good1.wav", "duplicate") in got  # listed by the folder and on its own
    tail = next(r for r in rejects if Path(r["path"]).name == "long_tail.wav")
    assert tail["offset_s"] == 1.0 and tail["key"] == "long_tail-s0001"
    assert all(r["detail"] for r in rejects)
    # Counts add up: every item is packed or rejected, and the manifests say the same.
    assert res.n_seen == res.n_packed + res.n_rejected
    assert (res.n_packed, res.n_rejected) == (len(clips), len(rejects))
    assert {Path(c["source"]).name for c in clips} == {"good1.wav", "good2.flac", "long_tail.wav", "k1.wav"}
    assert f"{res.n_seen} seen = {res.n_packed} packed + {res.n_rejected} rejected" in res.summary()
    assert res.reasons["nan_inf"] == 2 and sum(res.reasons.values()) == res.n_rejected
    # A given key is kept as given, with the list's labels and split.
    k1 = next(c for c in clips if c["key"] == "same_key")
    assert k1["labels"] == ["dog", "bark"] and k1["split"] == "train"


def test_silent_is_flagged_not_refused_by_default(tmp_path: Path) -> None:
    write_audio(tmp_path / "in" / "hush.wav", 0.3, 32000, data=np.full((9600, 1), 1e-5, np.float32))
    write_audio(tmp_path / "in" / "loud.wav", 0.3, 32000)
    res = pack([tmp_path / "in"], tmp_path / "w", progress=False)
    clips = {c["key"]: c for c in pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()}
    assert res.n_rejected == 0 and res.n_silent == 1
    assert clips["hush"]["silent"] and not clips["loud"]["silent"]


def test_keys_are_unique_dotless_and_labels_csv_applies(tmp_path: Path) -> None:
    write_audio(tmp_path / "in" / "x.y" / "clip.wav", 0.2, seed=1)
    write_audio(tmp_path / "in" / "x.y" / "clip.flac", 0.2, seed=2)
    write_audio(tmp_path / "in" / "sp ace" / "é.wav", 0.2, seed=3)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        f"path,labels,split\n{tmp_path / 'in' / 'sp ace' / 'é.wav'},speech;french,dev\n/nowhere.wav,x,\n"
    )
    res = pack([tmp_path / "in"], tmp_path / "w", labels_csv=labels, progress=False)
    clips = pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()
    keys = [c["key"] for c in clips]
    assert res.n_packed == 3 and len(set(keys)) == 3
    assert all("." not in k and k.replace("_", "").replace("-", "").isalnum() and k.isascii() for k in keys)
    assert sum(k.startswith("x_y__clip-") for k in keys) == 2  # the collision is resolved by a path hash
    accent = next(c for c in clips if c["source"].endswith(".wav") and "sp ace" in c["source"])
    assert accent["key"] == "sp_ace" and accent["labels"] == ["speech", "french"] and accent["split"] == "dev"
    assert res.labels_unmatched == ["/nowhere.wav"] and "1 --labels rows matched no" in res.summary()


def test_parquet_list_with_list_labels(tmp_path: Path) -> None:
    import pyarrow as pa

    write_audio(tmp_path / "data" / "one.flac", 0.3, 16000, seed=1)
    write_audio(tmp_path / "data" / "two.wav", 0.3, 16000, seed=2)
    table = pa.table(
        {
            "path": ["data/one.flac", str(tmp_path / "data" / "two.wav")],
            "labels": [["a", "b"], []],
            "split": ["train", None],
        }
    )
    pq.write_table(table, tmp_path / "list.parquet")
    res = pack([tmp_path / "list.parquet"], tmp_path / "w", progress=False)
    clips = {c["key"]: c for c in pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()}
    assert res.n_packed == 2 and set(clips) == {"data__one", "data__two"}
    assert clips["data__one"]["labels"] == ["a", "b"] and clips["data__one"]["split"] == "train"
    assert clips["data__two"]["labels"] == [] and clips["data__two"]["split"] is None


def test_scan_cache_is_reused_and_a_broken_one_is_rebuilt(small_corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    pack([small_corpus], work, progress=False)
    scans = sorted((work / "manifests" / "scan").glob("scan-*.json"))
    assert len(scans) == 1 and len(json.loads(scans[0].read_text())) == 9
    before = tree_digest(work)
    scans[0].write_text("{not json")
    again = pack([small_corpus], work, progress=False)
    assert again.complete and again.shards_built == 0 and tree_digest(work) == before


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    write_audio(tmp_path / "store" / "x" / "a.wav", 0.2, 32000, seed=1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "store")
    (tmp_path / "store" / "x" / "loop").symlink_to(tmp_path / "store")  # a cycle
    res = pack([tmp_path / "in"], tmp_path / "w", progress=False)
    clips = pq.read_table(tmp_path / "w/manifests/clips.parquet").column("key").to_pylist()
    assert res.n_packed == 1 and res.n_rejected == 0 and clips == ["linked__x__a"]


def test_file_changed_between_plan_and_pack_is_refused(tmp_path: Path) -> None:
    from ssondo_cache.pack import build_shard, part_path
    from ssondo_cache.plan import PackParams, make_plan
    from ssondo_cache.workspace import Workspace

    for i in range(3):
        write_audio(tmp_path / "in" / f"{i}.wav", 0.2, 32000, seed=i)
    plan = make_plan([tmp_path / "in"], PackParams(32000, "wav", 10, 0.1, 10.0, False))
    write_audio(tmp_path / "in" / "1.wav", 0.2, 32000, seed=42)  # edited while packing
    ws = Workspace(tmp_path / "w")
    fp = plan.shard_fingerprint(0)
    build_shard(ws, 0, plan.shard_items(0), plan.params, fp)
    part = json.loads(part_path(ws, 0, fp).read_text())
    assert [c["key"] for c in part["clips"]] == ["0", "2"]
    assert [(Path(r["path"]).name, r["reason"]) for r in part["rejects"]] == [("1.wav", "changed")]
    assert [s["__key__"] for s in wds.WebDataset([str(ws.shard_path(0))], shardshuffle=False)] == ["0", "2"]
