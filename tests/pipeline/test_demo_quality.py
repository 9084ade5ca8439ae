"""The claim that matters: on the FULL demo corpus, a student distilled from the demo teacher beats
the log-mel statistics baseline on a task where the teacher does (the reduced corpus of the
end-to-end test is too small for that comparison to rise above probe noise)."""

from __future__ import annotations

import json

import pytest

from pipeline.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_student_beats_log_mel_where_the_teacher_does(tmp_path):
    result = run_demo(
        DemoSettings(out=tmp_path, size="full", students=("balanced",), sweep=False, progress=False),
        echo=lambda line: None,
    )
    report = json.loads((result.out / "report" / "eval" / "results.json").read_text())
    label = {m["kind"]: m["label"] for m in report["models"]}
    scores = {kind: {t: r["mean"] for t, r in report["scores"][lab].items()} for kind, lab in label.items()}
    informative = [t for t, yes in report["informative"].items() if yes]
    assert informative, f"the teacher beats log-mel on no task: {scores}"
    wins = [t for t in informative if scores["student"][t] > scores["baseline"][t]]
    assert wins, f"the student beats log-mel on none of {informative}: {scores}"
