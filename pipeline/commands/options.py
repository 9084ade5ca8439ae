"""Option parsing shared by several commands."""

from __future__ import annotations

from collections.abc import Callable

import click
import yaml


def key_values(pairs: tuple[str, ...], flag: str = "--option") -> dict:
    """``("depth=3", "mode=fast")`` -> ``{"depth": 3, "mode": "fast"}``; values are read as YAML
    ("64" -> 64, "true" -> True). A pair without ``=`` is a usage error naming ``flag``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=flag)
        out[key] = yaml.safe_load(value)
    return out


def run_options(default: Callable[[str], str], model: str) -> Callable[[Callable], Callable]:
    """The options every training command shares (checkpoints, device, precision, compile, progress);
    ``default(name)`` says where a field's default comes from, ``model`` what --compile compiles."""
    options = [
        click.option(
            "--checkpoint-every",
            type=click.IntRange(min=1),
            help=f"Steps between checkpoints {default('checkpoint_every')}.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            help=f"cuda without a GPU is an error {default('device')}.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16"]),
            help=f"auto = bf16 autocast on CUDA, fp32 on CPU {default('precision')}.",
        ),
        click.option("--compile", "compile_", is_flag=True, default=None, help=f"torch.compile {model}."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]

    def apply(f: Callable) -> Callable:
        for option in reversed(options):  # click lists options in decoration order, top first
            f = option(f)
        return f

    return apply
