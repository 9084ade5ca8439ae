"""Issue 19's measurement (docs/results/pretrain.md): probe MATPAC encoders (pretrained vs their
step-0 init) and the log-mel statistics in ONE ssondo eval report, so the bootstrap replicates are
paired across them; then the paired difference pretrained - init per task and averaged over the
tasks, with its 95 % percentile CI (REPORT/paired.json).

usage (one thread; --tasks: the folder holding the three task CSVs, e.g. a large demo corpus'
manifests/demo):
    ssondo pretrain matpac WORK --config configs/pretrain/matpac-tiny-large-cpu.yaml --out RUN
    python benchmarks/pretrain_probe.py REPORT pretrained=RUN/encoder.pt \
        init=RUN/encoder-init.pt --baseline-name init --tasks CORPUS/manifests/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ssondo_eval.bootstrap import percentile_ci
from ssondo_eval.decoded_audio import with_decoded_audio
from ssondo_eval.embedders import LogMelStatsEmbedder, TeacherEmbedder
from ssondo_eval.evaluate import evaluate, probe_pair
from ssondo_eval.probe import ProbeConfig
from ssondo_eval.summary import bootstrap_task
from ssondo_eval.tasks import load_tasks

NAMES = ("instrument_family", "game_music", "phrase_family")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("encoders", nargs="+")
    ap.add_argument("--baseline-name", required=True, help="the NAME the others are compared against")
    ap.add_argument("--tasks", type=Path, required=True, help="folder of the task CSVs (NAMES)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    tasks = load_tasks([f"csv:{args.tasks / (n + '.csv')}" for n in NAMES], [])
    models = []
    for spec in args.encoders:
        name, path = spec.split("=", 1)
        m = TeacherEmbedder("matpac", checkpoint=path, ts="full", device="cpu", batch_size=32)
        m.name = name
        models.append(m)
    models.append(LogMelStatsEmbedder())
    config = ProbeConfig()  # ssondo eval's defaults: linear, 3 seeds, lr grid, early stopping
    report = evaluate(models, tasks, args.out, probe_config=config, untrained=False)
    labels = [m["label"] for m in report["models"]]
    # the report's own replicates are not stored: rebuild them from the cached probe predictions,
    # with the report's generator (bootstrap_task: seed 0, keyed by the task fingerprint)
    tasks = with_decoded_audio(tasks, args.out / "decoded")
    cache_dir = args.out / "embeddings"
    preds = {
        lab: {t.name: probe_pair(m, t, args.out, cache_dir, config, False)[1] for t in tasks}
        for m, lab in zip(models, labels, strict=True)
    }
    boot = {t.name: bootstrap_task(t, {lab: preds[lab][t.name] for lab in labels}, 1000, 0) for t in tasks}
    base = args.baseline_name
    means = {lab: {t: report["scores"][lab][t]["mean"] for t in NAMES} for lab in labels}
    out = {"labels": labels, "per_task": {}, "average": {}, "diff": {}}
    for lab in labels:
        out["per_task"][lab] = {t: report["score_ci"][lab][t] for t in NAMES}
        avg_rep = np.mean([boot[t][lab] for t in NAMES], axis=0)
        out["average"][lab] = percentile_ci(float(np.mean([means[lab][t] for t in NAMES])), avg_rep)
        if lab == base:
            continue
        d = {t: percentile_ci(means[lab][t] - means[base][t], boot[t][lab] - boot[t][base]) for t in NAMES}
        d["average"] = percentile_ci(
            float(np.mean([means[lab][t] - means[base][t] for t in NAMES])),
            np.mean([boot[t][lab] - boot[t][base] for t in NAMES], axis=0),
        )
        out["diff"][f"{lab} - {base}"] = d
    out["lr_chosen"] = {lab: {t: report["scores"][lab][t].get("lr_chosen") for t in NAMES} for lab in labels}
    out["seconds"] = time.perf_counter() - started
    (args.out / "paired.json").write_text(json.dumps(out, indent=1))
    f = lambda c: f"{100 * c['value']:.1f} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]"  # noqa: E731
    for lab in labels:
        print(lab, {t: f(out["per_task"][lab][t]) for t in NAMES}, "avg", f(out["average"][lab]))
    for k, d in out["diff"].items():
        print(k, {t: f(v) for t, v in d.items()})
    print(f"probe wall {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
