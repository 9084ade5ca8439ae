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
from pipeline.demo_corpus.soundfont import PEAK, SAMPLE_RATE

OPENMSX_PACKAGE = "openttd-openmsx"
OPENMSX_DIR = "usr/share/games/openttd/baseset/openmsx"
OPENMSX_LICENCE = "GPL-2.0 (OpenMSX, see /usr/share/doc/openttd-openmsx/copyright)"
TAIL_S = 2.0  # rendered after the last event: the final notes' release


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


class SongRenderer:
    """Renders one song at a time through one soundfont and keeps it for its windows."""

    def __init__(self, sf2: Path, sample_rate: int = SAMPLE_RATE) -> None:
        self.sf2, self.sample_rate = sf2, sample_rate
        self._song: Path | None = None
        self._audio = np.zeros(0, dtype=np.float32)

    def window(self, song: Song, index: int) -> Callable[[], tuple[np.ndarray, int] | None]:
        def make() -> tuple[np.ndarray, int] | None:
            if self._song != song.path:
                self._audio, self._song = self._render(song), song.path
            n = round(CLIP_S * self.sample_rate)
            clip = self._audio[index * n : (index + 1) * n]
            if clip.shape[0] < n or float(np.sqrt(np.mean(clip**2))) < SILENT_RMS:
                return None
            return clip, self.sample_rate

        return make

    def _render(self, song: Song) -> np.ndarray:
        import tinysoundfont

        synth = tinysoundfont.Synth(samplerate=self.sample_rate)
        synth.sfload(str(self.sf2))
        sequencer = tinysoundfont.Sequencer(synth)
        sequencer.midi_load(str(song.path))
        samples = round(song.seconds * self.sample_rate)
        stereo = np.frombuffer(synth.generate(samples), dtype=np.float32).reshape(samples, 2)
        mono = stereo.mean(axis=1)  # (samples, 2) -> (samples,)
        peak = float(np.abs(mono).max())
        return (mono * (PEAK / peak)).astype(np.float32) if peak > 0 else mono.astype(np.float32)
