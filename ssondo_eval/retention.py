"""How much of its teacher a student keeps, as the paper and the reports state it.

``gain_retention`` is the share of the teacher's gain over the log-mel statistics baseline that the
student keeps; ``score_retention`` is the plain ratio of scores. Both are point formulas; the
uncertainty of each (bootstrap over test items, combined with probe seeds) is built on top of them.
"""

from __future__ import annotations

import math


def gain_retention(student: float, teacher: float, logmel: float) -> float:
    """(student - logmel) / (teacher - logmel); NaN when the teacher does not beat log-mel (undefined)."""
    gain = teacher - logmel
    if not gain > 0:
        return math.nan
    return (student - logmel) / gain


def score_retention(student: float, teacher: float) -> float:
    """student / teacher; NaN when the teacher's score is not positive."""
    if not teacher > 0:
        return math.nan
    return student / teacher
