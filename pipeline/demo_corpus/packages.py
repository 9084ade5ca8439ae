"""Game music, game sound effects and sample libraries from Debian packages (the large corpus).

A `PackageSource` names a Debian package and the globs of its audio files. A file longer than
CLIP_S is a track, cut into consecutive CLIP_S windows (a shorter tail is dropped); a shorter
one is a clip of its own (downmixed, padded to MIN_S). Each source is capped at `max_hours`,
taking files in sha256-of-name order so the cap does not favour the alphabet. Audio keeps the
file's own sample rate: resampling is the packer's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

CLIP_S = 10.0  # the longest clip of the corpus
MIN_S = 1.0  # shorter effects are padded with trailing silence
TRACK_MIN_S = 60.0  # a file at least this long is a music track (the game-music task uses these)
SILENT_RMS = 1e-4  # a window quieter than this (a track's silent lead-in or ending) is skipped
AUDIO_GLOBS = ("*.ogg", "*.opus", "*.wav", "*.flac")

# Reserved for an independent evaluation: never read by the corpus, its tasks or its tests.
FORBIDDEN_PACKAGES = frozenset(
    {
        "hydrogen-drumkits",
        "hydrogen-drumkits-effects",
        "musescore-general-soundfont",
        "musescore-general-soundfont-small",
        "csound-soundfont",
        "hedgewars-data",
        "tuxpaint-stamps-default",
        "klettres-data",
    }
)


@dataclass(frozen=True)
class PackageSource:
    name: str  # our short name: audio/packages/<name>/..., and the game-music label
    package: str
    licence: str  # the main licence; the package's copyright file has the per-file detail
    folders: tuple[str, ...]  # under the unpacked root; every AUDIO_GLOBS file below them
    max_hours: float
    what: str


def _copyright(package: str, licence: str) -> str:
    return f"{licence} (see /usr/share/doc/{package}/copyright)"


SOURCES: tuple[PackageSource, ...] = (
    PackageSource(
        "wesnoth",
        "wesnoth-1.16-music",
        _copyright("wesnoth-1.16-music", "GPL-2.0-or-later"),
        ("usr/share/games/wesnoth/1.16/data/core/music",),
        3.0,
        "orchestral game music (Battle for Wesnoth)",
    ),
    PackageSource(
        "warzone2100",
        "warzone2100-music",
        _copyright("warzone2100-music", "CC-BY-SA-3.0 / GPL-2.0-or-later"),
        ("usr/share/games/warzone2100/music",),
        4.1,
        "electronic and orchestral game soundtracks (Warzone 2100)",
    ),
    PackageSource(
        "supertux",
        "supertux-data",
        _copyright("supertux-data", "GPL-2.0-or-later / CC-BY-SA"),
        ("usr/share/games/supertux2/music", "usr/share/games/supertux2/sounds"),
        3.0,
        "chiptune-like game music and effects (SuperTux)",
    ),
    PackageSource(
        "widelands",
        "widelands-data",
        _copyright("widelands-data", "GPL-2.0-or-later"),
        ("usr/share/games/widelands/data/music", "usr/share/games/widelands/data/sound"),
        3.0,
        "game music, animal and work sounds (Widelands)",
    ),
    PackageSource(
        "supertuxkart",
        "supertuxkart-data",
        _copyright("supertuxkart-data", "CC-BY-SA / GPL-3.0-or-later"),
        ("usr/share/games/supertuxkart/data/music", "usr/share/games/supertuxkart/data/sfx"),
        3.0,
        "racing-game music and effects (SuperTuxKart)",
    ),
    PackageSource(
        "flare",
        "flare-game",
        _copyright("flare-game", "CC-BY-SA-3.0-or-later"),
        ("usr/share/games/flare/mods/fantasycore/music", "usr/share/games/flare/mods/fantasycore/soundfx"),
        1.0,
        "fantasy game music, creature, step and spell sounds (Flare)",
    ),
    PackageSource(
        "megaglest",
        "megaglest-data",
        _copyright("megaglest-data", "CC-BY-SA-3.0"),
        ("usr/share/games/megaglest/techs/megapack",),
        1.0,
        "strategy-game faction music, unit voices, weapons and buildings (MegaGlest)",
    ),
    PackageSource(
        "xmoto",
        "xmoto-data",
        _copyright("xmoto-data", "GPL-2.0-or-later"),
        ("usr/share/games/xmoto/Textures/Musics",),
        1.0,
        "game music (X-Moto)",
    ),
    PackageSource(
        "lincity",
        "lincity-ng-data",
        _copyright("lincity-ng-data", "GPL-2.0-or-later"),
        ("usr/share/games/lincity-ng/music", "usr/share/games/lincity-ng/sounds"),
        1.0,
        "city-building game music and effects (LinCity-NG)",
    ),
    PackageSource(
        "frozenbubble",
        "frozen-bubble-data",
        _copyright("frozen-bubble-data", "GPL-2.0"),
        ("usr/share/games/frozen-bubble/snd",),
        1.0,
        "puzzle-game music and effects (Frozen Bubble)",
    ),
    PackageSource(
        "etr",
        "extremetuxracer-data",
        _copyright("extremetuxracer-data", "GPL-2.0-or-later"),
        ("usr/share/games/etr/music", "usr/share/games/etr/sounds"),
        1.0,
        "game music and effects (Extreme Tux Racer)",
    ),
    PackageSource(
        "lmms",
        "lmms-common",
        _copyright("lmms-common", "GPL-2.0-or-later"),
        ("usr/share/lmms/samples",),
        1.0,
        "drum, bass, instrument and effect samples (LMMS)",
    ),
)


@dataclass(frozen=True)
class AudioFile:
    """One audio file of a package and the clips cut from it."""

    path: Path
    stem: str  # dot-free, folders joined by "_": .../music/forest/x.ogg -> music_forest_x
    seconds: float
    sample_rate: int

    @property
    def is_track(self) -> bool:
        return self.seconds >= TRACK_MIN_S

    @property
    def windows(self) -> int:
        """How many clips it gives: its CLIP_S windows, or 1 for a short file."""
        return int(self.seconds // CLIP_S) if self.seconds > CLIP_S else 1


def audio_files(root: Path, source: PackageSource) -> tuple[list[AudioFile], list[str]]:
    """The files kept under the source's cap (sorted by stem), and those soundfile cannot read."""
    found: list[tuple[Path, Path, float, int]] = []  # (file, name under the folder's parent, s, rate)
    unreadable: list[str] = []
    for folder in source.folders:
        base = root / folder
        if not base.is_dir():
            raise FileNotFoundError(f"{source.package}: no folder {folder} in the unpacked package")
        for path in sorted({p for g in AUDIO_GLOBS for p in base.rglob(g) if p.is_file()}):
            try:
                info = sf.info(str(path))
            except (sf.LibsndfileError, RuntimeError) as err:
                unreadable.append(f"{source.package}:/{path.relative_to(root).as_posix()} ({err})")
                continue
            found.append(
                (path, path.relative_to(base.parent), info.frames / info.samplerate, info.samplerate)
            )
    names = [_flat(rel.with_suffix("")) for _, rel, _, _ in found]
    twice = {n for n in names if names.count(n) > 1}  # x.ogg beside x.wav: both keep their suffix
    files = [
        AudioFile(path, _flat(rel) if name in twice else name, seconds, sr)
        for (path, rel, seconds, sr), name in zip(found, names, strict=True)
    ]
    kept, total = [], 0.0
    for f in sorted(files, key=lambda f: hashlib.sha256(f.stem.encode()).hexdigest()):
        seconds = min(f.seconds, f.windows * CLIP_S)
        if total + seconds > source.max_hours * 3600:
            continue
        kept.append(f)
        total += seconds
    return sorted(kept, key=lambda f: f.stem), unreadable


