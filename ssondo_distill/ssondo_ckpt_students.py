"""The three student families of the paper authors' ``ssondo`` package, each mapped onto ours (``ssondo_ckpt``).

Their ``_build_student_model(conf)`` picks a branch from ``student_model.model_name`` alone ("mn"
without "dy": MobileNetV3; "dy": DyMN; anything else: ERes2Net) and reads that branch's fields:

    theirs (training_config.student_model)              ours (build_student options)
    MobileNetV3  width_mult, reduced_tail, dilated,     mobilenetv3 / mn10 / mn05 / mn04: width_mult
                 strides, relu_only, se_dims/agg/r,       (the others have one value here)
                 input_dim_f/t
    DyMN         width_mult, strides,                   dymn / dymn10 / dymn04: width_mult; the attention
                 pretrain_final_temp (default 1.0)        temperature (saved with the weights)
    ERes2Net     m_channels, feat_dim, num_blocks,      eres2net: m_channels, n_mels, num_blocks (5)
                 pooling_func, add_layer

The MLP head's hidden width is EfficientAT's ``last_channel`` for MobileNetV3 and DyMN (their loader
takes ``model.last_channel``, whatever the config says) and ``classification_head.hidden_features_size``
for ERes2Net. Module names and shapes of both sides are the same, key for key (``ssondo_ckpt.KEY_MAP``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .students import Student
from .students.mobilenetv3 import last_channel


class SsondoCkptError(ValueError):
    """A student / .ckpt that the other side cannot represent (one line, naming the setting)."""


def setting(conf: Mapping[str, Any], dotted: str, path: Path) -> Any:
    """``conf[a][b]...`` for ``dotted`` "a.b...", or a one-line error naming it."""
    node: Any = conf
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise SsondoCkptError(f"{path}: training_config has no {dotted}, which the ssondo package needs")
        node = node[part]
    return node


def refuse(path: Path, name: str, value: Any, why: str) -> SsondoCkptError:
    return SsondoCkptError(f"{path}: {name}={value!r} cannot be represented here ({why})")


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _fixed(conf: Mapping[str, Any], fixed: Mapping[str, Any], path: Path, family: str) -> None:
    for key, want in fixed.items():
        got = setting(conf, f"student_model.{key}", path)
        if _listed(got) != want:
            raise refuse(path, f"student_model.{key}", got, f"our {family} has {key}={want!r}")


def their_family(model_name: str) -> str:
    """Our family for their ``model_name``, by their loader's own dispatch."""
    if "mn" in model_name and "dy" not in model_name:
        return "mobilenetv3"
    return "dymn" if "dy" in model_name else "eres2net"


@dataclass(frozen=True)
class StudentMap:
    """One family, both ways. ``arch``: the options that fix the weights' shapes (what ``--init`` compares);
    ``one_window``: why their package takes clips of one slicing window only, or None."""

    family: str
    arch: tuple[str, ...]
    one_window: str | None = None

    def hidden_dim(self, conf: Mapping[str, Any], path: Path) -> int:
        """The head's hidden width their loader builds."""
        return last_channel(float(setting(conf, "student_model.width_mult", path)))

    def check_hidden(self, student: Student) -> None:
        opts = student.config()
        width, hidden = float(opts["width_mult"]), int(opts["hidden_dim"])
        if hidden != last_channel(width):
            raise SsondoCkptError(
                f"student {student.name!r} has head hidden_dim {hidden}; the ssondo package builds a "
                f"{self.family} head at EfficientAT's last_channel ({last_channel(width)} for width_mult "
                f"{width:g}): train with hidden_dim {last_channel(width)}"
            )

    def to_theirs(self, student: Student, n_mels: int, n_frames: int) -> dict[str, Any]:
        raise NotImplementedError

    def from_theirs(
        self, conf: Mapping[str, Any], path: Path, ours: Mapping[str, Any]
    ) -> dict[str, Any]:  # ours: the student options a file we exported recorded ({} otherwise)
        raise NotImplementedError

    def extra_state(self, conf: Mapping[str, Any], path: Path) -> dict[str, float]:
        """Our student's extra state (``Student.get_extra_state``) for their config."""
        return {}


# MobileNetV3 settings of theirs that our MobileNetV3 has one value for.
FIXED_MOBILENET = {
    "reduced_tail": False,
    "dilated": False,
    "strides": [2, 2, 2, 2],
    "relu_only": False,
    "se_dims": "c",
    "se_r": 4,
}
MN_NAMES = {1.0: "mn10", 0.5: "mn05", 0.4: "mn04"}  # EfficientAT's names, ours and theirs


class MobileNetV3Map(StudentMap):
    def to_theirs(self, student: Student, n_mels: int, n_frames: int) -> dict[str, Any]:
        self.check_hidden(student)
        name, width = student.name, float(student.config()["width_mult"])
        return {
            "model_name": name if name.startswith("mn") else f"mn_{width:g}",  # their loader keys on "mn"
            "width_mult": width,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in FIXED_MOBILENET.items()},
            "input_dim_f": n_mels,
            "input_dim_t": n_frames,  # used by frequency / time SE only
            "se_agg": "max",
        }

    def from_theirs(self, conf: Mapping[str, Any], path: Path, ours: Mapping[str, Any]) -> dict[str, Any]:
        _fixed(conf, FIXED_MOBILENET, path, "MobileNetV3")
        width = float(setting(conf, "student_model.width_mult", path))
        return {"name": MN_NAMES.get(width, "mobilenetv3"), "width_mult": width}


