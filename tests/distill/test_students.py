"""Students: shapes, parameter counts vs the paper, EfficientAT layouts and golden outputs,
DyMN's temperature schedule, gradients in fp32 and bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssondo_distill.students import PAPER_BACKBONE_PARAMS, STUDENTS, build_student, count_parameters
from ssondo_distill.students.dymn import DyMNBackbone, DynamicConv, TemperatureSchedule
from ssondo_distill.students.mobilenetv3 import MobileNetV3Backbone, load_efficientat_state_dict

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "official"
GOLDEN = FIXTURES / "efficientat_tiny_official.pt"
LAYOUTS = FIXTURES / "official_state_dict_layouts.json"

torch.set_num_threads(1)

# Tiny settings per family: quick to build and run on a CPU.
TINY = {
    "mn04": dict(hidden_dim=32),
    "dymn04": dict(hidden_dim=32),
    "eres2net": dict(n_mels=32, m_channels=4, num_blocks=[1, 1, 1, 1, 1], hidden_dim=32),
}
TINY_MELS = {"mn04": 64, "dymn04": 64, "eres2net": 32}


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


def _fp32(sd: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def test_registry_has_every_student() -> None:
    assert {"mobilenetv3", "mn10", "mn05", "mn04", "dymn", "dymn10", "dymn04", "eres2net"} <= set(
        STUDENTS.names()
    )


@pytest.mark.parametrize("name", list(TINY))
def test_forward_and_embed_shapes(name: str) -> None:
    torch.manual_seed(0)
    s = build_student(name, 24, **TINY[name]).eval()
    mel = torch.randn(3, 1, TINY_MELS[name], 50)
    emb, out = s.embed(mel), s(mel)
    assert emb.shape == (3, s.backbone_dim) and out.shape == (3, 24)
    assert torch.allclose(out, s.head(emb), atol=1e-6)
    assert torch.isfinite(out).all()
    # the config rebuilds the same architecture
    again = build_student(**s.config())
    again.load_state_dict(s.state_dict(), strict=True)


def test_bad_inputs_are_refused() -> None:
    s = build_student("mn04", 8, hidden_dim=16)
    with pytest.raises(ValueError, match="expects mel"):
        s(torch.randn(2, 64, 50))
    with pytest.raises(ValueError, match="unknown option"):
        build_student("mn04", 8, widht_mult=0.5)
    with pytest.raises(ValueError, match="fixes"):
        build_student("mn04", 8, width_mult=0.5)
    with pytest.raises(KeyError, match="unknown student"):
        build_student("resnet", 8)
    e = build_student("eres2net", 8, **TINY["eres2net"])
    with pytest.raises(ValueError, match="32 mel bands"):
        e(torch.randn(1, 1, 64, 40))


@pytest.mark.parametrize("name, backbone_dim", [("mobilenetv3", 960), ("dymn", 960), ("eres2net", 1024)])
def test_parameter_counts_match_the_paper(name: str, backbone_dim: int) -> None:
    """Backbone = everything up to the pooled embedding (EfficientAT's classifier and the
    S-SONDO head excluded), the figure the paper reports; within 10 %."""
    s = build_student(name, 3840)
    c = count_parameters(s)
    assert c["backbone_dim"] == backbone_dim
    assert c["paper_backbone"] == PAPER_BACKBONE_PARAMS[name]
    assert abs(c["backbone"] - c["paper_backbone"]) / c["paper_backbone"] < 0.10, c
    # head: Linear(backbone_dim, 1280) + Linear(1280, 3840), with biases
    assert c["head"] == backbone_dim * 1280 + 1280 + 1280 * 3840 + 3840
    assert c["total"] == c["backbone"] + c["head"] == sum(p.numel() for p in s.parameters())
    # narrower or non-paper settings do not claim the paper's figure
    assert count_parameters(build_student("mn04", 8, hidden_dim=16))["paper_backbone"] is None


@pytest.mark.parametrize(
    "key, make",
    [
        ("efficientat_mn10_as", lambda: MobileNetV3Backbone(1.0)),
        ("efficientat_mn05_as", lambda: MobileNetV3Backbone(0.5)),
        ("efficientat_mn04_as", lambda: MobileNetV3Backbone(0.4)),
        ("efficientat_dymn10_as", lambda: DyMNBackbone(1.0)),
    ],
)
def test_full_size_efficientat_layout_loads_strictly(key: str, make) -> None:
    """A state_dict with EfficientAT's exact key names and shapes (incl. its 527-class
    classifier) loads strictly: every backbone key present, the classifier explicitly dropped."""
    layout = json.loads(LAYOUTS.read_text())[key]
    sd = {
        k: torch.zeros(shape, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float16)
        for k, shape in layout.items()
    }
    backbone = make()
    dropped = load_efficientat_state_dict(backbone, sd)
    assert dropped == sorted(k for k in layout if k.startswith("classifier."))
    assert len(dropped) == 4
    # strict: one missing or one foreign key is an error, never a quiet partial load
    some_key = next(k for k in layout if not k.startswith("classifier."))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_efficientat_state_dict(make(), {k: v for k, v in sd.items() if k != some_key})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_efficientat_state_dict(make(), {**sd, "features.99.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "name, make", [("mn04", lambda: MobileNetV3Backbone(0.4)), ("dymn04", lambda: DyMNBackbone(0.4))]
)
def test_reproduces_efficientat_golden_outputs(golden: dict, name: str, make) -> None:
    """Official EfficientAT (fp16-rounded weights, eval mode) on its own mel: our backbone
    gives the same pooled features, and with the official classifier the same logits."""
    sd = _fp32(golden[f"{name}_state_dict_fp16"])
    backbone = make()
    load_efficientat_state_dict(backbone, sd)
    backbone.eval()
    with torch.no_grad():
        feats = backbone.embed(golden["efficientat_mel_eval"])
        hidden = F.hardswish(F.linear(feats, sd["classifier.2.weight"], sd["classifier.2.bias"]))
        logits = F.linear(hidden, sd["classifier.5.weight"], sd["classifier.5.bias"])
    ref_f, ref_l = golden[f"{name}_features"], golden[f"{name}_logits"]
    assert feats.shape == ref_f.shape
    torch.testing.assert_close(feats, ref_f, rtol=1e-4, atol=1e-4 * ref_f.abs().max().item())
    torch.testing.assert_close(logits, ref_l, rtol=1e-4, atol=1e-4 * ref_l.abs().max().item())


def test_efficientat_weights_start_through_init_only(golden: dict, tmp_path: Path) -> None:
    """One way to start from EfficientAT weights: ``init`` (init_weights). The old student option
    is refused in one line that names the file and says what replaces it."""
    from ssondo_distill.init_weights import apply_init

    path = tmp_path / "mn04_as.pt"
    torch.save(golden["mn04_state_dict_fp16"], path)
    with pytest.raises(ValueError) as err:
        build_student("mn04", 16, hidden_dim=32, efficientat_weights=str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "init: PATH" in message and "--init" in message
    s = build_student("mn04", 16, hidden_dim=32)
    apply_init(s, path)
    assert s.init_info["dropped_keys"][0].startswith("classifier.")
    assert "efficientat_weights" not in s.config()  # trained weights travel in the checkpoint
    with torch.no_grad():
        feats = s.eval().embed(golden["efficientat_mel_eval"])
    torch.testing.assert_close(feats, golden["mn04_features"], rtol=1e-4, atol=1e-5)


def test_temperature_schedule_formula() -> None:
    sched = TemperatureSchedule(t_max=30, t_min=1, t0_slope=1, t1_slope=0.02)
    for epoch in [0, 1.5, 10, 28, 29, 35, 100]:
        t0 = 30 - epoch
        t1 = 1 + 0.02 * 29 - 0.02 * epoch
        assert sched(epoch) == pytest.approx(max(t0, t1, 1))
    assert sched(0) == 30 and sched(100) == 1


def test_dymn_temperature_schedule_changes_attention() -> None:
    """set_step (called by the trainer) lowers the temperature of every dynamic conv, which
    sharpens the attention over the K kernels and changes the output."""
    torch.manual_seed(0)
    # train mode: batch-statistics BN (a fresh net's identity running stats shrink the signal
    # ~1e-14 by the last block); the backbone has no dropout, so outputs stay comparable
    s = build_student("dymn04", 8, hidden_dim=16).train()
    # larger attention logits than the 0.01-std init gives, so the temperature has room to act
    with torch.no_grad():
        for m in s.modules():
            if isinstance(m, DynamicConv):
                m.residuals[0].weight.normal_(0, 20.0)
    mel = torch.randn(2, 1, 64, 40)
    convs = [m for m in s.modules() if isinstance(m, DynamicConv)]

    def attention_and_output(step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        s.set_step(step, steps_per_epoch=10)
        with torch.no_grad():
            out = s.embed(mel)
        return [c.last_attention.clone() for c in convs], out

    att0, out0 = attention_and_output(0)
    assert all(c.temperature == 30 for c in convs)
    att_late, out_late = attention_and_output(10 * 40)  # epoch 40: end of the schedule
    assert all(c.temperature == 1 for c in convs)

    def entropy(a: torch.Tensor) -> torch.Tensor:
        return -(a * a.clamp_min(1e-12).log()).sum(-1).mean()

    drops = [entropy(a0) - entropy(a1) for a0, a1 in zip(att0, att_late, strict=True)]
    # the first dynamic conv sees the same context both times: same logits, lower temperature,
    # so strictly sharper attention; deeper ones see changed inputs, but sharpen on average
    assert drops[0] > 0.1
    assert sum(drops) / len(drops) > 0.01
    assert max((a0 - a1).abs().max().item() for a0, a1 in zip(att0, att_late, strict=True)) > 0.05
    assert (out0 - out_late).abs().max() > 1e-3 * out0.abs().max()
    # a student without a schedule ignores set_step
    mn = build_student("mn04", 8, hidden_dim=16)
    mn.set_step(5, 10)
    with pytest.raises(ValueError):
        s.set_step(1, 0)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("bf16", [False, True])
def test_gradients_flow_and_are_finite(name: str, bf16: bool) -> None:
    torch.manual_seed(0)
    s = build_student(name, 12, **TINY[name]).train()
    mel = torch.randn(4, 1, TINY_MELS[name], 48)
    target = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = s(mel)
    loss = (1 - F.cosine_similarity(pred.float(), target, dim=-1)).mean()
    loss.backward()
    grads = [p.grad for p in s.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the first layer of the backbone and the last of the head both learn
    first = next(p for p in s.backbone.parameters())
    assert first.grad.abs().sum() > 0 and s.head[-1].weight.grad.abs().sum() > 0


def test_eres2net_reproduces_the_paper_authors_implementation() -> None:
    """Golden data made by running the S-SONDO authors' ERes2Net (MedAliAdlouni/ssondo@f89abf2,
    with its fifth stage and TSTP pooling) small, in eval mode with randomised BN statistics:
    its state_dict loads strictly and our embedding equals its output."""
    ref = torch.load(FIXTURES / "eres2net_tiny_ssondo_reference.pt", weights_only=True)
    cfg = ref["config"]
    s = build_student(
        "eres2net",
        8,
        n_mels=cfg["feat_dim"],
        m_channels=cfg["m_channels"],
        num_blocks=cfg["num_blocks"],
        hidden_dim=16,
    )
    s.backbone.load_state_dict(ref["state_dict"], strict=True)
    s.eval()
    with torch.no_grad():
        emb = s.embed(ref["mel"])
    torch.testing.assert_close(emb, ref["embedding"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, layout",
    [("mn04", "efficientat_mn04_as"), ("mn05", "efficientat_mn05_as"), ("mn10", "efficientat_mn10_as")],
)
def test_mobilenetv3_head_width_is_efficientats_last_channel(name: str, layout: str) -> None:
    """The head's hidden width defaults to EfficientAT's last_channel: the official classifiers'
    shapes (384 -> 512, 480 -> 640, 960 -> 1280 before the 527 classes) are our head's shapes."""
    official = json.loads(LAYOUTS.read_text())[layout]
    s = build_student(name, 527)
    assert tuple(s.head[0].weight.shape) == tuple(official["classifier.2.weight"])
    assert tuple(s.head[3].weight.shape) == tuple(official["classifier.5.weight"])
    assert s.config()["hidden_dim"] == official["classifier.2.weight"][0]  # recorded, not None
    # another width stays an option, and the config rebuilds it
    other = build_student(name, 8, hidden_dim=48)
    assert other.head[0].out_features == 48
    assert build_student(**other.config()).head[0].out_features == 48


