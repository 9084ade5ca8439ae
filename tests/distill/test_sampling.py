"""The balanced sampling plan: cluster shares, repeats, uniform coverage, reader cuts, shuffling."""

from __future__ import annotations

import numpy as np
import pytest

from ssondo_distill import sampling
from ssondo_distill.schedule import ScheduleConfig, build_scheduler, lr_factor


def _skewed_table(n_shards: int = 12, per_shard: int = 50, seed: int = 0) -> sampling.SamplingTable:
    """A manifest like `ssondo cluster` writes: very unequal clusters, weight 1/|cluster|."""
    rng = np.random.default_rng(seed)
    n = n_shards * per_shard
    sizes = np.array([300, 150, 80, 40, 20, 6, 3, 1])
    sizes[0] += n - sizes.sum()
    clusters = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    w = 1.0 / sizes[clusters]
    return sampling.make_table(
        keys=[f"k{i:05d}" for i in range(n)],
        rows=np.arange(n),
        shards=np.arange(n) // per_shard,
        weights=w / w.sum(),
        clusters=clusters,
        kind="balanced",
    )


def _emitted(table, plan, **kw) -> np.ndarray:
    """Table positions in emission order over all readers of one epoch."""
    out = []
    for r, segments in enumerate(plan.readers):
        for _, drop, draws in sampling.reader_stream(segments, epoch=plan.epoch, reader=r, **kw):
            out += [segments[s].positions[i] for s, i in draws[drop:]]
    return np.asarray(out)


def test_balanced_stream_matches_cluster_targets_and_repeats_minimally():
    table = _skewed_table()
    targets = table.cluster_targets()
    assert pytest.approx(sum(targets.values())) == 1.0
    emitted_per_cluster = np.zeros(len(targets))
    total = 0
    for epoch in range(6):
        plan = sampling.plan_epoch(
            table, seed=3, epoch=epoch, steps=25, batch_size=8, world_size=2, workers=2, shuffle_buffer=64
        )
        n_samples = 25 * 8 * 2
        assert plan.counts.sum() == n_samples
        # no clip repeated more than needed: each count is floor or ceil of weight * samples
        expected = table.weights * n_samples
        assert np.all(plan.counts <= np.ceil(expected)) and np.all(plan.counts >= np.floor(expected))
        pos = _emitted(table, plan, seed=3, shuffle_buffer=64)
        assert len(pos) == n_samples
        assert np.array_equal(np.bincount(pos, minlength=len(table)), plan.counts)
        emitted_per_cluster += np.bincount(table.clusters[pos], minlength=len(targets))
        total += len(pos)
    share = emitted_per_cluster / total
    for c, t in targets.items():
        assert abs(share[c] - t) <= 0.10 * t, (c, share[c], t)
    # the 1-clip cluster really is over-sampled (balanced, not the corpus distribution)
    assert share[7] > 5 / len(table)


def test_random_manifest_sees_every_clip_about_equally():
    n = 400
    table = sampling.make_table(
        keys=[f"k{i}" for i in range(n)], rows=np.arange(n), shards=np.arange(n) // 40
    )
    seen = np.zeros(n, dtype=np.int64)
    epochs = 5
    for epoch in range(epochs):
        plan = sampling.plan_epoch(
            table, seed=1, epoch=epoch, steps=35, batch_size=8, world_size=1, workers=3, shuffle_buffer=50
        )
        seen += np.bincount(_emitted(table, plan, seed=1, shuffle_buffer=50), minlength=n)
    per_epoch = 35 * 8 / n  # 0.7: each clip 0 or 1 time per epoch
    assert seen.sum() == epochs * 35 * 8
    assert seen.min() >= np.floor(epochs * per_epoch) - 1 and seen.max() <= np.ceil(epochs * per_epoch) + 1
    assert np.ptp(seen) <= 2


