"""HEAR API checks for students.

The official validator (hearvalidator 2021.0.6, PyPI) cannot run here: it requires Python < 3.9 and
imports tensorflow at module level. These tests re-do each of its checks, for a torch model, in our own
code: the module's three functions, a torch.nn.Module from load_model, the sample rate among HEAR's
accepted ones, int embedding sizes, timestamp embeddings for 2 sounds of 1.07 s, 1.98 s and 4.0 s of
uniform noise in [-1, 1] (float32, 3-d, batch kept, shapes agreeing with the timestamps and the declared
size, regular spacing within 1 ms, last timestamp inside the audio) and scene embeddings for 4 sounds of
2.74 s (float32, (4, scene_embedding_size)). Where the validator only warns (first timestamp late, last
one early, spacing over 50 ms), these tests fail.
"""

import importlib

import numpy as np
import pytest
import torch

from ssondo_eval.embedders import StudentEmbedder, student_windows

ACCEPTED_RATES = (16000, 22050, 32000, 44100, 48000)


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    from ssondo_distill.checkpoint import save_student
    from ssondo_distill.frontend import LogMelConfig
    from ssondo_distill.students import build_student

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "student.pt"
    save_student(path, build_student("mn04", 8), LogMelConfig(), "tiny-0123456789ab", 8)
    return path


@pytest.fixture(scope="module")
def hear_model(student_path):
    hear = importlib.import_module("ssondo_eval.hear")
    for fn in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(hear, fn, None)), fn
    model = hear.load_model(str(student_path.parent))  # the RUN folder
    assert isinstance(model, torch.nn.Module)
    model.to("cpu")  # the validator moves the model to its device
    return hear, model


def test_attributes(hear_model):
    _, model = hear_model
    assert model.sample_rate in ACCEPTED_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == 384  # mn04 backbone width


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_timestamp_embeddings(hear_model, seconds):
    hear, model = hear_model
    audio = torch.rand(2, int(seconds * model.sample_rate)) * 2 - 1
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32
    emb, ts = emb.detach().numpy(), ts.detach().numpy()
    assert emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == 2 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    assert ts.shape[1] > 1
    diff = np.diff(ts)
    avg = diff.mean()
    assert np.abs(diff - avg).max() <= 1.0  # regular spacing (validator: error above 1 ms)
    assert diff.max() <= 50.0  # validator warns above 50 ms
    assert ts.min() <= avg  # validator warns when the first timestamp is later than one hop
    assert ts.max() <= 1000 * seconds  # validator: error past the end of the audio
    assert ts.max() >= 1000 * seconds - min(avg, 50)  # validator warns when the end is not covered
    assert np.isfinite(emb).all()


def test_scene_embeddings(hear_model):
    hear, model = hear_model
    audio = torch.rand(4, int(2.74 * model.sample_rate)) * 2 - 1
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.dtype == torch.float32
    assert tuple(emb.shape) == (4, model.scene_embedding_size)
    # different sounds, different embeddings (the model is not ignoring its input)
    assert not torch.allclose(emb[0], emb[1])


def test_timestamps_are_window_centres_without_drift(hear_model):
    hear, model = hear_model
    audio = torch.zeros(1, 10 * model.sample_rate)
    _, ts = hear.get_timestamp_embeddings(audio, model)
    expected = np.arange(ts.shape[1]) * 50.0
    np.testing.assert_allclose(ts[0].numpy(), expected, atol=1e-3)
    assert ts.shape[1] == 201  # 0, 50, ..., 10000 ms


def test_student_windows_rule():
    x = torch.arange(25.0)
    assert student_windows(x[:5], 10, 8).shape == (1, 8)  # padded only to the minimum
    assert student_windows(x[:9], 10, 8).shape == (1, 9)  # short clip whole, not padded to 10
    w = student_windows(x, 10, 8)
    assert w.shape == (3, 10) and w[-1, -1] == 24 and w[1, 0] == 10 and w[2, 0] == 15  # last ends at the end


def test_student_embedder_on_a_task(student_path, tmp_path):
    from tests.eval.test_evaluate import tone_task

    task = tone_task(tmp_path, n=3)
    emb = StudentEmbedder(student_path.parent, ts=10.0)
    assert emb.teacher_id == "tiny-0123456789ab" and emb.kind == "student"
    X, stats = emb.embed_task(task, progress=False)
    assert X.shape == (6, 384) and np.isfinite(X).all() and stats.n_embeddings == 6
    assert emb.cache_id.startswith("student-mn04-") and emb.cache_id.endswith("-ts10")


def test_timestamp_embedding_is_the_centred_window(hear_model):
    hear, model = hear_model
    sr = model.sample_rate
    audio = torch.rand(3, int(2.5 * sr)) * 2 - 1  # 3 sounds x 51 frames: several forwards of MAX_BATCH
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    half = sr // 2
    padded = torch.nn.functional.pad(audio[2], (half, half))
    for k in (0, 20, 50):
        centre = round(ts[2, k].item() / 1000 * sr)
        window = padded[centre : centre + sr]  # [centre - 0.5 s, centre + 0.5 s) of the clip
        torch.testing.assert_close(emb[2, k], model.embed_windows(window[None])[0], rtol=1e-4, atol=1e-4)


def test_empty_path_loads_the_student_named_by_the_environment(student_path, monkeypatch):
    """HEAR tools pass "" (or nothing) for a model that needs no file: SSONDO_STUDENT names it."""
    hear = importlib.import_module("ssondo_eval.hear")
    monkeypatch.setenv(hear.STUDENT_ENV, str(student_path))
    for model in (hear.load_model(""), hear.load_model()):
        assert isinstance(model, torch.nn.Module) and model.scene_embedding_size == 384
    monkeypatch.setenv(hear.STUDENT_ENV, str(student_path.parent))  # a RUN folder, as for a path
    assert hear.load_model("").meta["teacher_id"] == "tiny-0123456789ab"
    missing = student_path.parent / "elsewhere.pt"
    monkeypatch.setenv(hear.STUDENT_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{missing} \\(from SSONDO_STUDENT\\): no student"):
        hear.load_model("")
    monkeypatch.setenv(hear.STUDENT_ENV, str(missing))  # a given path wins over the variable
    assert hear.load_model(str(student_path)).scene_embedding_size == 384
    monkeypatch.delenv(hear.STUDENT_ENV)
    with pytest.raises(ValueError, match="no student given: pass the path .* or set SSONDO_STUDENT=PATH"):
        hear.load_model("")
