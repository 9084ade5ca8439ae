"""Quantisation-aware fine-tuning of the int8 export (``quantize_qat``, ``--int8-finetune``).

Only ISA-independent facts are asserted: structure, equality of two runs on this machine, and the
loss of the fake-quant model (fp32 arithmetic simulating int8) with a generous margin, never a value
of an int8 kernel's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from ssondo_distill import quantize, quantize_qat
from ssondo_distill.checkpoint import load_student, save_student
from ssondo_distill.export import Deployable, export_student
from ssondo_distill.frontend import LogMelConfig, StudentFrontEnd
from ssondo_distill.students import build_student
from tests.distill.test_export import CLIP, _make_run
from tests.distill.test_quantize import make_work

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.jit.load.*is deprecated:FutureWarning",
    "ignore::UserWarning",
    "ignore::DeprecationWarning",
)
SR = 32000


def _clips(n: int, seconds: float = CLIP) -> torch.Tensor:
    """(n, S) varied deterministic audio: harmonic tones, gated noise, chirps."""
    t = np.arange(int(seconds * SR)) / SR
    g = np.random.default_rng(1)
    out = []
    for i in range(n):
        tone = sum(0.2 / k * np.sin(2 * np.pi * (120 + 40 * i) * k * t) for k in range(1, 4))
        noise = 0.2 * g.standard_normal(len(t)) * (np.sin(2 * np.pi * (2 + i) * t) > 0)
        chirp = 0.2 * np.sin(2 * np.pi * (300 + 3000 * t) * t)
        out.append((tone + noise + chirp) * (0.3 + 0.1 * i))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def _deploy(run: Path, what: str = "projection") -> Deployable:
    model, _ = load_student(run / "student.pt")
    return Deployable(model, what, model.frontend.mel).eval()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random mn04 whose BatchNorm scales spread over orders of magnitude: int8 visibly off fp32."""
    torch.manual_seed(0)
    cfg = LogMelConfig(n_mels=64)
    student = build_student("mn04", 16, hidden_dim=32)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(torch.exp(torch.randn_like(m.weight)))
                m.bias.add_(0.5 * torch.randn_like(m.bias))
    fe = StudentFrontEnd.from_config(cfg)
    student.train()
    with torch.no_grad():
        student(fe(0.1 * torch.randn(4, SR)))
    run = tmp_path_factory.mktemp("sensitive") / "run"
    save_student(run / "student.pt", student.eval(), cfg, "tiny-0123456789ab", 16)
    return run


def test_fine_tuned_model_converts_to_the_static_int8_structure(plain: Path) -> None:
    deploy, clips = _deploy(plain), _clips(4)
    static, n, convs = quantize.quantize_module(deploy, clips, "mn04")
    tuned, n_t, convs_t, log = quantize_qat.quantize_module_qat(deploy, clips, "mn04", 2, batch=2)
    assert (n_t, convs_t) == (n, convs) and convs > 40  # the same layers int8 as static int8
    kinds = {
        type(m).__name__ for m in tuned.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
    }
    assert "Conv2d" in kinds or "ConvReLU2d" in kinds
    assert not any("FakeQuantize" in type(m).__name__ for m in tuned.modules())  # converted, not simulated
    assert log is not None and log.steps == 2 and len(log.losses) == 2 and log.describe()["steps"] == 2
    with torch.inference_mode():
        a, b = tuned(clips[:2]), static(clips[:2])
    assert a.shape == b.shape and torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.9


def test_zero_steps_is_static_int8(plain: Path) -> None:
    deploy, clips = _deploy(plain), _clips(4)
    static, *counts = quantize.quantize_module(deploy, clips, "mn04")
    same, *counts0, log = quantize_qat.quantize_module_qat(deploy, clips, "mn04", 0)
    assert log is None and counts0 == counts
    with torch.inference_mode():
        assert torch.equal(same(clips), static(clips))
    with pytest.raises(ValueError, match=r"--int8-finetune takes a number of steps >= 0, got -1"):
        quantize_qat.quantize_module_qat(deploy, clips, "mn04", -1)