def test_readers_get_exact_quotas_and_shard_order_changes():
    table = _skewed_table()
    a = sampling.plan_epoch(
        table, seed=0, epoch=0, steps=10, batch_size=4, world_size=2, workers=3, shuffle_buffer=16
    )
    b = sampling.plan_epoch(
        table, seed=0, epoch=1, steps=10, batch_size=4, world_size=2, workers=3, shuffle_buffer=16
    )
    again = sampling.plan_epoch(
        table, seed=0, epoch=0, steps=10, batch_size=4, world_size=2, workers=3, shuffle_buffer=16
    )
    assert a.batches == [4, 3, 3, 4, 3, 3]
    for segments, batches in zip(a.readers, a.batches, strict=True):
        assert sum(s.n_samples for s in segments) == batches * 4
        for s in segments:  # tar order inside a segment, all from its shard
            assert np.all(np.diff(table.rows[s.positions]) > 0) and np.all(
                table.shards[s.positions] == s.shard
            )
    assert not np.array_equal(a.shard_order, b.shard_order)
    assert np.array_equal(a.shard_order, again.shard_order) and np.array_equal(a.counts, again.counts)


def test_too_few_shards_is_an_error_with_the_numbers():
    table = sampling.make_table(keys=["a", "b", "c"], rows=[0, 1, 2], shards=[0, 0, 1])
    with pytest.raises(ValueError, match=r"2 tar shard\(s\) for 2 rank\(s\) x 2 worker\(s\) = 4 readers"):
        sampling.plan_epoch(
            table, seed=0, epoch=0, steps=1, batch_size=2, world_size=2, workers=2, shuffle_buffer=4
        )


def test_window_skip_resumes_the_same_emission_order():
    table = _skewed_table()
    plan = sampling.plan_epoch(
        table, seed=5, epoch=2, steps=20, batch_size=8, world_size=1, workers=1, shuffle_buffer=30
    )
    full = [
        d
        for _, drop, draws in sampling.reader_stream(
            plan.readers[0], seed=5, epoch=2, reader=0, shuffle_buffer=30
        )
        for d in draws[drop:]
    ]
    for skip in (0, 29, 30, 77):
        rest = [
            d
            for _, drop, draws in sampling.reader_stream(
                plan.readers[0], seed=5, epoch=2, reader=0, shuffle_buffer=30, skip=skip
            )
            for d in draws[drop:]
        ]
        assert rest == full[skip:]
    # the shuffle really mixes: emission order differs from read order
    assert [s for s, _ in full] != sorted(s for s, _ in full) or len({s for s, _ in full}) == 1


def test_holdout_is_stratified_over_clusters_and_shards_and_excluded():
    table = _skewed_table()  # 12 shards of 50 clips, clusters of 300..1 clips
    train, val = sampling.split_holdout(table, 70, seed=0)
    assert len(val) == 70 and len(train) == len(table) - 70
    assert not set(table.rows[val]) & set(train.rows)
    assert pytest.approx(train.weights.sum()) == 1.0
    # every cluster its share by size (up to rounding), every shard, none over its share by more than one
    sizes = np.bincount(table.clusters)
    got = np.bincount(table.clusters[val], minlength=len(sizes))
    assert np.all(np.abs(got - 70 * sizes / len(table)) < 1), got
    per_shard = np.bincount(table.shards[val], minlength=12)
    assert per_shard.min() >= 1 and per_shard.max() <= np.ceil(70 / 12) + 1, per_shard
    # fixed by the seed, another seed another set; a few clips still come from several shards
    assert np.array_equal(sampling.split_holdout(table, 70, seed=0)[1], val)
    assert not np.array_equal(sampling.split_holdout(table, 70, seed=1)[1], val)
    for n_val in (2, 5):
        small = sampling.split_holdout(table, n_val, seed=3)[1]
        assert len(np.unique(table.shards[small])) == n_val
    uniform = sampling.make_table(
        keys=[f"k{i}" for i in range(600)], rows=np.arange(600), shards=np.arange(600) // 50
    )
    assert np.bincount(uniform.shards[sampling.split_holdout(uniform, 24, seed=0)[1]]).tolist() == [2] * 12
    with pytest.raises(ValueError, match="keep some to train on"):
        sampling.split_holdout(table, len(table), seed=0)


