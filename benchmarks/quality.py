"""How much of the demo teacher a student keeps, on the CPU.

Distils the demo teacher (YAMNet) into the default demo student on the FULL demo corpus with
balanced sampling, probes teacher, student and the log-mel baseline on the development tasks,
and prints the student's score as a % of the teacher's per task, on average, and on average over
the tasks where the teacher beats log-mel (the only ones that say something).

    python benchmarks/quality.py [--out DIR] [--config configs/demo-cpu.yaml] [--set epochs=30 ...]

Re-running with the same settings reuses every stage; other --set values train a new run
(choose another --out to keep both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from pipeline.demo import DemoSettings, default_train_config, run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-out/quality"))
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--config", type=Path, default=default_train_config())
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
            students=("balanced",),
            sweep=False,
            progress=False,
        )
    )
    report = json.loads((result.out / "report" / "eval" / "results.json").read_text())
    teacher = next(m["label"] for m in report["models"] if m["kind"] == "teacher")
    student = next(m["label"] for m in report["models"] if m["kind"] == "student")
    baseline = next(m["label"] for m in report["models"] if m["kind"] == "baseline")
    train_cfg = json.loads((result.runs["balanced"] / "config.json").read_text())["config"]
    print(
        f"\nsettings: {args.config.name} + {overrides or 'no overrides'}; student {train_cfg['student']}, "
        f"{train_cfg['epochs']} epochs x {train_cfg['samples_per_epoch']} samples, target_norm "
        f"{train_cfg.get('target_norm')}, corpus {args.size}"
    )
    print(f"{'task':<28}{'teacher':>9}{'student':>9}{'log-mel':>9}{'% of teacher':>14}  informative")
    kept, kept_informative = [], []
    for task in [t["name"] for t in report["tasks"]]:
        s_t, s_s, s_b = (report["scores"][m][task]["mean"] for m in (teacher, student, baseline))
        pct = 100.0 * s_s / s_t if s_t > 0 else float("nan")
        informative = report["informative"].get(task, False)
        kept.append(pct)
        if informative:
            kept_informative.append(pct)
        print(
            f"{task:<28}{100 * s_t:9.1f}{100 * s_s:9.1f}{100 * s_b:9.1f}{pct:13.1f}%  {'yes' if informative else 'no'}"
        )
    print(
        f"average % of teacher: {sum(kept) / len(kept):.1f} % over {len(kept)} tasks; "
        + (
            f"{sum(kept_informative) / len(kept_informative):.1f} % over the {len(kept_informative)} "
            "task(s) where the teacher beats log-mel"
            if kept_informative
            else "no task where the teacher beats log-mel"
        )
    )
    print(
        f"(ratio = student / teacher probe score, both measured in this run; {time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
