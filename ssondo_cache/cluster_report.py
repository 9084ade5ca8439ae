"""How good is a clustering, in numbers (metrics.json) and in pictures (PNGs beside the manifest).

Pairwise metrics (silhouette, Calinski-Harabasz, Davies-Bouldin) run on a fixed, seeded sample of points
(`metric_sample_indices`) because silhouette is O(n^2); inertia and sizes use every point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn import metrics as skm

from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.kmeans_sample import sample_indices, sample_rng


def metric_sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The fixed sample (sorted indices) the pairwise metrics and the projection plot use: kmeans'
    sample_indices rule with sample_rng(seed, 1) (what cluster_cache picks from its stream)."""
    idx = sample_indices(n, size, sample_rng(seed, 1))
    return np.arange(n) if idx is None else idx


def primary_classes(labels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One class per clip for NMI/ARI: the rank of its first label among the distinct first labels in
    string order, or -1 when it has none. -> (N,) int32. Codes, not strings: at window level they are
    indexed by every point (tens of millions), where an array of strings would be N x its longest label."""
    arr = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)  # (N,)
    has = np.flatnonzero(lengths > 0)
    codes = np.full(len(arr), -1, np.int32)
    first = pc.list_element(arr.take(pa.array(has, pa.int64())), 0) if len(has) else None
    if first is not None and first.null_count:  # a null first label counts as none
        valid = pc.is_valid(first)
        has, first = has[valid.to_numpy(zero_copy_only=False)], first.filter(valid)
    if first is not None and len(first):
        first = pc.dictionary_encode(first)
        names = first.dictionary.to_numpy(zero_copy_only=False).astype(str)  # (classes,)
        rank = np.argsort(np.argsort(names, kind="stable"), kind="stable").astype(np.int32)
        codes[has] = rank[first.indices.to_numpy(zero_copy_only=False)]
    return codes


def cluster_metrics(
    xs: np.ndarray,
    labels: np.ndarray,
    k: int,
    inertia: float,
    sample: np.ndarray,
    classes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one clustering.

    xs (m, D) float32: the points at `sample` as clustered (normalised when spherical); labels (N,) int
    cluster ids of all N points; sample (m,): the indices of xs, for the pairwise metrics; classes (N,)
    int: a true class code per point (primary_classes), -1 for none (NMI/ARI use the points that have one).
    """
    sizes = np.bincount(labels, minlength=k)
    out: dict[str, Any] = {
        "k": int(k),
        "n_points": int(len(labels)),
        "inertia": float(inertia),
        "mean_squared_distance": float(inertia / len(labels)),
        "cluster_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "empty": int((sizes == 0).sum()),
        },
        "metric_sample": int(len(sample)),
    }
    ls = labels[sample]
    if len(np.unique(ls)) >= 2 and len(np.unique(ls)) < len(ls):
        out["silhouette"] = float(skm.silhouette_score(xs, ls))
        out["calinski_harabasz"] = float(skm.calinski_harabasz_score(xs, ls))
        out["davies_bouldin"] = float(skm.davies_bouldin_score(xs, ls))
    else:  # sklearn defines them only for 2 <= distinct labels < n
        out["silhouette"] = out["calinski_harabasz"] = out["davies_bouldin"] = None
    if classes is not None:
        has = classes >= 0  # (N,)
        if has.sum() >= 2:
            truth = classes[has]
            out["labels"] = {
                "rule": "first label of each labelled clip",
                "n_labelled": int(has.sum()),
                "n_classes": int(len(np.unique(truth))),
                "nmi": float(skm.normalized_mutual_info_score(truth, labels[has])),
                "ari": float(skm.adjusted_rand_score(truth, labels[has])),
            }
    return out


