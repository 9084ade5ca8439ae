"""`ssondo ablate report DIR`: the grid's tables and plots from plan.json and each unit's status.

DIR/report/ablation.md    one table per varied axis (mean and 95 % CI over seeds, best value marked,
                          whether each other value is beyond the CI), one row per setting, failures
DIR/report/cells.csv|parquet    long table: one row per (cell, task) incl. "average" (plain CSV/Parquet)
DIR/report/settings.csv|parquet one row per (setting = cell minus its seed, task): mean, CI over seeds
DIR/report/axes.csv|parquet     one row per (axis, value, task)
DIR/report/score-<axis>.png     average score vs the axis, CI error bars; curves.png: loss curves overlaid

Score: the probe's mean over its seeds, per task; "average": the mean over tasks. Gain retention
(over log-mel) and score retention use ssondo_eval.retention with the reference's teacher and
baseline scores. CIs: two-sided 95 % t intervals over training seeds (ssondo_eval.probe_scores.mean_ci);
"beyond the CI": the two intervals do not overlap.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.ablate.cells import REFERENCE, read_status
from ssondo_cache.atomic import write_bytes, write_text
from ssondo_eval.probe_scores import mean_ci
from ssondo_eval.retention import gain_retention, score_retention

AVERAGE = "average"
SEED = "seed"


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _dimensions(plan: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(label, member axes) per crossed dimension: an axis, or a zip group ``a+b``."""
    g = plan["grid_config"]
    dims = [(name, [name]) for name in g.get("axes", {})]
    dims += [("+".join(group), list(group)) for group in g.get("zip", [])]
    return dims


def _value(cell: dict[str, Any], members: list[str]) -> str:
    return "/".join(_text(cell["axes"][m]) for m in members)


def _reference(out: Path, plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, float], str | None]:
    """(teacher scores, log-mel scores) per task incl. average, and why they are missing."""
    status = read_status(out / f"{REFERENCE}-{plan['eval_key']}")
    if status is None:
        return {}, {}, "the reference (teacher + baseline) has not been evaluated yet"
    if status["status"] != "done":
        return {}, {}, f"the reference evaluation failed: {status['error']}"

    def first(models: dict[str, Any]) -> dict[str, float]:
        if not models:
            return {}
        per_task = {t: r["mean"] for t, r in next(iter(models.values())).items()}
        return {**per_task, AVERAGE: sum(per_task.values()) / len(per_task)}

    teacher, logmel = first(status.get("teacher", {})), first(status.get("baseline", {}))
    why = None if teacher and logmel else "no teacher or no log-mel baseline in eval: no gain retention"
    return teacher, logmel, why


def cell_rows(out: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The long table: one row per (cell, task) of a finished cell, one row per unfinished cell."""
    teacher, logmel, _ = _reference(out, plan)
    rows = []
    for cell in plan["cells"]:
        status = read_status(out / "runs" / cell["name"])
        state = (
            "pending" if status is None or status.get("eval_key") != plan["eval_key"] else status["status"]
        )
        base = {"cell": cell["name"], **{k: _text(v) for k, v in cell["axes"].items()}, "status": state,
                "code_version": (status or {}).get("code_version", "")}  # fmt: skip
        if state != "done":
            err = status.get("error", "") if state == "failed" else ""
            rows.append({**base, "task": "", "score": None, "gain_retention": None,
                         "score_retention": None, "error": err})  # fmt: skip
            continue
        per_task = {t: r["mean"] for t, r in status["scores"].items()}
        per_task[AVERAGE] = sum(per_task.values()) / len(per_task)
        # the average's gain retention: over the tasks where the teacher beats log-mel (elsewhere the
        # gain is undefined, and a near-zero one would swamp the average)
        useful = [
            t for t in per_task if t != AVERAGE and t in teacher and t in logmel and teacher[t] > logmel[t]
        ]
        for task, score in per_task.items():
            if task == AVERAGE and teacher and logmel:
                gain = (
                    gain_retention(
                        *[sum(d[t] for t in useful) / len(useful) for d in (per_task, teacher, logmel)]
                    )
                    if useful
                    else None
                )
            elif task in teacher and task in logmel:
                gain = gain_retention(score, teacher[task], logmel[task])
            else:
                gain = None
            ratio = score_retention(score, teacher[task]) if task in teacher else None
            rows.append({**base, "task": task, "score": score, "gain_retention": _finite(gain),
                         "score_retention": _finite(ratio), "error": ""})  # fmt: skip
    return rows


def _stat(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m, h = mean_ci(values)
    return m, h, len(values)


def setting_rows(rows: list[dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (setting, task): the cells that differ only by seed, mean and CI over seeds."""
    names = [n for n in plan["axes"] if n != SEED]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "done":
            groups[(*[r[n] for n in names], r["task"])].append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip([*names, "task"], key, strict=True))
        for col in ("score", "gain_retention", "score_retention"):
            m, h, n = _stat([r[col] for r in members])
            row.update({col: m, f"{col}_ci95": h})
        row["n_seeds"] = len(members)
        out.append(row)
    return out


