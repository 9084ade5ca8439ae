"""benchmarks/levers.py: the 1k-clip subset manifest and the step budget of a cell."""

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("levers", REPO / "benchmarks" / "levers.py")
levers = importlib.util.module_from_spec(_spec)  # benchmarks/ holds scripts, not a package
_spec.loader.exec_module(levers)


def _work(tmp_path: Path, n: int) -> Path:
    (tmp_path / "manifests").mkdir(parents=True)
    table = pa.table(
        {"key": [f"k{i}" for i in range(n)], "row": np.arange(n), "weight": np.full(n, 1.0 / n)}
    ).replace_schema_metadata({b"ssondo": b'{"cache": "c"}'})
    pq.write_table(table, tmp_path / "manifests" / "random.parquet")
    return tmp_path


def test_subset_manifest_keeps_n_distinct_clips_with_uniform_weights(tmp_path):
    work = _work(tmp_path, 50)
    path = levers.subset_manifest(work, 7, seed=0, out=tmp_path)
    sub = pq.read_table(path)
    assert sub.num_rows == 7
    assert len(set(sub["key"].to_pylist())) == 7
    assert np.allclose(sub["weight"].to_numpy(), 1 / 7)
    assert sub.schema.metadata[b"ssondo"] == b'{"cache": "c"}'  # the trainer checks the cache identity
    again = pq.read_table(levers.subset_manifest(work, 7, seed=0, out=tmp_path))
    assert again["key"].to_pylist() == sub["key"].to_pylist()


def test_cell_schedule_spans_the_cell_steps(tmp_path):
    work = _work(tmp_path, 50)
    for name, steps in (("base", levers.STEPS), ("window", 2 * levers.STEPS)):
        over, probe_ts = levers.cell_config(name, work, "c", tmp_path)
        assert over["epochs"] * over["samples_per_epoch"] // over["batch_size"] == steps
    assert probe_ts == 0.96  # window students are probed on 0.96-s windows
    over, _ = levers.cell_config("subset1k", _work(tmp_path / "w", 1500), "c", tmp_path)
    assert pq.read_table(over["manifest"]).num_rows == 1000
