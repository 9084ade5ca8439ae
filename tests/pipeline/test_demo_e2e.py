"""End to end: `ssondo demo` on the small real corpus, every artifact checked with plain
pyarrow / zarr / webdataset readers (no ssondo code reads them back)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.demo import DemoSettings, run_demo
from pipeline.demo_report import README_END, README_START, figures_markdown, update_readme

README = Path(__file__).resolve().parents[2] / "README.md"

# The demo's settings (configs/demo-cpu.yaml) at half its steps (800 per student, ~1 min each on 2
# cores): enough for the validation distance to fall, which is all these wiring tests check.
TRAIN: dict = {"samples_per_epoch": 320}


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
    # one untrained twin: both students share architecture and initialisation seed
    assert kinds == ["baseline", "student", "student", "teacher", "untrained"]
    assert set(report["retention"]) == {m["label"] for m in report["models"] if m["kind"] == "student"}
    twin = next(m["label"] for m in report["models"] if m["kind"] == "untrained")
    assert all(r["untrained"] == twin for r in report["retention"].values())


@pytest.mark.slow
def test_the_run_writes_its_figures_with_commit_and_machine(demo, tmp_path):
    result, _ = demo
    fig = json.loads((result.out / "report" / "demo-figures.json").read_text())
    demo_json = json.loads((result.out / "report" / "demo.json").read_text())
    assert fig["fresh"] is True and fig["seconds"] == demo_json["seconds"]
    assert (
        fig["commit"]
        and fig["machine"]
        and [s["stage"] for s in fig["stages"]] == [s.stage for s in result.stages]
    )
    assert {m["kind"] for m in fig["models"]} >= {"teacher", "student", "untrained", "baseline"}
    block = figures_markdown(fig)
    assert block in result.report.read_text()  # the index shows what the README would quote
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    assert update_readme(readme, result.out) == block
    assert f"{README_START}\n{block}\n{README_END}" in readme.read_text()


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
    # the figures of the run from scratch stay: a no-op re-run must not replace its wall time
    fig = json.loads((result.out / "report" / "demo-figures.json").read_text())
    assert fig["fresh"] is True and fig["seconds"] == result.seconds
    assert again.scores == result.scores
    assert again.seconds < max(60.0, result.seconds / 3)


def test_demo_command_explains_itself():
    out = CliRunner().invoke(main, ["demo", "--help"])
    assert out.exit_code == 0
    for word in ("--out", "--size", "report/index.md"):
        assert word in out.output.replace("OUT/report", "report")


def _figures(fresh: bool) -> dict:
    ci = {"value": 0.2, "low": 0.1, "high": 0.3}
    fig = {"gain_retention": ci, "score_retention": ci, "gain_over_logmel": ci, "gain_over_untrained": ci}
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "commit": "0.1.0+gabc",
        "machine": "a CPU, 2 CPU cores available",
        "fresh": fresh,
        "seconds": 300.0,
        "stages": [{"stage": "train", "seconds": 200.0}],
        "probe_seeds": 3,
        "metric": ["accuracy"],
        "models": [{"label": "teacher", "kind": "teacher"}, {"label": "s", "kind": "student"}],
        "tasks": ["t"],
        "n_test": {"t": 300},
        "scores": {"teacher": {"t": {"mean": 0.6, "ci95": 0.01}}, "s": {"t": {"mean": 0.5, "ci95": None}}},
        "teacher_gain": {"t": {"teacher": {"gain_over_logmel": ci, "informative": True}}},
        "informative": {"t": True},
        "bootstrap": {"replicates": 1000},
        "retention": {"s": {"figures": {"t": fig}, "informative_average": {**fig, "tasks": ["t"]}}},
    }


def test_readme_figures_are_copied_from_a_run_from_scratch(tmp_path):
    (tmp_path / "demo" / "report").mkdir(parents=True)
    path = tmp_path / "demo" / "report" / "demo-figures.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    path.write_text(json.dumps(_figures(fresh=False)))
    with pytest.raises(ValueError, match="reused an existing workspace"):
        update_readme(readme, tmp_path / "demo")
    path.write_text(json.dumps(_figures(fresh=True)))
    block = update_readme(readme, tmp_path / "demo")
    text = readme.read_text()
    assert text == f"intro\n{README_START}\n{block}\n{README_END}\nrest\n"
    assert "commit `0.1.0+gabc`" in block and "a CPU, 2 CPU cores available" in block and "5.0 min" in block
    assert "| s | t | 20.0 % [10.0, 30.0] |" in block
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, tmp_path / "demo")


def test_the_readme_quotes_demo_figures_only_from_the_generated_block():
    text = README.read_text()
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    outside = text.split(README_START)[0] + text.split(README_END)[1]
    demo_part = outside.split("## What the demo does")[1].split("## Running each stage")[0]
    # no hand-typed scores, times or retention figures around the block
    assert not re.search(r"\d+(\.\d+)? ?(%|min\b)", demo_part), demo_part
