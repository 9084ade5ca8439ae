"""``ssondo export --format ssondo-ckpt``: a student.pt as the paper authors' .ckpt (``ssondo_ckpt``'s
mapping), verified before it is published: loaded back by their ``get_ssondo`` (the ``ssondo`` package,
a dev extra) or, where it is not installed, by our own .ckpt reader, and said so in the record; the
embeddings and outputs must equal the student's under their slicing (``ssondo_ckpt.sliced``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssondo_cache.atomic import atomic_path
from ssondo_cache.provenance import code_version, now_iso, sha256_file

from . import export_check
from .checkpoint import load_student, source_record, write_torch
from .ssondo_ckpt import SsondoCkptError, sliced, to_ssondo_ckpt
from .ssondo_ckpt_students import student_map


def package_loader() -> Callable[[Path], Any] | None:
    """Their ``get_ssondo`` when the ``ssondo`` package is installed (a dev extra), else None."""
    if importlib.util.find_spec("ssondo") is None:
        return None
    from ssondo import get_ssondo

    return lambda path: get_ssondo(str(path), return_logits=True, device="cpu")


def _agreement(pairs: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    ref = torch.cat([r.flatten(1) for r, _ in pairs]).double()
    got = torch.cat([g.flatten(1) for _, g in pairs]).double()
    if got.shape != ref.shape:
        return {
            "max_abs_diff": float("inf"),
            "max_rel_diff": float("inf"),
            "min_cosine": -1.0,
            "eager_max_abs": 0.0,
        }
    max_abs, max_ref = (got - ref).abs().max().item(), ref.abs().max().item()
    return {
        "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / max(max_ref, 1e-12),
        "min_cosine": torch.nn.functional.cosine_similarity(got, ref, dim=1, eps=1e-12).min().item(),
        "eager_max_abs": max_ref,
    }


def export_ssondo_ckpt(
    checkpoint: Path, out: Path, options: dict[str, Any], repeats: int, threads: int | None
) -> dict[str, Any]:
    """Write ``checkpoint`` (a student.pt) as their .ckpt at ``out``, verified before it is published:
    loaded back by their ``get_ssondo`` (or, without the package, by our reader, and said so), its
    embeddings and outputs must equal ours under their slicing. Returns the export record (the caller
    adds the format and writes it beside the file)."""
    if options["int8"]:
        raise export_check.ExportError("--int8 does not apply to --format ssondo-ckpt (a float checkpoint)")
    model, meta = load_student(checkpoint)
    clip, sr = float(options["clip_seconds"]), model.sample_rate
    try:
        payload = to_ssondo_ckpt(model, meta, clip)
    except SsondoCkptError as e:
        raise SsondoCkptError(f"{checkpoint}: {e}") from None
    window = int(clip * sr)
    one_window = student_map(model.student.backbone.family).one_window  # why longer clips fail in theirs
    gen = torch.Generator().manual_seed(0)
    inputs = [
        0.1 * torch.randn(1, window, generator=gen),
        0.1 * torch.randn(2, window if one_window else window * 5 // 2, generator=gen),
    ]
    load = package_loader()
    with export_check.torch_threads(threads), atomic_path(out) as tmp:
        write_torch(payload, tmp, "the ssondo checkpoint")
        if load is not None:
            theirs = load(tmp)
            fns = {"embedding": theirs.get_embeddings, "projection": lambda a: theirs(a)[1]}
            verified_with = f"ssondo {importlib.metadata.version('ssondo')} get_ssondo"
        else:
            again, _ = load_student(tmp)
            fns = {k: (lambda a, f=f: sliced(f, a, window, window)) for k, f in
                   (("embedding", again.embed), ("projection", again.forward))}  # fmt: skip
            verified_with = "ssondo-pipeline's own .ckpt reader (the ssondo package is not installed)"
        ours = {"embedding": model.embed, "projection": model.forward}
        with torch.inference_mode():
            per = {
                k: _agreement([(sliced(ours[k], a, window, window), fns[k](a)) for a in inputs]) for k in fns
            }
        worst = {
            "max_abs_diff": max(v["max_abs_diff"] for v in per.values()),
            "max_rel_diff": max(v["max_rel_diff"] for v in per.values()),
            "min_cosine": min(v["min_cosine"] for v in per.values()),
        }
        bound = f"max |diff| <= {export_check.FP32_TOLERANCE:g} x max |ours| + {export_check.FP32_ATOL:g}"
        ok = all(
            v["max_abs_diff"] <= export_check.FP32_TOLERANCE * v["eager_max_abs"] + export_check.FP32_ATOL
            for v in per.values()
        )
        if not ok:
            raise export_check.ExportVerificationError(
                f"{verified_with} disagrees with the student: max |diff| {worst['max_abs_diff']:.3g}, "
                f"min cosine {worst['min_cosine']:.6f}; required: {bound}. Nothing was written."
            )
        what = options["what"]

        def run(audio: Tensor) -> np.ndarray:
            with torch.inference_mode():
                return fns[what](audio).numpy()

        latency = export_check.cpu_latency(model, what, run, inputs[0], repeats, clip)
    size = out.stat().st_size
    verification = {
        **worst,
        "verified_with": verified_with,
        "inputs": [list(a.shape) for a in inputs],
        "audio": "N(0, 0.1^2) noise, seed 0; ours sliced as their package slices",
        "bound": bound,
        "outputs": per,
    }
    return {
        "export": {
            **options,
            "path": out.name,
            "sha256": sha256_file(out),
            "size_bytes": size,
            "opset": None,
        },
        "input": {
            "name": "audio",
            "shape": ["batch", "samples"],
            "dtype": "float32",
            "sample_rate": sr,
            "note": f"ssondo.get_ssondo(path): audio is cut into {clip:g}-s windows (the tail dropped; a clip "
            f"under {clip:g} s gives no segment), embedded per window and averaged"
            + (f"; clips of one window only ({one_window})" if one_window else ""),
        },
        "output": {
            "name": what,
            "shape": ["batch", model.backbone_dim if what == "embedding" else model.teacher_dim],
        },
        **source_record(meta, checkpoint, sha256_file(checkpoint)),
        "verification": verification,
        "latency": latency,
        "versions": {"torch": torch.__version__, "ssondo": verified_with.split()[1] if load else None},
        "code_version": code_version(),
        "created": now_iso(),
    }
