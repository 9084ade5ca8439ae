"""Balanced sampling manifests: weights, metrics, pictures, refusals, the CLI (k-means on arrays:
test_kmeans.py).

Reusable for any cache (the end-to-end demo test can call them on the demo teacher's cache):
``check_balanced_manifest(work, cache_name, manifest)`` asserts every invariant of a written manifest
against the cache itself; ``make_labelled_workspace`` packs real (generated) audio with labels;
``write_synthetic_cache`` writes a cache of clustered embeddings through the store API.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import matplotlib.image as mpimg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn import metrics as skm

from pipeline.cli import main as cli
from ssondo_cache.cache_index import open_cache
from ssondo_cache.cluster import (
    balanced_weights,
    cluster_cache,
    read_sampling_manifest,
    write_random_manifest,
)
from ssondo_cache.cluster_report import (
    cluster_metrics,
    metric_sample_indices,
    plot_cluster_sizes,
    plot_projection,
    primary_classes,
)
from ssondo_cache.kmeans import ClusterInputError, kmeans, l2_normalize_
from ssondo_cache.manifests import clips_fingerprint, read_clips
from ssondo_cache.pack import pack
from ssondo_cache.store import cache_path, create_or_open
from tests.cache.conftest import tone, write_audio
from tests.cache.test_kmeans import blobs

CLASSES = ("dog", "rain", "speech", "siren")
FREQS = (220.0, 660.0, 1500.0, 3000.0)
NOISE = (0.002, 0.02, 0.1, 0.4)  # noise level per class: what the tiny teacher's log spectra see most


# ---------------------------------------------------------------- reusable helpers


def make_labelled_workspace(tmp: Path, n_clips: int = 24, shard_size: int = 8) -> Path:
    """Pack n_clips real 16 kHz WAV clips (a tone frequency and a noise level per class) with a labels CSV."""
    src = tmp / "audio"
    rows = ["path,labels"]
    for i in range(n_clips):
        c = i % len(CLASSES)
        path = src / f"clip{i:03d}.wav"
        noise = NOISE[c] * np.random.default_rng(i).standard_normal((8000, 1))
        write_audio(
            path, sr=16000, data=np.clip(tone(0.5, 16000, freq=FREQS[c], seed=i, amp=0.1) + noise, -1, 1)
        )
        rows.append(f"{path},{CLASSES[c]}")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    work = tmp / "work"
    pack([src], work, labels_csv=tmp / "labels.csv", sample_rate=16000, shard_size=shard_size, progress=False)
    return work


def write_synthetic_cache(
    work: Path,
    dim: int = 16,
    windows: int = 3,
    nan_rows: tuple[int, ...] = (),
    skip_blocks: tuple[int, ...] = (),
) -> str:
    """A cache of clustered embeddings (one blob per clip label) written with the store API -> its name."""
    clips = read_clips(work)
    n = clips.num_rows
    shards = clips["shard"].to_numpy()
    offsets = [0, *np.cumsum(np.bincount(shards)).tolist()]
    attrs = {
        "teacher": "synthetic", "teacher_id": "synthetic-0123456789ab", "ts": 1.0, "hop": 1.0,
        "sample_rate": 16000, "teacher_sample_rate": 16000, "frontend": {}, "dtype": "float16",
        "clips_fingerprint": clips_fingerprint(work), "code_version": "test", "n_rows": n,
        "max_windows": windows, "embed_dim": dim, "shard_offsets": offsets,
    }  # fmt: skip
    store = create_or_open(cache_path(work, attrs["teacher_id"], "ts1-hop1"), attrs)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((len(CLASSES), dim)) * 3
    cls = np.array([CLASSES.index(lab[0]) for lab in clips["labels"].to_pylist()])
    for block in range(store.n_blocks):
        if block in skip_blocks:
            continue
        a, b = store.block_rows(block)
        nw = rng.integers(1, windows + 1, size=b - a).astype(np.int32)
        emb = centers[cls[a:b], None, :] + 0.5 * rng.standard_normal((b - a, windows, dim))  # (n, W, D)
        emb[np.arange(windows)[None, :] >= nw[:, None]] = np.nan
        clip = np.nanmean(emb, axis=1)
        for r in nan_rows:
            if a <= r < b:
                clip[r - a, 0] = np.nan
        store.write_block(block, emb.astype(np.float16), clip.astype(np.float16), nw)
    store.mark_finished()
    return "ts1-hop1"


def check_balanced_manifest(work: Path, cache_name: str, manifest: Path) -> tuple:
    """Assert every invariant of a clip- or window-level balanced manifest against the cache itself."""
    table, meta = read_sampling_manifest(manifest)
    clips, store = read_clips(work), open_cache(work, cache_name)
    n, k = clips.num_rows, meta["k"]
    rows, cluster = table["row"].to_numpy(), table["cluster"].to_numpy()
    w, dist = table["weight"].to_numpy(), table["distance"].to_numpy()
    assert meta["kind"] == "balanced" and meta["clips_fingerprint"] == store.attrs["clips_fingerprint"]
    assert meta["teacher_id"] == store.attrs["teacher_id"] and meta["ts"] == store.attrs["ts"]
    if meta["level"] == "clip":
        assert np.array_equal(np.sort(rows), np.arange(n))  # every clip exactly once
        X = store.read_clip(0, n)
    else:
        emb, nw = store.read_windows(0, n)
        win = table["window"].to_numpy()
        assert np.array_equal(np.bincount(rows, minlength=n), nw)  # every window exactly once
        assert len(set(zip(rows.tolist(), win.tolist(), strict=True))) == len(rows) and (win < nw[rows]).all()
        X = emb[rows, win]
    keys = clips["key"].to_numpy(zero_copy_only=False)
    assert list(table["key"].to_pylist()) == keys[rows].tolist()
    assert np.array_equal(table["shard"].to_numpy(), clips["shard"].to_numpy()[rows])
    # weights: sum 1, proportional to 1 / cluster size, equal total mass per non-empty cluster
    sizes = np.bincount(cluster, minlength=k)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    mass = np.bincount(cluster, weights=w, minlength=k)[sizes > 0]
    assert np.allclose(mass, 1.0 / (sizes > 0).sum(), rtol=1e-9)
    assert np.allclose(w * sizes[cluster], w[0] * sizes[cluster[0]])
    # labels and distances are those of the saved centroids
    files = {
        p: manifest.with_suffix("").with_name(manifest.stem + p) for p in (".centroids.npy", ".metrics.json")
    }
    centroids = np.load(files[".centroids.npy"])
    assert centroids.shape == (k, store.embed_dim)
    if meta["normalize"]:
        X = l2_normalize_(X.copy())
    d2 = ((X[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, k)
    assert np.allclose(dist, np.sqrt(d2[np.arange(len(X)), cluster]), atol=1e-4)
    assert (d2[np.arange(len(X)), cluster] <= d2.min(1) + 1e-4).all()
    # metrics.json == scikit-learn on the same points and labels
    m = json.loads(files[".metrics.json"].read_text())
    assert m["inertia"] == pytest.approx(float((dist.astype(np.float64) ** 2).sum()), rel=1e-4)
    assert m["cluster_sizes"] == {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                  "max": int(sizes.max()), "empty": int((sizes == 0).sum())}  # fmt: skip
    idx = metric_sample_indices(len(X), m["metric_sample"], meta["seed"])
    if len(np.unique(cluster[idx])) >= 2:
        assert m["silhouette"] == pytest.approx(skm.silhouette_score(X[idx], cluster[idx]), rel=1e-4)
        assert m["calinski_harabasz"] == pytest.approx(
            skm.calinski_harabasz_score(X[idx], cluster[idx]), rel=1e-4
        )
        assert m["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X[idx], cluster[idx]), rel=1e-4)
    first = [lab[0] if lab else None for lab in clips["labels"].to_pylist()]
    truth = np.array([first[r] for r in rows], dtype=object)
    has = truth != None  # noqa: E711 (elementwise)
    if has.sum() >= 2:
        assert m["labels"]["nmi"] == pytest.approx(skm.normalized_mutual_info_score(truth[has], cluster[has]))
        assert m["labels"]["ari"] == pytest.approx(skm.adjusted_rand_score(truth[has], cluster[has]))
    for png in (".sizes.png", ".pca.png"):
        check_png(manifest.with_name(manifest.stem + png))
    return table, meta, m


def check_png(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not blank
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A packed, labelled corpus with a complete synthetic cache (module-wide; tests copy it to modify)."""
    work = make_labelled_workspace(tmp_path_factory.mktemp("clu"))
    write_synthetic_cache(work)
    return work


