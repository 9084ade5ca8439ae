import dataclasses
import json

import pytest

from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.registry import Registry
from ssondo_cache.typed_config import ConfigError, from_dict, load_config


def test_registry_builds_by_name_and_lists_known_names_on_error():
    reg: Registry[int] = Registry("widget")

    @reg.register("double")
    def double(x: int) -> int:
        return 2 * x

    assert reg.build("double", x=4) == 8
    with pytest.raises(KeyError, match="known: double"):
        reg.get("triple")
    with pytest.raises(ValueError, match="twice"):
        reg.register("double")(double)


@dataclasses.dataclass
class Inner:
    rate: float = 1.0


@dataclasses.dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: list[str] = dataclasses.field(default_factory=list)
    maybe: int | None = None


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    cfg = from_dict(Outer, {"name": "a", "inner": {"rate": 2}, "tags": ["t"], "maybe": 3})
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    with pytest.raises(ConfigError, match="stepz"):
        from_dict(Outer, {"stepz": 3})
    with pytest.raises(ConfigError, match="inner.*ratee"):
        from_dict(Outer, {"inner": {"ratee": 3}})
    with pytest.raises(ConfigError, match="steps"):
        from_dict(Outer, {"steps": "ten"})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 5}))
    assert load_config(Outer, path, overrides={"name": "cli", "steps": None}).steps == 5
    assert load_config(Outer, path, overrides={"name": "cli"}).name == "cli"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
