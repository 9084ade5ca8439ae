"""DyMN (Schmid et al., "Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio
Models"): MobileNetV3 blocks whose convolutions, activations and attention depend on the input.

Per block a context generator pools the input along frequency and time, transforms both
sequences jointly, and yields (a) a context vector h_c that drives the dynamic convolutions
(softmax attention over K kernels, with a temperature) and the dynamic ReLU, and (b) frequency
and time sequences for coordinate attention. Module names mirror EfficientAT's
``models/dymn`` so its ``dymn*_as.pt`` / ``dymn*_im.pt`` checkpoints load strictly.

The kernel-attention temperature is annealed from ``t_max`` down to ``t_min`` (paper eq. 5);
EfficientAT exposes the schedule but it must be CALLED: the trainer calls
``Student.set_step`` every step, which lands in ``DyMNBackbone.set_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mobilenetv3 import ConvBNAct, batch_norm, block_specs, init_efficientat_weights, make_divisible

Context = tuple[Tensor, Tensor, Tensor]  # h_c (B, H, 1, 1), g_f (B, E, F', 1), g_t (B, E, 1, T')


@dataclass(frozen=True)
class TemperatureSchedule:
    """tau(epoch) = max(t_max - t0_slope * epoch, 1 + t1_slope * (t_max - 1) / t0_slope
    - t1_slope * epoch, t_min): a steep linear decay followed by a gentle one (EfficientAT
    defaults). For weights already trained to the end of the schedule (``dymn*_as``), use
    ``t_max = 1``."""

    t_max: float = 30.0
    t_min: float = 1.0
    t0_slope: float = 1.0
    t1_slope: float = 0.02

    def __call__(self, epoch: float) -> float:
        t0 = self.t_max - self.t0_slope * epoch
        t1 = 1 + self.t1_slope * (self.t_max - 1) / self.t0_slope - self.t1_slope * epoch
        return max(t0, t1, self.t_min)


class DynamicConv(nn.Module):
    """Convolution whose kernel is a per-sample softmax mixture of K kernels.

    weight: (1, 1, K, C_out * C_in/groups * k * k) (EfficientAT's layout, one attention group).
    """

    def __init__(
        self, cin: int, cout: int, context_dim: int, kernel: int, stride: int = 1, groups: int = 1, k: int = 4
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride, self.groups = cin, cout, kernel, stride, groups
        self.padding = (kernel - 1) // 2
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        w = torch.empty(k, cout, cin // groups, kernel, kernel)
        for i in range(k):
            nn.init.kaiming_normal_(w[i], mode="fan_out")
        self.weight = nn.Parameter(w.reshape(1, 1, k, -1))
        self.temperature = 1.0  # set by DyMNBackbone.set_epoch
        self.last_attention: Tensor | None = None  # (B, K) of the latest forward, for inspection

    def kernel_attention(self, h_c: Tensor) -> Tensor:  # (B, H, 1, 1) -> (B, K)
        logits = self.residuals(h_c.flatten(1))
        return torch.softmax(logits / self.temperature, dim=-1)

    def forward(self, x: Tensor, g: Context) -> Tensor:  # (B, C_in, F, T) -> (B, C_out, F', T')
        b, _, f, t = x.shape
        att = self.kernel_attention(g[0])  # (B, K)
        self.last_attention = att.detach()
        w = att @ self.weight[0, 0]  # (B, C_out * C_in/groups * k * k)
        w = w.reshape(b * self.cout, self.cin // self.groups, self.kernel, self.kernel)
        # A different kernel per sample: fold the batch into the channels, groups x B.
        out = F.conv2d(
            x.reshape(1, b * self.cin, f, t), w, None, self.stride, self.padding, groups=self.groups * b
        )
        return out.reshape(b, self.cout, out.shape[-2], out.shape[-1])


class DyReLUB(nn.Module):
    """Dynamic ReLU (variant B): per-sample, per-channel max of M linear maps of x."""

    def __init__(self, channels: int, context_dim: int, m: int = 2) -> None:
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        # slopes scaled by 1, intercepts by 0.5; the identity-like start a_1 = 1, rest 0
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: Tensor, g: Context) -> Tensor:  # (B, C, F, T) -> (B, C, F, T)
        b = x.shape[0]
        theta = 2 * torch.sigmoid(self.coef_net(g[0].flatten(1))) - 1  # (B, 2MC) in [-1, 1]
        coefs = theta.reshape(b, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        mapped = x.unsqueeze(-1) * coefs[..., : self.m] + coefs[..., self.m :]  # (B, C, F, T, M)
        return mapped.amax(dim=-1)


class ContextGen(nn.Module):
    """Pool along F and T, one shared 1x1 conv + BN + Hardswish over both sequences, then
    h_c (their mean) and per-axis projections to the expanded width for coordinate attention."""

    def __init__(self, context_dim: int, cin: int, expanded: int, stride: int) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(cin, context_dim, 1, bias=False)
        self.joint_norm = batch_norm(context_dim)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, expanded, 1)
        self.conv_t = nn.Conv2d(context_dim, expanded, 1)
        # strided blocks shrink F and T: pool the attention sequences the same way
        self.pool_f: nn.Module = nn.AvgPool2d((3, 1), (stride, 1), (1, 0)) if stride > 1 else nn.Identity()
        self.pool_t: nn.Module = nn.AvgPool2d((1, 3), (1, stride), (0, 1)) if stride > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Context:
        cf = x.mean(dim=3, keepdim=True)  # (B, C, F, 1)
        ct = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, T, 1)
        f = cf.shape[2]
        g = self.joint_act(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))  # (B, H, F+T, 1)
        h_c = g.mean(dim=2, keepdim=True)  # (B, H, 1, 1)
        h_f, h_t = g[:, :, :f], g[:, :, f:].transpose(2, 3)  # (B, H, F, 1), (B, H, 1, T)
        return h_c, self.conv_f(self.pool_f(h_f)), self.conv_t(self.pool_t(h_t))


class DyBlock(nn.Module):
    """Dynamic inverted residual block: dy-conv expand -> dy-conv depthwise -> DyReLU ->
    coordinate attention -> dy-conv project (BN after each conv)."""

    def __init__(
        self,
        cin: int,
        kernel: int,
        expanded: int,
        cout: int,
        hardswish: bool,
        stride: int,
        width_mult: float,
        context_ratio: int = 4,
        min_context: int = 32,
        max_context: int = 128,
        dyconv_k: int = 4,
        dyrelu_m: int = 2,
    ) -> None:
        super().__init__()
        ctx = make_divisible(expanded // context_ratio)
        ctx = min(
            max(ctx, make_divisible(min_context * width_mult)), make_divisible(max_context * width_mult)
        )
        self.context_dim = ctx
        act = nn.Hardswish if hardswish else nn.ReLU
        self.has_expand = expanded != cin
        if self.has_expand:
            self.exp_conv = DynamicConv(cin, expanded, ctx, 1, k=dyconv_k)
            self.exp_norm = batch_norm(expanded)
            self.exp_act = act(inplace=True)
        self.depth_conv = DynamicConv(expanded, expanded, ctx, kernel, stride, groups=expanded, k=dyconv_k)
        self.depth_norm = batch_norm(expanded)
        self.depth_act = DyReLUB(expanded, ctx, m=dyrelu_m)
        self.proj_conv = DynamicConv(expanded, cout, ctx, 1, k=dyconv_k)
        self.proj_norm = batch_norm(cout)
        self.context_gen = ContextGen(ctx, cin, expanded, stride)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        g = self.context_gen(x)
        out = x
        if self.has_expand:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, g)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, g)), g)
        out = out * torch.sigmoid(g[1]) * torch.sigmoid(g[2])  # coordinate attention
        out = self.proj_norm(self.proj_conv(out, g))
        return out + x if self.use_residual else out


class DyMNBackbone(nn.Module):
    """mel (B, 1, F, T) -> feature map (B, 6 * last width, F/32, T/32); ``embed`` mean-pools it.

    ``width_mult`` 1.0 is EfficientAT's dymn10 (960-d embedding), 0.4 dymn04.
    """

    family = "dymn"  # the registry family; keys the paper's parameter count

    def __init__(
        self,
        width_mult: float = 1.0,
        schedule: TemperatureSchedule | None = None,
        dyconv_k: int = 4,
        dyrelu_m: int = 2,
    ) -> None:
        super().__init__()
        specs = block_specs(width_mult)
        self.in_c = ConvBNAct(1, specs[0].cin, 3, stride=2)
        self.layers = nn.ModuleList(
            DyBlock(
                s.cin,
                s.kernel,
                s.expanded,
                s.cout,
                s.hardswish,
                s.stride,
                width_mult,
                dyconv_k=dyconv_k,
                dyrelu_m=dyrelu_m,
            )
            for s in specs
        )
        self.out_dim = 6 * specs[-1].cout
        self.out_c = ConvBNAct(specs[-1].cout, self.out_dim, 1)
        self.width_mult = width_mult
        self.schedule = schedule or TemperatureSchedule()
        init_efficientat_weights(self)
        self.set_epoch(0.0)

    @property
    def temperature(self) -> float:
        return self._temperature

    def set_temperature(self, value: float) -> None:
        self._temperature = float(value)
        for m in self.modules():
            if isinstance(m, DynamicConv):
                m.temperature = self._temperature

    def set_epoch(self, epoch: float) -> None:
        """Apply the temperature schedule at (fractional) ``epoch``."""
        self.set_temperature(self.schedule(epoch))

    def forward(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, C, F', T')
        x = self.in_c(mel)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def embed(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, C)
        return self.forward(mel).mean(dim=(2, 3))
