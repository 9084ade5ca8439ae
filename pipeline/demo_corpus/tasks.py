"""The labelled development tasks and the CSV lists of the demo corpus.

Every CSV has a header; `path` is relative to the CSV's own folder (POSIX separators), so
DIR/manifests/demo/x.csv points at ../../audio/...; `key` is the dot-free clip key to pack
under; task CSVs add `labels` (one label: these tasks are single-label) and `split`
(train | valid | test). Splits never depend on random state: clips are ordered by the
sha256 of "<seed>:<key>", which gives the same answer on every machine and numpy version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "valid", "test")
SEED = 0

# spoken digit: split by voice. Spanish, French and Italian each have two speakers: one in
# train, the other in valid (es) or test (fr, it), so every held-out voice speaks a language
# that training hears from someone else (a digit word differs between languages).
DIGIT_SPLIT = {
    "en_US_f_Allison": "train",
    "es_MX_f_Allison": "train",
    "fr_CA_f_June": "train",
    "it_IT_m_Carlo": "train",
    "ru_RU_f_IvrvoiceRU": "train",
    "es_CO_Avatar": "valid",
    "fr_FR_Armelle": "test",
    "it_IT_f_Menardi": "test",
}
SONIC_PI_MIN_CLIPS = 8  # categories with fewer samples (guit, misc, sn, vinyl) stay unlabelled


@dataclass(frozen=True)
class Clip:
    """One audio file of the corpus (the pointer, never the payload)."""

    rel: str  # path under the corpus DIR, e.g. audio/sonicpi/bd/bd_haus.wav
    source: str  # the package it comes from
    origin: str  # the file inside that package, or the soundfont preset + note rendered
    licence: str

    @property
    def key(self) -> str:
        """audio/sonicpi/bd/bd_haus.wav -> sonicpi-bd-bd_haus (no dots: a WebDataset key)."""
        stem = self.rel.removeprefix("audio/").removesuffix(".wav")
        return stem.replace("/", "-").replace(".", "_")


@dataclass
class Task:
    name: str
    description: str
    rows: list[tuple[Clip, str, str]] = field(default_factory=list)  # (clip, label, split)
    skipped: str = ""  # why the task could not be built (then rows is empty)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in SPLITS}
        for _, _, split in self.rows:
            out[split] += 1
        return out

    def labels(self) -> list[str]:
        return sorted({label for _, label, _ in self.rows})


def hash_order(clips: Iterable[Clip], seed: int = SEED) -> list[Clip]:
    return sorted(clips, key=lambda c: hashlib.sha256(f"{seed}:{c.key}".encode()).hexdigest())


def instrument_family_task(
    train_pool: list[tuple[Clip, str]], test_pool: list[tuple[Clip, str]], valid_fraction: float = 0.2
) -> Task:
    """FluidR3 renders -> train + valid (valid_fraction of each family); TimGM6mb renders -> test."""
    return cross_soundfont_task(
        "instrument_family",
        "General MIDI instrument family of a single rendered note; "
        "train/valid on FluidR3_GM renders, test on TimGM6mb renders (a soundfont never heard in training)",
        train_pool,
        test_pool,
        valid_fraction,
    )


def percussion_task(
    train_pool: list[tuple[Clip, str]], test_pool: list[tuple[Clip, str]], valid_fraction: float = 0.2
) -> Task:
    """The kind of drum (kick, snare, tom, ride...) of one GM percussion hit, across soundfonts."""
    return cross_soundfont_task(
        "percussion",
        "kind of drum sound of a single General MIDI percussion hit (8 kits, 2 velocities); "
        "train/valid on FluidR3_GM kits, test on TimGM6mb kits (a soundfont never heard in training)",
        train_pool,
        test_pool,
        valid_fraction,
    )


PHRASE_TEST_FONT, PHRASE_TRAIN_FONT = "timgm6mb", "fluidr3"


def phrase_font(song: str, seed: int = SEED) -> str:
    """Which soundfont plays a song's solo parts: half the songs (by hash) test on TimGM6mb."""
    digest = hashlib.sha256(f"{seed}:phrase:{song}".encode()).digest()
    return PHRASE_TEST_FONT if digest[0] % 2 else PHRASE_TRAIN_FONT


def phrase_family_task(
    train_pool: list[tuple[Clip, str]], test_pool: list[tuple[Clip, str]], valid_fraction: float = 0.2
) -> Task:
    """The GM family of one instrument's part of a MIDI song, played alone, across soundfonts and songs."""
    shared = {label for _, label in train_pool} & {label for _, label in test_pool}
    train_pool = [(c, label) for c, label in train_pool if label in shared]  # a family only one
    test_pool = [(c, label) for c, label in test_pool if label in shared]  # half of the songs plays
    return cross_soundfont_task(
        "phrase_family",
        "General MIDI instrument family of one instrument's part of an OpenMSX song played alone "
        "(10 s phrases: many pitches, velocities and durations); train/valid on FluidR3_GM renders of "
        "half the songs, test on TimGM6mb renders of the other half (neither soundfont nor song shared)",
        train_pool,
        test_pool,
        valid_fraction,
    )


