"""One training step's augmentation: SpecAugment before mixup (the reference's order), and
``augment: null`` switches SpecAugment off."""

from __future__ import annotations

import pytest
import torch

from ssondo_cache.typed_config import from_dict
from ssondo_distill import step
from ssondo_distill.config import TrainConfig
from tests.distill.test_trainer import FRONTEND


def _parts(**over):
    # from_dict, as a config file is read: there ``augment: null`` is None (a CLI override of None is "not given")
    cfg = from_dict(
        TrainConfig, {"student": "mn04", "frontend": FRONTEND, "device": "cpu", "mixup_alpha": 0.3, **over}
    )
    return step.build_parts(cfg, teacher_dim=8, stream_rate=8000, device=torch.device("cpu"))


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    audio = (torch.randn(4, 4000, generator=g) * 3000).to(torch.int16)
    return {
        "audio": audio,
        "target": torch.randn(4, 8, generator=g),
        "cluster": torch.zeros(4, dtype=torch.long),
    }


@pytest.mark.parametrize("augment", [{"freq_mask": 8, "time_mask": 10}, None])
def test_specaugment_runs_before_mixup_or_not_at_all(monkeypatch, augment):
    parts = _parts(augment=augment)
    calls: list[str] = []
    real_mixup = step.mixup

    def mixup(mel, *args, **kwargs):
        calls.append("mixup")
        return real_mixup(mel, *args, **kwargs)

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, mel):
            calls.append("specaug")
            return self.inner(mel)

    monkeypatch.setattr(step, "mixup", mixup)
    if parts.specaug is not None:
        parts.specaug = Recorder(parts.specaug)
    step.batch_loss(parts, _batch()).backward()
    assert calls == (["specaug", "mixup"] if augment is not None else ["mixup"])
