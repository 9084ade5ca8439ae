"""Instrument notes rendered offline from real sampled SoundFonts with tinysoundfont.

tinysoundfont renders into a float32 buffer; we never call `Synth.start()`, which is the
only place it imports pyaudio (absent here: it was installed with --no-deps).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 32_000  # the pack default: the demo corpus needs no resampling on the instrument side
HOLD_S = 1.0  # key held down this long, then released
RELEASE_S = 1.0  # the tail after the release: a clip lasts hold + RELEASE_S
PEAK = 0.5  # peak-normalised to -6 dBFS: loudness differs between soundfonts and is no family cue
SILENT_RMS = 1e-4  # a render quieter than this is a preset that produces nothing: skipped, recorded


@dataclass(frozen=True)
class Family:
    """A General MIDI instrument family: programs first..first+7, a playable note range."""

    label: str
    first_program: int
    low: int  # MIDI note range the family's instruments play well in
    high: int


# GM families kept for the instrument task (General MIDI 1, programs 0-based). Left out as
# not instruments: Synth Effects (96-103), Percussive (112-119), Sound Effects (120-127).
FAMILIES: tuple[Family, ...] = (
    Family("piano", 0, 36, 84),
    Family("chromatic_percussion", 8, 55, 88),
    Family("organ", 16, 36, 79),
    Family("guitar", 24, 40, 76),
    Family("bass", 32, 28, 55),
    Family("strings", 40, 40, 76),
    Family("ensemble", 48, 43, 79),
    Family("brass", 56, 45, 74),
    Family("reed", 64, 48, 77),
    Family("pipe", 72, 60, 84),
    Family("synth_lead", 80, 48, 84),
    Family("synth_pad", 88, 43, 79),
    Family("ethnic", 104, 48, 79),
)
VELOCITIES = (72, 96, 120)
DRUM_BANK = 128  # SoundFont bank of the General MIDI percussion kits

# GM percussion keys grouped into kinds of drum sound, for the percussion task; keys left out
# are the ambiguous ones (side stick, vibraslap, whistles, guiro, cuica...).
DRUM_KINDS: dict[str, tuple[int, ...]] = {
    "kick": (35, 36),
    "snare": (38, 40),
    "clap": (39,),
    "hihat_closed": (42, 44),
    "hihat_open": (46,),
    "tom": (41, 43, 45, 47, 48, 50),
    "crash": (49, 52, 55, 57),
    "ride": (51, 53, 59),
    "hand_drum": (60, 61, 62, 63, 64, 65, 66),
    "shaker": (54, 69, 70),
    "wood": (75, 76, 77),
    "bell": (56, 67, 68, 80, 81),
}
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # GM kit presets: standard, room, power, ..., orchestra


@dataclass(frozen=True)
class Note:
    family: Family
    program: int
    note: int
    velocity: int
    hold: float = HOLD_S  # seconds the key is held; the clip adds RELEASE_S of tail
    bank: int = 0  # DRUM_BANK: `program` is a percussion kit, `note` a drum key

    @property
    def stem(self) -> str:
        kind = "k" if self.bank == DRUM_BANK else "p"
        held = "" if self.hold == HOLD_S else f"-h{round(self.hold * 1000):04d}"
        return f"{kind}{self.program:03d}-n{self.note:03d}-v{self.velocity:03d}{held}"


def timgm6mb_path() -> Path:
    """The TimGM6mb.sf2 that the PyPI package pretty_midi ships (its package data, read in place)."""
    try:
        ref = importlib.resources.files("pretty_midi") / "TimGM6mb.sf2"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "pretty_midi is not installed: it ships TimGM6mb.sf2 (`make install`)"
        ) from None
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(f"pretty_midi has no TimGM6mb.sf2 at {path}")
    return path


def plan_notes(
    programs_per_family: int, notes_per_program: int, phase: float, holds: tuple[float, ...] = (HOLD_S,)
) -> list[Note]:
    """Which (program, note, velocity, hold) to render, in a fixed order.

    Programs are spread evenly over each family's 8; notes evenly over its range, shifted by
    `phase` (0..1, so two soundfonts can be played at different pitches) and by the program;
    hold durations cycle through `holds`.
    """
    notes = []
    for fam in FAMILIES:
        picks = (
            np.linspace(0, 7, programs_per_family).round().astype(int)
            if programs_per_family < 8
            else range(8)
        )
        for offset in sorted(set(int(p) for p in picks)):
            program = fam.first_program + offset
            span = fam.high - fam.low
            shift = (phase + 0.618034 * offset) % 1.0  # golden-ratio steps: programs differ in pitch too
            for i in range(notes_per_program):
                note = fam.low + round(span * (i + shift) / notes_per_program)
                velocity = VELOCITIES[(program + i) % len(VELOCITIES)]
                hold = holds[(offset + i) % len(holds)]
                notes.append(Note(fam, program, note, velocity, hold))
    return notes


def plan_drums(kits: tuple[int, ...], velocities: tuple[int, ...]) -> list[Note]:
    """Every DRUM_KINDS key of every kit at every velocity; the Family label is the drum kind."""
    return [
        Note(Family(kind, 0, key, key), kit, key, velocity, hold=0.5, bank=DRUM_BANK)
        for kit in kits
        for kind, keys in DRUM_KINDS.items()
        for key in keys
        for velocity in velocities
    ]


class NoteRenderer:
    """One loaded SoundFont; renders single notes, each independent of what was rendered before."""

    def __init__(self, sf2: Path, sample_rate: int = SAMPLE_RATE) -> None:
        import tinysoundfont  # imported here: only the demo-data command needs it

        self.sample_rate = sample_rate
        self.synth = tinysoundfont.Synth(samplerate=sample_rate)
        self.sfid = self.synth.sfload(str(sf2))

    def preset_name(self, program: int, bank: int = 0) -> str | None:
        return self.synth.sfpreset_name(self.sfid, bank, program)

    def render(self, note: Note) -> np.ndarray | None:
        """((hold + RELEASE_S) * sample_rate,) float32 mono, peak-normalised; None when silent
        (or when the soundfont has no such preset)."""
        synth, sr = self.synth, self.sample_rate
        if self.preset_name(note.program, note.bank) is None:
            return None
        synth.program_select(0, self.sfid, note.bank, note.program, is_drums=note.bank == DRUM_BANK)
        synth.noteon(0, note.note, note.velocity)
        held = self._generate(round(note.hold * sr))
        synth.noteoff(0, note.note)
        tail = self._generate(round(RELEASE_S * sr))
        # silence whatever still rings so that the next note starts from a quiet synth
        synth.sounds_off()
        self._generate(sr // 10)
        audio = np.concatenate([held, tail]).mean(axis=1)  # (samples, 2) -> (samples,)
        if float(np.sqrt(np.mean(audio**2))) < SILENT_RMS:
            return None
        return (audio * (PEAK / np.abs(audio).max())).astype(np.float32)

    def _generate(self, samples: int) -> np.ndarray:
        buf = self.synth.generate(samples)  # interleaved stereo float32
        return np.frombuffer(buf, dtype=np.float32).reshape(samples, 2).copy()
