"""`report.html`: the curation report a person looks at, assembled from a finished run folder's facts
(`datacraft.report.facts`) and charts (`datacraft.report.charts`).

One self-contained page (no network): the stylesheet and the table-sorting script are package resources
(`datacraft/resources/report/report.css`, `report.js`) inlined into it, charts are inline SVG or base64
PNG. Sections: headline numbers, the funnel, the ledger balance per stage, dropped-row examples per
reason, score histograms before / after, dedup group examples, a 2-D map of the embeddings (PCA, or UMAP
when installed), per-task budgets, timings and throughput, LLM counters and the resolved config with its hash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from datacraft.core.run_folder import CONFIG_YAML, DATA_DIR, DROPPED_DIR, REPORT_HTML, truncate
from datacraft.report.agreement import summary_for
from datacraft.report.charts import (
    CREATED_COLOR,
    DROP_COLOR,
    KEPT_COLOR,
    bar_svg,
    embedding_map_png,
    funnel_svg,
    histogram_svg,
)
from datacraft.report.facts import RunFacts, collect_facts, stage_balance
from datacraft.report.format import esc, fmt_int, fmt_num, fmt_seconds
from datacraft.report.spread import score_spreads

_RESOURCES = "resources/report"


@cache
def _resource(name: str) -> str:
    return resources.files("datacraft").joinpath(f"{_RESOURCES}/{name}").read_text(encoding="utf-8")


def page_css() -> str:
    """The page's stylesheet (`report.css`, its `@KEPT@` / `@DROP@` set to the charts' colours)."""
    return _resource("report.css").replace("@KEPT@", KEPT_COLOR).replace("@DROP@", DROP_COLOR)


def page_js() -> str:
    """The page's script (`report.js`): click a table header to sort by that column."""
    return _resource("report.js")


# ---------------------------------------------------------------------------------------------
# page sections


def _card(title: str, body: str, cls: str = "", sub: str = "") -> str:
    subtitle = f'<div class="sub">{sub}</div>' if sub else ""
    return f'<div class="card {cls}"><h3>{esc(title)}</h3>{subtitle}{body}</div>'


