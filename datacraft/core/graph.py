"""The shape of a config's stage graph: which stage reads which, and the branches.

A stage spec may carry, next to `name` and `id`, the graph keys `from` (the label whose kept rows it
reads), `branch` (its branch; `main` by default) and `slice` (how many of its input rows it sees). `plan_stages`
turns the ordered specs into one `StagePlan` per stage; `datacraft.beam.pipeline` builds the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: keys of a stage spec that are the graph's, not the stage's parameters
GRAPH_KEYS = ("name", "id", "from", "branch", "slice")
MAIN_BRANCH = "main"
#: the reader, as a `from:` target
READ_LABEL = "read"


def stage_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A stage spec without the graph keys: the stage's own parameters."""
    return {k: v for k, v in spec.items() if k not in GRAPH_KEYS}


@dataclass(frozen=True)
class StagePlan:
    """One stage's place in the graph.

    `source`: the label whose kept rows it reads (`read` for the reader). Default: the stage before
    it on its branch; the first stage of a new branch forks from the latest earlier stage of the
    main branch (so `dpo_pairs` with `branch: dpo` placed after `reflection` reads reflection's rows).
    `branch`: `main` writes OUT/data; any other branch's last stage writes OUT/branches/<branch>/.
    `slice`: this many of the stage's input rows (those with the smallest id hashes: the same rows
    on every run and runner) go through the stage; the others pass it unchanged and count as kept
    (`slice.passed`)."""

    label: str
    source: str
    branch: str
    slice: int | None = None


def plan_stages(specs: list[dict[str, Any]]) -> list[StagePlan]:
    out: list[StagePlan] = []
    last: dict[str, str] = {}
    for spec in specs:
        label = spec.get("id") or spec["name"]
        branch = spec.get("branch") or MAIN_BRANCH
        source = spec.get("from") or last.get(branch) or last.get(MAIN_BRANCH) or READ_LABEL
        out.append(StagePlan(label, source, branch, spec.get("slice")))
        last[branch] = label
    return out


def branch_tails(plans: list[StagePlan]) -> dict[str, str]:
    """Branch name → the label of its last stage (its output); `main` → `read` with no stages."""
    tails = {MAIN_BRANCH: READ_LABEL}
    for p in plans:
        tails[p.branch] = p.label
    return tails