def test_dymn_head_width_is_efficientats_last_channel() -> None:
    """DyMN's head also defaults to last_channel: dymn10 matches the official dymn10_as classifier
    (960 -> 1280 -> 527), dymn04 is 512 wide (the width the authors' package rebuilds)."""
    official = json.loads(LAYOUTS.read_text())["efficientat_dymn10_as"]
    s = build_student("dymn10", 527)
    assert tuple(s.head[0].weight.shape) == tuple(official["classifier.2.weight"])
    assert tuple(s.head[3].weight.shape) == tuple(official["classifier.5.weight"])
    small = build_student("dymn04", 8)
    assert small.head[0].out_features == 512 and small.config()["hidden_dim"] == 512
    assert build_student("dymn04", 8, hidden_dim=1280).head[0].out_features == 1280  # old files


def test_older_1280_wide_mn04_checkpoint_still_loads(tmp_path: Path) -> None:
    """student.pt files written before the default became last_channel record hidden_dim 1280:
    they rebuild 1280 wide and load strictly."""
    from ssondo_distill.checkpoint import load_student, save_student
    from ssondo_distill.frontend import LogMelConfig

    old = build_student("mn04", 8, hidden_dim=1280)
    path = save_student(tmp_path / "student.pt", old, LogMelConfig(), "tiny-0123456789ab", 8)
    model, meta = load_student(path)
    assert meta["student"]["hidden_dim"] == 1280 and model.student.head[0].out_features == 1280
    assert build_student("mn04", 8).head[0].out_features == 512  # new students: EfficientAT's width