def _section(anchor: str, title: str, body: str, lead: str = "") -> str:
    intro = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{intro}{body}</section>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None, cls: str = "") -> str:
    """A sortable table: cells are pre-rendered HTML; numeric columns sort by `data-v`."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}<span class="arrow">↕</span></th>' for h, n in zip(headers, numeric, strict=True))
    body = "".join("<tr>" + "".join(rows_) + "</tr>" for rows_ in rows)
    return f'<div class="tablewrap"><table class="sortable {cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _td(text: str, value: Any = None, cls: str = "") -> str:
    v = f' data-v="{esc(value)}"' if value is not None else ""
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{v}>{text}</td>"


def header_html(report: Mapping[str, Any], facts: RunFacts) -> str:
    stages = facts.ledger
    rows_in, rows_out = facts.rows_in, facts.rows_out
    created = sum(e.created for e in stages)
    dropped = sum(e.n_dropped for e in stages)
    seconds = report.get("seconds")
    pct = f"{100 * rows_out / rows_in:.1f}%" if rows_in else "—"
    bad = [e.stage for e in stages if not stage_balance(e)[0]]
    if bad:
        banner = f'<div class="banner bad">✗ Ledger does not balance for {len(bad)} stage(s): {esc(", ".join(map(str, bad)))}</div>'
    else:
        banner = f'<div class="banner ok">✓ Ledger balances: every one of {len(stages)} stages has in + created = kept + dropped</div>'
    tiles = [
        ("rows in", fmt_int(rows_in), ""),
        ("rows out", fmt_int(rows_out), ""),
        ("kept", pct, "of rows in"),
        ("created", fmt_int(created), "synthesized"),
        ("dropped", fmt_int(dropped), f"{sum(len(e.dropped) for e in stages)} reasons"),
        ("time", fmt_seconds(seconds), f"{fmt_num(rows_in / seconds, 3)} rows/s" if seconds else ""),
    ]
    tile_html = "".join(f'<div class="tile"><div class="tv">{v}</div><div class="tl">{esc(lbl)}</div><div class="ts">{esc(s)}</div></div>' for lbl, v, s in tiles)
    started = report.get("started")
    with contextlib.suppress(ValueError):
        started = datetime.fromisoformat(str(started)).strftime("%Y-%m-%d %H:%M:%S") if started else None
    inp = report.get("input")
    inp = ", ".join(map(str, inp)) if isinstance(inp, list) else inp
    out = report.get("output") or {}
    out_path = out.get("path") if isinstance(out, Mapping) else out
    meta = " · ".join(
        f"<span><b>{esc(k)}</b> {esc(truncate(v, 90))}</span>"
        for k, v in (("input", inp), ("output", out_path), ("started", started), ("config", report.get("config_hash")),
                     ("output digest", report.get("output_digest")))
        if v
    )
    return (
        f'<header><div class="wrap"><div class="kicker">datacraft · curation report</div>'
        f'<h1>{esc(report.get("name") or "run")}</h1><div class="meta">{meta}</div>'
        f'<div class="tiles">{tile_html}</div>{banner}</div></header>'
    )


def funnel_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    stages = facts.ledger
    rows = []
    for i, e in enumerate(stages):
        ok, lhs, rhs = stage_balance(e)
        flag = (
            f'<span class="pill ok balance-ok" data-stage="{esc(e.stage)}">✓ {lhs:,} = {rhs:,}</span>'
            if ok
            else f'<span class="pill bad balance-bad" data-stage="{esc(e.stage)}">✗ {lhs:,} ≠ {rhs:,}</span>'
        )
        reasons = "".join(
            f'<span class="chip" title="{esc(r)}">{esc(truncate(r, 28))} <b>{n:,}</b></span>'
            for r, n in sorted(e.dropped.items(), key=lambda kv: -kv[1])
        ) or '<span class="dim">—</span>'
        dropped = e.n_dropped
        kept_pct = 100 * e.kept / (e.n_in + e.created or 1)
        rows.append([
            _td(str(i + 1), i + 1, "num dim"),
            _td(f"<b>{esc(e.stage)}</b>", e.stage),
            _td(fmt_int(e.n_in), e.n_in, "num"),
            _td(fmt_int(e.created) if e.created else '<span class="dim">·</span>', e.created, "num created"),
            _td(f'{fmt_int(e.kept)} <span class="dim">({kept_pct:.0f}%)</span>', e.kept, "num"),
            _td(fmt_int(dropped), dropped, "num dropped" if dropped else "num dim"),
            _td(reasons, dropped),
            _td(fmt_seconds(e.seconds), e.seconds or 0, "num"),
            _td(flag, int(ok)),
        ])
    table = _table(["#", "stage", "in", "created", "kept", "dropped", "why dropped", "time", "balance"], rows,
                   [True, False, True, True, True, True, False, True, False])
    checks = []
    if facts.output_files:
        expected = facts.rows_out
        ok = facts.rows_written == expected
        checks.append(
            f'<span class="pill {"ok" if ok else "bad"}">{"✓" if ok else "✗"} {facts.rows_written:,} rows in {DATA_DIR}/ '
            f'{"=" if ok else "≠"} {expected:,} kept by the last stage</span>'
        )
    for problem in report.get("ledger_problems") or []:
        checks.append(f'<span class="pill bad">✗ {esc(problem)}</span>')
    legend = (
        f'<div class="legend"><span><i style="background:{KEPT_COLOR}"></i>kept</span>'
        f'<span><i style="background:{DROP_COLOR}"></i>dropped</span>'
        f'<span><i style="background:{CREATED_COLOR}"></i>created (part of kept)</span></div>'
    )
    body = _card("Rows through each stage", funnel_svg(stages) + legend, "wide")
    body += _card("Ledger per stage", table + (f'<div class="checks">{"".join(checks)}</div>' if checks else ""), "wide",
                  "in + created must equal kept + dropped; click a column to sort")
    return _section("funnel", "Funnel", body)


def drops_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    cards = []
    for s in report.get("stages", []):
        for reason, n in sorted((s.get("dropped") or {}).items(), key=lambda kv: -kv[1]):
            examples = facts.examples.get((str(s.get("name")), str(reason)), [])
            items = "".join(
                f'<div class="ex"><div class="exid">{esc(ex["id"])}</div>'
                f'<div class="exq">{esc(ex["instruction"]) or "<span class=dim>(empty)</span>"}</div>'
                + (f'<div class="exa">{esc(ex["response"])}</div>' if ex["response"] else "")
                + (f'<div class="exd">{esc(truncate(ex["detail"], 200))}</div>' if ex.get("detail") else "")
                + "</div>"
                for ex in examples
            ) or f'<div class="dim">No example rows found in {DROPPED_DIR}/.</div>'
            cards.append(_card(f"{reason}", items, "drop", f'stage <b>{esc(s.get("name"))}</b> · {n:,} rows'))
    if not cards:
        return _section("drops", "Dropped rows", '<div class="card note">No row was dropped.</div>')
    return _section("drops", "Dropped rows", f'<div class="grid">{"".join(cards)}</div>',
                    "A few rows per reason, with their id (<code>datacraft why OUT ID</code> explains any of them).")


def scores_section(facts: RunFacts) -> str:
    if not any(len(v) for v in facts.scores_all.values()):
        return _section("scores", "Scores", '<div class="card note">No row in this run carries a score.</div>')
    spreads = facts.report.get("scores") or {}  # computed once by write_report
    if not set(facts.scores_all) <= set(spreads):
        spreads = score_spreads(facts.scores_all, facts.scores_kept, facts.report.get("score_uses") or {})
    cards, constant = [], []
    for name in sorted(facts.scores_all):
        before = facts.scores_all[name]
        spread = spreads[name]
        if not spread["n"]:
            continue
        if spread["constant"] and not spread["warning"]:
            constant.append(f"{esc(name)} = {spread['min']:.3g}")
            continue  # a histogram of one value carries no information
        after = facts.scores_kept.get(name, np.empty(0))
        sub = (
            f"median {np.median(before):.3g} → {np.median(after):.3g} · {len(after):,}/{len(before):,} kept"
            if len(after)
            else f"median {np.median(before):.3g} · none kept"
        )
        sub += f" · std {spread['std']:.3g} · p10–p90 {spread['p10']:.3g}–{spread['p90']:.3g}"
        if spread["used_as"]:
            sub += f" · used as {esc(', '.join(spread['used_as']))}"
        warn = f'<div class="note warn">⚠ {esc(spread["warning"])}</div>' if spread["warning"] else ""
        trust = f'<div class="note">How much to trust it: {esc(summary_for(name))}</div>'
        cards.append(_card(name, f'{warn}<div class="chart">{histogram_svg(name, before, after)}</div>{trust}', "", sub))
    hidden = (f'<div class="card note">Constant on every row (histogram hidden): {", ".join(constant)}.</div>'
              if constant else "")
    return _section("scores", "Score distributions", f'{hidden}<div class="grid">{"".join(cards)}</div>',
                    "Grey: every row that had the score (kept and dropped). Indigo: the rows kept.")


def _render_value(v: Any) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return fmt_num(v)
    if isinstance(v, str):
        return esc(truncate(v, 260))
    return f"<code>{esc(truncate(json.dumps(v, ensure_ascii=False, default=str), 260))}</code>"


def _pair_example(ex: Mapping[str, Any], previews: Mapping[str, Mapping[str, Any]]) -> str:
    """A dedup example naming a kept and a dropped row (keys like kept_id / dropped_id)."""
    sides = []
    for key, v in ex.items():
        if not (key.endswith("_id") or key.endswith("_ids")):
            continue
        role = key.rsplit("_", 1)[0]
        for rid in v if isinstance(v, list) else [v]:
            p = previews.get(str(rid), {})
            text = p.get("instruction") or ""
            cls = "kept" if role in ("kept", "winner", "representative", "keep") else "gone"
            sides.append(
                f'<div class="side {cls}"><div class="role">{esc(role)}</div><div class="exid">{esc(rid)}</div>'
                f'<div class="exq">{esc(text) or "<span class=dim>(row text not in this run)</span>"}</div></div>'
            )
    rest = {k: v for k, v in ex.items() if not (k.endswith("_id") or k.endswith("_ids"))}
    info = " · ".join(f"<b>{esc(k)}</b> {_render_value(v)}" for k, v in rest.items() if k != "text")
    text = f'<div class="exd">{esc(truncate(rest["text"], 240))}</div>' if "text" in rest and not sides else ""
    return f'<div class="pair"><div class="sides">{"".join(sides)}</div>{text}<div class="pinfo">{info}</div></div>'


def extras_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    cards = []
    for s in report.get("stages", []):
        extras = dict(s.get("extras") or {})
        extras.pop("budgets", None)
        extras.pop("training", None)  # its own section
        if not extras:
            continue
        name = str(s.get("name"))
        parts = []
        top = []
        scalars = {k: v for k, v in extras.items() if isinstance(v, int | float | str | bool)}
        sizes = extras.get("group_sizes")
        if isinstance(sizes, Mapping) and sizes:
            items = sorted(((k, float(v)) for k, v in sizes.items()), key=lambda kv: float(kv[0]) if str(kv[0]).replace(".", "", 1).isdigit() else math.inf)
            top.append('<div class="chart">' + bar_svg([str(k) for k, _ in items], [v for _, v in items], xlabel="group size", ylabel="groups") + "</div>")
            n_groups = sum(v for _, v in items)
            multi = sum(v for k, v in items if str(k) not in ("1", "1.0"))
            scalars = {"groups": n_groups, "groups with duplicates": multi, **scalars}
        if scalars:
            top.append('<div class="minitiles">' + "".join(
                f'<div class="mt"><div class="tv">{_render_value(v)}</div><div class="tl">{esc(k)}</div></div>' for k, v in scalars.items()
            ) + "</div>")
        if top:
            parts.append(f'<div class="split">{"".join(top)}</div>')
        examples = extras.get("examples")
        if isinstance(examples, list) and examples:
            rendered = []
            for ex in examples[:8]:
                if isinstance(ex, Mapping) and any(k.endswith(("_id", "_ids")) for k in ex):
                    rendered.append(_pair_example(ex, facts.previews))
                elif isinstance(ex, Mapping):
                    rendered.append('<div class="pair"><div class="pinfo">' + " · ".join(f"<b>{esc(k)}</b> {_render_value(v)}" for k, v in ex.items()) + "</div></div>")
                else:
                    rendered.append(f'<div class="pair">{_render_value(ex)}</div>')
            title = "Groups at the threshold" if "dedup" in name.lower() else "Examples"
            parts.append(f'<h4>{title}</h4>' + "".join(rendered))
        other = {k: v for k, v in extras.items() if k not in scalars and k not in ("group_sizes", "examples")}
        for k, v in other.items():
            parts.append(f'<details><summary>{esc(k)}</summary><pre>{esc(json.dumps(v, indent=2, ensure_ascii=False, default=str)[:20000])}</pre></details>')
        cards.append(_card(name, "".join(parts), "wide"))
    if not cards:
        return ""
    return _section("groups", "Dedup groups & stage details", "".join(cards),
                    "What each stage reported about its decisions: duplicate groups at the threshold, group sizes, coverage.")


def map_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    if not facts.points:
        return _section("map", "Embedding map", '<div class="card note">No embeddings in this run\'s rows, so no map. '
                        "Run an embedding stage and set <code>output.keep_embedding: true</code> to see one.</div>")
    img, method = embedding_map_png(facts.points, [str(s.get("name")) for s in report.get("stages", [])])
    return _section("map", "Embedding map", _card("Selected vs unselected rows", f'<div class="chart map">{img}</div>', "wide",
                                                   f"{method} projection of a sample of kept and dropped rows"))


def _budget_rows(budgets: Any) -> list[dict[str, Any]]:
    if isinstance(budgets, Mapping):
        return [{"task": k, **(v if isinstance(v, Mapping) else {"budget": v})} for k, v in budgets.items()]
    return [b for b in budgets if isinstance(b, Mapping)] if isinstance(budgets, list) else []


def mixture_section(report: Mapping[str, Any]) -> str:
    cards = []
    for s in report.get("stages", []):
        rows = _budget_rows((s.get("extras") or {}).get("budgets"))
        if not rows:
            continue
        keys = list(dict.fromkeys(k for r in rows for k in r))
        numeric = [all(isinstance(r.get(k), int | float) or r.get(k) is None for r in rows) and any(isinstance(r.get(k), int | float) for r in rows) for k in keys]
        label_key = next((k for k, n in zip(keys, numeric, strict=True) if not n), keys[0])
        budget_key = next((k for k in keys if "budget" in k.lower() and k != label_key), None) or next(
            (k for k, n in zip(keys, numeric, strict=True) if n), None)
        cap_key = next((k for k in keys if k.lower() in ("available", "capacity", "cap", "rows", "size", "n")), None)
        chart = ""
        if budget_key:
            top = sorted(rows, key=lambda r: -(r.get(budget_key) or 0))[:40]
            chart = '<div class="chart">' + bar_svg(
                [str(r.get(label_key)) for r in top], [float(r.get(budget_key) or 0) for r in top], ylabel=budget_key,
                secondary=[float(r.get(cap_key) or 0) for r in top] if cap_key else None, secondary_label=cap_key or "",
            ) + "</div>"
        table = _table(keys, ([_td(fmt_num(r.get(k)) if n else esc(r.get(k)), r.get(k), "num" if n else "") for k, n in zip(keys, numeric, strict=True)] for r in rows), numeric)
        total = sum(float(r.get(budget_key) or 0) for r in rows) if budget_key else None
        sub = f"{len(rows)} tasks" + (f" · {fmt_num(total)} rows budgeted" if total is not None else "")
        cards.append(_card(f"{s.get('name')}: per-task budgets", f'<div class="split">{chart}{table}</div>', "wide", sub))
    if not cards:
        return ""
    return _section("mixture", "Mixture budgets", "".join(cards))


def timings_section(report: Mapping[str, Any]) -> str:
    stages = report.get("stages", [])
    total = sum(float(s.get("seconds") or 0) for s in stages) or 1.0
    rows = []
    for s in stages:
        sec = float(s.get("seconds") or 0)
        n_in = int(s.get("in", 0))
        rps = s.get("rows_per_s") or (n_in / sec if sec else None)
        share = 100 * sec / total
        bar = f'<div class="bar"><i style="width:{share:.1f}%"></i></div><span class="dim">{share:.0f}%</span>'
        rows.append([
            _td(f"<b>{esc(s.get('name'))}</b>", s.get("name")),
            _td(fmt_int(n_in), n_in, "num"),
            _td(fmt_seconds(sec), sec, "num"),
            _td(fmt_num(rps) if rps else "—", rps or 0, "num"),
            _td(bar, sec, "share"),
        ])
    table = _table(["stage", "rows in", "time", "rows/s", "share of stage time"], rows, [False, True, True, True, True])
    wall = report.get("seconds")
    sub = f"run wall time {fmt_seconds(wall)}; stage times are summed over workers and batches" if wall else ""
    return _section("timings", "Timings & throughput", _card("Per stage", table, "wide", sub))


def llm_section(report: Mapping[str, Any]) -> str:
    rows = []
    others = []
    for s in report.get("stages", []):
        c = s.get("counters") or {}
        llm = {k: v for k, v in c.items() if k.startswith("llm.")}
        others.extend((s.get("name"), k, v) for k, v in c.items() if not k.startswith("llm."))
        if not llm:
            continue
        req = float(llm.get("llm.requests", 0))
        hits = float(llm.get("llm.cache_hits", 0))
        fails = {k[len("llm.failures.") :]: v for k, v in llm.items() if k.startswith("llm.failures.")}
        n_fail = sum(fails.values())
        comp = float(llm.get("llm.completion_tokens", 0))
        secs = float(llm.get("llm.seconds", 0))
        fail_txt = (f'<span class="{"bad" if n_fail else "dim"}" title="{esc(", ".join(f"{k}: {v:g}" for k, v in fails.items()))}">{fmt_num(n_fail)}</span>')
        rows.append([
            _td(f"<b>{esc(s.get('name'))}</b>", s.get("name")),
            _td(fmt_num(req), req, "num"),
            _td(f'{fmt_num(hits)} <span class="dim">({100 * hits / req:.0f}%)</span>' if req else fmt_num(hits), hits, "num"),
            _td(fmt_num(llm.get("llm.prompt_tokens", 0)), llm.get("llm.prompt_tokens", 0), "num"),
            _td(fmt_num(comp), comp, "num"),
            _td(fail_txt, n_fail, "num"),
            _td(fmt_seconds(secs) if secs else "—", secs, "num"),
            _td(fmt_num(comp / secs) if secs else "—", comp / secs if secs else 0, "num"),
        ])
    body = ""
    if rows:
        body += _card("LLM calls", _table(["stage", "requests", "cache hits", "prompt tokens", "completion tokens", "failures", "LLM time", "tok/s"],
                                          rows, [False, True, True, True, True, True, True, True]), "wide")
    if others:
        body += _card("Other counters", _table(["stage", "counter", "value"],
                                               ([_td(esc(a), a), _td(f"<code>{esc(b)}</code>", b), _td(fmt_num(v), v, "num")] for a, b, v in others),
                                               [False, False, True]), "wide")
    return _section("llm", "Counters", body) if body else ""


def _loss_svg(losses: Sequence[float], width: int = 320, height: int = 90) -> str:
    """A small inline loss curve (one point per logged step)."""
    if len(losses) < 2:
        return '<span class="dim">fewer than two logged steps</span>'
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    pts = " ".join(f"{6 + i * (width - 12) / (len(losses) - 1):.1f},{6 + (hi - v) * (height - 12) / span:.1f}" for i, v in enumerate(losses))
    return (f'<svg viewBox="0 0 {width} {height}" class="loss" role="img" aria-label="loss curve" width="{width}" height="{height}">'
            f'<polyline fill="none" stroke="{KEPT_COLOR}" stroke-width="2" points="{pts}"/>'
            f'<text x="{width - 4}" y="12" text-anchor="end" font-size="10">{fmt_num(hi)}</text>'
            f'<text x="{width - 4}" y="{height - 2}" text-anchor="end" font-size="10">{fmt_num(lo)}</text></svg>')


def training_section(report: Mapping[str, Any]) -> str:
    """One card per train stage: status, steps, speed, tokens, loss curve, files."""
    cards = []
    for label, t in (report.get("training") or {}).items():
        tokens = t.get("tokens") or {}
        losses = [float(v) for v in t.get("losses") or []]
        facts = [("kind", t.get("kind")), ("status", t.get("status")), ("model", t.get("model")),
                 ("rows", (t.get("export") or {}).get("rows")), ("steps", t.get("steps")),
                 ("steps/s", t.get("steps_per_second")), ("seconds", t.get("seconds")),
                 ("tokens trained", tokens.get("trained")), ("tokens/s", tokens.get("per_second")),
                 ("loss", f"{fmt_num(losses[0])} → {fmt_num(losses[-1])}" if losses else None),
                 ("data hash", (t.get("lineage") or {}).get("data_hash")), ("error", t.get("error")),
                 ("folder", t.get("output_dir"))]
        table = _table(["", ""], ([_td(esc(k)), _td(esc(_render_value(v)))] for k, v in facts if v is not None))
        chart = f'<div class="chart">{_loss_svg(losses)}</div>' if losses else ""
        cli = (t.get("files") or {}).get("trl_cli_config")
        sub = f"rerun with <code>trl {esc(t.get('kind'))} --config {esc(cli)}</code>" if cli else ""
        cards.append(_card(f"{label}", f'<div class="split">{chart}{table}</div>', "wide", sub))
    return _section("training", "Training", "".join(cards)) if cards else ""


def lineage_section(report: Mapping[str, Any]) -> str:
    """Rows of each branch's output by lineage method (seed, multihop:…, reflection:…, mosaic:…)."""
    lineage = report.get("lineage") or {}
    if not any(lineage.values()):
        return ""
    branches = list(lineage)
    methods = list(dict.fromkeys(m for b in branches for m in lineage[b]))
    rows = ([_td(f"<code>{esc(m)}</code>", m), *(_td(fmt_int(lineage[b].get(m, 0)), lineage[b].get(m, 0), "num") for b in branches)]
            for m in methods)
    info = report.get("branches") or {}
    heads = [f"{b} ({info.get(b, {}).get('stage', '?')})" for b in branches]
    created = [(s["name"], s["created"]) for s in report.get("stages", []) if s.get("created")]
    made = _card("Rows created, by stage", _table(["stage", "created"], ([_td(esc(n), n), _td(fmt_int(c), c, "num")] for n, c in created),
                                                 [False, True])) if created else ""
    return _section("lineage", "Lineage", made + _card("Output rows by method", _table(["method", *heads], rows, [False, *[True] * len(branches)]),
                                                       "wide", "per branch: OUT/data is main, OUT/branches/&lt;name&gt;/ the others"))