def _savefig(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_cluster_sizes(sizes: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Bar chart of cluster sizes, largest first, log y axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; set here, not at import
    import matplotlib.pyplot as plt

    s = np.sort(np.asarray(sizes))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(np.arange(len(s)), np.maximum(s, 0.5), width=1.0, color="#3b75af")
    ax.set_yscale("log")
    ax.axhline(s.sum() / len(s), color="k", lw=0.8, ls="--", label=f"mean {s.sum() / len(s):.0f}")
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("points")
    ax.set_title(title or f"cluster sizes, k={len(s)}")
    ax.legend(loc="upper right")
    _savefig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_projection(
    X: np.ndarray, labels: np.ndarray, centroids: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """2-D PCA of the points X (n, D), coloured by cluster, centroids as black crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = X.mean(axis=0, dtype=np.float64)
    xc = (X - mean).astype(np.float64)
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)  # principal axes of the sample
    axes = np.zeros((X.shape[1], 2))  # (D, 2); a 1-D embedding gets a flat second axis
    axes[:, : min(2, len(vt))] = vt[:2].T
    p, c = xc @ axes, (centroids - mean) @ axes  # (n, 2), (k, 2)
    var = np.zeros(2)
    var[: min(2, len(sv))] = (sv[:2] ** 2 / max((sv**2).sum(), 1e-30)) * 100
    k = len(centroids)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    cmap = "tab10" if k <= 10 else "tab20" if k <= 20 else "nipy_spectral"  # distinct colours while they last
    size = float(np.clip(3000 / max(len(X), 1), 3, 30))
    ax.scatter(p[:, 0], p[:, 1], c=labels, cmap=cmap, vmin=0, vmax=max(k - 1, 1), s=size, alpha=0.7, lw=0)
    ax.scatter(c[:, 0], c[:, 1], marker="x", c="k", s=25, lw=1)
    ax.set_xlabel(f"PC1 ({var[0]:.1f}% var)")
    ax.set_ylabel(f"PC2 ({var[1]:.1f}% var)")
    ax.set_title(title or f"PCA of {len(X)} points, k={k}")
    _savefig(fig, Path(path))
    plt.close(fig)
    return Path(path)


def write_report(
    files: dict[str, Path],
    xs: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    inertia: float,
    sample: np.ndarray,
    classes: np.ndarray | None,
    extra: dict,
    title: str,
) -> dict:
    """Write centroids.npy, metrics.json and the two PNGs (each atomically) -> the metrics dict.
    xs (m, D): the points at `sample` (indices into labels), as clustered."""
    k = len(centroids)
    with atomic_path(files["centroids"]) as tmp, open(tmp, "wb") as f:
        np.save(f, centroids)
    metrics = {**cluster_metrics(xs, labels, k, inertia, sample, classes), **extra}
    write_json(files["metrics"], metrics)
    plot_cluster_sizes(np.bincount(labels, minlength=k), files["sizes_png"], title=f"cluster sizes: {title}")
    plot_projection(xs, labels[sample], centroids, files["projection_png"], title=f"PCA: {title}")
    return metrics


def sweep_table(rows: list[tuple[int, dict, str, bool]]) -> str:
    """Markdown table of a k sweep from (k, metrics, manifest name, skipped) tuples."""

    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        "| k | inertia | size min / median / max | silhouette | CH | DB | NMI | ARI | iters | s | manifest |",
        "|---" * 11 + "|",
    ]
    for k, m, name, skipped in rows:
        sz, lab = m["cluster_sizes"], m.get("labels") or {}
        lines.append(
            f"| {k} | {m['inertia']:.6g} | {sz['min']} / {sz['median']:g} / {sz['max']} | {f(m['silhouette'])} "
            f"| {f(m['calinski_harabasz'], '.1f')} | {f(m['davies_bouldin'])} | {f(lab.get('nmi'))} "
            f"| {f(lab.get('ari'))} | {m.get('n_iter', '-')} | {m.get('seconds', 0):.1f}"
            f"{' (done before)' if skipped else ''} | {name} |"
        )
    return "\n".join(lines)
