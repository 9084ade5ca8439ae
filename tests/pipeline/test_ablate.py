"""`ssondo ablate` without training: grid expansion (cross, zip), stable hashes, plan refusals,
claim files and their staleness rule, the report against a hand computation, the sbatch script."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.ablate.grid import load_grid
from pipeline.ablate.launch import check_caches, plan_dict, run_grid, write_plan
from pipeline.ablate.report import write_ablation_report
from pipeline.cli import main
from ssondo_cache import claims
from ssondo_cache.atomic import write_json
from ssondo_cache.typed_config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write_grid(path: Path, **over) -> Path:
    grid = {
        "workspace": str(path.parent / "work"),
        "base": {"cache": "ts1-hop1", "student": "mn04", "epochs": 1},
        "axes": {"loss": ["cosine", "mse"], "seed": [0, 1, 2]},
        "eval": {"tasks": ["csv:/data/tasks/instruments.csv"]},
        **over,
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_axes_cross_and_zip_groups_move_together(tmp_path):
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            axes={"loss": ["cosine", "mse"], "seed": [0, 1, 2]},
            zip=[{"lr": [0.001, 0.002], "batch_size": [32, 64]}],
        )
    )
    assert len(grid.cells) == 2 * 3 * 2
    combos = [(c.axes["loss"], c.axes["seed"], c.axes["lr"], c.axes["batch_size"]) for c in grid.cells]
    assert len(set(combos)) == 12
    assert {(lr, bs) for *_, lr, bs in combos} == {(0.001, 32), (0.002, 64)}  # zipped, not crossed
    first = grid.cells[0]
    assert first.config["loss"] == "cosine" and first.config["lr"] == 0.001 and first.config["epochs"] == 1
    assert (
        first.name == f"{first.slug}-{first.key}"
        and first.slug == "loss-cosine_seed-0_lr-0.001_batch-size-32"
    )
    assert len({c.name for c in grid.cells}) == 12


def test_dotted_axes_and_base_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"student": "mn04", "cache": "ts1-hop1", "lr": 0.01}))
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            base={"config": "base.yaml", "lr": 0.02},  # inline fields win over the file's
            axes={"schedule.warmup_epochs": [1.0, 2.0]},
        )
    )
    assert [c.config["schedule"]["warmup_epochs"] for c in grid.cells] == [1.0, 2.0]
    assert all(c.config["lr"] == 0.02 for c in grid.cells)
    shipped = load_grid(write_grid(tmp_path / "s.yaml", base="configs/demo-cpu.yaml", axes={"seed": [0]}))
    assert shipped.cells[0].config["student"] == "mn04"  # found in the repository's configs/


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"axes": {"lossx": ["cosine"]}}, "unknown key"),
        ({"axes": {"out": ["a"]}}, "cannot be an axis"),
        ({"axes": {"loss": []}}, "non-empty list"),
        ({"zip": [{"lr": [0.1, 0.2], "batch_size": [1]}]}, "lengths"),
        ({"axes": {"lr": [0.1]}, "zip": [{"lr": [0.2]}]}, "appears twice"),
        ({"axes": {"lr": [0.001, 0.0010]}}, "same config"),
        ({"eval": {"tasks": []}}, "eval.tasks"),
        ({"base": "nowhere.yaml"}, "not found"),
        ({"axes": {"student": ["mn04", "mn0.4"]}}, "unknown student 'mn0.4'"),
    ],
)
def test_bad_grids_are_refused_naming_the_file(tmp_path, over, match):
    path = write_grid(tmp_path / "bad.yaml", **over)
    with pytest.raises(ConfigError, match=match) as err:
        load_grid(path)
    assert "bad.yaml" in str(err.value)


def test_hash_stable_across_processes_key_order_and_written_defaults(tmp_path):
    a = load_grid(write_grid(tmp_path / "a.yaml"))
    # the same settings: keys in another order, a default written out
    b = load_grid(
        write_grid(
            tmp_path / "b.yaml",
            base={"epochs": 1, "weight_decay": 0.0, "student": "mn04", "cache": "ts1-hop1"},
            axes={"loss": ["cosine", "mse"], "seed": [0, 1, 2]},
        )
    )
    assert [c.name for c in a.cells] == [c.name for c in b.cells]
    code = "import sys; from pipeline.ablate.grid import load_grid; print([c.name for c in load_grid(sys.argv[1]).cells])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.yaml")], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.strip() == str([c.name for c in a.cells])
    c = load_grid(write_grid(tmp_path / "c.yaml", base={"cache": "ts1-hop1", "student": "mn04", "epochs": 2}))
    assert not {x.key for x in a.cells} & {x.key for x in c.cells}  # any change: another hash


def test_changed_plan_refused_unless_force(tmp_path):
    out = tmp_path / "out"
    write_plan(load_grid(write_grid(tmp_path / "g.yaml")), out)
    write_plan(load_grid(write_grid(tmp_path / "g.yaml")), out)  # same plan: fine
    changed = load_grid(
        write_grid(tmp_path / "g.yaml", base={"cache": "ts1-hop1", "student": "mn04", "epochs": 3})
    )
    with pytest.raises(ConfigError, match=r"cell loss-cosine_seed-0: epochs 1 -> 3.*--force"):
        write_plan(changed, out)
    write_plan(changed, out, force=True)
    assert json.loads((out / "plan.json").read_text())["cells"][0]["config"]["epochs"] == 3


def test_missing_cache_refused_with_the_extract_command(tmp_path):
    from tests.distill.test_stream import make_corpus

    work = make_corpus(tmp_path, n_clips=8, shard_size=4, dim=4)
    grid = load_grid(write_grid(tmp_path / "g.yaml", base={"cache": "ts2-hop2", "teacher": "matpac"}))
    with pytest.raises(FileNotFoundError, match=rf"`ssondo extract {work} --teacher matpac --ts 2 --hop 2`"):
        check_caches(grid)
    with pytest.raises(FileNotFoundError, match="ssondo extract"):
        run_grid(tmp_path / "g.yaml", tmp_path / "out")
    assert not (tmp_path / "out" / "plan.json").exists()  # refused before anything was written


# ---------------------------------------------------------------- claims


def test_claims_exclusive_released_and_stale_rule(tmp_path):
    folder = tmp_path / "claims"
    first = claims.try_claim(folder, "cell-a", heartbeat=0.05)
    assert first is not None and first.owned()
    assert claims.try_claim(folder, "cell-a") is None  # a live owner (this process) holds it
    time.sleep(0.2)
    assert time.time() - (folder / "cell-a.json").stat().st_mtime < 0.2  # the heartbeat touches it
    first.release()
    assert not (folder / "cell-a.json").exists()
    # a dead owner on this host: stale at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = folder / "cell-b.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t"}))
    assert claims.is_stale(path)
    taken = claims.try_claim(folder, "cell-b")
    assert taken is not None and json.loads(path.read_text())["pid"] == os.getpid()
    taken.release()
    # another host: stale only after stale_after seconds without a heartbeat
    path = folder / "cell-c.json"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t"}))
    assert not claims.is_stale(path, stale_after=60)
    assert claims.is_stale(path, stale_after=60, now=time.time() + 61)
    assert claims.try_claim(folder, "cell-c", stale_after=60) is None


# ---------------------------------------------------------------- report by hand

T975_2 = 4.302652729749464  # t quantile 0.975, 2 degrees of freedom
T975_1 = 12.706204736174698  # ... 1 degree of freedom


def test_report_tables_match_a_hand_computation(tmp_path):
    grid = load_grid(
        write_grid(tmp_path / "g.yaml", axes={"loss": ["cosine", "mse"], "seed": [0, 1, 2]},
                   expect={"loss": ["mse", "cosine"]})
    )  # fmt: skip
    out = tmp_path / "out"
    write_plan(grid, out)
    key = plan_dict(grid)["eval_key"]
    scores = {  # (loss, seed) -> (task a, task b); mse seed 2 failed
        ("cosine", 0): (0.6, 0.5),
        ("cosine", 1): (0.7, 0.5),
        ("cosine", 2): (0.8, 0.8),
        ("mse", 0): (0.5, 0.4),
        ("mse", 1): (0.6, 0.4),
    }
    for c in grid.cells:
        s = scores.get((c.axes["loss"], c.axes["seed"]))
        status = {"status": "failed", "error": "FloatingPointError: nan", "eval_key": key}
        if s is not None:
            status = {"status": "done", "eval_key": key,
                      "scores": {"a": {"mean": s[0], "ci95": None, "scores": [s[0]]},
                                 "b": {"mean": s[1], "ci95": None, "scores": [s[1]]}}}  # fmt: skip
        write_json(out / "runs" / c.name / "ablate.json", status)
    write_json(out / f"reference-{key}" / "ablate.json", {"status": "done", "eval_key": key,
               "teacher": {"teacher:x": {"a": {"mean": 0.9}, "b": {"mean": 0.8}}},
               "baseline": {"log-mel stats": {"a": {"mean": 0.4}, "b": {"mean": 0.5}}}})  # fmt: skip
    md = write_ablation_report(out).read_text()

    def rows(stem):
        with open(out / "report" / f"{stem}.csv") as f:
            return list(csv.DictReader(f))

    axes = {(r["value"], r["task"]): r for r in rows("axes")}
    # cosine averages per seed: 0.55, 0.6, 0.8 -> mean 0.65, sd sqrt(0.0175)
    cos = axes[("cosine", "average")]
    assert float(cos["score"]) == pytest.approx(0.65)
    assert float(cos["score_ci95"]) == pytest.approx(T975_2 * 0.0175**0.5 / 3**0.5)
    mse = axes[("mse", "average")]  # 0.45, 0.5 (seed 2 failed)
    assert float(mse["score"]) == pytest.approx(0.475) and mse["n"] == "2"
    assert float(mse["score_ci95"]) == pytest.approx(T975_1 * 0.025)
    assert cos["best"] == "True" and mse["best"] == "False" and mse["beyond_ci"] == "False"
    cells = {(r["loss"], r["seed"], r["task"]): r for r in rows("cells")}
    # gain retention on task a, cosine seed 0: (0.6 - 0.4) / (0.9 - 0.4)
    assert float(cells[("cosine", "0", "a")]["gain_retention"]) == pytest.approx(0.4)
    assert float(cells[("cosine", "0", "a")]["score_retention"]) == pytest.approx(0.6 / 0.9)
    # task b: the teacher (0.8) beats log-mel (0.5); average: teacher 0.85, log-mel 0.45
    assert float(cells[("cosine", "2", "average")]["gain_retention"]) == pytest.approx((0.8 - 0.45) / 0.4)
    assert cells[("mse", "2", "")]["status"] == "failed"
    settings = {(r["loss"], r["task"]): r for r in rows("settings")}
    assert float(settings[("cosine", "a")]["score"]) == pytest.approx(0.7)
    assert float(settings[("cosine", "a")]["score_ci95"]) == pytest.approx(T975_2 * 0.1 / 3**0.5)
    assert settings[("mse", "a")]["n_seeds"] == "2"
    assert "| cosine **(best)** | 3 | 65.0 ± 32.9 | – |" in md
    assert "| cosine **(best)** | 3 | 70.0 ± 24.8 |" in md  # the best setting, task a
    assert "Ranking: cosine > mse." in md and "FloatingPointError: nan" in md
    assert "Expected ranking mse > cosine: measured cosine > mse; not reproduced (mse > cosine: no)." in md
    # the average's gain retention counts only the tasks where the teacher beats log-mel
    ref = out / f"reference-{key}" / "ablate.json"
    data = json.loads(ref.read_text())
    data["baseline"]["log-mel stats"]["b"]["mean"] = 0.85  # now above the teacher's 0.8 on b
    write_json(ref, data)
    write_ablation_report(out)
    cells = {(r["loss"], r["seed"], r["task"]): r for r in rows("cells")}
    assert cells[("cosine", "2", "b")]["gain_retention"] == ""  # undefined there
    assert float(cells[("cosine", "2", "average")]["gain_retention"]) == pytest.approx(
        (0.8 - 0.4) / (0.9 - 0.4)
    )
    for png in ("score-loss.png", "curves.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pyarrow.parquet as pq

    assert pq.read_table(out / "report" / "cells.parquet").num_rows == len(rows("cells"))


def test_print_sbatch_sizes_the_array_to_the_grid(tmp_path):
    path = write_grid(tmp_path / "g.yaml")
    res = CliRunner().invoke(
        main,
        ["ablate", str(path), "--out", str(tmp_path / "out"), "--print-sbatch", "--sbatch", "partition=gpu"],
    )
    assert res.exit_code == 0, res.output
    assert "#SBATCH --array=0-5\n" in res.output and "#SBATCH --partition=gpu\n" in res.output
    assert f"ssondo ablate {path.resolve()} --out {(tmp_path / 'out').resolve()} --array" in res.output
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(main, ["ablate", str(path), "--out", str(tmp_path / "out"), "--array"], env={})
    assert res.exit_code != 0 and "SLURM_ARRAY_TASK_ID" in res.output


def test_set_overrides_grid_keys_and_expect_names_axes(tmp_path):
    path = write_grid(tmp_path / "g.yaml", base="configs/demo-cpu.yaml", axes={"seed": [0, 1]})
    grid = load_grid(path, {"workspace": "/elsewhere", "base.epochs": 2, "eval.tasks": ["demo:/d"]})
    assert grid.workspace == Path("/elsewhere") and grid.config.eval.tasks == ["demo:/d"]
    assert all(c.config["epochs"] == 2 and c.config["student"] == "mn04" for c in grid.cells)
    with pytest.raises(ConfigError, match="expect names"):
        load_grid(path, {"expect": {"loss": ["cosine"]}})


def test_shipped_grids_expand(tmp_path):
    shipped = {p.stem: load_grid(p) for p in sorted((REPO / "configs" / "ablate").glob("*.yaml"))}
    assert {"paper-losses", "paper-sampling", "paper-ts", "demo-losses", "demo-sampling", "demo-ts"} <= set(
        shipped
    )
    assert (
        len(shipped["paper-losses"].cells) == 15
        and shipped["paper-losses"].config.expect["loss"][0] == "cosine"
    )
    assert len(shipped["paper-sampling"].cells) == 36
    for name, grid in shipped.items():
        assert grid.config.eval.tasks
        want = "mn10" if name.startswith("paper") else "mn04"
        assert {c.config["student"] for c in grid.cells} >= {want}, name
        if name.startswith("demo"):
            assert {c.config["device"] for c in grid.cells} == {"cpu"}


def test_array_tasks_and_torchrun_ranks_own_cells_round_robin(tmp_path):
    from pipeline.ablate.launch import _unit_list

    grid = load_grid(write_grid(tmp_path / "g.yaml"))  # 6 cells
    names = [c.name for c in grid.cells]
    shares = [_unit_list(grid, r, 4, static=True) for r in range(4)]
    assert shares[0] == ["reference", names[0], names[4]] and shares[3] == [names[3]]
    assert sorted(n for s in shares for n in s) == sorted(["reference", *names])  # each unit in one share
    assert _unit_list(grid, 0, 1, static=False) == ["reference", *names]
