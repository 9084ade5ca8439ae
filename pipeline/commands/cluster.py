"""`ssondo cluster`: k-means on a teacher cache -> WORK/manifests/balanced-k{K}.parquet (balanced sampling)."""

from __future__ import annotations

import logging
from pathlib import Path

import click


def _ks(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        ks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise click.BadParameter(f"{value!r} is not a number or a comma-separated list (10,25,50)") from err
    if not ks or min(ks) < 1:
        raise click.BadParameter("k must be at least 1")
    return sorted(set(ks))


@click.command(context_settings={"show_default": True})
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--cache",
    "cache_name",
    required=True,
    help="Cache NAME: <teacher_id>/ts<TS>-hop<HOP> or a unique suffix such as ts1-hop1 (see `ssondo cache info`).",
)
@click.option(
    "-k",
    "--k",
    "ks",
    default="50",
    callback=_ks,
    help="Clusters; a comma-separated list (10,25,50,100) runs a sweep and writes a summary table.",
)
@click.option("--normalize", is_flag=True, help="L2-normalise embeddings and run spherical k-means (cosine).")
@click.option(
    "--level",
    type=click.Choice(["clip", "window"]),
    default="clip",
    help="Cluster clip embeddings (one row per clip) or every window embedding (one row per window, "
    "with a `window` column).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=None,
    help="Train k-means on this many random points (0: all of them, which holds N x D float32 in memory); "
    "every point is still assigned, streamed from the cache one tar shard at a time. [default: 1024 per "
    "centroid, at most 1 GiB of float32: measured to keep the inertia on all points within 0.2 % of "
    "training on all of them, in bounded memory]",
)
@click.option(
    "--init-sample",
    type=click.IntRange(min=0),
    default=None,
    help="Points the k-means++ seeding runs on (0: all training points). [default: max(5000, 100 k)]",
)
@click.option(
    "--n-init",
    type=click.IntRange(min=1),
    default=None,
    help="Seedings (k-means++ + at most 20 Lloyd iterations, in the seeding subset's top 2k principal "
    "directions) tried; the best one is refined on the training sample (many cheap restarts find a lower "
    "inertia than one long run). [default: as many as cost at most 16 Lloyd iterations on the training "
    "sample, up to 32]",
)
@click.option("--max-iter", type=click.IntRange(min=1), default=100, help="Most Lloyd iterations.")
@click.option(
    "--tol",
    type=click.FloatRange(min=0),
    default=1e-4,
    help="Stop when the objective improves by less than this fraction.",
)
@click.option("--seed", type=int, default=0, help="Random seed: the same seed gives the same manifest.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="FAISS device: auto (GPU if FAISS sees one, said in the log), cpu, or cuda (an error without a GPU).",
)
@click.option(
    "--random",
    "random_baseline",
    is_flag=True,
    help="Also write manifests/random.parquet, the uniform baseline with the same schema.",
)
@click.option(
    "--force", is_flag=True, help="Replace manifests made with other settings (never done silently)."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def cluster(work: Path, cache_name: str, ks: list[int], normalize: bool, level: str, sample: int | None,
            init_sample: int | None, n_init: int | None, max_iter: int, tol: float, seed: int, device: str,
            random_baseline: bool, force: bool, no_progress: bool) -> None:  # fmt: skip
    """Cluster the embeddings of a complete teacher cache with FAISS k-means (k-means++ seeding, trained on
    a sample, every point assigned) and write balanced sampling manifests: weight = 1 / size of the clip's cluster, summing to 1.

    Beside each manifest: centroids (.npy), metrics (.json) and two PNGs (cluster sizes, PCA projection).
    Re-running with the same settings is a no-op.
    """
    from ssondo_cache.cluster import cluster_cache

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = cluster_cache(
            work, cache_name, ks, seed=seed, normalize=normalize, level=level, sample=sample, device=device,
            max_iter=max_iter, tol=tol, init_sample=init_sample, n_init=n_init,
            random_baseline=random_baseline, force=force, progress=not no_progress,
        )  # fmt: skip
    except (ValueError, OSError) as err:  # refused input: incomplete cache, NaN rows, k too large, no GPU
        raise click.ClickException(str(err)) from err
    click.echo(summary.report())
