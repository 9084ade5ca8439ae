"""Adapters for the paper's seven downstream tasks, each reading a local copy in its own layout.

Clip lengths follow EVAR (the linear evaluation MATPAC and M2D report) where EVAR has the task, so
scores are comparable; audio is cropped from its start or zero-padded to that length:

| task | root holds | protocol | clip | metric |
| --- | --- | --- | --- | --- |
| esc50 | ``meta/esc50.csv``, ``audio/`` | 5 folds | 5.0 s | accuracy |
| us8k | ``metadata/UrbanSound8K.csv``, ``audio/fold<k>/`` | 10 folds | 4.0 s | accuracy |
| gtzan | ``<genre>/<genre>.NNNNN.wav`` (or under ``genres/``), ``{train,valid,test}_filtered.txt`` | fault-filtered split | 30.0 s | accuracy |
| nsynth | ``nsynth-{train,valid,test}/examples.json`` + ``audio/`` | official splits, instrument family | 4.0 s | accuracy |
| openmic | ``openmic-2018-aggregated-labels.csv``, ``partitions/split01_{train,test}.csv``, ``audio/<k[:3]>/`` | official split, 20 instruments | 10.0 s | masked mAP |
| mtt | ``annotations_final.csv``, ``<dir>/<clip>.mp3`` | top-50 tags, dirs 0-b train / c valid / d-f test | 29.1 s | mAP |
| fsd50k | ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv``, ``FSD50K.{dev,eval}_audio/`` | dev train/val, eval test, 200 classes | 7.6358 s | mAP |

OpenMIC: a label is positive when its aggregated relevance is >= 0.5 (the dataset's own baseline),
negative when annotated below that, and unknown (masked out of loss and AP) when not annotated. The
official split has no validation part: the probe carves it from train.
MTT: clips with none of the top-50 tags are dropped, as is usual; so are the known empty MP3s (size 0).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from ssondo_eval.tasks.base import Task, TaskItem, normalise_split, require, require_files, screen_items


def _task(
    name: str,
    items: list[TaskItem],
    multilabel: bool,
    clip: float,
    root: Path,
    notes: str,
    classes: list[str] | None = None,
) -> Task:
    require_files(name, [i.path for i in items if i.path is not None])
    items, refused, outside = screen_items(name, items, root)
    if classes is None:
        classes = sorted({lab for i in items for lab in (*i.labels, *(i.annotated or ()))})
    return Task(
        name=name,
        items=items,
        classes=classes,
        multilabel=multilabel,
        clip_seconds=clip,
        source=str(root),
        notes=notes,
        refused=refused,
        outside_root=outside,
        spec=f"{name}:{root}",
    )


def _read_csv(path: Path, **kwargs) -> list[dict[str, str]]:
    with open(require(path, "metadata"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, **kwargs))


def esc50(root: str | Path) -> Task:
    root = Path(root)
    rows = _read_csv(root / "meta" / "esc50.csv")
    items = [
        TaskItem(
            path=root / "audio" / r["filename"], labels=(r["category"],), split=normalise_split(r["fold"])
        )
        for r in rows
    ]
    return _task("esc50", items, False, 5.0, root, "ESC-50, 5-fold cross-validation")


def us8k(root: str | Path) -> Task:
    root = Path(root)
    rows = _read_csv(root / "metadata" / "UrbanSound8K.csv")
    items = [
        TaskItem(
            path=root / "audio" / f"fold{r['fold']}" / r["slice_file_name"],
            labels=(r["class"],),
            split=normalise_split(r["fold"]),
        )
        for r in rows
    ]
    return _task("us8k", items, False, 4.0, root, "UrbanSound8K, 10-fold cross-validation")


def gtzan(root: str | Path) -> Task:
    """Fault-filtered split (Kereliuk et al. / Sturm): ``*_filtered.txt`` list ``genre/genre.NNNNN.wav``."""
    root = require(Path(root), "GTZAN folder")
    audio_root = next((root / d for d in ("genres", "genres_original") if (root / d).is_dir()), root)
    by_stem = {p.stem: p for p in audio_root.glob("*/*.*") if p.suffix.lower() in (".wav", ".au")}
    items = []
    for split in ("train", "valid", "test"):
        listing = require(root / f"{split}_filtered.txt", "GTZAN split file")
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            genre, filename = line.strip().split("/")
            stem = Path(filename).stem
            items.append(
                TaskItem(path=by_stem.get(stem, audio_root / genre / filename), labels=(genre,), split=split)
            )
    return _task("gtzan", items, False, 30.0, root, "GTZAN fault-filtered split")


def nsynth(root: str | Path) -> Task:
    root = Path(root)
    items = []
    for split in ("train", "valid", "test"):
        folder = root / f"nsynth-{split}"
        examples = json.loads(require(folder / "examples.json", "NSynth examples.json").read_text())
        for note, ex in sorted(examples.items()):
            items.append(
                TaskItem(
                    path=folder / "audio" / f"{note}.wav", labels=(ex["instrument_family_str"],), split=split
                )
            )
    return _task("nsynth", items, False, 4.0, root, "NSynth official splits, instrument family (11 classes)")


def openmic(root: str | Path) -> Task:
    root = Path(root)
    relevance: dict[str, dict[str, float]] = {}
    for r in _read_csv(root / "openmic-2018-aggregated-labels.csv"):
        relevance.setdefault(r["sample_key"], {})[r["instrument"]] = float(r["relevance"])
    items = []
    for split in ("train", "test"):
        listing = require(root / "partitions" / f"split01_{split}.csv", "OpenMIC partition")
        for key in (k.strip() for k in listing.read_text().split()):
            if not key:
                continue
            rel = relevance.get(key, {})
            items.append(
                TaskItem(
                    path=root / "audio" / key[:3] / f"{key}.ogg",
                    labels=tuple(sorted(k for k, v in rel.items() if v >= 0.5)),
                    split=split,
                    annotated=tuple(sorted(rel)),
                )
            )
    classes = None
    class_map = root / "class-map.json"
    if class_map.is_file():  # the official 20 classes, in their official column order
        index = json.loads(class_map.read_text())
        classes = sorted(index, key=index.get)
    return _task(
        "openmic",
        items,
        True,
        10.0,
        root,
        "OpenMIC-2018 official split01, masked mAP over annotated labels",
        classes,
    )


# MTT "usual split": audio directories 0-9, a, b train; c valid; d, e, f test.
_MTT_SPLIT = {**{d: "train" for d in "0123456789ab"}, "c": "valid", **{d: "test" for d in "def"}}


def mtt(root: str | Path, n_tags: int = 50) -> Task:
    root = Path(root)
    rows = _read_csv(root / "annotations_final.csv", delimiter="\t")
    if not rows:
        raise ValueError(f"{root / 'annotations_final.csv'}: no rows")
    tag_cols = [c for c in rows[0] if c not in ("clip_id", "mp3_path")]
    counts = Counter({t: sum(r[t] == "1" for r in rows) for t in tag_cols})
    top = sorted(t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_tags])
    items = []
    for r in rows:
        labels = tuple(t for t in top if r[t] == "1")
        path = root / r["mp3_path"]
        if not labels or (path.is_file() and path.stat().st_size == 0):
            continue
        items.append(TaskItem(path=path, labels=labels, split=_MTT_SPLIT[r["mp3_path"][0]]))
    return _task("mtt", items, True, 29.1, root, f"MagnaTagATune top-{n_tags} tags, folder split", top)


def fsd50k(root: str | Path) -> Task:
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    with open(require(gt / "vocabulary.csv", "FSD50K vocabulary"), newline="", encoding="utf-8") as f:
        vocab = [row[1] for row in csv.reader(f) if row]  # index,label,mid; no header
    items = []
    for r in _read_csv(gt / "dev.csv"):
        items.append(
            TaskItem(
                path=root / "FSD50K.dev_audio" / f"{r['fname']}.wav",
                labels=tuple(r["labels"].split(",")),
                split=normalise_split(r["split"]),
            )
        )
    for r in _read_csv(gt / "eval.csv"):
        items.append(
            TaskItem(
                path=root / "FSD50K.eval_audio" / f"{r['fname']}.wav",
                labels=tuple(r["labels"].split(",")),
                split="test",
            )
        )
    unknown = {lab for i in items for lab in i.labels} - set(vocab)
    if unknown:
        raise ValueError(f"FSD50K: labels not in vocabulary.csv: {sorted(unknown)[:5]}")
    return _task(
        "fsd50k", items, True, 7.6358, root, "FSD50K dev (train/val) and eval (test), 200 classes", vocab
    )
