"""Empirical bias correction of an FX int8 model: each int8 convolution / Linear gets the per-channel
output mean of its fp32 counterpart on the calibration clips.

Rounding the weights (7 bits) and the activations (8 bits) shifts each layer's output by an amount
that does not average out over a clip: a per-channel offset, which the next layers carry and grow.
For every int8 layer, in the order the model runs them, the correction measures on the calibration
clips the mean over batch and positions of its pre-activation output in fp32 (the prepared model:
BatchNorm folded, float weights) and in int8 (the layer's dequantised int8 input and int8 weights,
through the float op: what the int8 kernel computes before it requantises, up to rounding), and adds
the difference to the layer's bias. Layer by layer, so that each correction sees the int8 model with
every earlier layer already corrected (its input then carries no mean error from upstream). The
pre-activation output is corrected, not the output after a fused ReLU: the mean of a ReLU output is
not linear in the bias.

The activation ranges stay those of the calibration (the shifts are small against them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# int8 module classes of torch.ao (conv / Linear, fused ReLU or not) -> the float op they compute
_KINDS = {"Conv2d": "conv", "ConvReLU2d": "conv", "Linear": "linear", "LinearReLU": "linear"}


def _kind(module: nn.Module) -> str | None:
    """ "conv" / "linear" for an int8 conv / Linear module of torch.ao, else None."""
    where = type(module).__module__
    if not (where.startswith("torch.ao.nn.") and ".quantized" in where):
        return None
    return _KINDS.get(type(module).__name__)


def int8_layers(quantized: nn.Module) -> list[str]:
    """Qualified names of the int8 convolutions and Linear layers of an FX-converted model, in the
    order its forward runs them."""
    order: list[str] = []
    names = {n for n, m in quantized.named_modules() if _kind(m) is not None}
    for node in quantized.graph.nodes:
        if node.op == "call_module" and node.target in names and node.target not in order:
            order.append(node.target)
    return order


def _float_pre_activation(module: nn.Module) -> nn.Module:
    """The float layer (conv / Linear) of a prepared-model module: itself, or the first of a fused one."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module
    first = module[0]
    if not isinstance(first, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"no conv / Linear at the start of {type(module).__name__}")
    return first


def _float_op(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer`` (a float conv / Linear) on ``x`` through the functional op: no hook of it fires."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight, layer.bias)
    return layer._conv_forward(x, layer.weight, layer.bias)


def _int8_pre_activation(module: nn.Module, x: Tensor, bias: Tensor | None) -> Tensor:
    """What ``module`` (int8) computes before requantising, in float: its int8 weights on ``x``."""
    w = module.weight().dequantize()
    if _kind(module) == "linear":
        return F.linear(x, w, bias)
    return F.conv2d(x, w, bias, module.stride, module.padding, module.dilation, module.groups)


def channel_mean(y: Tensor) -> Tensor:
    """(C,) mean of a layer output over everything but its channel axis (1 for (N, C, H, W); the last
    for a Linear's (..., C))."""
    y = y.double()
    if y.dim() == 4:
        return y.mean(dim=(0, 2, 3))
    return y.reshape(-1, y.shape[-1]).mean(0)


@contextmanager
def _input_of(module: nn.Module) -> Iterator[list[Tensor]]:
    """The float inputs ``module`` receives while the context is open (dequantised when int8)."""
    seen: list[Tensor] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        x = args[0]
        seen.append(x.dequantize() if x.is_quantized else x.detach())

    handle = module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _mean_output(
    model: nn.Module, layer: nn.Module, clips: Tensor, batch: int, fn: Callable[[Tensor], Tensor]
) -> Tensor:
    """Channel mean over ``clips`` of ``fn(x)``, x the input ``layer`` receives inside ``model``."""
    total, count = None, 0
    with _input_of(layer) as seen, torch.inference_mode():
        for i in range(0, len(clips), batch):
            model(clips[i : i + batch])
            for x in seen:
                y = fn(x)
                n = y.numel() // y.shape[1 if y.dim() == 4 else -1]
                m = channel_mean(y) * n
                total = m if total is None else total + m
                count += n
            seen.clear()
    if total is None:
        raise RuntimeError("layer never ran on the calibration clips")
    return total / count


def _fp32_means(
    prepared: nn.Module, layers: dict[str, nn.Module], clips: Tensor, batch: int
) -> dict[str, Tensor]:
    """Channel means of every float layer's pre-activation output over ``clips``, in ONE pass of the
    fp32 model (it does not change while the int8 model is corrected)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str, f: nn.Module) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, args: tuple) -> None:
            y = _float_op(f, args[0].detach())
            n = y.numel() // y.shape[1 if y.dim() == 4 else -1]
            sums[name] = sums[name] + channel_mean(y) * n if name in sums else channel_mean(y) * n
            counts[name] = counts.get(name, 0) + n

        return hook

    handles = [f.register_forward_pre_hook(hook_for(name, f)) for name, f in layers.items()]
    try:
        with torch.inference_mode():
            for i in range(0, len(clips), batch):
                prepared(clips[i : i + batch])
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(layers) - set(sums))
    if missing:
        raise RuntimeError(f"layers never ran on the calibration clips: {', '.join(missing)}")
    return {name: sums[name] / counts[name] for name in layers}


def correct_bias(
    prepared: nn.Module,
    quantized: nn.Module,
    clips: Tensor,
    batch: int = 8,
    kinds: tuple[str, ...] = ("conv", "linear"),
) -> dict[str, float]:
    """Bias correction of ``quantized`` (FX-converted from ``prepared``) in place, on ``clips`` (N, S),
    of its layers of ``kinds`` ("conv", "linear").

    -> layer name -> the largest |correction| added to its bias (how much it moved)."""
    names = [n for n in int8_layers(quantized) if _kind(quantized.get_submodule(n)) in kinds]
    floats = {n: _float_pre_activation(prepared.get_submodule(n)) for n in names}
    refs = _fp32_means(prepared, floats, clips, batch)
    moved: dict[str, float] = {}
    for name in names:  # in execution order: each int8 mean is taken with the earlier layers corrected
        q = quantized.get_submodule(name)
        bias = q.bias()
        zero = torch.zeros(q.weight().shape[0]) if bias is None else bias.detach()
        got = _mean_output(
            quantized, q, clips, batch, lambda x, q=q, zero=zero: _int8_pre_activation(q, x, zero)
        )
        delta = (refs[name] - got).float()
        q.set_weight_bias(q.weight(), zero + delta)
        moved[name] = float(delta.abs().max())
    return moved
