"""Planning the sources only the large corpus has: package music and effects, MIDI songs.

Each planner appends (clip, maker) pairs to `planned` (nothing is decoded until a maker runs)
and labelled clips to `pools`, like the planners of build.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.demo_corpus import midi, packages, recordings, tasks

Maker = Callable[[], tuple[np.ndarray, int] | None]


def source_packages() -> list[str]:
    """Every Debian package the large corpus reads beyond those of the full corpus."""
    return [s.package for s in packages.SOURCES] + [midi.OPENMSX_PACKAGE]


def plan_packages(
    roots: dict[str, Path], planned: list[tuple[tasks.Clip, Maker]], pools: dict, problems: list[str]
) -> list[str]:
    """Plan every available PackageSource; pools["game_music"] gets (clip, game, split).

    Returns the files soundfile could not read (left out, named in the README).
    """
    found: dict[str, list[packages.AudioFile]] = {}
    unreadable: list[str] = []
    for source in packages.SOURCES:
        if source.package not in roots:
            continue
        try:
            found[source.name], bad = packages.audio_files(roots[source.package], source)
        except FileNotFoundError as err:
            problems.append(f"source {source.name} left out: {err}")
            continue
        unreadable += bad
    splits = tasks.game_track_splits({name: [f.stem for f in fs if f.is_track] for name, fs in found.items()})
    pools["game_music"] = []
    reader = packages.TrackReader()
    for source in packages.SOURCES:
        root = roots.get(source.package)
        for f in found.get(source.name, []):
            split = splits.get((source.name, f.stem))
            windows = range(f.windows)
            if split in ("test", "valid"):  # a held-out track: a few windows, and no more of it anywhere
                windows = recordings.spread(f.windows, tasks.GAME_HELD_OUT_WINDOWS)
            lent = set(recordings.spread(f.windows, tasks.GAME_TRAIN_WINDOWS)) if split == "train" else set()
            for i in windows:
                origin = "/" + f.path.relative_to(root).as_posix()
                if f.windows > 1:
                    origin += f" window {i} ({i * packages.CLIP_S:g}-{(i + 1) * packages.CLIP_S:g} s)"
                clip = tasks.Clip(
                    f"audio/packages/{source.name}/{packages.clip_name(f, i)}.wav",
                    source.package,
                    origin,
                    source.licence,
                )
                planned.append((clip, reader.window(f, i)))
                if split in ("test", "valid") or i in lent:
                    pools["game_music"].append((clip, source.name, split))
    return unreadable


def plan_midi(
    roots: dict[str, Path],
    fonts: list[tuple[str, Path, str]],
    planned: list[tuple[tasks.Clip, Maker]],
    pools: dict,
) -> None:
    """Every OpenMSX song through every soundfont of `fonts` (folder, sf2, its licence): unlabelled.

    Also one instrument's part played alone (midi.parts): pools["<folder>_phrases"] gets
    (clip, family); a song's parts are rendered through one soundfont only (tasks.phrase_font).
    """
    if midi.OPENMSX_PACKAGE not in roots:
        return
    root = roots[midi.OPENMSX_PACKAGE]
    songs = midi.songs(root)
    parts = midi.parts(songs)
    for folder, sf2, font_licence in fonts:
        renderer = midi.SongRenderer(sf2)
        licence = f"{midi.OPENMSX_LICENCE}; soundfont {font_licence}"
        pools[f"{folder}_phrases"] = []
        for part in parts:
            if tasks.phrase_font(part.song.stem) != folder:
                continue
            for i in part.windows:
                clip = tasks.Clip(
                    f"audio/phrases/{folder}/{part.family.label}/{part.song.stem}-c{part.channel:02d}-w{i:03d}.wav",
                    midi.OPENMSX_PACKAGE,
                    f"/{part.song.path.relative_to(root).as_posix()} channel {part.channel} alone "
                    f"(program {part.program}) through {sf2.name}, window {i}",
                    licence,
                )
                planned.append((clip, renderer.window(part.song, i, part.channel)))
                pools[f"{folder}_phrases"].append((clip, part.family.label))
        for song in songs:
            for i in range(song.windows):
                clip = tasks.Clip(
                    f"audio/midi/{folder}/{song.stem}-w{i:03d}.wav",
                    midi.OPENMSX_PACKAGE,
                    f"/{song.path.relative_to(root).as_posix()} through {sf2.name}, window {i}",
                    licence,
                )
                planned.append((clip, renderer.window(song, i)))
