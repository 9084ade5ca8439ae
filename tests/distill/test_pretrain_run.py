"""`ssondo pretrain matpac` end to end on a tiny packed corpus (tests/distill/test_stream.py's tones):
the loss falls and the prototypes stay in use, exact resume, a stop signal at a resumable point, the
no-op re-run, and the saved encoder extracting a cache as the MATPAC teacher."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ssondo_cache import lifecycle
from ssondo_cache.extract import extract
from ssondo_cache.typed_config import to_dict
from ssondo_distill.pretrain import loop
from ssondo_distill.pretrain.config import PretrainConfig, load_pretrain_config
from ssondo_distill.pretrain.guards import CollapseGuard
from ssondo_distill.pretrain.loop import pretrain
from tests.distill.test_stream import make_corpus

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "encoder": {"embed_dim": 64, "depth": 1, "num_heads": 1, "frames": 64},
    "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "prototypes": {"prototypes": 32, "hidden_dim": 64, "bottleneck_dim": 16, "warmup_teacher_temp_epochs": 1},
    "ema_decay": 0.9,
    "ema_end_decay": 0.99,
    "seed": 0,
    "epochs": 8,
    "samples_per_epoch": 24,
    "batch_size": 8,
    "base_lr": 2e-3,
    "base_batch_size": 8,
    "warmup_epochs": 1,
    "shuffle_buffer": 16,
    "num_workers": 0,
    "log_every": 3,
    "checkpoint_every": 6,
    "device": "cpu",
    "precision": "fp32",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("pretrain"), n_clips=24, shard_size=4)


def cfg(work: Path, out: Path, **over) -> PretrainConfig:
    return load_pretrain_config(None, {**TINY, "work": str(work), "out": str(out), **over})


def encoder_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "encoder.pt", weights_only=True)


@pytest.mark.slow
def test_tiny_run_learns_without_collapse_and_the_encoder_extracts_a_cache(work, tmp_path):
    run = tmp_path / "run"
    result = pretrain(cfg(work, run), progress=False)
    assert result.steps == 24 and result.final_loss < result.first_loss
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(3, 25, 3))
    for key in ("loss_pred", "loss_cls", "usage_entropy", "target_entropy", "latent_std"):
        assert all(key in r for r in steps)
    assert result.final_stats["usage_entropy"] > TINY.get("min_usage_entropy", 0.1)  # prototypes in use
    assert result.final_stats["target_entropy"] < 0.99 and result.final_stats["latent_std"] > 0.05
    assert not result.collapses
    assert (run / "curves.png").stat().st_size > 0 and (run / "result.json").is_file()
    # the saved encoder is a MATPAC teacher checkpoint: strict load, a complete cache
    extracted = extract(
        work,
        "matpac",
        checkpoint=run / "encoder.pt",
        ts=0.5,
        device="cpu",
        batch_size=4,
        workers=0,
        progress=False,
    )
    assert extracted.cache_complete and extracted.clips == 24
    from ssondo_cache.store import CacheStore

    store = CacheStore(extracted.cache)
    assert store.embed_dim == 5 * 64 and store.attrs["teacher"] == "matpac"
    assert torch.isfinite(torch.from_numpy(store.read_clip(0, 24))).all()
    # re-running the finished run is a no-op
    again = pretrain(cfg(work, run), progress=False)
    assert again.steps == 24 and again.final_loss == result.final_loss


@pytest.mark.slow
def test_resume_after_a_stop_signal_ends_bitwise_equal(work, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    pretrain(cfg(work, straight, epochs=3), progress=False)

    stopped = tmp_path / "stopped"
    calls = {"n": 0}

    def stop_at_step_4(world_size, device="cpu"):
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == 4 else None

    monkeypatch.setattr(lifecycle, "stop_agreed", stop_at_step_4)
    with pytest.raises(lifecycle.Stopped, match="checkpoint of step 4 of 9"):
        pretrain(cfg(work, stopped, epochs=3), progress=False)
    assert (stopped / "checkpoints" / "step-000000004.pt").is_file()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume"):
        pretrain(cfg(work, stopped, epochs=3), progress=False)
    resumed = pretrain(cfg(work, stopped, epochs=3, resume=True), progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 9
    a, b = encoder_state(straight), encoder_state(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = lambda run: torch.load(run / "checkpoints" / "step-000000009.pt", weights_only=True)["model"]  # noqa: E731
    ma, mb = last(straight), last(stopped)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)  # EMA target, heads and centre too
    with pytest.raises(ValueError, match="other settings"):
        pretrain(cfg(work, stopped, epochs=3, resume=True, seed=1), progress=False)


def test_a_fresh_run_writes_its_step_0_encoder_as_the_random_init_baseline(work, tmp_path):
    from ssondo_cache.teachers.matpac import build_matpac
    from ssondo_distill.pretrain.model import MatpacModel

    run, c = tmp_path / "run", cfg(work, tmp_path / "run", max_steps=2)
    pretrain(c, progress=False)
    init, trained = torch.load(run / loop.INIT_ENCODER, weights_only=True), encoder_state(run)
    torch.manual_seed(c.seed)
    seeded = MatpacModel(c).official_state_dict()  # the initialisation the seed alone gives
    assert init.keys() == seeded.keys() == trained.keys()
    assert all(torch.equal(init[k], seeded[k]) for k in init)
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("student_encoder."))
    assert build_matpac(run / loop.INIT_ENCODER).embed_dim == 5 * 64  # strict load as the teacher
    (run / loop.INIT_ENCODER).unlink()
    pretrain(cfg(work, run, max_steps=4, resume=True), progress=False)
    assert not (run / loop.INIT_ENCODER).exists()  # a resumed run is past step 0: nothing to write


def test_collapse_guard_warns_once_per_kind(caplog):
    guard = CollapseGuard(min_usage_entropy=0.1, max_target_entropy=0.99, min_latent_std=0.05)
    healthy = {"usage_entropy": 0.8, "target_entropy": 0.5, "latent_std": 0.7}
    assert guard.check(1, healthy) == []
    found = guard.check(2, {**healthy, "usage_entropy": 0.01, "latent_std": 0.0})
    assert [f["collapse"] for f in found] == ["usage_entropy", "latent_std"]
    assert "collapse at step 2: usage_entropy" in caplog.text
    assert guard.check(3, {**healthy, "usage_entropy": 0.0, "target_entropy": 1.0}) == [
        {"step": 3, "collapse": "target_entropy", "value": 1.0, "threshold": 0.99}
    ]


def test_shipped_configs_load_and_the_command_runs(work, tmp_path):
    tiny = load_pretrain_config(
        REPO / "configs" / "pretrain" / "matpac-tiny-cpu.yaml", {"work": "w", "out": "o"}
    )
    vitb = load_pretrain_config(
        REPO / "configs" / "pretrain" / "matpac-vitb-gpu.yaml", {"work": "w", "out": "o"}
    )
    assert tiny.device == "cpu" and tiny.encoder.embed_dim // tiny.encoder.num_heads == 64
    large = load_pretrain_config(
        REPO / "configs" / "pretrain" / "matpac-tiny-large-cpu.yaml", {"work": "w", "out": "o"}
    )
    differ = {k for k, v in to_dict(large).items() if to_dict(tiny)[k] != v}
    assert differ <= {"samples_per_epoch", "epochs", "log_every", "checkpoint_every"}  # its header's claim
    assert (vitb.encoder.embed_dim, vitb.encoder.depth, vitb.encoder.frames) == (768, 12, 608)
    assert vitb.mcl.enabled and vitb.predictor.mask_ratio == 0.7 and vitb.prototypes.prototypes == 2048
    assert PretrainConfig().lr == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="unknown key"):
        load_pretrain_config(None, {"encoder": {"width": 3}})

    from pipeline.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        main,
        [
            "pretrain",
            "matpac",
            str(work),
            "--config",
            str(config),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output and (out / "encoder.pt").is_file()
    args = ["pretrain", "matpac", str(work), "--config", str(config), "--out", str(tmp_path / "x")]
    res = CliRunner().invoke(main, [*args, "--batch-size", "32"])
    assert res.exit_code == 1 and "samples_per_epoch 24 is less than one batch of 32" in res.output


def test_long_config_is_the_large_one_with_its_schedules_stretched_8_times():
    load = lambda name: load_pretrain_config(REPO / "configs" / "pretrain" / name, {"work": "w", "out": "o"})  # noqa: E731
    large, long = load("matpac-tiny-large-cpu.yaml"), load("matpac-tiny-large-cpu-long.yaml")
    a, b = to_dict(large), to_dict(long)
    assert {k for k in a if a[k] != b[k]} == {
        "epochs",
        "warmup_epochs",
        "prototypes",
        "log_every",
        "checkpoint_every",
    }
    assert {k for k in a["prototypes"] if a["prototypes"][k] != b["prototypes"][k]} == {
        "warmup_teacher_temp_epochs"
    }
    assert long.total_steps == 8 * large.total_steps == 18_880  # its header's claim
    for cfg in (large, long):  # same fractions of the run
        assert cfg.warmup_epochs / cfg.epochs == pytest.approx(0.1)
        assert cfg.prototypes.warmup_teacher_temp_epochs / cfg.epochs == pytest.approx(0.2)


def test_loop_module_has_no_stale_identity_keys():
    fields = set(PretrainConfig.__dataclass_fields__)
    assert set(loop.NOT_IDENTITY) <= fields


@pytest.mark.gpu
def test_bf16_pretraining_on_a_gpu(work, tmp_path):
    from ssondo_cache.teachers.matpac import build_matpac

    run = tmp_path / "gpu"
    result = pretrain(cfg(work, run, device="cuda", precision="bf16", epochs=2), progress=False)
    assert result.steps == 6 and math.isfinite(result.final_loss)
    assert build_matpac(run / "encoder.pt").embed_dim == 5 * 64  # strict load of what bf16 training wrote
