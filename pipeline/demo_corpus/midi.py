"""MIDI songs rendered through real soundfonts: the OpenMSX music set of OpenTTD (Debian).

Each song is rendered whole by a fresh tinysoundfont synth (so a render never depends on
what was rendered before), peak-normalised as a whole (soundfonts differ in loudness), then
cut into consecutive packages.CLIP_S windows like a recorded track.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.demo_corpus.packages import CLIP_S, SILENT_RMS
from pipeline.demo_corpus.soundfont import FAMILIES, PEAK, SAMPLE_RATE, Family

OPENMSX_PACKAGE = "openttd-openmsx"
OPENMSX_DIR = "usr/share/games/openttd/baseset/openmsx"
OPENMSX_LICENCE = "GPL-2.0 (OpenMSX, see /usr/share/doc/openttd-openmsx/copyright)"
TAIL_S = 2.0  # rendered after the last event: the final notes' release
DRUM_CHANNEL = 9
PART_WINDOWS = 10  # windows taken from one instrument's part of a song (spread over its busy windows)
PART_MIN_NOTES = 8  # a window with fewer note onsets of the part is not a phrase


@dataclass(frozen=True)
class Song:
    path: Path
    stem: str  # dot free
    seconds: float  # last event + TAIL_S

    @property
    def windows(self) -> int:
        return int(self.seconds // CLIP_S)


def songs(root: Path) -> list[Song]:
    """Every .mid of the OpenMSX set, sorted by name, with its length from its events."""
    from tinysoundfont import midi  # imported here: only the demo-data command needs it

    folder = root / OPENMSX_DIR
    files = sorted(folder.glob("*.mid"))
    if not files:
        raise FileNotFoundError(f"{OPENMSX_PACKAGE}: no .mid files under {folder}")
    out = []
    for path in files:
        events = midi.load(str(path))
        seconds = (max(e.t for e in events) if events else 0.0) + TAIL_S
        out.append(Song(path, path.stem.replace(".", "_").replace("-", "_"), seconds))
    return out


@dataclass(frozen=True)
class Part:
    """One channel of a song, played by one GM program: a phrase of one instrument family."""

    song: Song
    channel: int
    program: int
    family: Family
    windows: tuple[int, ...]  # the CLIP_S windows kept


def parts(songs: list[Song]) -> list[Part]:
    """Each song's melodic channels whose one program is in a FAMILIES family, with busy windows."""
    from tinysoundfont import midi

    out = []
    for song in songs:
        events = midi.load(str(song.path))
        programs: dict[int, set[int]] = {}
        onsets: dict[int, list[float]] = {}
        for e in events:
            if isinstance(e.action, midi.ProgramChange):
                programs.setdefault(e.channel, set()).add(e.action.program)
            elif isinstance(e.action, midi.NoteOn) and e.action.velocity > 0:
                onsets.setdefault(e.channel, []).append(e.t)
        for channel in sorted(onsets):
            progs = programs.get(channel, {0})
            family = _family(next(iter(progs))) if len(progs) == 1 else None
            if channel == DRUM_CHANNEL or family is None:
                continue  # drums, a program outside the families, or a part that changes instrument
            counts = np.bincount([int(t // CLIP_S) for t in onsets[channel]], minlength=song.windows)
            busy = [i for i in range(song.windows) if counts[i] >= PART_MIN_NOTES]
            if busy:
                picks = np.linspace(0, len(busy) - 1, min(PART_WINDOWS, len(busy))).round().astype(int)
                windows = tuple(sorted({busy[i] for i in picks}))
                out.append(Part(song, channel, next(iter(progs)), family, windows))
    return out


def _family(program: int) -> Family | None:
    return next((f for f in FAMILIES if f.first_program <= program < f.first_program + 8), None)


class SongRenderer:
    """Renders one song at a time through one soundfont and keeps it for its windows."""

    def __init__(self, sf2: Path, sample_rate: int = SAMPLE_RATE) -> None:
        self.sf2, self.sample_rate = sf2, sample_rate
        self._song: tuple[Path, int | None] | None = None
        self._audio = np.zeros(0, dtype=np.float32)

    def window(
        self, song: Song, index: int, channel: int | None = None
    ) -> Callable[[], tuple[np.ndarray, int] | None]:
        """Window `index` of the song, or of one channel of it played alone."""

        def make() -> tuple[np.ndarray, int] | None:
            if self._song != (song.path, channel):
                self._audio, self._song = self._render(song, channel), (song.path, channel)
            n = round(CLIP_S * self.sample_rate)
            clip = self._audio[index * n : (index + 1) * n]
            if clip.shape[0] < n or float(np.sqrt(np.mean(clip**2))) < SILENT_RMS:
                return None
            return clip, self.sample_rate

        return make

    def _render(self, song: Song, channel: int | None) -> np.ndarray:
        import tinysoundfont
        from tinysoundfont import midi

        synth = tinysoundfont.Synth(samplerate=self.sample_rate)
        synth.sfload(str(self.sf2))
        sequencer = tinysoundfont.Sequencer(synth)
        events = midi.load(str(song.path))
        sequencer.add(events if channel is None else [e for e in events if e.channel == channel])
        samples = round(song.seconds * self.sample_rate)
        stereo = np.frombuffer(synth.generate(samples), dtype=np.float32).reshape(samples, 2)
        mono = stereo.mean(axis=1)  # (samples, 2) -> (samples,)
        peak = float(np.abs(mono).max())
        return (mono * (PEAK / peak)).astype(np.float32) if peak > 0 else mono.astype(np.float32)
