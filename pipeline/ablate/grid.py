"""GRID.yaml: the workspace, a base TrainConfig, the axes to cross (and zip groups that move
together), the evaluation; expanded into cells, each a fully resolved TrainConfig with a stable
short hash (canonical JSON: independent of key order and of defaults written out or not)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssondo_cache.typed_config import ConfigError, from_dict, to_dict
from ssondo_distill.config import TrainConfig
from ssondo_eval.probe import ProbeConfig

REPO = Path(__file__).resolve().parents[2]  # shipped configs/ live here
# set by the grid for every cell: never an axis or a base field
MANAGED = ("work", "out", "resume", "dry_run")
HASH_CHARS = 10


@dataclass
class EvalSettings:
    """What `ssondo eval` would be given: tasks, the reference models, probe settings."""

    tasks: list[str] = field(default_factory=list)  # NAME:PATH specs, as `ssondo eval --task`
    teacher: str | None = None  # live teacher (registry name, hear:..., py:...), the retention reference
    checkpoint: str | None = None  # the live teacher's checkpoint
    teacher_options: dict[str, Any] = field(default_factory=dict)
    teacher_ts: float | str | None = "full"  # live teacher's TS ("full": the whole clip)
    cache: str | None = None  # or: the teacher read from this cache of the workspace (packed-corpus tasks)
    baseline: str = "logmel"  # logmel | none (gain retention needs logmel)
    ts: float | None = None  # students' window in seconds; null: each cell's clip_seconds
    device: str = "auto"
    batch_size: int = 32
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class ClusterSettings:
    """How a missing balanced-kK manifest is made (the options of `ssondo cluster`)."""

    cache: str | None = None  # cluster this cache; null: the cells' cache (it must be one)
    seed: int = 0
    normalize: bool = False
    sample: int | None = None
    device: str = "auto"
    max_iter: int = 100
    n_init: int = 4


@dataclass
class GridConfig:
    workspace: Path
    base: str | dict[str, Any] = field(
        default_factory=dict
    )  # a config file, or inline fields (+ `config: FILE`)
    axes: dict[str, list[Any]] = field(default_factory=dict)  # crossed
    zip: list[dict[str, list[Any]]] = field(default_factory=list)  # each group: equal-length lists, one axis
    eval: EvalSettings = field(default_factory=EvalSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    name: str | None = None  # for job names and titles; default: the GRID file's stem
    # a published ranking per axis, best first: the report says whether the grid reproduces it
    expect: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Cell:
    name: str  # RUN folder: <slug>-<hash>
    slug: str  # readable axis values
    key: str  # short hash of `config`
    axes: dict[str, Any]  # axis -> value of this cell (every varied axis, zip members included)
    config: dict[str, Any]  # resolved TrainConfig minus MANAGED, JSON-plain

    def train_config(self, work: Path, out: Path) -> TrainConfig:
        return from_dict(TrainConfig, {**self.config, "work": work, "out": out, "resume": True})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slug": self.slug,
            "key": self.key,
            "axes": self.axes,
            "config": self.config,
        }


@dataclass
class Grid:
    source: Path
    config: GridConfig
    cells: list[Cell]
    axes: dict[str, list[Any]]  # every varied axis (zip members too) -> its values, in grid order
    overrides: dict[str, Any] = field(default_factory=dict)  # `--set KEY=VALUE` over the file

    @property
    def name(self) -> str:
        return self.config.name or self.source.stem

    @property
    def workspace(self) -> Path:
        return Path(self.config.workspace).resolve()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, chars: int = HASH_CHARS) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:chars]


def _find(path: str, grid_file: Path) -> Path:
    """A base config: absolute, else beside the GRID file, else the current folder, else the repo root
    (where the shipped configs/ live); the error names every place looked in."""
    p = Path(path)
    places = [p] if p.is_absolute() else [grid_file.parent / p, Path.cwd() / p, REPO / p]
    for place in places:
        if place.is_file():
            return place
    raise ConfigError(
        f"{grid_file}: base config {path!r} not found (looked in {', '.join(map(str, places))})"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def base_fields(config: GridConfig, grid_file: Path) -> dict[str, Any]:
    """The base TrainConfig fields: a file, or inline ones over an optional `config: FILE`."""
    base = config.base
    if isinstance(base, str):
        base = {"config": base}
    fields = dict(base)
    file = fields.pop("config", None)
    data = _read_yaml(_find(file, grid_file)) if file else {}
    data.update(fields)
    managed = sorted(set(data) & set(MANAGED))
    if managed:
        raise ConfigError(f"{grid_file}: base sets {managed}: the grid sets those for each cell")
    return data


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    """``schedule.warmup_epochs`` sets a field inside a nested mapping."""
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        child = node.get(p)
        node[p] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def _dimensions(config: GridConfig, grid_file: Path) -> list[list[dict[str, Any]]]:
    """One list of {axis: value} choices per crossed dimension (a zip group is one dimension)."""
    dims: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    groups = [{name: values} for name, values in config.axes.items()] + list(config.zip)
    for group in groups:
        lengths = set()
        for name, values in group.items():
            if name.split(".")[0] in MANAGED:
                raise ConfigError(f"{grid_file}: {name!r} cannot be an axis (the grid sets it per cell)")
            if name in seen:
                raise ConfigError(f"{grid_file}: axis {name!r} appears twice")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{grid_file}: axis {name!r} needs a non-empty list of values")
            seen.add(name)
            lengths.add(len(values))
        if len(lengths) > 1:
            raise ConfigError(
                f"{grid_file}: zip group {sorted(group)} has lists of lengths {sorted(lengths)}"
            )
        n = lengths.pop()
        dims.append([{name: values[i] for name, values in group.items()} for i in range(n)])
    return dims


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return short_hash(value, 6)
    return re.sub(r"[^A-Za-z0-9.+]+", "-", str(value)).strip("-") or "x"


def slug(axes: dict[str, Any]) -> str:
    """``{"loss": "cosine", "seed": 0}`` -> ``loss-cosine_seed-0`` (folder-name safe, at most 80 chars)."""
    text = "_".join(f"{_text(k.split('.')[-1])}-{_text(v)}" for k, v in axes.items()) or "base"
    return text[:80]


def _check_names(cfg: dict[str, Any], grid_file: Path, axes: dict[str, Any]) -> None:
    """A misspelt student or loss is refused now, not as a failed cell after a queue wait."""
    from ssondo_distill.losses import LOSSES
    from ssondo_distill.students import STUDENTS

    for what, registry in (("student", STUDENTS), ("loss", LOSSES)):
        if cfg[what] not in registry:
            raise ConfigError(
                f"{grid_file} cell {axes}: unknown {what} {cfg[what]!r}; known: {', '.join(registry.names())}"
            )


def expand(config: GridConfig, grid_file: Path) -> list[Cell]:
    """Every cell of the grid, in grid order (the last axis varies fastest)."""
    base = base_fields(config, grid_file)
    cells: list[Cell] = []
    by_key: dict[str, str] = {}
    for combo in itertools.product(*_dimensions(config, grid_file)):
        axes = {k: v for choice in combo for k, v in choice.items()}
        fields = json.loads(json.dumps(base))  # deep copy, JSON-plain
        for k, v in axes.items():
            _set(fields, k, v)
        resolved = to_dict(from_dict(TrainConfig, fields, where=f"{grid_file} cell {axes}"))
        _check_names(resolved, grid_file, axes)
        plain = json.loads(canonical({k: v for k, v in resolved.items() if k not in MANAGED}))
        key = short_hash(plain)
        s = slug(axes)
        if key in by_key:
            raise ConfigError(f"{grid_file}: cells {by_key[key]} and {s} resolve to the same config")
        by_key[key] = s
        cells.append(Cell(f"{s}-{key}", s, key, axes, plain))
    return cells


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None) -> Grid:
    """Read and expand GRID.yaml, with ``overrides`` (dotted keys: ``workspace``, ``base.lr``,
    ``eval.tasks``) over the file; every refusal is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no grid file {path}")
    data = _read_yaml(path)
    overrides = dict(overrides or {})
    if isinstance(data.get("base"), str) and any(k.startswith("base.") for k in overrides):
        data["base"] = {"config": data["base"]}
    for k, v in overrides.items():
        _set(data, k, v)
    config = from_dict(GridConfig, data, where=str(path))
    if not config.eval.tasks:
        raise ConfigError(f"{path}: eval.tasks is empty: name the tasks as for `ssondo eval --task`")
    if config.eval.baseline not in ("logmel", "none"):
        raise ConfigError(f"{path}: eval.baseline must be logmel or none, got {config.eval.baseline!r}")
    cells = expand(config, path)
    axes: dict[str, list[Any]] = {}
    for group in [{n: v} for n, v in config.axes.items()] + list(config.zip):
        axes.update(group)
    unknown = sorted(set(config.expect) - set(axes))
    if unknown:
        raise ConfigError(f"{path}: expect names {unknown}, which are not axes")
    return Grid(path.resolve(), config, cells, axes, overrides)


def eval_key(grid: Grid) -> str:
    return short_hash(to_dict(grid.config.eval))
