"""Every task adapter on a tiny fixture written in its dataset's real metadata layout."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssondo_eval.tasks import TASKS, load_tasks, parse_task_spec
from ssondo_eval.tasks.audio import read_audio

SR = 16000


def tone(
    path: Path, freq: float = 440.0, seconds: float = 0.25, sr: int = SR, fmt: str | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)


def build(name: str, root: Path):
    (task,) = TASKS.build(name, root=root)
    return task


def test_esc50(tmp_path):
    rows = []
    for fold in range(1, 6):
        for target, cat in ((0, "dog"), (1, "rain")):
            fn = f"{fold}-100{target}-A-0.wav"
            tone(tmp_path / "audio" / fn, 200 + 100 * target)
            rows.append([fn, fold, target, cat, "True", f"100{target}", "A"])
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
        rows,
    )
    task = build("esc50", tmp_path)
    assert task.classes == ["dog", "rain"] and task.protocol == "folds" and task.clip_seconds == 5.0
    folds = task.folds()
    assert len(folds) == 5
    for train, val, test in folds:
        assert val is None and len(test) == 2 and len(train) == 8
        assert len({task.items[i].split for i in test}) == 1
    assert task.targets().tolist() == [0, 1] * 5
    audio = read_audio(task.items[0].path, 32000, task.clip_seconds)
    assert audio.shape == (160000,)  # 0.25 s at 16 kHz -> 8000 samples at 32 kHz, then zero padding
    assert np.abs(audio[1000:7000]).max() > 0.2 and np.abs(audio[8100:]).max() == 0


def test_us8k(tmp_path):
    rows = []
    for fold in range(1, 11):
        for cid, cls in ((3, "dog_bark"), (6, "gun_shot")):
            fn = f"{fold}00{cid}-{cid}-0-0.wav"
            tone(tmp_path / "audio" / f"fold{fold}" / fn, 300 + cid * 50)
            rows.append([fn, f"{fold}00{cid}", 0.0, 0.25, 1, fold, cid, cls])
    write_csv(
        tmp_path / "metadata" / "UrbanSound8K.csv",
        ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"],
        rows,
    )
    task = build("us8k", tmp_path)
    assert len(task.folds()) == 10 and task.clip_seconds == 4.0
    assert task.items[0].path == tmp_path / "audio" / "fold1" / "1003-3-0-0.wav"


def test_gtzan_fault_filtered(tmp_path):
    splits = {"train": [], "valid": [], "test": []}
    for genre in ("blues", "jazz"):
        for n, split in enumerate(("train", "train", "valid", "test")):
            name = f"{genre}.{n:05d}.wav"
            tone(tmp_path / "genres" / genre / name, 300 if genre == "blues" else 500)
            splits[split].append(f"{genre}/{name}")
    tone(tmp_path / "genres" / "jazz" / "jazz.00099.wav")  # not in the filtered lists: left out
    for split, lines in splits.items():
        (tmp_path / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    task = build("gtzan", tmp_path)
    assert len(task.items) == 8 and task.clip_seconds == 30.0
    train, val, test = task.folds()[0]
    assert len(train) == 4 and len(val) == 2 and len(test) == 2


def test_nsynth_instrument_family(tmp_path):
    for split in ("train", "valid", "test"):
        examples = {}
        for fam in ("bass", "guitar"):
            note = f"{fam}_acoustic_000-060-100"
            tone(tmp_path / f"nsynth-{split}" / "audio" / f"{note}.wav")
            examples[note] = {"instrument_family_str": fam, "pitch": 60, "instrument_source_str": "acoustic"}
        (tmp_path / f"nsynth-{split}" / "examples.json").write_text(json.dumps(examples))
    task = build("nsynth", tmp_path)
    assert task.classes == ["bass", "guitar"] and len(task.items) == 6 and task.clip_seconds == 4.0
    assert [len(x) for x in task.folds()[0]] == [2, 2, 2]


def test_openmic_masked_labels(tmp_path):
    keys = {"train": ["000046_3840", "000135_483840", "000139_119040"], "test": ["000141_153600"]}
    labels = [
        ["000046_3840", "piano", 0.9, 3],
        ["000046_3840", "voice", 0.1, 3],
        ["000135_483840", "voice", 0.8, 3],
        ["000139_119040", "piano", 0.2, 3],
        ["000141_153600", "piano", 0.7, 3],
        ["000141_153600", "voice", 0.0, 3],
    ]
    write_csv(
        tmp_path / "openmic-2018-aggregated-labels.csv",
        ["sample_key", "instrument", "relevance", "num_responses"],
        labels,
    )
    for split, ks in keys.items():
        write_csv(tmp_path / "partitions" / f"split01_{split}.csv", [], [[k] for k in ks])
        for k in ks:
            tone(tmp_path / "audio" / k[:3] / f"{k}.ogg", fmt="OGG")
    (tmp_path / "class-map.json").write_text(json.dumps({"piano": 0, "voice": 1}))
    task = build("openmic", tmp_path)
    assert task.multilabel and task.metric == "mAP" and task.classes == ["piano", "voice"]
    y = task.targets()
    # 000135: voice positive, piano not annotated; 000139: piano negative, voice not annotated
    np.testing.assert_array_equal(y[0], [1, 0])
    assert np.isnan(y[1, 0]) and y[1, 1] == 1
    assert y[2, 0] == 0 and np.isnan(y[2, 1])
    assert task.folds()[0][1] is None  # no official validation split: the probe carves it from train
    assert read_audio(task.items[0].path, SR, task.clip_seconds).shape == (160000,)


def test_mtt_top_tags_and_folder_split(tmp_path):
    from ssondo_eval.tasks.datasets import mtt

    tags = ["guitar", "rock", "piano", "rare"]
    rows = []
    for i, d in enumerate("0cd1"):
        rel = f"{d}/artist-album-{i:02d}-song-0-29.mp3"
        tone(tmp_path / rel, fmt="MP3")
        flags = [1, int(i % 2 == 0), 1, 0] if i != 3 else [0, 0, 0, 1]  # clip 3 has only the rare tag
        rows.append([i, *flags, rel])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "empty-clip.mp3").write_bytes(b"")  # MTT ships a few empty MP3s
    rows.append([9, 1, 1, 1, 1, "e/empty-clip.mp3"])
    write_csv(tmp_path / "annotations_final.csv", ["clip_id", *tags, "mp3_path"], rows, delimiter="\t")
    task = build("mtt", tmp_path)  # top-50 of 4 tags keeps all; the empty file is dropped
    assert task.multilabel and len(task.items) == 4 and task.clip_seconds == 29.1
    assert [i.split for i in task.items] == ["train", "valid", "test", "train"]
    top3 = mtt(tmp_path, n_tags=3)
    assert top3.classes == ["guitar", "piano", "rock"]
    assert len(top3.items) == 3  # the clip with none of the kept tags is dropped
    assert read_audio(top3.items[0].path, SR).shape[0] > 0


def test_fsd50k(tmp_path):
    gt = tmp_path / "FSD50K.ground_truth"
    write_csv(
        gt / "vocabulary.csv",
        [],
        [[0, "Bark", "/m/05tny_"], [1, "Music", "/m/04rlf"], [2, "Rain", "/m/06mb1"]],
    )
    write_csv(
        gt / "dev.csv",
        ["fname", "labels", "mids", "split"],
        [
            [1, "Bark,Music", "/m/05tny_,/m/04rlf", "train"],
            [2, "Rain", "/m/06mb1", "train"],
            [3, "Music", "/m/04rlf", "val"],
        ],
    )
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], [[4, "Bark,Rain", "/m/05tny_,/m/06mb1"]])
    for f in (1, 2, 3):
        tone(tmp_path / "FSD50K.dev_audio" / f"{f}.wav")
    tone(tmp_path / "FSD50K.eval_audio" / "4.wav")
    task = build("fsd50k", tmp_path)
    assert task.classes == ["Bark", "Music", "Rain"] and task.multilabel
    np.testing.assert_array_equal(task.targets(), [[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert [len(x) for x in task.folds()[0]] == [2, 1, 1]


def test_folder_task_split_is_deterministic(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            tone(tmp_path / "set" / cls / f"{i}.wav", 200 + i)
    (t1,) = load_tasks([f"folder:{tmp_path / 'set'}"])
    (t2,) = load_tasks([f"folder:{tmp_path / 'set'}"])
    assert [i.split for i in t1.items] == [i.split for i in t2.items]
    assert {i.split for i in t1.items} == {"train", "valid", "test"}
    assert t1.fingerprint() == t2.fingerprint()


def test_csv_task_and_spec_parsing(tmp_path):
    for n in range(4):
        tone(tmp_path / "clips" / f"{n}.wav")
    write_csv(
        tmp_path / "t.csv",
        ["path", "labels", "fold"],
        [
            ["clips/0.wav", "x", 1],
            ["clips/1.wav", "y", 1],
            ["clips/2.wav", "x;y", 2],
            ["clips/3.wav", "y", 2],
        ],
    )
    (task,) = load_tasks([str(tmp_path / "t.csv")])
    assert task.multilabel and task.protocol == "folds" and len(task.folds()) == 2
    assert parse_task_spec("esc50:/x") == ("esc50", Path("/x"))
    with pytest.raises(ValueError, match="ADAPTER:PATH"):
        parse_task_spec("nosuch:/x")
    write_csv(tmp_path / "bad.csv", ["path", "labels", "split"], [["clips/9.wav", "x", "train"]])
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tasks([f"csv:{tmp_path / 'bad.csv'}"])


def test_demo_tasks_from_manifests(tmp_path):
    """The layout `ssondo demo-data` writes: paths relative to the CSV folder, a key column, plain lists."""
    for n in range(6):
        tone(tmp_path / "audio" / "notes" / f"{n}.wav")
    rows = [
        [
            f"../../audio/notes/{n}.wav",
            f"notes-{n}",
            "lo" if n % 2 else "hi",
            ("train", "valid", "test")[n // 2],
        ]
        for n in range(6)
    ]
    mdir = tmp_path / "manifests" / "demo"
    write_csv(mdir / "pitch.csv", ["path", "key", "labels", "split"], rows)
    write_csv(mdir / "all.csv", ["path", "key"], [r[:2] for r in rows])  # a plain list, not a task
    write_csv(
        mdir / "sources.csv",
        ["path", "key", "source", "origin", "licence"],
        [[*r[:2], "p", "o", "l"] for r in rows],
    )
    (task,) = load_tasks([f"demo:{tmp_path}"])
    assert task.name == "demo-pitch" and [len(x) for x in task.folds()[0]] == [2, 2, 2]
    assert task.items[0].path.resolve() == (tmp_path / "audio" / "notes" / "0.wav").resolve()
    assert task.items[0].key == "notes-0"
    assert task.outside_root == []  # ../../audio is inside the demo folder, the task's folder
    (same,) = load_tasks([f"demo:{mdir}"])
    assert same.fingerprint() == task.fingerprint() and same.outside_root == []


def test_unreadable_file_is_refused_and_listed_the_rest_kept(tmp_path):
    """One non-audio file must not abort an evaluation: it is left out and listed in the report."""
    from ssondo_eval.evaluate import results_markdown

    for n in range(4):
        tone(tmp_path / "task" / "clips" / f"{n}.wav")
    (tmp_path / "task" / "clips" / "bad.wav").write_text("not audio at all\n")
    outside = tone(tmp_path / "elsewhere" / "far.wav")
    rows = [["clips/0.wav", "x", "train"], ["clips/1.wav", "y", "train"], ["clips/bad.wav", "x", "train"]]
    rows += [["clips/2.wav", "x", "test"], ["clips/3.wav", "y", "test"], [str(outside), "y", "train"]]
    write_csv(tmp_path / "task" / "t.csv", ["path", "labels", "split"], rows)
    (task,) = load_tasks([str(tmp_path / "task" / "t.csv")])
    assert [i.path.name for i in task.items] == ["0.wav", "1.wav", "2.wav", "3.wav", "far.wav"]
    (refused,) = task.refused
    assert refused["path"].endswith("bad.wav") and refused["reason"] == "unreadable" and refused["detail"]
    assert task.outside_root == [str(outside)]  # accepted, but listed
    described = task.describe()
    assert described["refused"] == task.refused and described["outside_root"] == [str(outside)]
    report = {  # the parts of a report results_markdown reads
        "created": "now", "models": [], "retention": {}, "informative": {}, "scores": {}, "average": {},
        "probe": {"hidden": None, "seeds": [0], "patience": 1, "max_epochs": 1, "lr": [1e-3], "batch_size": 200},
        "tasks": [described], "bootstrap": {"confidence": 0.95, "replicates": 100}, "average_over": "all",
    }  # fmt: skip
    md = results_markdown(report)
    assert "Refused items (1" in md and "bad.wav" in md and "far.wav" in md


def test_a_split_left_empty_by_refusals_is_an_error(tmp_path):
    tone(tmp_path / "clips" / "0.wav")
    (tmp_path / "clips" / "bad.wav").write_bytes(b"\0" * 100)
    rows = [["clips/0.wav", "x", "train"], ["clips/bad.wav", "x", "test"]]
    write_csv(tmp_path / "t.csv", ["path", "labels", "split"], rows)
    with pytest.raises(ValueError, match=r"every test item was refused.*bad\.wav"):
        load_tasks([str(tmp_path / "t.csv")])


def test_task_specs_record_how_to_rebuild_them_and_take_display_names(tmp_path):
    for n in range(4):
        tone(tmp_path / "clips" / f"{n}.wav")
    rows = [[f"clips/{n}.wav", "x" if n % 2 else "y", ("train", "test")[n // 2]] for n in range(4)]
    write_csv(tmp_path / "t.csv", ["path", "labels", "split"], rows)
    write_csv(tmp_path / "u.csv", ["path", "labels", "split"], rows)
    bare, prefixed = load_tasks([str(tmp_path / "t.csv"), f"csv:{tmp_path / 'u.csv'}"], ["drums"])
    assert (bare.name, bare.renamed, bare.spec) == ("drums", True, f"csv:{tmp_path / 't.csv'}")
    assert (prefixed.name, prefixed.renamed, prefixed.spec) == ("u", False, f"csv:{tmp_path / 'u.csv'}")
    assert bare.describe()["spec"] == bare.spec and bare.describe()["renamed"] is True
    # a label where the adapter goes is refused, naming the accepted forms, not read as a missing file
    with pytest.raises(ValueError, match=r"'drums' is not a task adapter.*csv, demo, esc50.*--task-name"):
        load_tasks([f"drums:{tmp_path / 't.csv'}"])
    with pytest.raises(ValueError, match="at most one name per task"):
        load_tasks([str(tmp_path / "t.csv")], ["a", "b"])
    with pytest.raises(ValueError, match=r"repeated: \['t'\].*--task-name"):
        load_tasks([str(tmp_path / "t.csv"), f"csv:{tmp_path / 't.csv'}"])
    mdir = tmp_path / "demo" / "manifests" / "demo"
    demo_rows = [[f"../../../clips/{n}.wav", r[1], r[2]] for n, r in enumerate(rows)]
    for stem in ("pitch", "kit"):
        write_csv(mdir / f"{stem}.csv", ["path", "labels", "split"], demo_rows)
    tasks = load_tasks([f"demo:{tmp_path / 'demo'}"])
    assert [t.spec for t in tasks] == [f"demo:{tmp_path / 'demo'}"] * 2
    with pytest.raises(ValueError, match="yields 2 tasks .*only a single task can be renamed"):
        load_tasks([f"demo:{tmp_path / 'demo'}"], ["mine"])
