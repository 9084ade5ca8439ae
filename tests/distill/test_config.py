"""TrainConfig: shipped configs load and name real components; unknown keys and bad values refused."""

from __future__ import annotations

import json

import pytest
import torch

from ssondo_cache.typed_config import ConfigError, to_dict
from ssondo_distill.config import TrainConfig, load_train_config, shipped_configs
from ssondo_distill.losses import LOSSES
from ssondo_distill.students import STUDENTS, build_student

PAPER = {(s, t) for s in ("mn10", "dymn10", "eres2net") for t in ("matpac", "m2d")}
CPU_CONFIGS = {"demo-cpu", "quality-cpu"}  # the CPU demo's and the quality benchmark's, not paper settings


def test_every_shipped_config_loads_and_builds():
    paths = shipped_configs()
    names = {p.stem for p in paths}
    assert {f"{s}-{t}" for s, t in PAPER} | CPU_CONFIGS <= names
    for path in paths:
        cfg = load_train_config(path, {"work": "/tmp/w", "cache": "ts1-hop1", "out": "/tmp/r"})
        cfg.require_paths()
        assert cfg.student in STUDENTS and cfg.loss in LOSSES, path
        if path.stem not in CPU_CONFIGS:
            assert (cfg.student, cfg.teacher) in PAPER and cfg.manifest.startswith("balanced")
            assert cfg.precision == "auto" and cfg.loss == "cosine"
            # the reference's KD configs: no mixup, no SpecAugment; what it does not state is said
            assert cfg.mixup_alpha == 0 and cfg.augment is None, path
            text = path.read_text()
            for key in ("epochs", "samples_per_epoch", "batch_size"):
                assert any(line.startswith(f"{key}:") and "UNKNOWN" in line for line in text.splitlines())
            if cfg.student != "eres2net":  # EfficientAT's ImageNet weights, named (not loaded)
                assert f"{cfg.student}_im.pt" in text and "efficientat_weights" not in cfg.student_options
        with torch.device("meta"):  # checks the student options without allocating weights
            student = build_student(cfg.student, teacher_dim=64, **cfg.student_options)
        assert student.teacher_dim == 64


def test_overrides_win_and_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student: mn04\nlr: 0.01\nschedule:\n  warmup_epochs: 2\n")
    cfg = load_train_config(path, {"lr": 0.5, "seed": None, "batch_size": 8})
    assert cfg.lr == 0.5 and cfg.seed == 0 and cfg.batch_size == 8 and cfg.schedule.warmup_epochs == 2.0
    assert json.loads(json.dumps(to_dict(cfg)))["schedule"]["warmup_epochs"] == 2.0
    path.write_text("student: mn04\nlearning_rate: 0.01\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config(path)
    path.write_text("schedule:\n  warmup: 2\n")
    with pytest.raises(ConfigError, match="warmup"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="expected int"):
        load_train_config(None, {"epochs": "many"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target": "frame"}, "target"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"loss": "clap", "mixup_alpha": 0.3}, "mixup .* contrastive loss 'clap'.*set mixup_alpha: 0"),
        ({"loss": "cluster_contrastive"}, "mixup_alpha 0.3. with the contrastive loss"),
        # a removed option is refused when the config is read, pointing to what replaced it
        (
            {"student_options": {"efficientat_weights": "mn10_im.pt"}},
            r"student_options.efficientat_weights: no longer an option; starting weights are given as `init: PATH`",
        ),
        (
            {"student_options": {"efficientat_weights": "mn10_im.pt"}, "init": "mn10_im.pt"},
            r"student_options.efficientat_weights: no longer an option",
        ),
    ],
)
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, overrides)


def test_contrastive_losses_train_without_mixup():
    assert load_train_config(None, {"loss": "clap", "mixup_alpha": 0.0}).loss == "clap"
    assert load_train_config(None, {"loss": "kl"}).mixup_alpha > 0  # regression losses mix


def test_missing_paths_are_named():
    with pytest.raises(ConfigError, match="missing cache, out"):
        TrainConfig(work="/tmp/w").require_paths()


def test_cli_flags_override_the_config_and_errors_are_messages(tmp_path):
    from click.testing import CliRunner

    from pipeline.commands.train import train

    bad = tmp_path / "bad.yaml"
    bad.write_text("student: mn04\nlearnig_rate: 1\n")
    result = CliRunner().invoke(train, [str(tmp_path), "--config", str(bad), "--cache", "x", "--out", "r"])
    assert result.exit_code == 1 and "learnig_rate" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        train,
        [
            str(tmp_path),
            "--cache",
            "ts1-hop1",
            "--out",
            str(tmp_path / "r"),
            "--student",
            "mn04",
            "--dry-run",
        ],
    )
    assert result.exit_code == 1 and "no cache 'ts1-hop1'" in result.output
