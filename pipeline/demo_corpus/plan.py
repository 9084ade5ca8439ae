"""The clips of the small-size sources, planned from their unpacked packages: soundfont notes and
drum hits (FluidR3_GM, TimGM6mb), Asterisk voice prompts, Sonic Pi samples. Each planner appends
``(clip, maker)`` to ``planned`` and labelled rows to ``pools``; nothing is rendered or read until
a maker is called (``build._write_audio``). The large-size sources are planned in ``large``."""

from __future__ import annotations

from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.demo_corpus import recordings, soundfont, tasks
from pipeline.demo_corpus.large import Maker
from ssondo_cache.provenance import sha256_file

if TYPE_CHECKING:  # build imports this module
    from pipeline.demo_corpus.build import CorpusSize, DemoCorpus

FLUID_PACKAGE = "fluid-soundfont-gm"
FLUID_SF2 = "usr/share/sounds/sf2/FluidR3_GM.sf2"
FLUID_LICENCE = "MIT"
TIMGM_LICENCE = "GPL-2.0 (TimGM6mb by Tim Brechbill, shipped inside the PyPI package pretty_midi)"


def plan_instruments(
    spec: CorpusSize, roots: dict[str, Path], planned: list, pools: dict, corpus: DemoCorpus
) -> list[tuple[str, Path, str]]:
    """Plan the notes (and drum hits) of every soundfont; return its (folder, sf2, licence)."""
    timgm = soundfont.timgm6mb_path()
    corpus.packages["pretty_midi (TimGM6mb.sf2)"] = pkg_version("pretty_midi")
    corpus.packages["tinysoundfont (renderer)"] = pkg_version("tinysoundfont")
    corpus.sources_info["TimGM6mb.sf2 sha256"] = sha256_file(timgm)
    drums = soundfont.plan_drums(soundfont.DRUM_KITS, spec.drum_velocities) if spec.drum_velocities else []
    fonts = [
        (
            "timgm",
            "timgm6mb",
            timgm,
            "pretty_midi",
            TIMGM_LICENCE,
            soundfont.plan_notes(spec.timgm_programs, spec.timgm_notes, 0.25, spec.holds),
        )
    ]
    if FLUID_PACKAGE in roots:
        fonts.append(
            (
                "fluid",
                "fluidr3",
                roots[FLUID_PACKAGE] / FLUID_SF2,
                FLUID_PACKAGE,
                FLUID_LICENCE,
                soundfont.plan_notes(spec.fluid_programs, spec.fluid_notes, 0.5, spec.holds),
            )
        )
    for pool, folder, sf2, source, licence, notes in fonts:
        renderer = _LazyRenderer(sf2)
        for kind, pool_name, group in (("instruments", pool, notes), ("percussion", f"{pool}_drums", drums)):
            if not group:
                continue
            pools[pool_name] = []
            for note in group:
                what = "kit" if note.bank == soundfont.DRUM_BANK else "program"
                clip = tasks.Clip(
                    f"audio/{kind}/{folder}/{note.family.label}/{note.stem}.wav",
                    source,
                    f"{sf2.name} bank {note.bank} {what} {note.program} note {note.note} "
                    f"velocity {note.velocity}"
                    + (f" hold {note.hold:g} s" if note.hold != soundfont.HOLD_S else ""),
                    licence,
                )
                planned.append((clip, renderer.maker(note)))
                pools[pool_name].append((clip, note.family.label))
    return [(folder, sf2, licence) for _, folder, sf2, _, licence, _ in fonts]


class _LazyRenderer:
    """Loads the soundfont only when a note actually has to be rendered (resumed builds skip it)."""

    def __init__(self, sf2: Path) -> None:
        self.sf2, self._renderer = sf2, None

    def maker(self, note: soundfont.Note) -> Maker:
        def make() -> tuple[np.ndarray, int] | None:
            if self._renderer is None:
                self._renderer = soundfont.NoteRenderer(self.sf2)
            audio = self._renderer.render(note)
            return None if audio is None else (audio, self._renderer.sample_rate)

        return make


def plan_speech(spec: CorpusSize, roots: dict[str, Path], planned: list, pools: dict) -> None:
    have_all = all(v.package in roots for v in recordings.VOICES)
    if have_all:
        pools["digits"] = []
    for voice in recordings.VOICES:
        if voice.package not in roots:
            continue
        root = roots[voice.package]
        for rec in recordings.digit_recordings(root, voice):
            clip = _recording_clip(rec, f"audio/speech/{voice.name}/digits/{rec.name}.wav", root)
            planned.append((clip, _loader(rec.source)))
            if have_all:  # the digit task splits by voice: it needs them all or is skipped
                pools["digits"].append((clip, rec.name, voice.name))
        for rec in recordings.prompt_recordings(root, voice, spec.prompts_per_voice):
            planned.append(
                (
                    _recording_clip(rec, f"audio/speech/{voice.name}/prompts/{rec.name}.wav", root),
                    _loader(rec.source),
                )
            )


def plan_sonic_pi(spec: CorpusSize, roots: dict[str, Path], planned: list, pools: dict) -> None:
    if recordings.SONIC_PI_PACKAGE not in roots:
        return
    root = roots[recordings.SONIC_PI_PACKAGE]
    recs = recordings.sonic_pi_recordings(root)
    by_cat: dict[str, list[recordings.Recording]] = {}
    for rec in recs:
        by_cat.setdefault(rec.group, []).append(rec)
    pools["sonicpi"] = []
    for cat in sorted(by_cat):
        labelled = len(by_cat[cat]) >= tasks.SONIC_PI_MIN_CLIPS  # decided on the full set, for every size
        if spec.sonicpi_per_category and not labelled:
            continue  # a reduced corpus keeps only what its task uses
        source_of = {
            _recording_clip(rec, f"audio/sonicpi/{cat}/{rec.name}.wav", root): rec.source
            for rec in by_cat[cat]
        }
        chosen = list(source_of)
        if spec.sonicpi_per_category:
            chosen = tasks.hash_order(chosen)[: spec.sonicpi_per_category]
        for clip in sorted(chosen, key=lambda c: c.rel):
            planned.append((clip, _loader(source_of[clip])))
            if labelled:
                pools["sonicpi"].append((clip, cat))


def _recording_clip(rec: recordings.Recording, rel: str, root: Path) -> tasks.Clip:
    return tasks.Clip(rel, rec.package, "/" + rec.source.relative_to(root).as_posix(), rec.licence)


def _loader(path: Path) -> Maker:
    return lambda: recordings.load_clip(path)