def test_table_refuses_bad_input():
    with pytest.raises(ValueError, match="empty"):
        sampling.make_table(keys=[], rows=[], shards=[])
    with pytest.raises(ValueError, match="strictly increasing"):
        sampling.make_table(keys=["a", "a"], rows=[3, 3], shards=[0, 0])


def test_schedule_matches_the_efficientat_formula():
    cfg = ScheduleConfig(
        warmup_epochs=8, rampdown_start=80, rampdown_epochs=95, last_value=0.01, per_epoch=True
    )

    def plain(epoch: int) -> float:  # the published recipe, written out
        up = 1.0 if epoch >= 8 else float(np.exp(-5.0 * (1.0 - np.clip(epoch, 0.5, 8) / 8) ** 2))
        if epoch <= 80:
            down = 1.0
        elif epoch - 80 < 95:
            down = 0.01 + 0.99 * (95 - epoch + 80) / 95
        else:
            down = 0.01
        return up * down

    for epoch in [0, 1, 4, 7, 8, 50, 80, 81, 120, 174, 175, 176, 300]:
        assert lr_factor(epoch + 0.5, cfg) == pytest.approx(plain(epoch), rel=1e-12), epoch
    smooth = ScheduleConfig(warmup_epochs=2, rampdown_start=3, rampdown_epochs=2, last_value=0.1)
    values = [lr_factor(s / 10, smooth) for s in range(0, 60)]
    assert values[0] == pytest.approx(np.exp(-5 * 0.75**2))
    assert max(values) == 1.0 and values[-1] == pytest.approx(0.1)
    assert all(b >= a for a, b in zip(values[:20], values[1:21], strict=True))  # warm-up rises
    assert all(b <= a for a, b in zip(values[30:-1], values[31:], strict=True))  # ramp-down falls


def test_scheduler_state_round_trips():
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    cfg = ScheduleConfig(warmup_epochs=1, rampdown_start=1, rampdown_epochs=1, last_value=0.0)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.Adam([p], lr=1.0)
    sched2 = build_scheduler(opt2, cfg, steps_per_epoch=4)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() == [pytest.approx(lr_factor(3 / 4, cfg))]


def _unique_per_batch(batches: list[np.ndarray]) -> float:
    return float(np.mean([len(np.unique(b)) for b in batches]))


def test_repeats_are_spread_so_batches_look_like_iid_weighted_sampling():
    """A clip's repeats are spread over the epoch, not read back to back: the distinct clips per
    batch match torch's WeightedRandomSampler (i.i.d. with replacement, the reference's sampler)
    within 5 %. Read back to back and only window-shuffled, a skewed manifest put several copies
    of one clip into a batch (about half as many distinct clips)."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    table = _skewed_table()
    batch, steps, ours, iid = 32, 40, [], []
    for epoch in range(4):
        plan = sampling.plan_epoch(
            table,
            seed=2,
            epoch=epoch,
            steps=steps,
            batch_size=batch,
            world_size=1,
            workers=2,
            shuffle_buffer=256,
        )
        for r, segments in enumerate(plan.readers):
            pos = [
                segments[s].positions[i]
                for _, drop, draws in sampling.reader_stream(
                    segments, seed=2, epoch=epoch, reader=r, shuffle_buffer=256
                )
                for s, i in draws[drop:]
            ]
            ours += np.split(np.asarray(pos), len(pos) // batch)
        drawn = WeightedRandomSampler(
            torch.as_tensor(table.weights), steps * batch, generator=torch.Generator().manual_seed(epoch)
        )
        iid += np.split(np.asarray(list(drawn)), steps)
    a, b = _unique_per_batch(ours), _unique_per_batch(iid)
    assert abs(a - b) <= 0.05 * b, (a, b)
