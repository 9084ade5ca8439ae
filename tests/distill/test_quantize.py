"""Static int8 (issue 17 item 7): calibration clips come from a packed workspace, the convolutions
are quantised in both formats, the int8 file agrees with fp32 on packed clips it never saw.

Only ISA-independent facts are asserted: x86 int8 kernels (fbgemm, MLAS) differ by vector ISA, so
no exact value of an int8 output is checked, only its cosine to fp32 against a loose bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from pipeline.cli import main
from ssondo_cache.pack import pack
from ssondo_cache.shards import iter_shard
from ssondo_distill import export_onnx, quantize
from ssondo_distill.banded_mel import BandedLogMel
from ssondo_distill.checkpoint import load_student
from ssondo_distill.export import Deployable, ExportError, export_student
from ssondo_distill.export_check import ExportVerificationError
from ssondo_distill.export_onnx import RealStftLogMel
from ssondo_distill.students.mobilenetv3 import SqueezeExcitation
from tests.distill.test_export import CLIP, _cosines, _make_run, _run_exported

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*is deprecated:FutureWarning")
SR = 32000


def make_work(root: Path, n_clips: int = 20, sr: int = SR, seconds: float = 0.8) -> Path:
    """A packed workspace of varied real-valued audio: chords, noise bursts, chirps, near-silence."""
    src = root / "audio"
    src.mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(n_clips):
        n = int(seconds * sr) if i % 5 else int(0.3 * sr)  # every 5th clip shorter than CLIP
        t = np.arange(n) / sr
        kind = i % 4
        if kind == 0:
            x = sum(0.2 / k * np.sin(2 * np.pi * (110 + 30 * i) * k * t) for k in range(1, 6))
        elif kind == 1:
            x = 0.3 * g.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0)
        elif kind == 2:
            x = 0.4 * np.sin(2 * np.pi * (200 + 10 * i + 4000 * t) * t)
        else:
            x = 1e-3 * g.standard_normal(n) + 0.05 * np.sin(2 * np.pi * 880 * t)
        sf.write(src / f"clip{i:03d}.wav", np.asarray(x, np.float32), sr, subtype="PCM_16")
    work = root / "work"
    pack([src], work, sample_rate=sr, fmt="wav", shard_size=6, progress=False)
    return work


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, work: Path) -> Path:
    """A RUN whose config.json names its workspace, as `ssondo train` writes it."""
    run = _make_run(tmp_path_factory.mktemp("run"))
    (run / "config.json").write_text(json.dumps({"config": {"work": str(work)}}))
    return run


def test_calibration_set_round_robin_held_out_and_fitted(work: Path) -> None:
    n = int(CLIP * SR)
    cs = quantize.calibration_set(work, 8, n, SR)
    assert cs.calibrate.shape == (8, n) and cs.check.shape == (quantize.held_out(8), n) == (2, n)
    # round-robin over the shards: the first clip of each shard, then the second of each, ...
    shards = [[c.key for c in iter_shard(p)] for p in sorted((work / "shards").glob("clips-*.tar"))]
    assert len(shards) == 4 and cs.keys[:5] == (*(keys[0] for keys in shards), shards[0][1])
    assert len(set(cs.keys)) == len(cs.keys) == 10  # the check clips were never calibrated on
    short = cs.keys.index("clip000")  # 0.3 s: repeated to fill CLIP, no zero padding
    x = cs.calibrate[short].numpy()
    period = int(0.3 * SR)
    np.testing.assert_array_equal(x[period:], x[: n - period])
    assert cs.describe()["clips"] == 8 and cs.describe()["check_clips"] == 2


def test_calibration_refusals(work: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"has 20 usable clips; int8 with --calibrate 30 needs 37"):
        quantize.calibration_set(work, 30, 1000, SR)
    with pytest.raises(ExportError, match=r"packed at 32000 Hz, the student takes 16000 Hz"):
        quantize.calibration_set(work, 4, 1000, 16000)
    ckpt = tmp_path / "run" / "student.pt"
    with pytest.raises(ExportError, match=r"names no workspace; pass --calibrate-from WORK"):
        quantize.resolve_workspace(ckpt, None)
    with pytest.raises(ExportError, match=r"has no shards/ folder"):
        quantize.resolve_workspace(ckpt, tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": {"work": str(work)}}))
    assert quantize.resolve_workspace(ckpt, None) == work


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_static_int8_quantises_the_convolutions(run: Path, work: Path, fmt: str) -> None:
    res = export_student(
        run, fmt, int8=True, what="projection", clip_seconds=CLIP, repeats=1, calibrate=8, min_cosine=0.99
    )
    model, _ = load_student(run / "student.pt")
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.student.modules())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.student.modules())
    suffix = ".onnx" if fmt == "onnx" else ".ts.pt"
    assert res.path == run / "export" / f"student-projection-int8{suffix}" and res.int8
    v = res.verification
    stem = int(fmt == "onnx")  # ONNX keeps the stem fp32 (quantize_onnx.ONNX_EXTRA_ROLES)
    assert v["int8_quantized_convs"] == n_conv - stem > 40  # every other convolution of mn04 is int8
    # ONNX: every Linear but the head's last; TorchScript: the head's first only (FX_EXTRA_ROLES: the
    # squeeze-excitation gates, 2 Linear each, stay fp32)
    gates = 2 * sum(isinstance(m, SqueezeExcitation) for m in model.student.modules())
    assert v["int8_quantized_ops"] == n_conv - stem + n_linear - 1 - (gates if fmt == "torchscript" else 0)
    assert v["calibration"]["clips"] == 8 and v["calibration"]["work"] == str(work.resolve())
    assert "held-out packed clips" in v["audio"] and v["min_cosine"] >= 0.99

    # packed clips neither calibrated nor checked on: the clips after the first 10 of the set
    cs = quantize.calibration_set(work, 14, int(CLIP * SR), SR)
    fresh = torch.cat([cs.calibrate[10:], cs.check])  # (7, S)
    with torch.inference_mode():
        ref = model(fresh).numpy()
    got = _run_exported(fmt, res.path, fresh)
    assert got.shape == ref.shape
    assert _cosines(got, ref).min() > 0.98  # loose: int8 numerics depend on the CPU's ISA
    assert np.abs(got - ref).max() > 1e-5 * np.abs(ref).max()  # really int8, not the fp32 graph
    assert "int8" in res.summary()
    if fmt == "torchscript":  # the gates' channel scaling is an fp32 mul, the mel the banded one
        loaded = torch.jit.load(str(res.path))
        assert list(loaded.children()) == []  # frozen: weights and submodules inlined (export._trace)
        graph = str(loaded.inlined_graph)
        assert "quantized::mul" not in graph and "aten::sigmoid" in graph
        assert graph.count("aten::matmul") == len(BandedLogMel(model.frontend.mel).spans) > 1

    again = export_student(
        run, fmt, int8=True, what="projection", clip_seconds=CLIP, repeats=1, calibrate=8, min_cosine=0.99
    )
    assert again.reused
    other = export_student(
        run, fmt, int8=True, what="projection", clip_seconds=CLIP, repeats=1, calibrate=6, min_cosine=0.99
    )
    assert not other.reused  # another calibration is another export


def test_int8_bound_is_enforced_on_real_clips(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "x" / "m.onnx"
    with pytest.raises(ExportVerificationError, match=r"min cosine .*required: min cosine >= 1.0"):
        export_student(
            run, "onnx", int8=True, out=out, clip_seconds=CLIP, repeats=1, calibrate=4, min_cosine=1.0
        )
    assert list(out.parent.iterdir()) == []


def test_untraceable_student_is_refused_by_name(work: Path, tmp_path: Path) -> None:
    run = _make_run(tmp_path, "eres2net", n_mels=64, m_channels=4, num_blocks=[1, 1, 1, 1, 1])
    with pytest.raises(ExportError, match=r"needs a student torch.fx can trace, and student 'eres2net'"):
        export_student(
            run, "torchscript", int8=True, clip_seconds=CLIP, repeats=1, calibrate=4, calibrate_from=work
        )


def test_cli_int8(run: Path, work: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "q.ts.pt"
    args = ["export", str(run), "--format", "torchscript", "--int8", "--out", str(out)]
    args += ["--clip-seconds", str(CLIP), "--repeats", "1", "--calibrate", "6", "--min-cosine", "0.99"]
    res = runner.invoke(main, [*args, "--calibrate-from", str(work)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"exported {out} (torchscript int8")
    assert json.loads(out.with_name("q.ts.pt.json").read_text())["export"]["calibrate"] == 6
    bare = tmp_path / "bare"
    _make_run(bare)
    missing = runner.invoke(main, ["export", str(bare / "run"), "--format", "onnx", "--int8"])
    assert missing.exit_code == 1 and "pass --calibrate-from WORK" in missing.output


def _deployable(run: Path) -> tuple[Deployable, torch.nn.Module]:
    model, _ = load_student(run / "student.pt")
    return Deployable(model, "projection", model.frontend.mel).eval(), model


def test_sensitive_layers_stay_fp32(run: Path, work: Path, tmp_path: Path) -> None:
    """KEEP_FP32 (the head's last Linear) stays fp32 in the FX model with min-max activation ranges;
    every convolution (the stem included) and every other Linear is int8; the ONNX side keeps the
    same module."""
    from torch.ao.quantization.observer import FixedQParamsObserver, MinMaxObserver

    deploy, _ = _deployable(run)
    kept = quantize.fp32_modules(deploy)
    assert kept == {"output": ["head.3"]} and quantize.KEEP_FP32_OPS == ()
    gates = [f"backbone.features.{i}.block.2.conc_se_layers.0" for i in (4, 5, 6, 11, 12, 13, 14, 15)]
    assert quantize.fx_fp32_modules(deploy) == kept | {"gates": gates}  # TorchScript only
    assert quantize.fp32_modules(deploy, ["stem", "pooled"]) == {
        "stem": ["backbone.features.0.0"],
        "pooled": ["backbone.features.16.2"],  # the Hardswish before the pooling
    }
    cs = quantize.calibration_set(work, 4, int(CLIP * SR), SR)
    prepared = quantize.calibrate_module(deploy, cs.calibrate, "mn04")
    observers = [m for m in prepared.modules() if isinstance(m, torch.ao.quantization.ObserverBase)]
    ranged = [m for m in observers if not isinstance(m, FixedQParamsObserver)]  # sigmoid's are fixed
    assert len(ranged) > 50 and all(type(m) is MinMaxObserver for m in ranged)  # full calibration range
    x = deploy.frontend(cs.calibrate)  # (4, 1, F, T): the stem's input, ranged over every clip
    first = prepared.get_submodule(
        next(n.target for n in prepared.graph.nodes if "activation_post" in str(n.target))
    )
    assert (float(first.min_val), float(first.max_val)) == pytest.approx(
        (float(x.min()), float(x.max())), rel=1e-5
    )
    q, n, convs = quantize.convert_module(prepared, "mn04")

    def int8(m: torch.nn.Module) -> bool:
        return ".quantized" in type(m).__module__

    assert not any(int8(m) for m in q.get_submodule("head.3").modules())
    for gate in gates:
        assert not any(int8(m) for m in q.get_submodule(gate).modules())
    assert isinstance(q.frontend, BandedLogMel)
    assert int8(q.get_submodule("backbone.features.0.0"))  # the stem reads an int8 log-mel
    convs_int8 = [k for k, m in q.named_modules() if int8(m) and "Conv" in type(m).__name__]
    assert len(convs_int8) == convs == sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules())
    assert n - convs == 1  # int8 Linear layers: head.0 (the 8 SE gates' two stay fp32)

    import onnx

    from ssondo_distill.quantize_onnx import kept_nodes, node_owners

    onnx_deploy = Deployable(
        load_student(run / "student.pt")[0], "projection", RealStftLogMel(deploy.frontend)
    )
    fp32 = tmp_path / "fp32.onnx"
    export_onnx.export_onnx(onnx_deploy.eval(), cs.check[:1], fp32, True, "projection")
    graph = onnx.load(str(fp32)).graph
    nodes, owner = kept_nodes(graph, onnx_deploy), node_owners(graph, onnx_deploy)
    assert set(nodes) == {"output", "stem"} and {owner[n] for n in nodes["output"]} == {"head.3"}
    assert [n.op_type for n in graph.node if n.name in nodes["output"]] == ["Gemm"]
    # onnxruntime's int8 stem measured worse than FX's: ONNX keeps the stem fp32 too
    assert {owner[n] for n in nodes["stem"]} == {"backbone.features.0.0"}
    assert [n.op_type for n in graph.node if n.name in nodes["stem"]] == ["Conv"]


def test_fp32_keeps_buy_agreement(run: Path, work: Path) -> None:
    """On clips neither calibrated nor checked on, int8 with KEEP_FP32 agrees with fp32 better than
    everything int8 (a ratio with margin: int8 rounding differs by ISA, the effect dwarfs it)."""
    deploy, _ = _deployable(run)
    cs = quantize.calibration_set(work, 14, int(CLIP * SR), SR)
    fresh = torch.cat([cs.calibrate[10:], cs.check])  # (7, S)
    with torch.inference_mode():
        ref = deploy(fresh).numpy().astype(np.float64)

    def error(qmap: object) -> float:
        q, _, _ = quantize.quantize_module(deploy, cs.calibrate[:8], "mn04", qmap)
        with torch.inference_mode():
            return float(1 - _cosines(q(fresh).numpy().astype(np.float64), ref).mean())

    kept = error(None)
    everything = error(quantize.qconfig_mapping(deploy, keep={}, keep_ops=()))
    assert kept < 0.5 * everything, (kept, everything)


def test_one_calibration_serves_every_keep_choice(run: Path, work: Path) -> None:
    """Calibrated once with everything int8, then converted with the export's keeps: the same int8
    model as calibrating with the keeps (what --sensitivity relies on to compare many choices)."""
    deploy, _ = _deployable(run)
    cs = quantize.calibration_set(work, 4, int(CLIP * SR), SR, check=3)
    assert cs.check.shape[0] == 3 and len(set(cs.keys)) == 7
    direct, n, convs = quantize.quantize_module(deploy, cs.calibrate, "mn04", bias_correction=False)
    everything = quantize.qconfig_mapping(deploy, keep={}, keep_ops=())
    prepared = quantize.calibrate_module(deploy, cs.calibrate, "mn04", everything)
    once, n_once, convs_once = quantize.convert_module(prepared, "mn04", quantize.qconfig_mapping(deploy))
    assert (n_once, convs_once) == (n, convs)
    assert quantize.convert_module(prepared, "mn04")[1] == n + 1 + 16  # its own: head.3 and gates int8

    def int8_names(q: torch.nn.Module) -> set[str]:
        return {k for k, m in q.named_modules() if ".quantized" in type(m).__module__}

    assert int8_names(once) == int8_names(direct)
    with torch.inference_mode():  # same qparams, same kernels on this CPU: the same numbers
        torch.testing.assert_close(once(cs.check), direct(cs.check))


def test_activation_observer_registry() -> None:
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    assert isinstance(quantize.int8_qconfig("minmax").activation(), MinMaxObserver)
    assert isinstance(quantize.int8_qconfig("histogram").activation(), HistogramObserver)
    with pytest.raises(ValueError, match=r"unknown activation observer 'x'; choose one of histogram, minmax"):
        quantize.int8_qconfig("x")


def test_bias_correction_matches_the_fp32_channel_means() -> None:
    """After correct_bias, each int8 layer's pre-activation output has the fp32 model's per-channel
    mean on the calibration clips (a plain mean of the float model's output, computed here), and the
    model's output mean is closer to fp32's than before (ratios with margin, no ISA-exact value)."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from ssondo_distill import quantize_bias

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.Conv2d(8, 6, 1),
    )
    with torch.no_grad():  # weights and a shift that leave a visible rounding offset at 7 bits
        for m in net:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) * 3)
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.rand(16, 1, 12, 12) * 2 - 0.5  # (N, 1, H, W)
    qmap = torch.ao.quantization.QConfigMapping().set_global(quantize.int8_qconfig())
    prepared = prepare_fx(net, qmap, (x[:1],))
    with torch.inference_mode():
        prepared(x)
    q = convert_fx(copy_module(prepared))
    layers = quantize_bias.int8_layers(q)
    assert layers == ["0", "3", "4"]  # conv + BN + ReLU fused into "0", in the order they run

    def mean_gap(model: torch.nn.Module) -> float:
        with torch.inference_mode():
            want = net(x).double().mean(dim=(0, 2, 3))
            got = model(x).double().mean(dim=(0, 2, 3))
        return float((got - want).abs().max())

    before = mean_gap(q)
    moved = quantize_bias.correct_bias(prepared, q, x, batch=5)
    assert set(moved) == set(layers) and max(moved.values()) > 0
    after = mean_gap(q)
    assert after < 0.25 * before, (before, after)

    # every layer: the int8 pre-activation channel mean (its int8 input, its int8 weights, the float
    # op) equals the fp32 layer's channel mean on the same clips, to float rounding
    fused = torch.ao.quantization.fuse_modules(copy_module(net), [["0", "1", "2"]])
    with torch.inference_mode():
        h0 = fused[0][0](x)  # (N, 8, H, W) fp32 pre-activation of layer "0"
        ref = {"0": h0, "3": fused[3](torch.relu(h0))}
        ref["4"] = fused[4](ref["3"])
    for name in layers:
        layer = q.get_submodule(name)
        seen = []
        handle = layer.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0].dequantize()))
        with torch.inference_mode():
            q(x)
        handle.remove()
        w = layer.weight().dequantize()
        y = torch.nn.functional.conv2d(seen[0], w, layer.bias(), layer.stride, layer.padding, 1, layer.groups)
        want = ref[name].double().mean(dim=(0, 2, 3))
        torch.testing.assert_close(y.double().mean(dim=(0, 2, 3)), want, atol=1e-4, rtol=0)


def copy_module(m: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(m)
