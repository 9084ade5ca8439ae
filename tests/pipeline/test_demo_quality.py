"""What the demo claims, task by task, stated here BEFORE the run and each checked after it.

On the FULL demo corpus the demo distils YAMNet into the demo student (balanced sampling) and probes
teacher, student, the untrained student (same architecture, same initialisation seed) and log-mel
statistics on every development task. Each task has its claim below; a claim is checked with the
report's 95 % CIs (paired bootstrap over test clips combined with probe seeds), never by picking,
after the run, a task where the student happened to come out ahead. A task the report holds and
this table does not (or the other way round) fails the test: a new task needs its claim first.

The claims are the project's targets (issue 15, item 6): on an informative task (the teacher beats
log-mel beyond the CI) the student beats log-mel AND the untrained student beyond the CI.
Changing a claim is a reviewed edit of ``CLAIMS``, with the reason in its comment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipeline.demo import DemoSettings, run_demo


@dataclass(frozen=True)
class Claim:
    informative: bool  # the teacher beats log-mel beyond the CI of their paired difference
    beats_logmel: bool | None = None  # the student's gain over log-mel is above 0 beyond its CI
    beats_untrained: bool | None = None  # the student's gain over its untrained twin is above 0 beyond its CI


CLAIMS = {
    # YAMNet knows instrument timbre; a soundfont never heard in training is the test set
    "demo-instrument_family": Claim(informative=True, beats_logmel=True, beats_untrained=True),
    # sample categories (ambi, bass, drum, elec, ...) are what an AudioSet teacher separates
    "demo-sonicpi_category": Claim(informative=True, beats_logmel=True, beats_untrained=True),
    # each voice was recorded in its own conditions and the teacher discards the fine phonetics:
    # log-mel statistics beat YAMNet here, so the task says nothing about distillation
    "demo-spoken_digit": Claim(informative=False),
}


def check(claim: Claim, task: str, report: dict, student: str) -> list[str]:
    """The parts of ``claim`` the report contradicts, each as one line with its figures."""
    failed = []
    gains = report["teacher_gain"][task]
    informative = report["informative"][task]
    if informative != claim.informative:
        failed.append(
            f"{task}: informative is {informative}, claimed {claim.informative} (teacher - log-mel {gains})"
        )
    fig = report["retention"][student]["figures"][task]
    for claimed, key, what in (
        (claim.beats_logmel, "gain_over_logmel", "log-mel"),
        (claim.beats_untrained, "gain_over_untrained", "the untrained student"),
    ):
        if claimed is None:
            continue
        g = fig[key]
        beats = g is not None and g["low"] is not None and g["low"] > 0
        if beats != claimed:
            failed.append(
                f"{task}: student beats {what} beyond the CI is {beats}, claimed {claimed} ({key} {g})"
            )
    return failed


# Measured at c460069..b99cb60 (2-core AMD EPYC, one full demo): instrument family is the only
# informative task and the student beats neither baseline on it, so this target fails today; it runs
# with `make quality`, not `make test`, until the demo meets it (issue 15).
@pytest.mark.slow
@pytest.mark.target
def test_each_task_meets_the_claim_stated_before_the_run(tmp_path):
    result = run_demo(
        DemoSettings(out=tmp_path, size="full", students=("balanced",), sweep=False, progress=False),
        echo=lambda line: None,
    )
    report = json.loads((result.out / "report" / "eval" / "results.json").read_text())
    assert set(report["informative"]) == set(CLAIMS), "every task needs its claim stated before the run"
    student = next(m["label"] for m in report["models"] if m["kind"] == "student")
    assert report["retention"][student]["untrained"] is not None, "the untrained student was not evaluated"
    failed = [line for task, claim in CLAIMS.items() for line in check(claim, task, report, student)]
    assert not failed, "claims the run contradicts:\n" + "\n".join(failed)


def _report(gain_low: float, over_logmel_low: float, over_untrained_low: float) -> dict:
    ci = {"value": 0.1, "high": 0.3}
    return {
        "models": [{"label": "s", "kind": "student"}, {"label": "b", "kind": "baseline"}],
        "informative": {"t": gain_low > 0},
        "teacher_gain": {"t": {"teacher": {"gain_over_logmel": {**ci, "low": gain_low}}}},
        "retention": {
            "s": {
                "figures": {
                    "t": {
                        "gain_over_logmel": {**ci, "low": over_logmel_low},
                        "gain_over_untrained": {**ci, "low": over_untrained_low},
                    }
                }
            }
        },
    }


def test_check_reports_each_contradicted_claim():
    claim = Claim(informative=True, beats_logmel=True, beats_untrained=True)
    assert check(claim, "t", _report(0.05, 0.02, 0.01), "s") == []
    failed = check(claim, "t", _report(0.05, -0.02, 0.0), "s")  # a CI reaching 0 is no win
    assert len(failed) == 2 and "log-mel" in failed[0] and "untrained" in failed[1]
    assert len(check(claim, "t", _report(-0.01, 0.02, 0.01), "s")) == 1  # not informative after all
    assert check(Claim(informative=False), "t", _report(-0.01, -0.5, -0.5), "s") == []