def test_fake_quant_mapping_keeps_the_static_choices(plain: Path) -> None:
    from torch.ao.quantization.fake_quantize import FakeQuantize

    deploy = _deploy(plain)
    qmap = quantize.qconfig_mapping(deploy)
    qat = quantize_qat.fake_quant_mapping(qmap)
    assert qat.module_name_qconfigs.keys() == qmap.module_name_qconfigs.keys()
    assert all(qat.module_name_qconfigs[k] is None for k, v in qmap.module_name_qconfigs.items() if v is None)
    act, weight = qat.global_qconfig.activation(), qat.global_qconfig.weight()
    assert isinstance(act, FakeQuantize) and isinstance(weight, FakeQuantize)
    assert (act.activation_post_process.quant_min, act.activation_post_process.quant_max) == (0, 255)
    assert weight.qscheme == torch.per_channel_symmetric
    wrange = (weight.activation_post_process.quant_min, weight.activation_post_process.quant_max)
    assert wrange == quantize.WEIGHT_RANGE
    assert qmap.global_qconfig.activation().__class__.__name__ == "MinMaxObserver"  # left untouched


def test_weight_fake_quant_rounds_as_the_conversion(plain: Path) -> None:
    """The conversion clamps the 7-bit weights to qint8's range (a channel's largest weight is +-64):
    the fake quantisation that is trained must round the same way, not clamp at the observer's 63."""
    qc = quantize_qat.fake_quant_mapping(quantize.qconfig_mapping(_deploy(plain))).global_qconfig
    fq = qc.weight()
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    got = fq(w)
    scale, zero = fq.calculate_qparams()
    converted = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    assert int(converted.int_repr().abs().max()) == 64
    steps = (got / scale.view(-1, 1, 1, 1)).round()
    assert float(steps.abs().max()) == 64
    assert float((steps != converted.int_repr().float()).float().mean()) < 0.01


def test_fine_tuning_is_deterministic_and_leaves_fp32_untouched(plain: Path) -> None:
    deploy, clips = _deploy(plain), _clips(4)
    before = {k: v.clone() for k, v in deploy.state_dict().items()}
    _, a = quantize_qat.finetune(deploy, clips, 3, "mn04", batch=2, crop=8000)
    _, b = quantize_qat.finetune(deploy, clips, 3, "mn04", batch=2, crop=8000)
    assert a.losses == b.losses and a.crop_samples == 8000
    assert all(torch.equal(v, deploy.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"unknown fine-tuning start 'x'"):
        quantize_qat.finetune(deploy, clips, 1, "mn04", start="x")


@pytest.mark.parametrize("start", quantize_qat.STARTS)
def test_fine_tuning_brings_the_fake_quant_model_toward_fp32(sensitive: Path, start: str) -> None:
    deploy, clips = _deploy(sensitive), _clips(8)
    _, log = quantize_qat.finetune(deploy, clips, 60, "mn04", lr=3e-5, batch=4, start=start)
    assert log.loss_before > 1e-3  # int8 of this student is visibly off fp32
    assert log.loss_after < 0.7 * log.loss_before, (log.loss_before, log.loss_after)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = make_work(tmp_path_factory.mktemp("calib"))
    run = _make_run(tmp_path_factory.mktemp("run"))
    (run / "config.json").write_text(json.dumps({"config": {"work": str(work)}}))
    return run


def test_export_records_the_fine_tune(run: Path) -> None:
    kw = {"what": "projection", "clip_seconds": CLIP, "repeats": 1, "calibrate": 4, "min_cosine": 0.9}
    res = export_student(run, "torchscript", int8=True, int8_finetune=2, **kw)
    record = json.loads(res.json_path.read_text())
    assert record["export"]["int8_finetune"] == 2 and res.verification["int8_finetune"]["steps"] == 2
    assert res.verification["int8_quantized_convs"] > 40
    again = export_student(run, "torchscript", int8=True, **kw)  # default: static int8, another export
    assert not again.reused and json.loads(again.json_path.read_text())["export"]["int8_finetune"] == 0
    assert "int8_finetune" not in again.verification
    assert export_student(run, "torchscript", int8=True, int8_finetune=0, **kw).reused


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8", "--int8-finetune", "-1"], "-1 is not in the range x>=0"),
        (
            ["--int8-finetune", "5"],
            "--int8-finetune takes steps >= 0 and applies to --format torchscript --int8",
        ),
        (["--int8", "--format", "onnx", "--int8-finetune", "5"], "got 5 with onnx --int8"),
    ],
)
def test_bad_finetune_values_are_refused(run: Path, args: list[str], message: str) -> None:
    fmt = [] if "--format" in args else ["--format", "torchscript"]
    res = CliRunner().invoke(main, ["export", str(run), *fmt, *args, "--clip-seconds", str(CLIP)])
    assert res.exit_code != 0 and message in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error")]) == 1
