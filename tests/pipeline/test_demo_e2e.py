"""End to end: `ssondo demo` on the small real corpus, every artifact checked with plain
pyarrow / zarr / webdataset readers (no ssondo code reads them back)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
import webdataset as wds
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.demo import DemoSettings, run_demo

# The demo's own training settings (configs/demo-cpu.yaml, ~1 min per student on 2 cores): a
# shortened run does not learn enough to say anything about the student.
TRAIN: dict = {}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(
        DemoSettings(
            out=out, size="small", train_overrides=TRAIN, sweep_ts=(0.96, 2.0), probe_seeds=2, progress=False
        ),
        echo=lines.append,
    )
    return result, lines


@pytest.mark.slow
def test_every_stage_prints_one_summary_line_and_the_total(demo):
    result, lines = demo
    stages = [s.stage for s in result.stages]
    assert stages == ["corpus", "pack", "extract", "cluster", "train", "eval", "ts-sweep"]
    assert len(lines) == len(stages) + 1
    assert "demo finished" in lines[-1] and str(result.report) in lines[-1]


@pytest.mark.slow
def test_row_counts_add_up_across_stages(demo):
    result, _ = demo
    work = result.out / "work"
    clips = pq.read_table(work / "manifests" / "clips.parquet")
    rejects = pq.read_table(work / "manifests" / "rejects.parquet")
    n = clips.num_rows
    distill_list = (result.out / "corpus" / "manifests" / "demo" / "distill.csv").read_text().splitlines()
    assert n + rejects.num_rows == len(distill_list) - 1  # header

    shards = sorted(str(p) for p in (work / "shards").glob("clips-*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)]
    assert keys == clips.column("key").to_pylist()  # packed = manifest, in row order

    caches = sorted((work / "cache").glob("*/*.zarr"))
    assert len(caches) == 2
    for path in caches:
        group = zarr.open_group(str(path), mode="r")
        assert group["clip"].shape[0] == n and group["emb"].shape[0] == n  # cached = packed
        assert bool(group["done"][:].all())
        assert group.attrs["teacher"] == "yamnet"

    balanced = next((work / "manifests").glob("balanced-k*.parquet"))
    table = pq.read_table(balanced)
    assert sorted(table.column("key").to_pylist()) == sorted(
        clips.column("key").to_pylist()
    )  # clustered = packed
    assert abs(sum(table.column("weight").to_pylist()) - 1.0) < 1e-9


@pytest.mark.slow
def test_students_learn_and_are_evaluated_beside_teacher_and_baseline(demo):
    result, _ = demo
    for run in result.runs.values():
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        val = [m["val_cosine_distance"] for m in metrics if "val_cosine_distance" in m]
        assert val[-1] < 0.8 * val[0], f"{run.name}: validation cosine distance did not go down: {val}"
    report = json.loads((result.out / "report" / "eval" / "results.json").read_text())
    kinds = sorted(m["kind"] for m in report["models"])
    assert kinds == ["baseline", "student", "student", "teacher"]
    assert set(report["retention"]) == {m["label"] for m in report["models"] if m["kind"] == "student"}


@pytest.mark.slow
def test_report_links_resolve(demo):
    result, _ = demo
    index = result.report
    text = index.read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert len(targets) >= 15
    missing = [t for t in targets if not (index.parent / t).exists()]
    assert not missing, f"dangling links in {index}: {missing}"
    for png in [t for t in targets if t.endswith(".png")]:
        assert (index.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_rerun_is_a_no_op(demo):
    result, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (result.out / "work").rglob("*") if p.is_file()}
    lines: list[str] = []
    again = run_demo(
        DemoSettings(
            out=result.out,
            size="small",
            train_overrides=TRAIN,
            sweep_ts=(0.96, 2.0),
            probe_seeds=2,
            progress=False,
        ),
        echo=lines.append,
    )
    after = {p: p.stat().st_mtime_ns for p in (result.out / "work").rglob("*") if p.is_file()}
    assert after == before
    assert again.scores == result.scores
    assert again.seconds < max(60.0, result.seconds / 3)


def test_demo_command_explains_itself():
    out = CliRunner().invoke(main, ["demo", "--help"])
    assert out.exit_code == 0
    for word in ("--out", "--size", "report/index.md"):
        assert word in out.output.replace("OUT/report", "report")
