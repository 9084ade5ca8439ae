"""The log-mel of an export with its mel projection restricted to the bins each filter group covers.

A mel filter is non-zero on a few contiguous FFT bins (the S-SONDO front-end: 128 Slaney filters
over 513 bins, 1,005 of 65,664 entries non-zero), so the dense ``banks @ power`` of ``LogMel``
spends most of its multiply-adds on zeros: about a third of the front-end's time at batch 1 on one
thread (10-s clip). ``BandedLogMel`` cuts the filters into groups of ``GROUP`` consecutive ones and
multiplies each group by the slice of bins it covers (13 % of the dense work for that front-end).
The skipped terms are exact zeros, so the result is the dense one up to float summation order.

Only the projection is ``BandedLogMel``'s: the pre-emphasis, STFT, power, log and normalisation are
the wrapped ``LogMel``'s own methods; ``tests/distill/test_banded_mel.py`` holds the two equal for
every front-end kind.
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


class BandedLogMel(LogMel):
    """audio (B, S) -> (B, 1, n_mels, frames), the same as ``mel`` (a ``LogMel``), faster."""

    def __init__(self, mel: LogMel, group: int = GROUP) -> None:
        if not isinstance(mel, LogMel):
            raise TypeError(f"BandedLogMel wraps a LogMel, got {type(mel).__name__}")
        super().__init__(mel.cfg, mel.window.clone(), mel.banks.clone())
        self.window_name, self.banks_name = mel.window_name, mel.banks_name
        self.spans = bands(mel.banks, group)
        self.parts = nn.ParameterList(  # (group, end - first) slices of the banks, frozen
            [
                nn.Parameter(mel.banks[i : i + group, a:b].clone(), requires_grad=False)
                for i, (a, b) in zip(range(0, mel.banks.shape[0], group), self.spans, strict=True)
            ]
        )

    def project(self, power: Tensor) -> Tensor:  # (B, n_bins, frames) -> (B, n_mels, frames)
        return torch.cat(
            [torch.matmul(w, power[:, a:b]) for w, (a, b) in zip(self.parts, self.spans, strict=True)], 1
        )


__all__ = ["GROUP", "BandedLogMel", "bands"]
