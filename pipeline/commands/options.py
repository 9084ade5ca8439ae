"""Option parsing shared by several commands."""

from __future__ import annotations

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