def _flat(rel: Path) -> str:
    return rel.as_posix().replace("/", "_").replace(".", "_").replace(" ", "_").replace("-", "_")


class TrackReader:
    """Decodes one file at a time and keeps it: the windows of a track are written in order."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._audio = np.zeros(0, dtype=np.float32)
        self._sr = 0

    def window(self, f: AudioFile, index: int) -> Callable[[], tuple[np.ndarray, int] | None]:
        def make() -> tuple[np.ndarray, int] | None:
            if self._path != f.path:
                audio, self._sr = sf.read(str(f.path), dtype="float32", always_2d=True)
                self._audio, self._path = audio.mean(axis=1), f.path  # (samples, ch) -> (samples,)
            n = round(CLIP_S * self._sr)
            clip = self._audio[index * n : (index + 1) * n]
            short = round(MIN_S * self._sr) - clip.shape[0]
            if short > 0:
                clip = np.concatenate([clip, np.zeros(short, dtype=np.float32)])
            if float(np.sqrt(np.mean(clip**2))) < SILENT_RMS:
                return None
            return np.clip(clip, -1.0, 1.0).astype(np.float32), self._sr

        return make


def clip_name(f: AudioFile, index: int) -> str:
    return f"{f.stem}-w{index:03d}" if f.windows > 1 else f.stem
