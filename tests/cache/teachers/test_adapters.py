"""build_teacher: registry names, hear:<module>, py:<module>:<callable>."""

import pytest
import torch
from torch import nn

from ssondo_cache.devices import DeviceError
from ssondo_cache.teachers import TEACHERS, build_teacher
from ssondo_cache.teachers.base import Teacher
from tests.cache.teachers import hear_tiny

TINY = "py:tests.helpers.tiny_teacher:make"


def test_registry_lists_the_real_teachers():
    assert {"matpac", "m2d", "yamnet"} <= set(TEACHERS.names())
    with pytest.raises(KeyError, match="known:"):
        build_teacher("no-such-teacher")


def test_factory_teacher_builds_runs_and_has_a_stable_id():
    t = build_teacher(TINY, dim=8)
    assert isinstance(t, Teacher) and not t.training
    assert t.spec == TINY and t.embed_dim == 8 and t.sample_rate == 16000
    audio = torch.randn(3, 16000)
    out = t(audio)
    assert out.shape == (3, 10, 8)
    torch.testing.assert_close(out, t(audio), rtol=0, atol=0)
    assert build_teacher(TINY, dim=8).teacher_id == t.teacher_id
    assert build_teacher(TINY, dim=8, seed=1).teacher_id != t.teacher_id
    assert build_teacher(TINY, dim=8, hop_seconds=0.05).teacher_id != t.teacher_id
    assert "/" not in t.teacher_id and ":" not in t.teacher_id
    assert not any(p.requires_grad for p in t.parameters())


class PlainScene(nn.Module):
    """Not a Teacher subclass: one vector per clip, declares its rate and dim."""

    sample_rate = 8000
    embed_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 3)

    def forward(self, audio):
        return self.lin(audio.mean(-1, keepdim=True))


def make_plain():
    return PlainScene()


def make_bad():
    return nn.Linear(2, 2)  # declares no sample_rate / embed_dim


def make_not_a_module():
    return object()


def test_factory_plain_module_is_wrapped_and_scene_output_becomes_one_frame():
    t = build_teacher("py:tests.cache.teachers.test_adapters:make_plain")
    assert t.sample_rate == 8000 and t.embed_dim == 3
    assert t.teacher_id.startswith("py-tests.cache.teachers.test_adapters-make_plain-")
    assert t(torch.randn(2, 800)).shape == (2, 1, 3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("py:tests.cache.teachers.test_adapters:make_bad", "sample_rate"),
        ("py:tests.cache.teachers.test_adapters:make_not_a_module", "not a torch.nn.Module"),
        ("py:tests.cache.teachers.test_adapters:missing", "no callable"),
        ("py:no_such_module_xyz:make", "cannot import"),
        ("py:onlyone", "py:<module>:<callable>"),
        ("hear:tests.helpers", "not a HEAR-API module"),
    ],
)
def test_bad_specs_are_refused_clearly(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_teacher(spec)


def test_hear_module_is_a_teacher(tmp_path):
    t = build_teacher("hear:tests.cache.teachers.hear_tiny")
    assert t.sample_rate == 16000 and t.embed_dim == 6
    audio = torch.randn(2, 16000)
    out = t(audio)
    expected, ts = hear_tiny.get_timestamp_embeddings(audio, hear_tiny.load_model())
    torch.testing.assert_close(out, expected)
    assert t.last_timestamps.shape == (2, 20)
    # the id follows the weights: a checkpoint with other weights gives another id, the same one the same id
    ckpt = tmp_path / "w.pt"
    torch.save(hear_tiny.load_model(scale=2.0).state_dict(), ckpt)
    t2 = build_teacher("hear:tests.cache.teachers.hear_tiny", checkpoint=ckpt)
    torch.testing.assert_close(t2(audio), 2 * expected)
    assert t2.teacher_id != t.teacher_id
    assert build_teacher("hear:tests.cache.teachers.hear_tiny", checkpoint=ckpt).teacher_id == t2.teacher_id
    assert build_teacher("hear:tests.cache.teachers.hear_tiny").teacher_id == t.teacher_id


def test_missing_checkpoint_and_missing_cuda_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_teacher(TINY, checkpoint=tmp_path / "nope.pt")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            build_teacher(TINY, device="cuda")
    assert build_teacher(TINY, device="auto").sample_rate == 16000


def test_cli_lists_and_describes(tmp_path):
    from click.testing import CliRunner

    from pipeline.commands.teachers import teachers

    runner = CliRunner()
    res = runner.invoke(teachers, ["list"])
    assert res.exit_code == 0 and "matpac" in res.output and "yamnet" in res.output
    res = runner.invoke(teachers, ["info", TINY, "-o", "dim=5"])
    assert res.exit_code == 0, res.output
    assert '"embed_dim": 5' in res.output
    res = runner.invoke(teachers, ["info", TINY, "-o", "dim"])
    assert res.exit_code != 0 and "KEY=VALUE" in res.output


def test_cli_reports_bad_requests_without_a_traceback():
    from click.testing import CliRunner

    from pipeline.commands.teachers import teachers

    res = CliRunner().invoke(teachers, ["info", "matpac"])
    assert res.exit_code == 1 and "needs a checkpoint" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(teachers, ["info", "nope"])
    assert res.exit_code == 1 and "unknown teacher" in res.output