def config_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    text = facts.config_text
    if text is None:
        return _section("config", "Resolved config", f'<div class="card note">{CONFIG_YAML} is missing from the run folder.</div>')
    return _section("config", "Resolved config", _card(
        CONFIG_YAML, f"<pre class=\"config\">{esc(text)}</pre>", "wide",
        f'hash <code class="hash">{esc(report.get("config_hash", "?"))}</code> · rerun with <code>datacraft run {CONFIG_YAML}</code>'))

# ---------------------------------------------------------------------------------------------
# the page


def build_page(facts: RunFacts) -> str:
    """The whole HTML page from collected facts."""
    report = facts.report
    sections = [
        ("funnel", "Funnel", funnel_section(report, facts)),
        ("drops", "Dropped rows", drops_section(report, facts)),
        ("scores", "Scores", scores_section(facts)),
        ("groups", "Dedup groups", extras_section(report, facts)),
        ("map", "Embedding map", map_section(report, facts)),
        ("mixture", "Mixture budgets", mixture_section(report)),
        ("lineage", "Lineage", lineage_section(report)),
        ("training", "Training", training_section(report)),
        ("timings", "Timings", timings_section(report)),
        ("llm", "Counters", llm_section(report)),
        ("config", "Config", config_section(report, facts)),
    ]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, body in sections if body)
    body = "".join(b for _a, _t, b in sections if b)
    title = f"{report.get('name') or 'run'} · datacraft report"
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{page_css()}</style></head><body>"
        f"{header_html(report, facts)}<nav><div class=\"wrap\">{nav}</div></nav>"
        f'<main class="wrap">{body}</main>'
        f"<footer>generated by datacraft on {generated} · self-contained, no network needed</footer>"
        f"<script>{page_js()}</script></body></html>"
    )


def render_html(run_dir: str, facts: RunFacts | None = None) -> str:
    """Render `run_dir/report.html` from the run folder (or its facts, already collected) and return its path."""
    facts = facts or collect_facts(run_dir)
    page = build_page(facts)
    path = os.path.join(run_dir, REPORT_HTML)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
