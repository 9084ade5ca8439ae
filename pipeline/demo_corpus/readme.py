"""DIR/README.md of a built demo corpus: what is in it, from where, under which licence, what is missing.

Only facts that follow from the build inputs go in (no timestamps, no build time), so the
README is as reproducible as the audio and the CSVs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.demo_corpus import midi, packages
from pipeline.demo_corpus.large import source_packages

if TYPE_CHECKING:
    from pipeline.demo_corpus.build import DemoCorpus

LICENCES = """\
| source | what | licence |
| --- | --- | --- |
| PyPI `pretty_midi` (TimGM6mb.sf2 inside it) | General MIDI soundfont, rendered: instrument test split | GPL-2.0 (soundfont by Tim Brechbill) |
| Debian `fluid-soundfont-gm` (FluidR3_GM.sf2, ~120 MB download) | General MIDI soundfont, rendered: instrument train/valid | MIT |
| Debian `asterisk-core-sounds-{en,es,fr,it,ru}-wav` | studio voice prompts, 8 kHz: digits and sentences | CC-BY-SA-3.0 |
| Debian `asterisk-prompt-it-menardi-wav` | Italian voice prompts, 8 kHz | CC-BY-SA-3.0-IT |
| Debian `asterisk-prompt-es-co` (Avatar Ltda., Colombian Spanish) | voice prompts, 8 kHz GSM 06.10 | GPL-2.0 |
| Debian `asterisk-prompt-fr-armelle` (Armelle Desjardins, French) | voice prompts, 8 kHz GSM 06.10 | GPL-2.0-or-later |
| Debian `sonic-pi-samples` | 165 named one-shot samples and loops (freesound.org) | CC0-1.0 |

`manifests/demo/sources.csv` names, for every clip, its package, the file inside it (or the
soundfont preset and note rendered) and the licence: keep it with any copy of the audio
(CC-BY-SA asks for attribution and share-alike)."""


def large_licences() -> str:
    """The table rows of the sources only the large corpus reads (from their registries)."""
    rows = [
        f"| Debian `{s.package}` | {s.what}: music cut into {packages.CLIP_S:g} s windows, "
        f"effects whole (at most {s.max_hours:g} h) | {s.licence} |"
        for s in packages.SOURCES
    ]
    rows.append(
        f"| Debian `{midi.OPENMSX_PACKAGE}` | OpenMSX MIDI songs rendered through FluidR3_GM and TimGM6mb, "
        f"{packages.CLIP_S:g} s windows | {midi.OPENMSX_LICENCE} |"
    )
    return "\n".join(rows)


def corpus_readme(corpus: DemoCorpus) -> str:
    has_large = any(pkg in corpus.by_source for pkg in source_packages())
    lines = [
        f"# ssondo demo corpus ({corpus.size})",
        "",
        "Written by `ssondo demo-data` from real recordings and real sampled instruments, with no",
        "network but the package registries. Audio under `audio/` (16-bit PCM WAV, mono, each file at",
        "its source's rate: 32 kHz renders, 8 kHz speech, 44.1 kHz samples; 1 to 4 s, shorter sources",
        "padded with trailing silence, longer ones cut). Lists under",
        "`manifests/demo/`: `path` is relative to the CSV's own folder (`../../audio/...`), `key` is the",
        "dot-free key to pack under, task CSVs add `labels` and `split` (train | valid | test).",
        "",
        f"**{corpus.n_clips} clips, {corpus.seconds / 60:.1f} minutes of audio.**"
        + ("" if corpus.complete else " **Incomplete: see What is missing.**"),
        "",
        "## Lists",
        "",
        "- `all.csv`: every clip. `distill.csv`: the unlabelled distillation list = every clip",
        "  except those a task tests on (the student never hears a test clip)"
        + (" and, here, except every task clip of any split." if has_large else "."),
        "- `sources.csv`: package, origin and licence of every clip.",
        "",
        "## Development tasks",
        "",
        "| task | train | valid | test | classes | audio (s) | what |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in sorted(corpus.tasks.items()):
        if t.get("skipped"):
            lines.append(f"| {name} | - | - | - | - | - | SKIPPED: {t['skipped']} |")
            continue
        c = t["counts"]
        lines.append(
            f"| {name} | {c['train']} | {c['valid']} | {c['test']} | {len(t['labels'])} "
            f"| {t['seconds']} | {t['description']} |"
        )
    if has_large:
        lines[8:8] = [
            "The large corpus adds game music cut into consecutive windows of at most 10 s, game",
            "effects and samples (1 to 10 s) and MIDI songs rendered at 32 kHz; its distillation list",
            "leaves out every task clip (train, valid and test), not only the test clips.",
            "",
        ]
    lines += ["", "## Sources", "", "| package | clips | hours |", "| --- | --- | --- |"]
    for name, (clips, seconds) in sorted(corpus.by_source.items()):
        lines.append(f"| {name} | {clips} | {seconds / 3600:.2f} |")
    lines += ["", "Labels:", ""]
    for name, t in sorted(corpus.tasks.items()):
        if not t.get("skipped"):
            lines.append(f"- {name}: {', '.join(t['labels'])}")
    lines += ["", "## Packages used", "", "| package | version |", "| --- | --- |"]
    for name, ver in sorted(corpus.packages.items()):
        lines.append(f"| {name} | {ver.splitlines()[0] if ver else ver} |")
    licences = LICENCES
    if has_large:  # the rows go in after the last row of the common table
        head, tail = LICENCES.split("\n\n", 1)
        licences = f"{head}\n{large_licences()}\n\n{tail}"
    lines += ["", "## Licences", "", licences, "", "## What is missing", ""]
    if corpus.problems:
        lines += [f"- {p.splitlines()[0]}" for p in corpus.problems]
        lines += [
            "",
            "A missing Debian package leaves its task out (never faked). Re-run `ssondo demo-data`",
            "where `apt-get download` works (run `apt-get update` once first) to complete it.",
        ]
    else:
        lines.append("Nothing: every package was available and every task was built.")
    if corpus.skipped_clips:
        lines += [
            "",
            "Planned notes left out because the preset has no sample there (the render was silent):",
            "",
        ]
        lines += [f"- {rel}" for rel in corpus.skipped_clips]
    return "\n".join(lines) + "\n"