def cross_soundfont_task(
    name: str,
    description: str,
    train_pool: list[tuple[Clip, str]],
    test_pool: list[tuple[Clip, str]],
    valid_fraction: float,
) -> Task:
    """train_pool -> train + valid (valid_fraction of each label, hash order); test_pool -> test."""
    task = Task(name, description)
    by_label: dict[str, list[Clip]] = defaultdict(list)
    for clip, label in train_pool:
        by_label[label].append(clip)
    for label in sorted(by_label):
        ordered = hash_order(by_label[label])
        n_valid = max(1, round(valid_fraction * len(ordered)))
        task.rows += [(c, label, "valid" if i < n_valid else "train") for i, c in enumerate(ordered)]
    task.rows += [(clip, label, "test") for clip, label in test_pool]
    return _sorted(task)


# game music: per game, whole tracks go to test / valid / train, in sha256-of-name order
GAME_TRACKS = {"test": 5, "valid": 1, "train": 5}
GAME_MIN_TRACKS = 12  # a game with fewer music tracks is left out of the task (its audio is distilled)
GAME_HELD_OUT_WINDOWS = 18  # a test/valid track gives at most this many windows, nothing else of it is kept
GAME_TRAIN_WINDOWS = 12  # a train track lends this many windows; its other windows are distilled


def game_track_splits(tracks: dict[str, list[str]], seed: int = SEED) -> dict[tuple[str, str], str]:
    """{game: track names} -> {(game, track): split} for the tracks the game-music task uses."""
    out: dict[tuple[str, str], str] = {}
    for game in sorted(tracks):
        if len(tracks[game]) < GAME_MIN_TRACKS:
            continue
        ordered = sorted(
            tracks[game], key=lambda t: hashlib.sha256(f"{seed}:{game}:{t}".encode()).hexdigest()
        )
        splits = [split for split, n in GAME_TRACKS.items() for _ in range(n)]
        out.update({(game, track): split for track, split in zip(ordered, splits, strict=False)})
    return out


def game_music_task(pool: list[tuple[Clip, str, str]]) -> Task:
    """pool: (clip, game, split): which game a 10 s window of music comes from, split by track."""
    task = Task(
        "game_music",
        "which game a 10 s window of its music comes from; split by track (per game "
        + ", ".join(f"{n} {s}" for s, n in GAME_TRACKS.items())
        + f" tracks; games with at least {GAME_MIN_TRACKS} tracks), never by window",
    )
    task.rows = [(clip, game, split) for clip, game, split in pool]
    return _sorted(task)


def spoken_digit_task(pool: list[tuple[Clip, str, str]]) -> Task:
    """pool: (clip, digit, voice); the split follows the voice (DIGIT_SPLIT)."""
    task = Task(
        "spoken_digit",
        "spoken digit 0-9 across voices (Asterisk prompts, 8 kHz, 8 voices in 5 languages); "
        "split by voice: " + ", ".join(f"{v}={s}" for v, s in DIGIT_SPLIT.items()),
    )
    task.rows = [(clip, digit, DIGIT_SPLIT[voice]) for clip, digit, voice in pool]
    return _sorted(task)


def sonicpi_category_task(pool: list[tuple[Clip, str]], fraction: float = 0.2) -> Task:
    """Sonic Pi sample category (name prefix); per category `fraction` valid, `fraction` test."""
    task = Task(
        "sonicpi_category",
        "Sonic Pi sample category (ambi, bass, bd, drum, elec, ...), "
        f"categories with at least {SONIC_PI_MIN_CLIPS} samples in the full set; stratified splits",
    )
    by_label: dict[str, list[Clip]] = defaultdict(list)
    for clip, label in pool:
        by_label[label].append(clip)
    for label in sorted(by_label):
        ordered = hash_order(by_label[label])
        n = max(1, round(fraction * len(ordered)))
        task.rows += [
            (c, label, "test" if i < n else "valid" if i < 2 * n else "train") for i, c in enumerate(ordered)
        ]
    return _sorted(task)


def task_csv(task: Task, csv_dir: Path, corpus_dir: Path) -> str:
    return _csv(
        ("path", "key", "labels", "split"),
        ((_rel(c, csv_dir, corpus_dir), c.key, label, split) for c, label, split in task.rows),
    )


def list_csv(clips: Iterable[Clip], csv_dir: Path, corpus_dir: Path) -> str:
    """An unlabelled list (the distillation list, or every clip)."""
    return _csv(("path", "key"), ((_rel(c, csv_dir, corpus_dir), c.key) for c in sorted(clips, key=_by_rel)))


def sources_csv(clips: Iterable[Clip], csv_dir: Path, corpus_dir: Path) -> str:
    """Where each clip comes from and under which licence (attribution for CC-BY-SA)."""
    return _csv(
        ("path", "key", "source", "origin", "licence"),
        (
            (_rel(c, csv_dir, corpus_dir), c.key, c.source, c.origin, c.licence)
            for c in sorted(clips, key=_by_rel)
        ),
    )


def _by_rel(c: Clip) -> str:
    return c.rel


def _sorted(task: Task) -> Task:
    task.rows.sort(key=lambda r: r[0].rel)
    return task


def _rel(clip: Clip, csv_dir: Path, corpus_dir: Path) -> str:
    return Path(os.path.relpath(corpus_dir / clip.rel, csv_dir)).as_posix()


def _csv(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
