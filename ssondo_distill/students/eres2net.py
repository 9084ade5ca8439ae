"""ERes2Net (Chen et al., "An Enhanced Res2Net with Local and Global Feature Fusion for Speaker
Verification"), as the S-SONDO paper configures it for 128-mel audio: m_channels 16, blocks
[3, 4, 6, 3, 3] with the fifth stage ("add_layer"), temporal statistics pooling -> 1024-d.

Res2Net blocks split their channels into ``scale`` groups processed hierarchically; the deeper
stages fuse those groups with attentional feature fusion (AFF), and the stage outputs are
fused bottom-up (each stage's fused output is downsampled and AFF-merged with the next one).
Module names follow 3D-Speaker's ``speakerlab/models/eres2net/ERes2Net.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReLU20(nn.Hardtanh):
    """ReLU clipped at 20 (the speaker-verification convention ERes2Net keeps)."""

    def __init__(self) -> None:
        super().__init__(0.0, 20.0, inplace=True)


class AFF(nn.Module):
    """Attentional feature fusion: out = x * (1 + tanh(a)) + y * (1 - tanh(a)), a from [x, y]."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inter, 1),
            nn.BatchNorm2d(inter),
            nn.SiLU(inplace=True),
            nn.Conv2d(inter, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # both (B, C, F, T)
        a = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)


class ERes2NetBlock(nn.Module):
    """1x1 conv -> ``scale`` hierarchical 3x3 branches -> 1x1 conv (x2 channels), residual.

    ``fuse=False`` adds the previous branch's output to the next split (Res2Net);
    ``fuse=True`` merges them with AFF (ERes2Net's local feature fusion).
    """

    expansion = 2

    def __init__(
        self, cin: int, planes: int, stride: int = 1, base_width: int = 32, scale: int = 2, fuse: bool = False
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * base_width / 64.0))
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(cin, width * scale, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(width) for _ in range(scale - 1))
        self.fuse = fuse
        self.relu = ReLU20()
        cout = planes * self.expansion
        self.conv3 = nn.Conv2d(width * scale, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, dim=1)
        outs: list[Tensor] = []
        sp = splits[0]
        for i in range(self.scale):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, splits[i]) if self.fuse else sp + splits[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return self.relu(out + self.shortcut(x))


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 2, 1, bias=False)


class ERes2NetBackbone(nn.Module):
    """mel (B, 1, n_mels, T) -> (B, C * n_mels/16, T/16) fused map; ``embed`` -> (B, 2 * C * n_mels/16)
    (mean and standard deviation over time, flattened over channels and frequency)."""

    family = "eres2net"  # the registry family; keys the paper's parameter count

    def __init__(
        self, n_mels: int = 128, m_channels: int = 16, num_blocks: tuple[int, ...] = (3, 4, 6, 3, 3)
    ) -> None:
        super().__init__()
        if len(num_blocks) != 5:
            raise ValueError(f"ERes2Net (with the fifth stage) needs 5 stage depths, got {num_blocks}")
        if n_mels % 16:
            raise ValueError(
                f"ERes2Net halves the frequency axis 4 times: n_mels must divide by 16, got {n_mels}"
            )
        m = m_channels
        self.n_mels, self.m_channels, self.num_blocks = n_mels, m, tuple(num_blocks)
        self.conv1 = nn.Conv2d(1, m, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self._cin = m
        self.layer1 = self._stage(m, num_blocks[0], 1, fuse=False)
        self.layer2 = self._stage(2 * m, num_blocks[1], 2, fuse=False)
        self.layer3 = self._stage(4 * m, num_blocks[2], 2, fuse=True)
        self.layer4 = self._stage(8 * m, num_blocks[3], 2, fuse=True)
        self.layer5 = self._stage(2 * m, num_blocks[4], 2, fuse=True)
        # bottom-up fusion: downsample the fused map and merge it with the next stage's output
        self.layer1_downsample = _down(2 * m, 4 * m)
        self.layer2_downsample = _down(4 * m, 8 * m)
        self.layer3_downsample = _down(8 * m, 16 * m)
        self.layer4_downsample = _down(16 * m, 4 * m)
        self.fuse_mode12 = AFF(4 * m)
        self.fuse_mode123 = AFF(8 * m)
        self.fuse_mode1234 = AFF(16 * m)
        self.fuse_mode12345 = AFF(4 * m)
        self.out_dim = 2 * (4 * m) * (n_mels // 16)  # mean + std of 4m channels x n_mels/16 bands

    def _stage(self, planes: int, n: int, stride: int, fuse: bool) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(ERes2NetBlock(self._cin, planes, s, fuse=fuse))
            self._cin = planes * ERes2NetBlock.expansion
        return nn.Sequential(*blocks)

    def forward(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, 4m, F/16, T/16)
        if mel.shape[2] != self.n_mels:
            raise ValueError(f"ERes2Net was built for {self.n_mels} mel bands, got input with {mel.shape[2]}")
        x = F.relu(self.bn1(self.conv1(mel)))
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        out3 = self.layer3(out2)
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        out4 = self.layer4(out3)
        fused = self.fuse_mode1234(out4, self.layer3_downsample(fused))
        out5 = self.layer5(out4)
        return self.fuse_mode12345(out5, self.layer4_downsample(fused))

    def embed(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, out_dim)
        x = self.forward(mel)  # (B, C, F', T')
        mean = x.mean(dim=-1).flatten(1)
        std = torch.sqrt(x.var(dim=-1) + 1e-8).flatten(1)  # unbiased var, as the x-vector TSTP
        return torch.cat([mean, std], dim=1)
