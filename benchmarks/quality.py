"""How much of the demo teacher a student keeps, on the CPU.

Distils the demo teacher (YAMNet) into an mn04 student (configs/quality-cpu.yaml: the lever table's
best setting) on a demo corpus (`--size large`, the default: the 19-h one whose tasks have hundreds of test clips;
`full` is the 864-clip demo corpus) with balanced sampling, probes teacher, student, the untrained student (same architecture, same
initialisation seed) and the log-mel baseline on the development tasks, and prints, per task and on
average over the informative tasks (the teacher beats log-mel beyond the CI), the gain retention
(student - log-mel) / (teacher - log-mel), the score retention student / teacher and the gain over
the untrained student, each with its 95 % CI (paired bootstrap over test clips and probe seeds),
with the wall time, commit and machine: the demo's own figures table (pipeline.demo_report).

    python benchmarks/quality.py [--size large] [--out DIR] [--config configs/quality-cpu.yaml] [--set epochs=30 ...]

Re-running with the same settings reuses every stage; other --set values train a new run
(choose another --out to keep both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from pipeline.demo import DemoSettings, run_demo
from pipeline.demo_report import figures_markdown

QUALITY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quality-cpu.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-out/quality"))
    ap.add_argument(
        "--size",
        default="large",
        choices=["full", "small", "large"],
        help="demo corpus size; large (ssondo demo-data --size large, about 19 h) is the one with tasks of power",
    )
    ap.add_argument("--config", type=Path, default=QUALITY_CONFIG)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting (YAML value), e.g. --set epochs=30",
    )
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    t0 = time.perf_counter()
    result = run_demo(
        DemoSettings(
            out=args.out,
            size=args.size,
            train_config=args.config,
            train_overrides=overrides,
            ts=(0.96,),  # the one TS the student trains on: no second cache, no TS sweep
            students=("balanced",),
            sweep=False,
            progress=False,
        )
    )
    figures = json.loads((result.out / "report" / "demo-figures.json").read_text())
    train_cfg = json.loads((result.runs["balanced"] / "config.json").read_text())["config"]
    print(
        f"\nsettings: {args.config.name} + {overrides or 'no overrides'}; student {train_cfg['student']}, "
        f"{train_cfg['epochs']} epochs x {train_cfg['samples_per_epoch']} samples, target_norm "
        f"{train_cfg.get('target_norm')}, corpus {args.size}; this call took {time.perf_counter() - t0:.0f} s\n"
    )
    print(figures_markdown(figures))


if __name__ == "__main__":
    main()
