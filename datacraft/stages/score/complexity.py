"""`complexity`: Deita's EVOL-Complexity score of each user turn (docs/methods.md §6.1).

Writes `scores.complexity` (mean over the row's user turns), `meta.complexity_scores` (per turn;
each turn's instruction alone, no history) and, when `quality` ran before, `scores.deita`.
The judge, templates and backends are in `datacraft.stages.score.judge`.
"""

from __future__ import annotations

from datacraft.stages.score.judge import JudgeStage


class ComplexityStage(JudgeStage):
    """Deita complexity judge (expected score over the digits 1–6)."""

    name = "complexity"
    dimension = "complexity"
