"""MobileNetV3 of the EfficientAT family (mn10, mn05, mn04, ...), as a backbone.

The module tree mirrors EfficientAT's ``models/mn`` so that a user's ``mn10_im.pt`` /
``mn10_as.pt`` loads strictly: ``features.0`` (stem conv), ``features.1..15`` (inverted
residual blocks, ``.block.<i>``), ``features.16`` (1x1 conv to 6 x last width). Only the
classifier (``classifier.*``) is absent: S-SONDO replaces it with its projection head.
Channel squeeze-excitation (EfficientAT default ``se_dims='c'``) is the only SE variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# EfficientAT's BatchNorm settings (eps and momentum differ from torch's defaults).
BN_EPS, BN_MOMENTUM = 0.001, 0.01


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, never going more than 10 % below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def last_channel(width_mult: float) -> int:
    """EfficientAT's ``last_channel`` at ``width_mult``: the hidden width of its classifier MLP (512 /
    640 / 1280 for mn04 / mn05 / mn10), the default hidden width of our projection head, and the width
    the paper authors' ``ssondo`` package builds the head of a MobileNetV3 student with."""
    return make_divisible(1280 * width_mult)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Sequential):
    """conv (0) -> BN (1) -> activation (2, absent when ``act`` is None); same keys as torchvision's."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: type[nn.Module] | None = nn.Hardswish,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            batch_norm(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted residual block (MobileNetV3 paper, tables 1-2), widths already scaled."""

    cin: int
    kernel: int
    expanded: int
    cout: int
    use_se: bool
    hardswish: bool
    stride: int


# input, kernel, expanded, output, SE, activation (HS = Hardswish, RE = ReLU), stride
_MN_TABLE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]


def block_specs(width_mult: float) -> list[BlockSpec]:
    """The 15 blocks of MobileNetV3-Large at ``width_mult`` (EfficientAT's rounding)."""
    w = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return [BlockSpec(w(i), k, w(e), w(o), se, act == "HS", s) for i, k, e, o, se, act, s in _MN_TABLE]


class SqueezeExcitation(nn.Module):
    """Channel SE with linear layers (EfficientAT's key names ``fc1``/``fc2``)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, F, T)
        s = x.mean(dim=(2, 3))  # (B, C)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT wraps its SE layers in ``conc_se_layers``; with channel-only SE the
    max-aggregation over one layer is the identity, so this is just that one layer."""

    def __init__(self, channels: int, se_ratio: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList(
            [SqueezeExcitation(channels, make_divisible(channels // se_ratio))]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> (SE) -> 1x1 project, residual when shapes allow."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.cin:
            layers.append(ConvBNAct(spec.cin, spec.expanded, 1, act=act))
        layers.append(
            ConvBNAct(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded, act=act)
        )
        if spec.use_se:
            layers.append(ConcurrentSE(spec.expanded))
        layers.append(ConvBNAct(spec.expanded, spec.cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = spec.stride == 1 and spec.cin == spec.cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def init_efficientat_weights(model: nn.Module) -> None:
    """EfficientAT's initialisation, shared by MobileNetV3 and DyMN: kaiming fan_out convs (zero bias
    where there is one), unit / zero batch norms, N(0, 0.01) linears with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV3Backbone(nn.Module):
    """mel (B, 1, F, T) -> feature map (B, 6 * last width, F/32, T/32); ``embed`` mean-pools it.

    ``width_mult`` 1.0 is EfficientAT's mn10 (960-d embedding), 0.5 mn05, 0.4 mn04.
    """

    family = "mobilenetv3"  # the registry family; keys the paper's parameter count

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        specs = block_specs(width_mult)
        layers: list[nn.Module] = [ConvBNAct(1, specs[0].cin, 3, stride=2)]
        layers += [InvertedResidual(s) for s in specs]
        self.out_dim = 6 * specs[-1].cout
        layers.append(ConvBNAct(specs[-1].cout, self.out_dim, 1))
        self.features = nn.Sequential(*layers)
        self.width_mult = width_mult
        init_efficientat_weights(self)

    def forward(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, C, F', T')
        return self.features(mel)

    def embed(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, C)
        return self.forward(mel).mean(dim=(2, 3))


# Keys of EfficientAT checkpoints that are not part of the backbone: the 527-class MLP head.
EFFICIENTAT_CLASSIFIER_PREFIX = "classifier."


def load_efficientat_state_dict(backbone: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load an EfficientAT checkpoint (mn* or dymn*) into ``backbone``, strictly.

    The classifier keys (``classifier.*``) are dropped explicitly (returned, so the caller can
    say so); every other key must match the backbone exactly, or a RuntimeError names the
    missing and unexpected keys. fp16 weights are cast to the backbone's dtype.
    """
    if "model" in state_dict and not isinstance(state_dict["model"], Tensor):
        state_dict = state_dict["model"]  # type: ignore[assignment]
    dropped = sorted(k for k in state_dict if k.startswith(EFFICIENTAT_CLASSIFIER_PREFIX))
    kept = {k: v for k, v in state_dict.items() if not k.startswith(EFFICIENTAT_CLASSIFIER_PREFIX)}
    backbone.load_state_dict(kept, strict=True)
    return dropped