def axis_rows(rows: list[dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (varied dimension, value, task): per seed the mean over the other axes' cells, then
    mean and CI over seeds; the best value per (dimension, task) and whether others are beyond its CI."""
    by_name = {c["name"]: c for c in plan["cells"]}
    out = []
    for label, members in _dimensions(plan):
        values = list(dict.fromkeys(_value(c, members) for c in plan["cells"]))
        if len(values) < 2 or label == SEED:
            continue
        tasks = list(dict.fromkeys(r["task"] for r in rows if r["status"] == "done"))
        for task in tasks:
            block = []
            for v in values:
                per_seed: dict[str, list[float]] = defaultdict(list)
                for r in rows:
                    c = by_name[r["cell"]]
                    if r["status"] == "done" and r["task"] == task and _value(c, members) == v:
                        per_seed[_text(c["axes"].get(SEED, r["cell"]))].append(r["score"])
                m, h, n = _stat([sum(s) / len(s) for s in per_seed.values()])
                block.append({"axis": label, "value": v, "task": task, "score": m, "score_ci95": h, "n": n})
            _mark_best(block)
            out += block
    return out


def _mark_best(block: list[dict[str, Any]]) -> None:
    scored = [b for b in block if b["score"] is not None]
    if not scored:
        return
    best = max(scored, key=lambda b: b["score"])
    for b in block:
        b["best"] = b is best
        if b is best or b["score"] is None:
            b["beyond_ci"] = None
        elif best["score_ci95"] is None or b["score_ci95"] is None:
            b["beyond_ci"] = None  # one seed: no interval to compare
        else:
            b["beyond_ci"] = best["score"] - best["score_ci95"] > b["score"] + b["score_ci95"]


def expectation(block: list[dict[str, Any]], expected: list[str]) -> str:
    """Whether the measured order of ``expected`` values matches it, and which steps of it are
    beyond the CI (the better value's interval above the next one's)."""
    by_value = {a["value"]: a for a in block if a["score"] is not None}
    have = [v for v in expected if v in by_value]
    measured = sorted(have, key=lambda v: -by_value[v]["score"])
    steps = []
    for better, worse in zip(have, have[1:], strict=False):
        a, b = by_value[better], by_value[worse]
        if a["score_ci95"] is None or b["score_ci95"] is None:
            verdict = "no CI"
        elif a["score"] - a["score_ci95"] > b["score"] + b["score_ci95"]:
            verdict = "yes, beyond the CI"
        elif a["score"] > b["score"]:
            verdict = "in order, within the CI"
        else:
            verdict = "no"
        steps.append(f"{better} > {worse}: {verdict}")
    missing = [v for v in expected if v not in by_value]
    return (
        f"Expected ranking {' > '.join(expected)}: measured {' > '.join(measured) or '–'}; "
        f"{'reproduced' if measured == have and not missing else 'not reproduced'} "
        f"({'; '.join(steps) or 'nothing to compare'}{'; not measured: ' + ', '.join(missing) if missing else ''})."
    )


def _pct(m: float | None, h: float | None = None) -> str:
    if m is None:
        return "–"
    return f"{100 * m:.1f}" + (f" ± {100 * h:.1f}" if h is not None else "")


def markdown(plan: dict[str, Any], rows: list[dict[str, Any]], settings: list[dict[str, Any]],
             axes: list[dict[str, Any]], reference: tuple[dict, dict], why: str | None) -> str:  # fmt: skip
    done = sum(1 for c in {r["cell"]: r for r in rows}.values() if c["status"] == "done")
    versions = sorted({r["code_version"] for r in rows if r.get("code_version")})
    lines = [
        f"# Ablation {plan['grid']}",
        "",
        f"{done} of {len(plan['cells'])} cells done; grid `{plan['source']}`, workspace `{plan['workspace']}`; "
        f"measured at code version {', '.join(versions) or '–'}.",
        "Scores in %: linear-probe mean over probe seeds, then mean ± 95 % CI half width (t) over training "
        "seeds. Retention in % (gain: (student - log-mel) / (teacher - log-mel); score: student / teacher).",
        "",
    ]
    if why:
        lines += [f"No retention figures: {why}.", ""]
    else:
        teacher, logmel = reference
        tasks = list(teacher)
        lines += ["| reference | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {name} | " + " | ".join(_pct(scores.get(t)) for t in tasks) + " |"
                  for name, scores in (("teacher", teacher), ("log-mel", logmel))]  # fmt: skip
        flat = [t for t in tasks if not teacher[t] > logmel.get(t, math.inf)]
        if flat:
            lines.append(
                f"\nThe teacher does not beat log-mel on {', '.join(flat)}: no gain retention there."
            )
        lines.append("")
    for label in dict.fromkeys(a["axis"] for a in axes):
        lines += [f"## {label} ({AVERAGE} over tasks)", "", "| value | n seeds | score | beyond the CI of the best |",
                  "|---|---|---|---|"]  # fmt: skip
        block = [a for a in axes if a["axis"] == label and a["task"] == AVERAGE]
        for a in block:
            mark = " **(best)**" if a.get("best") else ""
            beyond = {True: "yes", False: "no", None: "–"}[a.get("beyond_ci")]
            lines.append(
                f"| {a['value']}{mark} | {a['n']} | {_pct(a['score'], a['score_ci95'])} | {beyond} |"
            )
        ranked = sorted((a for a in block if a["score"] is not None), key=lambda a: -a["score"])
        lines += ["", "Ranking: " + " > ".join(a["value"] for a in ranked) + ".", ""]
        expected = plan["grid_config"].get("expect", {}).get(label)
        if expected:
            lines += [expectation(block, [_text(v) for v in expected]), ""]
    names = [n for n in plan["axes"] if n != SEED]
    tasks = list(dict.fromkeys(s["task"] for s in settings))
    if settings:
        head = [*names, "seeds", *[f"{t} score" for t in tasks], "gain ret. (avg†)", "score ret. (avg)"]
        lines += [
            "## Every setting (best average score marked)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        keyed = defaultdict(dict)
        for s in settings:
            keyed[tuple(s[n] for n in names)][s["task"]] = s
        averages = {
            k: v[AVERAGE]["score"] for k, v in keyed.items() if v.get(AVERAGE, {}).get("score") is not None
        }
        best = max(averages, key=averages.get) if averages else None
        for key, per_task in keyed.items():
            avg = per_task.get(AVERAGE, {})
            key = (*key[:-1], f"{key[-1]} **(best)**") if key == best and key else key
            cells = [
                _pct(per_task[t]["score"], per_task[t]["score_ci95"]) if t in per_task else "–" for t in tasks
            ]
            lines.append("| " + " | ".join([*key, str(avg.get("n_seeds", 0)), *cells,
                         _pct(avg.get("gain_retention"), avg.get("gain_retention_ci95")),
                         _pct(avg.get("score_retention"), avg.get("score_retention_ci95"))]) + " |")  # fmt: skip
        lines += ["", "† gain retention of the average over the tasks where the teacher beats log-mel.", ""]
    bad = [r for r in rows if r["status"] != "done"]
    if bad:
        lines += ["## Not done", "", "| cell | status | error |", "|---|---|---|"]
        lines += [f"| {r['cell']} | {r['status']} | {r['error'].replace('|', '/')} |" for r in bad]
        lines.append("")
    return "\n".join(lines)


def _tables(folder: Path, stem: str, rows: list[dict[str, Any]]) -> None:
    """STEM.csv and STEM.parquet (columns: the union of the rows' keys, in first-seen order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    write_text(folder / f"{stem}.csv", text.getvalue())
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in rows]), buf)
    write_bytes(folder / f"{stem}.parquet", buf.getvalue())