def _copy(work: Path, tmp: Path) -> Path:
    import shutil

    shutil.copytree(work, tmp / "w")
    return tmp / "w"


def test_weights_give_each_cluster_equal_mass():
    labels = np.array([0, 0, 0, 1, 2, 2, 4])  # cluster 3 empty
    w = balanced_weights(labels, 5)
    assert w.sum() == pytest.approx(1.0)
    assert np.allclose(np.bincount(labels, weights=w, minlength=5), [0.25, 0.25, 0.25, 0, 0.25])


def _silhouette(X, lab):  # plain formula, O(n^2), for a few points
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    s = []
    for i in range(len(X)):
        same = (lab == lab[i]) & (np.arange(len(X)) != i)
        if not same.any():
            s.append(0.0)
            continue
        a = D[i, same].mean()
        b = min(D[i, lab == c].mean() for c in np.unique(lab) if c != lab[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_metrics_match_plain_formulas_and_sklearn():
    X, truth = blobs([40, 25, 10], d=5, spread=1.0, seed=6)
    lab = kmeans(X, 4, seed=0, device="cpu").labels
    cents = np.stack([X[lab == j].mean(0) for j in range(4)])
    inertia = float(((X - cents[lab]) ** 2).sum())
    classes = np.array([str(t) if i % 7 else None for i, t in enumerate(truth)], dtype=object)
    lists = pa.array(
        [[c, "x"] if c else ([] if i % 2 else None) for i, c in enumerate(classes)], pa.list_(pa.string())
    )
    codes = primary_classes(lists)  # first label as a code in string order, -1 for none (empty or null)
    has = classes != None  # noqa: E711
    assert codes.dtype == np.int32 and np.array_equal(codes < 0, ~has)
    assert np.array_equal(codes[has], np.unique(classes[has].astype(str), return_inverse=True)[1])
    m = cluster_metrics(X, lab, 4, inertia, np.arange(len(X)), codes)
    assert m["silhouette"] == pytest.approx(_silhouette(X, lab), rel=1e-5)
    n, k, mu = len(X), 4, X.mean(0)
    sizes = np.bincount(lab)
    between = (sizes * ((cents - mu) ** 2).sum(1)).sum()
    assert m["calinski_harabasz"] == pytest.approx((between / (k - 1)) / (inertia / (n - k)), rel=1e-4)
    s = np.array([np.linalg.norm(X[lab == j] - cents[j], axis=1).mean() for j in range(k)])
    dc = np.linalg.norm(cents[:, None] - cents[None], axis=-1) + np.eye(k) * 1e30
    assert m["davies_bouldin"] == pytest.approx(((s[:, None] + s[None]) / dc).max(1).mean(), rel=1e-4)
    assert m["labels"]["n_labelled"] == has.sum()
    assert m["labels"]["ari"] == skm.adjusted_rand_score(
        classes[has].astype(str), lab[has]
    )  # exact: same order
    assert m["labels"]["nmi"] == skm.normalized_mutual_info_score(classes[has].astype(str), lab[has])
    assert m["cluster_sizes"]["min"] == sizes.min() and m["cluster_sizes"]["max"] == sizes.max()


def test_pngs_are_valid_images(tmp_path: Path):
    X, truth = blobs([300, 100, 20], d=12, seed=7)
    plot_cluster_sizes(np.bincount(truth), tmp_path / "sizes.png")
    cents = np.stack([X[truth == j].mean(0) for j in range(3)])
    plot_projection(X, truth, cents, tmp_path / "pca.png")
    check_png(tmp_path / "sizes.png")
    check_png(tmp_path / "pca.png")
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporaries left


# ---------------------------------------------------------------- cache level


def test_cluster_cache_writes_a_valid_manifest(workspace: Path, tmp_path: Path):
    work = _copy(workspace, tmp_path)
    summary = cluster_cache(work, "ts1-hop1", 4, device="cpu", progress=False)
    (out,) = summary.outcomes
    assert out.manifest == work / "manifests" / "balanced-k4.parquet" and not out.skipped
    table, meta, m = check_balanced_manifest(work, "ts1-hop1", out.manifest)
    assert meta["cache"] == "synthetic-0123456789ab/ts1-hop1" and meta["k"] == 4 and meta["seed"] == 0
    assert m["labels"]["ari"] == 1.0  # the synthetic blobs follow the clip labels
    assert table.schema.field("cluster").type == "int32" and table.schema.field("distance").type == "float32"
    text = summary.report()
    assert "sizes.png" in text and "pca.png" in text and "cpu (asked for cpu)" in text


def test_same_seed_same_manifest_and_rerun_is_a_noop(workspace: Path, tmp_path: Path):
    a, b = _copy(workspace, tmp_path / "a"), _copy(workspace, tmp_path / "b")
    pa_, pb = (cluster_cache(w, "ts1-hop1", 3, seed=7, device="cpu", progress=False).outcomes[0].manifest
               for w in (a, b))  # fmt: skip
    (ta, ma), (tb, mb) = read_sampling_manifest(pa_), read_sampling_manifest(pb)
    assert ta.equals(tb)  # identical rows, clusters, distances, weights
    drop = ("created", "code_version")
    assert {k: v for k, v in ma.items() if k not in drop} == {k: v for k, v in mb.items() if k not in drop}
    assert np.array_equal(np.load(str(pa_).replace(".parquet", ".centroids.npy")),
                          np.load(str(pb).replace(".parquet", ".centroids.npy")))  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in (a / "manifests").iterdir()}
    again = cluster_cache(a, "ts1-hop1", 3, seed=7, device="cpu", progress=False)
    assert again.outcomes[0].skipped
    assert {p: p.stat().st_mtime_ns for p in (a / "manifests").iterdir()} == before
    with pytest.raises(ClusterInputError, match="other settings"):  # never replaced silently
        cluster_cache(a, "ts1-hop1", 3, seed=8, device="cpu", progress=False)
    forced = cluster_cache(a, "ts1-hop1", 3, seed=8, device="cpu", force=True, progress=False)
    assert not forced.outcomes[0].skipped and read_sampling_manifest(pa_)[1]["seed"] == 8


def test_normalized_window_level(workspace: Path, tmp_path: Path):
    work = _copy(workspace, tmp_path)
    out = cluster_cache(work, "ts1-hop1", 4, level="window", normalize=True, device="cpu", progress=False)
    path = out.outcomes[0].manifest
    assert path.name == "balanced-k4-window.parquet"
    table, meta, _ = check_balanced_manifest(work, "ts1-hop1", path)
    assert meta["level"] == "window" and meta["normalize"] is True
    per_clip = table.group_by("row").aggregate([("weight", "sum")])  # clip weights for a clip-level sampler
    assert pc.sum(per_clip["weight_sum"]).as_py() == pytest.approx(1.0)


def test_sweep_and_random_baseline(workspace: Path, tmp_path: Path):
    work = _copy(workspace, tmp_path)
    summary = cluster_cache(work, "ts1-hop1", [2, 4, 6], device="cpu", random_baseline=True, progress=False)
    assert [o.k for o in summary.outcomes] == [2, 4, 6]
    for o in summary.outcomes:
        check_balanced_manifest(work, "ts1-hop1", o.manifest)
    table_md = summary.sweep_table.read_text()
    assert table_md.count("\n| ") == 3 and "balanced-k6.parquet" in table_md
    rnd, meta = read_sampling_manifest(summary.random_manifest)
    n = read_clips(work).num_rows
    assert meta["kind"] == "random" and rnd.num_rows == n
    assert rnd.schema.remove_metadata().equals(
        read_sampling_manifest(summary.outcomes[0].manifest)[0].schema.remove_metadata()
    )
    assert np.allclose(rnd["weight"].to_numpy(), 1 / n) and sorted(rnd["row"].to_pylist()) == list(range(n))
    assert write_random_manifest(work, "ts1-hop1") == summary.random_manifest  # no-op


def test_refusals_write_nothing(workspace: Path, tmp_path: Path):
    n = read_clips(workspace).num_rows
    work = _copy(workspace, tmp_path / "k")
    with pytest.raises(ClusterInputError, match=f"k={n + 1} is larger than the number of clips \\({n}\\)"):
        cluster_cache(work, "ts1-hop1", n + 1, device="cpu", progress=False)
    assert not list((work / "manifests").glob("balanced*"))

    nan = make_labelled_workspace(tmp_path / "nan")
    write_synthetic_cache(nan, nan_rows=(3, 17))
    with pytest.raises(ClusterInputError, match="^2 clip embeddings contain NaN"):
        cluster_cache(nan, "ts1-hop1", 3, device="cpu", progress=False)
    assert not list((nan / "manifests").glob("balanced*")) and not list((nan / "manifests").glob(".*"))

    part = make_labelled_workspace(tmp_path / "part")
    write_synthetic_cache(part, skip_blocks=(1,))
    with pytest.raises(ClusterInputError, match="not complete: 8 of 24 rows missing"):
        cluster_cache(part, "ts1-hop1", 3, device="cpu", random_baseline=True, progress=False)
    with pytest.raises(ClusterInputError, match="not complete"):
        write_random_manifest(part, "ts1-hop1")
    assert (
        not list((part / "manifests").glob("balanced*"))
        and not (part / "manifests" / "random.parquet").exists()
    )


def test_cli(workspace: Path, tmp_path: Path):
    work = _copy(workspace, tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        cli, ["cluster", str(work), "--cache", "ts1-hop1", "-k", "3,2", "--random", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "balanced-k2.sizes.png" in res.output and "balanced-k3.pca.png" in res.output
    assert "random baseline" in res.output and "| k | inertia" in res.output
    assert (work / "manifests" / "balanced-sweep.md").exists()
    bad = runner.invoke(cli, ["cluster", str(work), "--cache", "ts1-hop1", "-k", "99"])
    assert bad.exit_code != 0 and "larger than the number of clips" in bad.output
    if faiss.get_num_gpus() == 0:
        gpu = runner.invoke(
            cli, ["cluster", str(work), "--cache", "ts1-hop1", "-k", "2", "--device", "cuda", "--force"]
        )
        assert gpu.exit_code != 0 and "no GPU" in gpu.output
    helptext = runner.invoke(cli, ["cluster", "--help"]).output
    assert "--normalize" in helptext and "--level" in helptext and "default: auto" in helptext
    flat = " ".join(helptext.split())
    assert "--sample" in flat and "[default: 1024 per centroid" in flat and "0: all of them" in flat


def test_real_teacher_embeddings(tmp_path: Path):
    """Real audio through the real extraction with the tiny teacher: four kinds of clip, four clusters."""
    import torch

    from ssondo_cache.extract import extract

    torch.set_num_threads(1)
    work = make_labelled_workspace(tmp_path, n_clips=16)
    res = extract(work, "py:tests.helpers.tiny_teacher:make", ts=0.25, device="cpu", batch_size=16, workers=0,
                  progress=False, teacher_options={"dim": 16})  # fmt: skip
    summary = cluster_cache(work, res.name, 4, device="cpu", progress=False)
    _, _, m = check_balanced_manifest(work, res.name, summary.outcomes[0].manifest)
    assert m["labels"]["nmi"] > 0.9  # the teacher's features separate the four kinds of clip
