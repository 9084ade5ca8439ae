"""Strict checkpoint loading of MATPAC++ and M2D: the official key layouts load, anything else is refused
with the offending keys named."""

import json
import re
from pathlib import Path

import pytest
import torch

from ssondo_cache.logmel import build_logmel
from ssondo_cache.teachers import build_teacher
from ssondo_cache.teachers.frontends import MATPAC_FRONTEND
from ssondo_cache.teachers.m2d import M2DTeacher
from ssondo_cache.teachers.matpac import MatpacTeacher
from ssondo_cache.teachers.vit import ViTConfig
from ssondo_cache.teachers.vit_teacher import CheckpointError

LAYOUTS = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "official" / "official_state_dict_layouts.json").read_text()
)
D, DEPTH = 32, 2  # reduced width and depth
BUFFERS = ("log_mel.MelSpectrogram.spectrogram.window", "log_mel.MelSpectrogram.mel_scale.fb")


def reduced_state_dict(layout_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in an official FULL-SIZE key layout, scaled down to width D and DEPTH blocks."""
    g = torch.Generator().manual_seed(seed)
    scale = {768: D, 2304: 3 * D, 3072: 4 * D}
    state = {}
    for key, shape in LAYOUTS[layout_name].items():
        m = re.search(r"blocks\.(\d+)\.", key)
        if m and int(m.group(1)) >= DEPTH:
            continue
        state[key] = torch.randn([scale.get(s, s) for s in shape], generator=g) * 0.02
    if "norm_stats" in state:
        state["norm_stats"] = torch.tensor([-7.1, 4.2])
    for key in BUFFERS:  # the real torchaudio buffers: window and filterbank
        if key in state:
            fe = build_logmel(MATPAC_FRONTEND)
            state[key] = fe.window.clone() if key.endswith("window") else fe.banks.T.clone()
    return state


def test_full_size_layouts_are_the_official_ones():
    with torch.device("meta"):
        matpac = MatpacTeacher(ViTConfig())
        m2d = M2DTeacher(ViTConfig())
        matpac_as = MatpacTeacher(ViTConfig(input_size=(80, 992)))
    expect = LAYOUTS["matpac_wrapper_default_6s"]
    assert {k: list(v) for k, v in matpac.official_layout().items()} == expect
    assert {k: list(v) for k, v in m2d.official_layout().items()} == LAYOUTS["m2d_encoder_only_80x608p16x16"]
    as_layout = {
        k: v for k, v in LAYOUTS["matpac_wrapper_as_992_with_head"].items() if not k.startswith("head")
    }
    assert {k: list(v) for k, v in matpac_as.official_layout().items()} == as_layout
    assert matpac.embed_dim == 3840 and sum(p.numel() for p in matpac.encoder.parameters()) > 85e6


@pytest.mark.parametrize("with_buffers", [True, False])
def test_matpac_official_layout_loads_with_or_without_buffers(tmp_path, with_buffers):
    state = reduced_state_dict("matpac_wrapper_default_6s")
    if not with_buffers:
        for key in BUFFERS:
            del state[key]
    path = tmp_path / "any-name.pt"  # nothing is read from the file name
    torch.save(state, path)
    t = build_teacher("matpac", checkpoint=path, num_heads=2)
    assert (t.encoder.cfg.embed_dim, t.encoder.cfg.depth, t.encoder.cfg.input_size) == (D, DEPTH, (80, 608))
    torch.testing.assert_close(
        t.encoder.blocks[1].attn.qkv.weight, state["student_encoder.blocks.1.attn.qkv.weight"]
    )
    torch.testing.assert_close(t.encoder.pos_embed, state["pos_embed"])
    assert t.teacher_id.startswith("matpac-") and t.describe()["checkpoint_sha256"]
    assert json.loads(json.dumps(t.describe()))["vit"]["input_size"] == [80, 608]


def test_matpac_architecture_follows_the_tensors_not_the_path(tmp_path):
    state = reduced_state_dict("matpac_wrapper_as_992_with_head")
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    path = tmp_path / "matpac_plus_6s_2048_enconly.pt"  # a misleading name: the tensors say 992 frames
    torch.save(state, path)
    t = build_teacher("matpac", checkpoint=path)
    assert t.encoder.cfg.input_size == (80, 992) and t.chunk_seconds == pytest.approx(9.92)
    with pytest.raises(CheckpointError, match="pos_embed"):  # an explicit size that contradicts them
        build_teacher("matpac", checkpoint=path, input_size=(80, 608))


def _refused(tmp_path, spec, state, *names):
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_teacher(spec, checkpoint=path)
    for name in names:
        assert name in str(err.value), str(err.value)


def test_matpac_refuses_renamed_key(tmp_path):
    state = reduced_state_dict("matpac_wrapper_default_6s")
    state["student_encoder.blocks.1.attn.qkv_renamed.weight"] = state.pop(
        "student_encoder.blocks.1.attn.qkv.weight"
    )
    _refused(
        tmp_path,
        "matpac",
        state,
        "missing keys: student_encoder.blocks.1.attn.qkv.weight",
        "unexpected keys: student_encoder.blocks.1.attn.qkv_renamed.weight",
    )


def test_matpac_refuses_wrong_shape(tmp_path):
    state = reduced_state_dict("matpac_wrapper_default_6s")
    state["student_encoder.blocks.0.mlp.fc2.bias"] = torch.zeros(D + 1)
    _refused(tmp_path, "matpac", state, "student_encoder.blocks.0.mlp.fc2.bias", "shape")


def test_matpac_refuses_zero_positional_embedding(tmp_path):
    state = reduced_state_dict("matpac_wrapper_default_6s")
    state["pos_embed"].zero_()
    _refused(tmp_path, "matpac", state, "pos_embed", "all zeros")


def test_matpac_refuses_extra_keys_and_a_foreign_filterbank(tmp_path):
    state = reduced_state_dict("matpac_wrapper_default_6s")
    state["head.weight"] = torch.zeros(527, D)
    _refused(tmp_path, "matpac", state, "unexpected keys: head.weight")
    state = reduced_state_dict("matpac_wrapper_default_6s")
    state[BUFFERS[1]] = state[BUFFERS[1]] * 2
    _refused(tmp_path, "matpac", state, BUFFERS[1])


@pytest.mark.parametrize("layout", ["wrapped", "flat", "flat-prefixed", "no-norm-stats"])
def test_m2d_official_layouts_load(tmp_path, layout):
    state = reduced_state_dict("m2d_encoder_only_80x608p16x16")
    state["norm_stats"] = torch.tensor([-6.0, 3.0])
    if layout == "wrapped":
        obj = {"model": {"backbone." + k: v for k, v in state.items()}, "epoch": 300}
    elif layout == "flat-prefixed":
        obj = {"backbone." + k: v for k, v in state.items()}
    elif layout == "no-norm-stats":
        obj = {k: v for k, v in state.items() if k != "norm_stats"}
    else:
        obj = state
    path = tmp_path / "m2d_vit_base-80x1001p16x16-misleading" / "checkpoint-300.pth"
    path.parent.mkdir()
    torch.save(obj, path)
    t = build_teacher("m2d", checkpoint=path, num_heads=2)
    assert t.encoder.cfg.input_size == (80, 608)  # from the tensors, not the folder name
    torch.testing.assert_close(t.encoder.norm.weight, state["norm.weight"])
    stats = (-7.1, 4.2) if layout == "no-norm-stats" else (-6.0, 3.0)
    assert (t.frontend.cfg.norm_mean, t.frontend.cfg.norm_std) == pytest.approx(stats)
    assert t(torch.randn(1, 16000)).shape == (1, 7, 5 * D)


def test_m2d_refusals_name_the_keys(tmp_path):
    state = reduced_state_dict("m2d_encoder_only_80x608p16x16")
    renamed = dict(state)
    renamed["blocks.0.norm1.w"] = renamed.pop("blocks.0.norm1.weight")
    _refused(
        tmp_path,
        "m2d",
        {"model": {"backbone." + k: v for k, v in renamed.items()}},
        "blocks.0.norm1.weight",
        "blocks.0.norm1.w",
    )
    shaped = dict(state, **{"blocks.1.attn.proj.weight": torch.zeros(D, D + 2)})
    _refused(tmp_path, "m2d", shaped, "blocks.1.attn.proj.weight")
    zero = dict(state, pos_embed=torch.zeros_like(state["pos_embed"]))
    _refused(tmp_path, "m2d", zero, "pos_embed")
    mixed = {"backbone." + k: v for k, v in state.items()}
    mixed["decoder.weight"] = torch.zeros(2)
    _refused(tmp_path, "m2d", mixed, "decoder.weight")


def test_m2d_norm_stats_override_changes_the_id(tmp_path):
    state = reduced_state_dict("m2d_encoder_only_80x608p16x16")
    path = tmp_path / "c.pth"
    torch.save(state, path)
    a = build_teacher("m2d", checkpoint=path, num_heads=2)
    b = build_teacher("m2d", checkpoint=path, num_heads=2, norm_stats=(-5.0, 5.0))
    c = build_teacher("m2d", checkpoint=path, num_heads=2, norm_stats=(-7.1, 4.2))
    assert a.teacher_id != b.teacher_id and a.teacher_id == c.teacher_id


def test_without_checkpoint_is_an_error_unless_random_init_is_asked():
    with pytest.raises(ValueError, match="checkpoint"):
        build_teacher("matpac")
    with pytest.raises(ValueError, match="checkpoint"):
        build_teacher("m2d")


def test_m2d_32k_models_are_an_explicit_option(tmp_path):
    state = reduced_state_dict("m2d_encoder_only_80x608p16x16")
    path = tmp_path / "c.pth"
    torch.save(state, path)
    t16 = build_teacher("m2d", checkpoint=path, num_heads=2)
    t32 = build_teacher("m2d", checkpoint=path, num_heads=2, sample_rate=32000)
    assert (t32.sample_rate, t32.frontend.cfg.n_fft, t32.frontend.cfg.hop_length) == (32000, 800, 320)
    assert t32.chunk_seconds == pytest.approx(t16.chunk_seconds) and t32.teacher_id != t16.teacher_id
    assert t32(torch.randn(1, 32000)).shape == t16(torch.randn(1, 16000)).shape
    with pytest.raises(ValueError, match="Hz"):
        build_teacher("m2d", checkpoint=path, sample_rate=22050)
