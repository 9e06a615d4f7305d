"""`explain_row`: "why was this row dropped?", "where did this synthetic row come from?"."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from datacraft.core.rows import written_messages
from datacraft.core.run_folder import (
    DROPPED,
    MISSING,
    RunFolder,
    clean_row,
    row_lineage,
    row_scores,
    row_texts,
    truncate,
)


def _node(row_id: str, hit: tuple[str, str, dict[str, Any]] | None) -> dict[str, Any]:
    if hit is None:
        return {"id": row_id, "status": MISSING, "method": None, "note": "not in this run's output or dropped rows"}
    status, path, row = hit
    parents, method = row_lineage(row)
    instruction, response = row_texts(row)
    node: dict[str, Any] = {
        "id": row_id,
        "status": status,
        "method": method,
        "parent_ids": parents,
        "task": row.get("task"),
        "source": row.get("source"),
        "instruction": truncate(instruction),
        "response": truncate(response),
        "file": path,
    }
    if status == DROPPED:
        node.update(stage=row.get("drop_stage"), reason=row.get("drop_reason"), detail=row.get("drop_detail"))
    return node


def _tree(root: str, nodes: Mapping[str, dict[str, Any]], seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    node = dict(nodes[root])
    if root in seen:
        node["note"] = "cycle in lineage"
        node["parents"] = []
        return node
    node["parents"] = [_tree(p, nodes, seen | {root}) for p in node.get("parent_ids") or [] if p in nodes]
    return node


def _summary(expl: Mapping[str, Any]) -> str:
    lines = []
    if expl["status"] == DROPPED:
        detail = f": {expl['detail']}" if expl.get("detail") else ""
        lines.append(f"Dropped by stage '{expl['stage']}' ({expl['reason']}){detail}.")
    else:
        lines.append("Kept: the row is in the output.")
    steps = expl["steps"]
    if not steps:
        lines.append("It is a seed row (read from the input, no parents).")
    else:
        for step in steps:
            lines.append(f"{step['id']} was made by '{step['method']}' from {', '.join(step['parent_ids'])}.")
        seeds = expl["seeds"]
        lines.append(f"It descends from {len(seeds)} seed row(s): {', '.join(seeds)}.")
    if expl["missing"]:
        lines.append(f"Not found in this run: {', '.join(expl['missing'])}.")
    return " ".join(lines)


def explain_row(run_dir: str, row_id: str, max_depth: int = 32) -> dict[str, Any]:
    """Why a row was dropped and where it came from.

    Looks the id (or a unique prefix of it) up in the run's output and dropped rows, then walks
    `lineage.parent_ids` level by level (one pass over the run per level) down to the seed rows.
    Returns {"id", "found", "status" (kept|dropped), "stage", "reason", "detail", "row", "lineage"
    (a tree of nodes with "parents"), "steps" (each synthesis step: id, method, parent_ids), "seeds",
    "missing" (ancestors not in the run), "related" (rows named in the drop detail), "summary"}.
    Raises FileNotFoundError for a folder that is not a run.
    """
    run = RunFolder(run_dir)
    hits = run.find_rows([row_id])
    if row_id not in hits:
        candidates = run.ids_with_prefix(row_id) if len(row_id) >= 4 else []
        if len(candidates) == 1:
            row_id = candidates[0]
            hits = run.find_rows([row_id])
        else:
            hint = f"; ids starting with it: {', '.join(candidates)}" if candidates else ""
            return {"id": row_id, "found": False, "candidates": candidates,
                    "summary": f"No row with id {row_id!r} in {run_dir} (output or dropped){hint}."}
    nodes: dict[str, dict[str, Any]] = {row_id: _node(row_id, hits[row_id])}
    frontier = set(nodes[row_id]["parent_ids"])
    depth = 0
    while frontier and depth < max_depth:
        found = run.find_rows(frontier)
        nodes.update({pid: _node(pid, found.get(pid)) for pid in frontier})
        frontier = {p for pid in frontier for p in nodes[pid].get("parent_ids") or [] if p not in nodes}
        depth += 1
    status, path, row = hits[row_id]
    steps = [
        {"id": n["id"], "method": n["method"], "parent_ids": n["parent_ids"]}
        for n in nodes.values()
        if n.get("parent_ids")
    ]
    seeds = [n["id"] for n in nodes.values() if n["status"] != MISSING and not n.get("parent_ids") and n["id"] != row_id]
    missing = [n["id"] for n in nodes.values() if n["status"] == MISSING]
    expl: dict[str, Any] = {
        "id": row_id,
        "found": True,
        "status": status,
        "file": path,
        "stage": row.get("drop_stage"),
        "reason": row.get("drop_reason"),
        "detail": row.get("drop_detail"),
        "row": clean_row(row),
        "lineage": _tree(row_id, nodes),
        "steps": steps,
        "seeds": seeds,
        "missing": missing,
        "depth": depth,
    }
    related_ids = [t for t in re.findall(r"[\w:.\-/]{6,}", str(row.get("drop_detail") or "")) if t != row_id]
    related = run.find_rows(related_ids) if related_ids else {}
    expl["related"] = [_node(rid, hit) for rid, hit in related.items()]
    expl["summary"] = _summary(expl)
    return expl


# ---------------------------------------------------------------------------------------------
# rich views


def render_explanation(expl: Mapping[str, Any]) -> Any:
    """A rich renderable of an `explain_row` answer (used by `datacraft why` and `inspect --id`)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    if not expl.get("found"):
        return Panel(Text(expl["summary"], style="yellow"), title="not found", border_style="yellow")
    if expl["status"] == DROPPED:
        head = Text.assemble(("DROPPED", "bold white on red"), "  by stage ", (str(expl["stage"]), "bold"),
                             "  reason ", (str(expl["reason"]), "bold red"))
        if expl.get("detail"):
            head.append(f"\n{expl['detail']}", style="red")
        border = "red"
    else:
        head = Text.assemble(("KEPT", "bold white on green"), "  in the output  ", (os.path.basename(expl["file"]), "dim"))
        border = "green"
    row = expl["row"]
    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold cyan", no_wrap=True)
    body.add_column()
    for key in ("task", "source"):
        if row.get(key):
            body.add_row(key, str(row[key]))
    for m in written_messages(row) or []:
        body.add_row(str(m.get("role")), truncate(m.get("content"), 600))
    for key in ("chosen", "rejected"):
        for m in row.get(key) or []:
            if m.get("role") == "assistant":
                body.add_row(key, truncate(m.get("content"), 600))
    scores = row_scores(row)
    if scores:
        body.add_row("scores", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    parts: list[Any] = [Panel(Group(head, Text(""), body), title=f"row {expl['id']}", border_style=border)]

    def label(node: Mapping[str, Any]) -> Text:
        t = Text(str(node["id"]), style="bold")
        t.append(f"  {node.get('method') or '?'}", style="magenta")
        status = node["status"]
        style = {"kept": "green", "dropped": "red"}.get(status, "yellow")
        t.append(f"  [{status}", style=style)
        if status == DROPPED:
            t.append(f" by {node.get('stage')}: {node.get('reason')}", style=style)
        t.append("]", style=style)
        if node.get("instruction"):
            t.append(f"\n{truncate(node['instruction'], 120)}", style="dim")
        return t

    def grow(tree: Tree, node: Mapping[str, Any]) -> None:
        for parent in node.get("parents", []):
            grow(tree.add(label(parent)), parent)

    if expl["steps"]:
        tree = Tree(label(expl["lineage"]), guide_style="dim")
        grow(tree, expl["lineage"])
        parts.append(Panel(tree, title="lineage (row ← parents ← … ← seeds)", border_style="magenta"))
    for node in expl.get("related", []):
        parts.append(Text.assemble("related: ", label(node)))
    parts.append(Text(expl["summary"], style="italic"))
    return Group(*parts)


