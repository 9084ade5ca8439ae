"""Real recordings from Debian packages: Asterisk voice prompts and Sonic Pi samples.

Each source file is read with soundfile (headerless GSM 06.10 through gsm.py), downmixed to mono, cut to at most MAX_S seconds and
padded with trailing silence to at least MIN_S (digits last ~0.5 s; some samples 0.1 s),
then written as 16-bit PCM WAV at its own sample rate (8 kHz speech, 44.1 kHz samples):
resampling is the packer's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.demo_corpus import gsm

MIN_S = 1.0
MAX_S = 4.0


@dataclass(frozen=True)
class Voice:
    """One Asterisk voice: a speaker reading prompts in one language."""

    name: str  # our name for it (the Asterisk folder name where there is one)
    package: str  # the Debian package holding it
    language: str
    licence: str
    folder: str = ""  # under usr/share/asterisk/sounds/ (default: name)
    ext: str = "wav"  # wav, or gsm (headerless GSM 06.10)


SOUNDS = "usr/share/asterisk/sounds"
VOICES: tuple[Voice, ...] = (
    Voice("en_US_f_Allison", "asterisk-core-sounds-en-wav", "en", "CC-BY-SA-3.0"),
    Voice("es_MX_f_Allison", "asterisk-core-sounds-es-wav", "es", "CC-BY-SA-3.0"),
    Voice("es_CO_Avatar", "asterisk-prompt-es-co", "es", "GPL-2.0", folder="es", ext="gsm"),
    Voice("fr_CA_f_June", "asterisk-core-sounds-fr-wav", "fr", "CC-BY-SA-3.0"),
    Voice("fr_FR_Armelle", "asterisk-prompt-fr-armelle", "fr", "GPL-2.0-or-later", folder="fr", ext="gsm"),
    Voice("it_IT_m_Carlo", "asterisk-core-sounds-it-wav", "it", "CC-BY-SA-3.0"),
    Voice("it_IT_f_Menardi", "asterisk-prompt-it-menardi-wav", "it", "CC-BY-SA-3.0-IT"),
    Voice("ru_RU_f_IvrvoiceRU", "asterisk-core-sounds-ru-wav", "ru", "CC-BY-SA-3.0"),
)
SONIC_PI_PACKAGE = "sonic-pi-samples"
SONIC_PI_LICENCE = "CC0-1.0"
DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Recording:
    """A source file inside an unpacked package and what it is."""

    source: Path
    package: str
    licence: str
    name: str  # file stem, dot free
    group: str  # voice name or sonic-pi category


def voice_dir(root: Path, voice: Voice) -> Path:
    return root / SOUNDS / (voice.folder or voice.name)


def digit_recordings(root: Path, voice: Voice) -> list[Recording]:
    """The ten digits 0-9 spoken by `voice` (digits/N.wav or .gsm), in digit order."""
    folder = voice_dir(root, voice) / "digits"
    files = [folder / f"{d}.{voice.ext}" for d in DIGITS]
    if missing := [f.name for f in files if not f.is_file()]:
        raise FileNotFoundError(f"{voice.package}: no {missing} under {folder}")
    return [
        Recording(f, voice.package, voice.licence, d, voice.name) for d, f in zip(DIGITS, files, strict=True)
    ]


def prompt_recordings(root: Path, voice: Voice, count: int) -> list[Recording]:
    """`count` whole-sentence prompts of MIN_S..MAX_S seconds, spread evenly over the sorted list."""
    if count <= 0:
        return []
    folder = voice_dir(root, voice)
    fitting = [p for p in sorted(folder.glob(f"*.{voice.ext}")) if MIN_S <= duration(p) <= MAX_S]
    picks = spread(len(fitting), count)
    return [Recording(fitting[i], voice.package, voice.licence, _stem(fitting[i]), voice.name) for i in picks]


def sonic_pi_recordings(root: Path) -> list[Recording]:
    """Every Sonic Pi sample, its category the name's prefix (`bd_haus` -> `bd`), sorted by name."""
    folder = root / "usr/share/sonic-pi/samples"
    files = sorted(folder.glob("*.flac"))
    if not files:
        raise FileNotFoundError(f"{SONIC_PI_PACKAGE}: no .flac samples under {folder}")
    return [Recording(p, SONIC_PI_PACKAGE, SONIC_PI_LICENCE, _stem(p), p.stem.split("_")[0]) for p in files]


def load_clip(path: Path) -> tuple[np.ndarray, int]:
    """(samples,) float32 mono, MIN_S..MAX_S seconds, and the file's own sample rate."""
    if path.suffix == ".gsm":
        audio, sr = gsm.read_gsm(path)
        audio = audio[:, None]
    else:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    mono = audio.mean(axis=1)[: int(MAX_S * sr)]
    short = int(MIN_S * sr) - mono.shape[0]
    if short > 0:
        mono = np.concatenate([mono, np.zeros(short, dtype=np.float32)])
    return np.clip(mono, -1.0, 1.0).astype(np.float32), sr


def duration(path: Path) -> float:
    return gsm.duration(path) if path.suffix == ".gsm" else sf.info(str(path)).duration


def spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n) (all of them when count >= n)."""
    if count >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})


def _stem(path: Path) -> str:
    return path.stem.replace(".", "_").replace(" ", "_")