def _png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def plot_axes(axes: list[dict[str, Any]], folder: Path) -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    paths = []
    for label in dict.fromkeys(a["axis"] for a in axes):
        block = [a for a in axes if a["axis"] == label and a["task"] == AVERAGE and a["score"] is not None]
        if not block:
            continue
        fig = Figure(figsize=(max(4.0, 0.9 * len(block)), 3.4), dpi=100)
        ax = fig.subplots()
        x = range(len(block))
        ax.errorbar(x, [100 * a["score"] for a in block], yerr=[100 * (a["score_ci95"] or 0) for a in block],
                    fmt="o", capsize=4)  # fmt: skip
        for i, a in enumerate(block):
            if a.get("best"):
                ax.plot(i, 100 * a["score"], "*", markersize=14, color="tab:red", label="best")
        ax.set_xticks(list(x), [a["value"] for a in block], rotation=20, ha="right")
        ax.set_xlabel(label)
        ax.set_ylabel("average probe score (%)")
        ax.set_title(f"score vs {label} (95 % CI over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = folder / f"score-{label.replace('/', '-')}.png"
        _png(fig, path)
        paths.append(path)
    return paths


def plot_curves(out: Path, plan: dict[str, Any], folder: Path) -> Path:
    """Training loss and validation cosine distance of every cell with metrics, overlaid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for cell in plan["cells"]:
        path = out / "runs" / cell["name"] / "metrics.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for ax, key in ((ax1, "loss"), (ax2, "val_cosine_distance")):
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=cell["slug"], linewidth=1)
    for ax, title in ((ax1, "training loss"), (ax2, "validation cosine distance")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    path = folder / "curves.png"
    _png(fig, path)
    return path


def write_ablation_report(out: str | Path) -> Path:
    """Write DIR/report/ (see the module doc) from whatever is finished; returns ablation.md."""
    out = Path(out)
    plan_path = out / "plan.json"
    if not plan_path.is_file():
        raise FileNotFoundError(
            f"{plan_path} is missing: {out} is not an ablation folder (`ssondo ablate GRID --out DIR`)"
        )
    plan = json.loads(plan_path.read_text())
    folder = out / "report"
    rows = cell_rows(out, plan)
    settings = setting_rows(rows, plan)
    axes = axis_rows(rows, plan)
    teacher, logmel, why = _reference(out, plan)
    for stem, table in (("cells", rows), ("settings", settings), ("axes", axes)):
        if table:
            _tables(folder, stem, table)
    plot_axes(axes, folder)
    plot_curves(out, plan, folder)
    write_text(folder / "ablation.md", markdown(plan, rows, settings, axes, (teacher, logmel), why))
    return folder / "ablation.md"
