"""The log-mel settings of the ViT teachers (ssondo_cache/logmel.py computes them). MATPAC++ and M2D
share the constants (16 kHz, n_fft 400, hop 160, 80 Slaney mel bands 50-8000 Hz, power spectrogram,
log(x + float32 eps)) and differ in framing (MATPAC: no centring, torchaudio; M2D: centred with
reflection padding, nnAudio) and in the normalisation statistics."""

from __future__ import annotations

import dataclasses

import numpy as np

from ssondo_cache.logmel import LogMelConfig

EPS32 = float(np.finfo(np.float32).eps)  # both official codes use log(x + torch.finfo().eps)

MATPAC_FRONTEND = LogMelConfig(
    sample_rate=16000,
    n_fft=400,
    win_length=400,
    hop_length=160,
    n_mels=80,
    f_min=50.0,
    f_max=8000.0,
    log_offset=EPS32,
    center=False,
    norm_mean=-7.056,
    norm_std=4.193,
)
M2D_FRONTEND = dataclasses.replace(MATPAC_FRONTEND, center=True, norm_mean=-7.1, norm_std=4.2)
# M2D's 32 kHz models ("...p32k" folders): same mel count and hop in time, twice the samples
M2D_FRONTEND_32K = dataclasses.replace(
    M2D_FRONTEND, sample_rate=32000, n_fft=800, win_length=800, hop_length=320, f_max=16000.0
)
