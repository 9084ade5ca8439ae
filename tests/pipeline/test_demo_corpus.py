"""The demo corpus: real packages in, deterministic audio and task CSVs out.

The small corpus is built once per session from the shared Debian cache (~/.cache/ssondo,
downloaded with apt-get on a fresh machine: ~260 MB once). A failed download fails these
tests loudly: CI must be able to build the corpus the demo runs on.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.demo_corpus import (
    DemoCorpus,
    DemoCorpusError,
    build_demo_corpus,
    debian,
    gsm,
    recordings,
    soundfont,
)

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "manifests" / "demo"
TASKS = ("instrument_family", "spoken_digit", "sonicpi_category")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_hashes(root: Path) -> dict[str, str]:
    skip = {"corpus.json"}  # holds the build time and the absolute output path
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> DemoCorpus:
    corpus = build_demo_corpus(tmp_path_factory.mktemp("demo") / "small", size="small", progress=False)
    assert corpus.complete, corpus.problems
    return corpus


@pytest.mark.slow
def test_small_corpus_matches_committed_lists(small):
    out = Path(small.out) / "manifests" / "demo"
    names = sorted(p.name for p in out.glob("*.csv"))
    assert names == sorted(["all.csv", "distill.csv", "sources.csv"] + [f"{t}.csv" for t in TASKS])
    for name in names:
        assert (out / name).read_bytes() == (COMMITTED / "small" / name).read_bytes(), name


@pytest.mark.slow
def test_task_csvs_are_well_formed(small):
    root = Path(small.out)
    mdir = root / "manifests" / "demo"
    all_keys = [r["key"] for r in read_csv(mdir / "all.csv")]
    assert len(all_keys) == len(set(all_keys)) == small.n_clips
    assert all("." not in k for k in all_keys)
    distill = {r["key"] for r in read_csv(mdir / "distill.csv")}
    assert distill < set(all_keys)
    for task in TASKS:
        rows = read_csv(mdir / f"{task}.csv")
        assert list(rows[0]) == ["path", "key", "labels", "split"]
        labels = {r["labels"] for r in rows}
        for split in ("train", "valid", "test"):  # every class in every split
            assert {r["labels"] for r in rows if r["split"] == split} == labels, (task, split)
        for r in rows:
            assert (mdir / r["path"]).resolve().is_file()  # relative to the CSV's own folder
            assert r["key"] in all_keys
        test_keys = {r["key"] for r in rows if r["split"] == "test"}
        assert not test_keys & distill, task  # the student never hears a test clip
        assert small.tasks[task]["counts"] == dict(Counter(r["split"] for r in rows))


@pytest.mark.slow
def test_instrument_task_crosses_soundfonts_and_digits_cross_voices(small):
    mdir = Path(small.out) / "manifests" / "demo"
    inst = read_csv(mdir / "instrument_family.csv")
    assert {r["path"].split("/")[4] for r in inst if r["split"] != "test"} == {"fluidr3"}
    assert {r["path"].split("/")[4] for r in inst if r["split"] == "test"} == {"timgm6mb"}
    assert len({r["labels"] for r in inst}) == len(soundfont.FAMILIES) == 13
    digits = read_csv(mdir / "spoken_digit.csv")
    voices = {
        split: {r["path"].split("/")[4] for r in digits if r["split"] == split}
        for split in ("train", "valid", "test")
    }
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["valid"]
    assert len(set().union(*voices.values())) == len(recordings.VOICES) == 8
    # every held-out voice speaks a language that training hears from another speaker
    lang = {v.name: v.language for v in recordings.VOICES}
    assert {lang[v] for v in voices["valid"] | voices["test"]} <= {lang[v] for v in voices["train"]}
    sources = {r["key"]: r for r in read_csv(mdir / "sources.csv")}
    assert all(sources[r["key"]]["source"].startswith("asterisk-") for r in digits)
    assert {sources[r["key"]]["source"] for r in inst} == {"fluid-soundfont-gm", "pretty_midi"}


@pytest.mark.slow
def test_audio_is_real_mono_and_within_bounds(small):
    root = Path(small.out)
    rates = Counter()
    for row in read_csv(root / "manifests" / "demo" / "all.csv"):
        info = sf.info(str(root / "manifests" / "demo" / row["path"]))
        assert info.channels == 1 and info.subtype == "PCM_16"
        assert recordings.MIN_S - 1e-3 <= info.duration <= recordings.MAX_S + 1e-3, row["key"]
        rates[info.samplerate] += 1
    assert set(rates) == {8000, 32000, 44100}
    # a Sonic Pi clip is the source sample itself (mono, 16-bit), not something made up
    src_pkg = debian.cached_package(recordings.SONIC_PI_PACKAGE, debian.default_cache_dir())
    if src_pkg is None:  # built from another cache: find the source through sources.csv instead
        pytest.skip("sonic-pi-samples not in the default cache")
    row = next(r for r in read_csv(root / "manifests/demo/sources.csv") if r["source"] == "sonic-pi-samples")
    ours, sr = sf.read(str(root / "manifests/demo" / row["path"]), dtype="float32")
    theirs, sr2 = sf.read(str(src_pkg.root / row["origin"].lstrip("/")), dtype="float32", always_2d=True)
    n = min(len(ours), len(theirs))
    assert sr == sr2 and np.abs(ours[:n] - theirs.mean(axis=1)[:n]).max() < 2 / 32768
    rendered = next(r for r in read_csv(root / "manifests/demo/all.csv") if "fluidr3" in r["path"])
    audio, _ = sf.read(str(root / "manifests/demo" / rendered["path"]), dtype="float32")
    assert np.abs(audio).max() == pytest.approx(soundfont.PEAK, abs=1e-3)


@pytest.mark.slow
def test_rebuild_is_byte_identical_resumes_and_is_a_noop(small, tmp_path):
    again = build_demo_corpus(tmp_path / "again", size="small", progress=False)
    assert tree_hashes(Path(again.out)) == tree_hashes(Path(small.out))
    # resume: a lost clip and a lost corpus.json (an interrupted build) come back identical
    victim = (
        Path(again.out)
        / "audio/instruments/fluidr3/piano"
        / sorted(p.name for p in (Path(again.out) / "audio/instruments/fluidr3/piano").iterdir())[0]
    )
    before = victim.read_bytes()
    victim.unlink()
    (Path(again.out) / "corpus.json").unlink()
    resumed = build_demo_corpus(tmp_path / "again", size="small", progress=False)
    assert victim.read_bytes() == before
    # finished: a no-op that rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in Path(again.out).rglob("*") if p.is_file()}
    build_demo_corpus(tmp_path / "again", size="small", progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in Path(again.out).rglob("*") if p.is_file()}
    with pytest.raises(DemoCorpusError, match="holds a 'small' demo corpus"):
        build_demo_corpus(tmp_path / "again", size="full", progress=False)
    # a moved corpus is still finished, and its paths follow it
    shutil.move(tmp_path / "again", tmp_path / "moved")
    moved = build_demo_corpus(tmp_path / "moved", size="small", progress=False)
    assert moved.build_seconds == resumed.build_seconds  # read back, not rebuilt
    assert Path(moved.lists["distill"]) == (tmp_path / "moved/manifests/demo/distill.csv").resolve()
    assert Path(moved.tasks["spoken_digit"]["csv"]).is_file()


def test_missing_debian_packages_skip_their_tasks_not_fake_them(tmp_path):
    corpus = build_demo_corpus(
        tmp_path / "out", size="small", cache_dir=tmp_path / "empty-cache", progress=False, download=False
    )
    assert not corpus.complete
    assert all(corpus.tasks[t]["skipped"] for t in TASKS)
    assert any("fluid-soundfont-gm" in p for p in corpus.problems)
    mdir = tmp_path / "out" / "manifests" / "demo"
    assert not any((mdir / f"{t}.csv").exists() for t in TASKS)
    # what needs no Debian package is still there: the TimGM6mb renders from PyPI pretty_midi
    rows = read_csv(mdir / "all.csv")
    assert rows and all("timgm6mb" in r["path"] for r in rows)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "SKIPPED" in readme and "fluid-soundfont-gm unavailable" in readme


def test_cli_exits_2_when_partial_and_0_when_allowed(tmp_path):
    args = [
        "demo-data",
        "--out",
        str(tmp_path / "out"),
        "--size",
        "small",
        "--offline",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "empty-cache"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "INCOMPLETE" in result.output and "fluid-soundfont-gm" in result.output
    result = CliRunner().invoke(main, [*args, "--allow-partial"])
    assert result.exit_code == 0, result.output
    help_text = CliRunner().invoke(main, ["demo-data", "--help"]).output
    assert "~/.cache/ssondo" in help_text and "default: full" in help_text


def test_renders_do_not_depend_on_what_was_rendered_before():
    notes = soundfont.plan_notes(2, 1, phase=0.5)
    first = soundfont.NoteRenderer(soundfont.timgm6mb_path())
    forward = {n: first.render(n) for n in notes}
    second = soundfont.NoteRenderer(soundfont.timgm6mb_path())
    for n in reversed(notes):
        assert np.array_equal(second.render(n), forward[n]), n.stem


def test_debian_cache_miss_is_reported_not_downloaded_when_offline(tmp_path):
    assert debian.cached_package("sonic-pi-samples", tmp_path) is None
    with pytest.raises(debian.DebianUnavailable, match="downloads are off"):
        debian.fetch_package("sonic-pi-samples", tmp_path, download=False)


@pytest.mark.slow
def test_full_build_matches_committed_lists(tmp_path):
    """The committed manifests/demo/*.csv are what the default (full) build writes."""
    corpus = build_demo_corpus(tmp_path / "full", size="full", progress=False)
    assert corpus.complete, corpus.problems
    for name in sorted(p.name for p in COMMITTED.glob("*.csv")):
        produced = tmp_path / "full" / "manifests" / "demo" / name
        assert produced.read_bytes() == (COMMITTED / name).read_bytes(), name
    shutil.rmtree(tmp_path / "full" / "audio")  # ~80 MB: don't keep it in pytest's tmp dir


@pytest.mark.slow
def test_gsm_decoder_matches_the_pcm_release_of_the_same_recordings():
    """Asterisk ships Allison's prompts as .gsm and as .wav: our .gsm path must give the same speech."""
    cache = debian.default_cache_dir()
    as_gsm = debian.fetch_package("asterisk-core-sounds-en-gsm", cache)  # 2.4 MB, test only
    as_wav = debian.fetch_package("asterisk-core-sounds-en-wav", cache)
    for digit in ("0", "5", "9"):
        decoded, sr = gsm.read_gsm(as_gsm.root / recordings.SOUNDS / f"en_US_f_Allison/digits/{digit}.gsm")
        pcm, sr_pcm = sf.read(
            str(as_wav.root / recordings.SOUNDS / f"en_US_f_Allison/digits/{digit}.wav"), dtype="float32"
        )
        assert sr == sr_pcm == 8000
        assert len(decoded) % gsm.FRAME_SAMPLES == 0 and abs(len(decoded) - len(pcm)) < 2 * 320
        n = min(len(decoded), len(pcm))
        assert np.corrcoef(decoded[:n], pcm[:n])[0, 1] > 0.95, digit  # a lossy codec, the same waveform


def test_gsm_rejects_bytes_that_are_not_gsm_frames():
    with pytest.raises(ValueError, match="not a GSM 06.10 frame"):
        gsm.to_wav49(bytes(33 * 4))
    with pytest.raises(ValueError, match="no GSM 06.10 frame"):
        gsm.to_wav49(b"")