DYMN_STRIDES = [2, 2, 2, 2]
DYMN_NAMES = {1.0: "dymn10", 0.4: "dymn04"}
DYMN_SCHEDULE = ("temperature_max", "temperature_min", "temperature_slope0", "temperature_slope1")


class DyMNMap(StudentMap):
    def to_theirs(self, student: Student, n_mels: int, n_frames: int) -> dict[str, Any]:
        self.check_hidden(student)
        return {
            "model_name": student.name,  # dymn, dymn10, dymn04: their loader keys on "dy"
            "width_mult": float(student.config()["width_mult"]),
            "strides": tuple(DYMN_STRIDES),
            # their DyMN attends at this temperature (no schedule at inference): the one the weights have now
            "pretrain_final_temp": float(student.backbone.temperature),
        }

    def _temperature(self, conf: Mapping[str, Any], path: Path) -> float:
        t = conf["student_model"].get("pretrain_final_temp", 1.0)  # their loader's default
        if not isinstance(t, int | float) or t <= 0:
            raise refuse(path, "student_model.pretrain_final_temp", t, "an attention temperature is positive")
        return float(t)

    def from_theirs(self, conf: Mapping[str, Any], path: Path, ours: Mapping[str, Any]) -> dict[str, Any]:
        _fixed(conf, {"strides": DYMN_STRIDES}, path, "DyMN")
        width = float(setting(conf, "student_model.width_mult", path))
        t = self._temperature(conf, path)
        # a file we exported keeps its schedule; theirs was trained at one temperature (their training
        # never anneals it), so fine-tuning it starts there
        schedule = {k: ours[k] for k in DYMN_SCHEDULE if k in ours} or {"temperature_max": t}
        return {"name": DYMN_NAMES.get(width, "dymn"), "width_mult": width, **schedule}

    def extra_state(self, conf: Mapping[str, Any], path: Path) -> dict[str, float]:
        return {"temperature": self._temperature(conf, path)}


ERES2NET_FIXED = {"pooling_func": "TSTP", "add_layer": True}


class ERes2NetMap(StudentMap):
    def hidden_dim(self, conf: Mapping[str, Any], path: Path) -> int:
        return int(setting(conf, "classification_head.hidden_features_size", path))

    def check_hidden(self, student: Student) -> None:
        pass  # their ERes2Net head takes any hidden width (hidden_features_size)

    def to_theirs(self, student: Student, n_mels: int, n_frames: int) -> dict[str, Any]:
        opts = student.config()
        return {
            "model_name": "ERes2Net",  # neither "mn" nor "dy": their loader's ERes2Net branch
            "m_channels": int(opts["m_channels"]),
            "feat_dim": int(opts["n_mels"]),
            "num_blocks": [int(b) for b in opts["num_blocks"]],
            **ERES2NET_FIXED,
        }

    def from_theirs(self, conf: Mapping[str, Any], path: Path, ours: Mapping[str, Any]) -> dict[str, Any]:
        _fixed(conf, ERES2NET_FIXED, path, "ERes2Net (fifth stage, mean+std pooling)")
        blocks = setting(conf, "student_model.num_blocks", path)
        if not isinstance(blocks, list | tuple) or len(blocks) != 5:
            raise refuse(path, "student_model.num_blocks", blocks, "our ERes2Net has 5 stages")
        feat = int(setting(conf, "student_model.feat_dim", path))
        n_mels = int(setting(conf, "preprocess.logmelspec.n_mels", path))
        if feat != n_mels:
            raise refuse(path, "student_model.feat_dim", feat, f"the log-mel has {n_mels} bands")
        if feat % 16:
            raise refuse(path, "student_model.feat_dim", feat, "ERes2Net halves it 4 times: a multiple of 16")
        return {
            "name": "eres2net",
            "n_mels": feat,
            "m_channels": int(setting(conf, "student_model.m_channels", path)),
            "num_blocks": [int(b) for b in blocks],
        }


FAMILIES: dict[str, StudentMap] = {
    m.family: m
    for m in (
        MobileNetV3Map("mobilenetv3", ("width_mult", "hidden_dim")),
        DyMNMap(
            "dymn",
            ("width_mult", "hidden_dim"),
            one_window="their DyMN does not fold a clip's windows into the batch: a clip of two or more "
            "windows raises in their code",
        ),
        ERes2NetMap("eres2net", ("n_mels", "m_channels", "num_blocks", "hidden_dim")),
    )
}  # by our backbone family


def student_map(family: str) -> StudentMap:
    try:
        return FAMILIES[family]
    except KeyError:
        raise SsondoCkptError(
            f"student family {family!r} has no ssondo-package counterpart (known: {', '.join(FAMILIES)})"
        ) from None


def architecture(family: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes a student's weight shapes: two students with equal ``architecture`` share a state_dict layout."""
    keys = FAMILIES[family].arch if family in FAMILIES else ()
    return {"family": family, **{k: _listed(options.get(k)) for k in keys}}


__all__ = [
    "FAMILIES",
    "SsondoCkptError",
    "StudentMap",
    "architecture",
    "setting",
    "student_map",
    "their_family",
]
