"""The log-mel of an export with its mel projection restricted to the bins each filter group covers.

A mel filter is non-zero on a few contiguous FFT bins (the S-SONDO front-end: 128 Slaney filters
over 513 bins, 1,005 of 65,664 entries non-zero), so the dense ``banks @ power`` of ``LogMel``
spends most of its multiply-adds on zeros: about a third of the front-end's time at batch 1 on one
thread (10-s clip). ``BandedLogMel`` cuts the filters into groups of ``GROUP`` consecutive ones and
multiplies each group by the slice of bins it covers (13 % of the dense work for that front-end).
The skipped terms are exact zeros, so the result is the dense one up to float summation order.

Everything else (pre-emphasis, STFT, power, log, normalisation) is ``LogMel.log_mel``'s, step by
step; ``tests/distill/test_banded_mel.py`` holds the two equal for every front-end kind.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssondo_cache.logmel import LogMel

GROUP = 16  # filters per band (8 / 16 / 32 measured alike; 16 the fastest, module doc)


def bands(banks: Tensor, group: int = GROUP) -> list[tuple[int, int]]:
    """(first bin, end bin) of the non-zero columns of each group of ``group`` rows of ``banks``."""
    nonzero = banks != 0  # (n_mels, n_bins)
    out = []
    for g in range(0, banks.shape[0], group):
        cols = nonzero[g : g + group].any(0).nonzero()
        out.append((int(cols.min()), int(cols.max()) + 1) if len(cols) else (0, 1))
    return out


class BandedLogMel(nn.Module):
    """audio (B, S) -> (B, 1, n_mels, frames), the same as ``mel`` (a ``LogMel``), faster."""

    def __init__(self, mel: LogMel, group: int = GROUP) -> None:
        super().__init__()
        if not isinstance(mel, LogMel):
            raise TypeError(f"BandedLogMel wraps a LogMel, got {type(mel).__name__}")
        self.cfg = mel.cfg
        self.register_buffer("window", mel.window.clone(), persistent=False)
        self.spans = bands(mel.banks, group)
        self.parts = nn.ParameterList(  # (group, end - first) slices of the banks, frozen
            [
                nn.Parameter(mel.banks[i : i + group, a:b].clone(), requires_grad=False)
                for i, (a, b) in zip(range(0, mel.banks.shape[0], group), self.spans, strict=True)
            ]
        )

    def forward(self, audio: Tensor) -> Tensor:
        c = self.cfg
        x = audio.float()
        if c.preemphasis:
            x = x[:, 1:] - c.preemphasis * x[:, :-1]
        spec = torch.stft(
            x,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=c.center,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, n_fft//2+1, frames)
        if c.power == 2:
            power = spec.real.square() + spec.imag.square()
        else:
            power = spec.abs() if c.power == 1 else spec.abs().pow(c.power)
        mel = torch.cat(
            [torch.matmul(w, power[:, a:b]) for w, (a, b) in zip(self.parts, self.spans, strict=True)], 1
        )
        log_mel = torch.log(mel + c.log_offset)  # (B, n_mels, frames)
        return ((log_mel - c.norm_mean) / c.norm_std).unsqueeze(1)


__all__ = ["GROUP", "BandedLogMel", "bands"]
