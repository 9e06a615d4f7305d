"""`report.html`: the curation report a person looks at, rendered from a finished run folder.

Reads `report.json` (stages in pipeline order with in / kept / created / dropped by reason, seconds,
counters, extras), `config.yaml`, the kept rows (`data/*`, columns `id`, `scores`, `embedding`) and the
dropped rows (`dropped/*`, plus `drop_stage`, `drop_reason`, `drop_detail`, `messages` for examples),
streaming them file by file. Writes one self-contained page (inline CSS and JS, charts as inline SVG
or base64 PNG from matplotlib's Agg renderer; no network) with: headline numbers, the funnel, the
ledger balance per stage, dropped-row examples per reason, score histograms before / after, dedup
group examples, a 2-D map of the embeddings (PCA, or UMAP when installed), per-task budgets,
timings and throughput, LLM counters and the resolved config with its hash.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from datacraft.core.rows import SCORE_PREFIX
from datacraft.core.run_folder import (
    KEPT,
    RunFolder,
    iter_jsonl,
    iter_row_chunks,
    row_scores,
    row_texts,
    truncate,
)

EXAMPLES_PER_REASON = 3
MAX_POINTS = 3000
MAX_SCORE_VALUES = 2_000_000
MAX_ROWS_PER_ROW_PATH = 20_000
HIST_BINS = 30

KEPT_COLOR = "#4f46e5"
DROP_COLOR = "#f97360"
CREATED_COLOR = "#10b981"
MUTED = "#cbd5e1"
STAGE_PALETTE = ["#f97360", "#f59e0b", "#ec4899", "#06b6d4", "#84cc16", "#a855f7", "#64748b", "#ef4444"]
_ROW_COLUMNS = ["id", "scores", "embedding", "messages", "chosen", "meta", "drop_stage", "drop_reason", "drop_detail"]


# ---------------------------------------------------------------------------------------------
# collecting the facts (streaming)


@dataclass
class RunFacts:
    """What the page shows, gathered in one pass over the run's files."""

    report: dict[str, Any]
    config_text: str | None
    scores_all: dict[str, np.ndarray] = field(default_factory=dict)
    scores_kept: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    points: list[tuple[np.ndarray, str]] = field(default_factory=list)
    previews: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows_written: int = 0
    rows_dropped_files: int = 0
    output_files: int = 0


def _referenced_ids(report: Mapping[str, Any]) -> set[str]:
    """Ids named in stage extras examples (keys ending in `_id` / `_ids`, or `id`/`ids`)."""
    out: set[str] = set()
    for stage in report.get("stages", []):
        for ex in (stage.get("extras") or {}).get("examples") or []:
            if not isinstance(ex, Mapping):
                continue
            for k, v in ex.items():
                if k in ("id", "ids") or k.endswith(("_id", "_ids")):
                    vals = v if isinstance(v, list) else [v]
                    out.update(str(x) for x in vals if isinstance(x, str | int))
    return out


class _Collector:
    """Folds row files into `RunFacts`. Parquet and JSONL files are read column-wise by polars (scores,
    ids, drop reasons); only the few rows shown (examples, sampled embeddings, rows named in extras)
    are turned into Python dicts. JSONL that polars cannot read falls back to a per-row pass."""

    def __init__(self, facts: RunFacts, expected_rows: int, wanted_ids: set[str], seed: int = 0) -> None:
        self.facts = facts
        self.fraction = min(1.0, MAX_POINTS / max(1, expected_rows))
        self.wanted = wanted_ids
        self.rng = random.Random(seed)
        self.chunks_all: dict[str, list[np.ndarray]] = {}
        self.chunks_kept: dict[str, list[np.ndarray]] = {}
        self.n_all: dict[str, int] = {}
        self.n_kept: dict[str, int] = {}

    def add_scores(self, name: str, values: Sequence[float] | np.ndarray, kept: bool) -> None:
        arr = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        for target, counts in ((self.chunks_all, self.n_all), *(((self.chunks_kept, self.n_kept),) if kept else ())):
            room = MAX_SCORE_VALUES - counts.get(name, 0)
            if room > 0 and arr.size:
                target.setdefault(name, []).append(arr[:room])
                counts[name] = counts.get(name, 0) + min(room, arr.size)

    def finish(self) -> None:
        """Concatenate the score chunks into one array per score."""
        self.facts.scores_all = {k: np.concatenate(v) for k, v in self.chunks_all.items()}
        self.facts.scores_kept = {k: np.concatenate(v) for k, v in self.chunks_kept.items()}

    def add_row(self, row: Mapping[str, Any], status: str, sampled: bool | None = None) -> None:
        """One row in written layout (the per-row path): scores, example, embedding, preview."""
        if sampled is None:
            for name, value in row_scores(row).items():
                self.add_scores(name, [value], status == KEPT)
            sampled = self.rng.random() < self.fraction
        self._show(row, status, sampled)

    def _show(self, row: Mapping[str, Any], status: str, sampled: bool) -> None:
        emb = row.get("embedding")
        if sampled and emb is not None and len(emb):
            label = KEPT if status == KEPT else str(row.get("drop_stage") or "dropped")
            self.facts.points.append((np.asarray(emb, dtype=np.float32), label))
        if status != KEPT:
            bucket = self.facts.examples.setdefault((str(row.get("drop_stage")), str(row.get("drop_reason"))), [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(self._preview(row, status))
        rid = str(row.get("id"))
        if rid in self.wanted and rid not in self.facts.previews:
            self.facts.previews[rid] = self._preview(row, status)

    @staticmethod
    def _preview(row: Mapping[str, Any], status: str) -> dict[str, Any]:
        instruction, response = row_texts(row)
        return {
            "id": row.get("id"),
            "status": status,
            "instruction": truncate(instruction, 320),
            "response": truncate(response, 320),
            "detail": row.get("drop_detail"),
            "stage": row.get("drop_stage"),
        }

    def _columns(self, df: pl.DataFrame, status: str) -> list[int]:
        """Scores of a frame (id, scores struct, drop_*), and the row indices worth reading whole."""
        if "scores" in df.columns and isinstance(df.schema["scores"], pl.Struct):
            for f in df.schema["scores"].fields:
                self.add_scores(f.name, df["scores"].struct.field(f.name).cast(pl.Float64).fill_null(np.nan).to_numpy(), status == KEPT)
        idx = df.with_row_index("_i")
        picks: set[int] = set()
        if status != KEPT and {"drop_stage", "drop_reason"} <= set(df.columns):
            picks.update(idx.group_by("drop_stage", "drop_reason", maintain_order=True).head(EXAMPLES_PER_REASON)["_i"].to_list())
        if "id" in df.columns and self.wanted:
            picks.update(idx.filter(pl.col("id").cast(pl.Utf8).is_in(sorted(self.wanted)))
                         .unique("id", keep="first")["_i"].to_list())
        return sorted(picks)

    def _sample(self, n: int) -> set[int]:
        return {i for i in range(n) if self.rng.random() < self.fraction} if self.fraction < 1 else set(range(n))

    @staticmethod
    def load_columns(path: str) -> tuple[pl.DataFrame, bool] | None:
        """The cheap columns of a file (id, scores, drop stage / reason), read by polars, and whether
        its rows carry embeddings; None for JSONL that polars cannot read (the per-row path takes
        it). Touches no collector state, so files load in parallel."""
        if path.endswith(".parquet"):
            names = pl.scan_parquet(path).collect_schema().names()
            cheap = [c for c in ("id", "scores", "drop_stage", "drop_reason") if c in names]
            if cheap:
                return pl.scan_parquet(path).select(cheap).collect(), "embedding" in names
            return pl.DataFrame({"_n": [0] * pl.scan_parquet(path).select(pl.len()).collect().item()}), "embedding" in names
        head = next(iter_row_chunks(path, chunk_rows=1000), [])
        if not head or any(k.startswith(SCORE_PREFIX) for rec in head[:50] for k in rec):
            return None
        keys = list(dict.fromkeys(k for rec in head if isinstance(rec.get("scores"), Mapping) for k in rec["scores"]))
        schema: dict[str, Any] = {"id": pl.Utf8, "drop_stage": pl.Utf8, "drop_reason": pl.Utf8}
        if keys:
            schema["scores"] = pl.Struct({k: pl.Float64 for k in keys})
        try:
            return pl.scan_ndjson(path, schema=schema).collect(), any("embedding" in rec for rec in head)
        except Exception:  # noqa: BLE001 - any polars parse problem: use the per-row path
            return None

    def add_file(self, path: str, status: str, columns: tuple[pl.DataFrame, bool] | None = None) -> int:
        """Stream one file into the facts (`columns`: its `load_columns`, when already loaded);
        returns its number of rows."""
        if columns is None:
            columns = self.load_columns(path)
        if columns is not None:
            df, has_embedding = columns
            if path.endswith(".parquet"):
                return self._add_parquet(path, status, df, has_embedding)
            return self._add_jsonl_columnar(path, status, df, has_embedding)
        n = 0
        for chunk in iter_row_chunks(path, _ROW_COLUMNS):
            if n < MAX_ROWS_PER_ROW_PATH:  # past that, only count: the per-row path is for odd files
                for row in chunk:
                    self.add_row(row, status)
            n += len(chunk)
        return n

    def _add_parquet(self, path: str, status: str, df: pl.DataFrame, has_embedding: bool) -> int:
        lf = pl.scan_parquet(path)
        names = lf.collect_schema().names()
        picks = set(self._columns(df, status))
        sampled = self._sample(df.height) if has_embedding else set()
        rows = sorted(picks | sampled)
        if rows:
            cols = [c for c in _ROW_COLUMNS if c in names]
            frame = lf.with_row_index("_i").filter(pl.col("_i").is_in(rows)).select(["_i", *cols]).collect()
            for row in frame.iter_rows(named=True):
                self._show(row, status, row["_i"] in sampled)
        return df.height

    def _add_jsonl_columnar(self, path: str, status: str, df: pl.DataFrame, has_embedding: bool) -> int:
        """JSONL whose cheap columns polars read; whole rows are parsed only for the few shown."""
        picks = set(self._columns(df, status))
        sampled = self._sample(df.height) if has_embedding else set()
        wanted = picks | sampled
        if wanted:
            last = max(wanted)
            for i, (_n, line) in enumerate(iter_jsonl(path)):
                if i > last:
                    break
                if i in wanted:
                    rec = json.loads(line)
                    if i in picks and str(rec.get("id")) != df["id"][i]:
                        continue  # line numbering differs from polars' (odd blank lines): skip rather than mislabel
                    self._show(rec, status, i in sampled)
                    wanted.discard(i)
                    if not wanted:
                        break
        return df.height


def collect_facts(run_dir: str) -> RunFacts:
    """Read a run folder once: report, config, scores, dropped examples, embedding sample."""
    run = RunFolder(run_dir)
    report = run.report
    if not report:
        raise FileNotFoundError(f"{run_dir}: no report.json (is this a finished run folder?)")
    facts = RunFacts(report=report, config_text=run.config_text)
    stages = report.get("stages", [])
    expected = (stages[-1].get("kept", 0) if stages else 0) + sum(sum((s.get("dropped") or {}).values()) for s in stages)
    col = _Collector(facts, expected, _referenced_ids(report), seed=0)
    files = list(run.files())
    with ThreadPoolExecutor(2) as pool:  # polars reads the next files while this one is folded in
        loads = [pool.submit(_Collector.load_columns, path) for _status, path in files]
        for (status, path), load in zip(files, loads, strict=True):
            n = col.add_file(path, status, load.result())
            if status == KEPT:
                facts.rows_written += n
                facts.output_files += 1
            else:
                facts.rows_dropped_files += n
    col.finish()
    return facts


# ---------------------------------------------------------------------------------------------
# numbers and small helpers


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return esc(n)


def fmt_num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1):
        return f"{int(x):,}"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.{digits}g}"
    return esc(x)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def stage_balance(stage: Mapping[str, Any]) -> tuple[bool, int, int]:
    """(balanced, in + created, kept + dropped) of one report stage."""
    lhs = int(stage.get("in", 0)) + int(stage.get("created", 0))
    rhs = int(stage.get("kept", 0)) + int(sum((stage.get("dropped") or {}).values()))
    return lhs == rhs, lhs, rhs


def _n_dropped(stage: Mapping[str, Any]) -> int:
    return int(sum((stage.get("dropped") or {}).values()))


# ---------------------------------------------------------------------------------------------
# charts


def _fig(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.patch.set_alpha(0)
    return fig


def _style_axes(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#cbd5e1")
    ax.tick_params(colors="#475569", labelsize=9)
    ax.grid(axis="y", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_facecolor("none")


def fig_svg(fig: Any) -> str:
    """Inline SVG of a figure (text kept as text so it uses the page's font)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", transparent=True)
    svg = buf.getvalue()
    svg = svg[svg.find("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def fig_png(fig: Any, dpi: int = 160) -> str:
    """An <img> with the figure as a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", transparent=False, facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="chart" src="data:image/png;base64,{data}">'


def funnel_svg(stages: Sequence[Mapping[str, Any]]) -> str:
    """A centred funnel: one bar per stage, width ∝ in + created; kept in the middle, dropped at the sides."""
    if not stages:
        return ""
    widest = max(max(stage_balance(s)[1], int(s.get("kept", 0)) + _n_dropped(s)) for s in stages) or 1
    label_w, bar_w, num_w, row_h, gap = 150, 560, 250, 30, 12
    total_w = label_w + bar_w + num_w
    height = len(stages) * (row_h + gap) + gap
    cx = label_w + bar_w / 2
    parts = [f'<svg viewBox="0 0 {total_w} {height}" class="funnel" role="img" aria-label="funnel">']
    prev: tuple[float, float] | None = None
    for i, s in enumerate(stages):
        y = gap + i * (row_h + gap)
        kept, dropped, created = int(s.get("kept", 0)), _n_dropped(s), int(s.get("created", 0))
        w_all = bar_w * (kept + dropped) / widest
        w_kept = bar_w * kept / widest
        w_created = bar_w * created / widest
        x0 = cx - w_all / 2
        if prev is not None:
            px0, px1 = prev
            parts.append(
                f'<path d="M{px0:.1f},{y - gap:.1f} L{px1:.1f},{y - gap:.1f} L{x0 + w_all:.1f},{y:.1f} L{x0:.1f},{y:.1f} Z" fill="#e0e7ff" opacity="0.55"/>'
            )
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(w_all, 1):.1f}" height="{row_h}" rx="6" fill="{DROP_COLOR}" opacity="0.85"><title>{esc(s.get("name"))}: dropped {dropped:,}</title></rect>')
        parts.append(f'<rect x="{cx - w_kept / 2:.1f}" y="{y}" width="{max(w_kept, 1):.1f}" height="{row_h}" rx="6" fill="{KEPT_COLOR}"><title>{esc(s.get("name"))}: kept {kept:,}</title></rect>')
        if created:
            parts.append(f'<rect x="{cx - w_kept / 2:.1f}" y="{y + row_h - 6}" width="{max(min(w_created, w_kept), 1):.1f}" height="6" rx="3" fill="{CREATED_COLOR}"><title>created {created:,}</title></rect>')
        parts.append(f'<text x="{label_w - 12}" y="{y + row_h / 2 + 5}" text-anchor="end" class="fl">{esc(truncate(s.get("name"), 22))}</text>')
        pct = f"{100 * kept / (kept + dropped):.0f}%" if kept + dropped else "—"
        extra = f' <tspan class="fc">+{created:,} created</tspan>' if created else ""
        parts.append(
            f'<text x="{label_w + bar_w + 14}" y="{y + row_h / 2 + 5}" class="fn"><tspan class="fk">{kept:,}</tspan> kept · '
            f'<tspan class="fd">{dropped:,}</tspan> dropped · {pct}{extra}</text>'
        )
        prev = (cx - w_kept / 2, cx + w_kept / 2)
    parts.append("</svg>")
    return "".join(parts)


def _tick(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"


def histogram_svg(name: str, before: np.ndarray, after: np.ndarray) -> str:
    """Overlaid histograms of one score: all rows that had it (before) and the kept rows (after).
    Drawn as plain SVG (a run report has one per score; matplotlib took ~0.3 s each)."""
    lo, hi = float(np.min(before)), float(np.max(before))
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, HIST_BINS + 1)
    series = [(np.histogram(v, bins=bins)[0], color, label, alpha, len(v))
              for v, color, label, alpha in ((before, MUTED, "before", 1.0), (after, KEPT_COLOR, "kept", 0.85)) if len(v)]
    top = max(int(c.max()) for c, *_ in series) or 1
    left, right, plot_top, bottom, width, height = 46, 10, 24, 22, 420, 200
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    bar_w = plot_w / HIST_BINS
    parts = [f'<svg viewBox="0 0 {width} {height}" class="hist" role="img" aria-label="{esc(name)} histogram" '
             'font-family="sans-serif" font-size="10" fill="#475569">']
    for frac in (0.0, 0.5, 1.0):
        y = plot_top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>'
                     f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end">{_tick(top * frac)}</text>')
    for counts, color, label, alpha, _n in series:
        for i, count in enumerate(counts):
            if count:
                h = plot_h * count / top
                parts.append(f'<rect x="{left + i * bar_w:.1f}" y="{plot_top + plot_h - h:.1f}" width="{max(bar_w - 0.6, 0.5):.1f}" '
                             f'height="{h:.1f}" fill="{color}" fill-opacity="{alpha}"><title>{label} [{_tick(bins[i])}, {_tick(bins[i + 1])}): {count:,}</title></rect>')
    base = plot_top + plot_h
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="#cbd5e1"/>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(f'<text x="{left + plot_w * frac:.1f}" y="{base + 15}" text-anchor="{anchor}">{_tick(lo + (hi - lo) * frac)}</text>')
    x = left
    for _counts, color, label, alpha, n in series:
        text = f"{label} ({n:,})"
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}" fill-opacity="{alpha}"/>'
                     f'<text x="{x + 14}" y="13">{esc(text)}</text>')
        x += 14 + int(5.8 * len(text)) + 16
    parts.append("</svg>")
    return "".join(parts)


def bar_svg(labels: Sequence[str], values: Sequence[float], color: str = KEPT_COLOR, xlabel: str = "", ylabel: str = "rows", secondary: Sequence[float] | None = None, secondary_label: str = "") -> str:
    n = len(labels)
    fig = _fig(min(8.0, max(3.6, 0.34 * n + 1.6)), 2.6)
    ax = fig.add_subplot(111)
    _style_axes(ax)
    x = np.arange(n)
    if secondary is not None:
        ax.bar(x, secondary, color=MUTED, width=0.8, label=secondary_label)
    ax.bar(x, values, color=color, width=0.8 if secondary is not None else 0.7, label=ylabel)
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
    ax.set_xticks(x)
    ax.set_xticklabels([truncate(lbl, 18) for lbl in labels], rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center", fontsize=8)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9, color="#475569")
    ax.set_ylabel(ylabel, fontsize=9, color="#475569")
    if secondary is not None:
        ax.legend(frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, borderaxespad=0.2)
    return fig_svg(fig)


def project_2d(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the vectors: UMAP when installed (and enough points), else PCA by SVD."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1, norms)
    if len(x) >= 15:
        try:
            import umap  # type: ignore[import-not-found]

            reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1), metric="cosine")
            return np.asarray(reducer.fit_transform(x)), "UMAP"
        except ImportError:
            pass
    centered = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2)), "PCA"
    _u, _s, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(x), 2 - coords.shape[1]))])
    return coords, "PCA"


def embedding_map_png(points: Sequence[tuple[np.ndarray, str]], stage_order: Sequence[str]) -> tuple[str, str]:
    """(img tag, method) of the 2-D map: kept rows in the accent colour, dropped rows by stage."""
    dims = {len(v) for v, _ in points}
    dim = max(dims, key=lambda d: sum(1 for v, _ in points if len(v) == d))
    pts = [(v, lab) for v, lab in points if len(v) == dim]
    coords, method = project_2d(np.stack([v for v, _ in pts]))
    labels = np.array([lab for _, lab in pts])
    fig = _fig(7.5, 5.2)
    ax = fig.add_subplot(111)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    dropped_stages = [s for s in stage_order if s in set(labels)] + sorted(set(labels) - set(stage_order) - {KEPT})
    for i, stage in enumerate(dropped_stages):
        m = labels == stage
        ax.scatter(coords[m, 0], coords[m, 1], s=13, c=STAGE_PALETTE[i % len(STAGE_PALETTE)], alpha=0.55, linewidths=0, label=f"dropped by {stage} ({int(m.sum()):,})")
    m = labels == KEPT
    ax.scatter(coords[m, 0], coords[m, 1], s=15, c=KEPT_COLOR, alpha=0.8, linewidths=0, label=f"selected / kept ({int(m.sum()):,})")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=1.8)
    ax.set_title(f"{method} of {len(pts):,} sampled rows ({dim}-d embeddings)", fontsize=10, color="#334155", loc="left")
    return fig_png(fig), method


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
    stages = report.get("stages", [])
    rows_in = int(report.get("rows_in", stages[0].get("in", 0) if stages else 0))
    rows_out = int(report.get("rows_out", stages[-1].get("kept", 0) if stages else 0))
    created = sum(int(s.get("created", 0)) for s in stages)
    dropped = sum(_n_dropped(s) for s in stages)
    seconds = report.get("seconds")
    pct = f"{100 * rows_out / rows_in:.1f}%" if rows_in else "—"
    bad = [s.get("name") for s in stages if not stage_balance(s)[0]]
    if bad:
        banner = f'<div class="banner bad">✗ Ledger does not balance for {len(bad)} stage(s): {esc(", ".join(map(str, bad)))}</div>'
    else:
        banner = f'<div class="banner ok">✓ Ledger balances: every one of {len(stages)} stages has in + created = kept + dropped</div>'
    tiles = [
        ("rows in", fmt_int(rows_in), ""),
        ("rows out", fmt_int(rows_out), ""),
        ("kept", pct, "of rows in"),
        ("created", fmt_int(created), "synthesized"),
        ("dropped", fmt_int(dropped), f"{sum(len(s.get('dropped') or {}) for s in stages)} reasons"),
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
        for k, v in (("input", inp), ("output", out_path), ("started", started), ("config", report.get("config_hash")))
        if v
    )
    return (
        f'<header><div class="wrap"><div class="kicker">datacraft · curation report</div>'
        f'<h1>{esc(report.get("name") or "run")}</h1><div class="meta">{meta}</div>'
        f'<div class="tiles">{tile_html}</div>{banner}</div></header>'
    )


def funnel_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    stages = report.get("stages", [])
    rows = []
    for i, s in enumerate(stages):
        ok, lhs, rhs = stage_balance(s)
        flag = (
            f'<span class="pill ok balance-ok" data-stage="{esc(s.get("name"))}">✓ {lhs:,} = {rhs:,}</span>'
            if ok
            else f'<span class="pill bad balance-bad" data-stage="{esc(s.get("name"))}">✗ {lhs:,} ≠ {rhs:,}</span>'
        )
        reasons = "".join(
            f'<span class="chip" title="{esc(r)}">{esc(truncate(r, 28))} <b>{n:,}</b></span>'
            for r, n in sorted((s.get("dropped") or {}).items(), key=lambda kv: -kv[1])
        ) or '<span class="dim">—</span>'
        dropped = _n_dropped(s)
        n_in = int(s.get("in", 0))
        kept_pct = 100 * int(s.get("kept", 0)) / (n_in + int(s.get("created", 0)) or 1)
        rows.append([
            _td(str(i + 1), i + 1, "num dim"),
            _td(f'<b>{esc(s.get("name"))}</b>', s.get("name")),
            _td(fmt_int(n_in), n_in, "num"),
            _td(fmt_int(s.get("created", 0)) if s.get("created") else '<span class="dim">·</span>', s.get("created", 0), "num created"),
            _td(f'{fmt_int(s.get("kept", 0))} <span class="dim">({kept_pct:.0f}%)</span>', s.get("kept", 0), "num"),
            _td(fmt_int(dropped), dropped, "num dropped" if dropped else "num dim"),
            _td(reasons, dropped),
            _td(fmt_seconds(s.get("seconds")), s.get("seconds") or 0, "num"),
            _td(flag, int(ok)),
        ])
    table = _table(["#", "stage", "in", "created", "kept", "dropped", "why dropped", "time", "balance"], rows,
                   [True, False, True, True, True, True, False, True, False])
    checks = []
    if facts.output_files:
        expected = int(report.get("rows_out", stages[-1].get("kept", 0) if stages else 0))
        ok = facts.rows_written == expected
        checks.append(
            f'<span class="pill {"ok" if ok else "bad"}">{"✓" if ok else "✗"} {facts.rows_written:,} rows in data/ '
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
            ) or '<div class="dim">No example rows found in dropped/.</div>'
            cards.append(_card(f"{reason}", items, "drop", f'stage <b>{esc(s.get("name"))}</b> · {n:,} rows'))
    if not cards:
        return _section("drops", "Dropped rows", '<div class="card note">No row was dropped.</div>')
    return _section("drops", "Dropped rows", f'<div class="grid">{"".join(cards)}</div>',
                    "A few rows per reason, with their id (<code>datacraft why OUT ID</code> explains any of them).")


def scores_section(facts: RunFacts) -> str:
    if not any(len(v) for v in facts.scores_all.values()):
        return _section("scores", "Scores", '<div class="card note">No row in this run carries a score.</div>')
    cards = []
    for name in sorted(facts.scores_all):
        before = facts.scores_all[name]
        if not len(before):
            continue
        after = facts.scores_kept.get(name, np.empty(0))
        sub = (
            f"median {np.median(before):.3g} → {np.median(after):.3g} · {len(after):,}/{len(before):,} kept"
            if len(after)
            else f"median {np.median(before):.3g} · none kept"
        )
        cards.append(_card(name, f'<div class="chart">{histogram_svg(name, before, after)}</div>', "", sub))
    return _section("scores", "Score distributions", f'<div class="grid">{"".join(cards)}</div>',
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


def config_section(report: Mapping[str, Any], facts: RunFacts) -> str:
    text = facts.config_text
    if text is None:
        return _section("config", "Resolved config", '<div class="card note">config.yaml is missing from the run folder.</div>')
    return _section("config", "Resolved config", _card(
        "config.yaml", f"<pre class=\"config\">{esc(text)}</pre>", "wide",
        f'hash <code class="hash">{esc(report.get("config_hash", "?"))}</code> · rerun with <code>datacraft run config.yaml</code>'))


# ---------------------------------------------------------------------------------------------
# the page

CSS = """
:root{--ink:#0f172a;--ink2:#334155;--mute:#64748b;--line:#e2e8f0;--bg:#f5f6fb;--card:#fff;--accent:@KEPT@;--drop:@DROP@;--ok:#059669;--bad:#dc2626}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Inter,Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
.wrap{max-width:1240px;margin:0 auto;padding:0 28px}
header{background:linear-gradient(135deg,#0f172a 0%,#1e1b4b 55%,#312e81 100%);color:#fff;padding:34px 0 26px}
.kicker{text-transform:uppercase;letter-spacing:.14em;font-size:11px;color:#a5b4fc;font-weight:600}
h1{margin:6px 0 6px;font-size:30px;font-weight:700;letter-spacing:-.02em}
.meta{color:#c7d2fe;font-size:12.5px;display:flex;flex-wrap:wrap;gap:6px 18px}
.meta b{color:#e0e7ff;font-weight:600;margin-right:4px}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-top:22px}
.tile{background:rgba(255,255,255,.07);border:1px solid rgba(255,255,255,.12);border-radius:14px;padding:14px 16px}
.tile .tv{font-size:26px;font-weight:700;letter-spacing:-.02em;font-variant-numeric:tabular-nums}
.tile .tl{font-size:12px;color:#c7d2fe;text-transform:uppercase;letter-spacing:.08em;margin-top:2px}
.tile .ts{font-size:12px;color:#a5b4fc;min-height:18px}
.banner{margin-top:16px;border-radius:10px;padding:9px 14px;font-weight:600;font-size:13px}
.banner.ok{background:rgba(16,185,129,.16);color:#a7f3d0;border:1px solid rgba(16,185,129,.35)}
.banner.bad{background:rgba(239,68,68,.2);color:#fecaca;border:1px solid rgba(239,68,68,.5)}
nav{position:sticky;top:0;z-index:5;background:rgba(245,246,251,.92);backdrop-filter:blur(8px);border-bottom:1px solid var(--line)}
nav .wrap{display:flex;gap:4px;overflow-x:auto;padding-top:8px;padding-bottom:8px}
nav a{color:var(--ink2);text-decoration:none;font-size:13px;font-weight:500;padding:5px 11px;border-radius:999px;white-space:nowrap}
nav a:hover{background:#e0e7ff;color:#3730a3}
section{margin:30px 0 8px}
h2{font-size:19px;margin:0 0 4px;letter-spacing:-.01em}
.lead{color:var(--mute);margin:0 0 12px;font-size:13px}
.grid{display:grid;align-items:start;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:16px;padding:18px 20px;box-shadow:0 1px 2px rgba(15,23,42,.04),0 4px 16px rgba(15,23,42,.04);margin-bottom:14px;min-width:0}
.card h3{margin:0;font-size:15px;font-weight:650}
.card h4{margin:14px 0 8px;font-size:13px;color:var(--ink2);text-transform:uppercase;letter-spacing:.06em}
.card .sub{color:var(--mute);font-size:12.5px;margin:2px 0 10px}
.card.note{color:var(--mute);font-style:italic}
.grid .card{margin-bottom:0}
.chart svg,.chart img{max-width:100%;height:auto;display:block}
.grid .chart svg{width:100%}
.split{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.split>*{flex:1 1 380px;min-width:0}
.split>.chart{flex:0 1 auto}
.chart.map img{max-width:900px;margin:0 auto}
svg.funnel{width:100%;height:auto;margin-top:6px}
svg.funnel text{font-family:inherit;font-size:13px;fill:#334155}
svg.funnel .fl{font-weight:600;fill:#0f172a}
svg.funnel .fk{fill:@KEPT@;font-weight:700}
svg.funnel .fd{fill:#e2553f;font-weight:700}
svg.funnel .fc{fill:#059669;font-weight:600}
.legend{display:flex;gap:16px;font-size:12px;color:var(--mute);margin-top:8px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.tablewrap{overflow-x:auto}
table{width:100%;border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:11.5px;text-transform:uppercase;letter-spacing:.06em;color:var(--mute);font-weight:600;padding:8px 10px;border-bottom:1px solid var(--line);cursor:pointer;user-select:none;white-space:nowrap}
th:hover{color:var(--ink)}
th .arrow{opacity:.35;margin-left:4px;font-size:10px}
th.num,td.num{text-align:right}
td{padding:9px 10px;border-bottom:1px solid #f1f5f9;vertical-align:top}
tbody tr:hover{background:#f8fafc}
td.dropped{color:#c2410c;font-weight:600}
td.created{color:var(--ok)}
.dim{color:#94a3b8}
.bad{color:var(--bad)}
.chip{display:inline-block;background:#fff1ee;color:#9a3412;border:1px solid #fed7cc;border-radius:999px;padding:1px 9px;margin:0 4px 4px 0;font-size:12px;white-space:nowrap}
.pill{display:inline-block;border-radius:999px;padding:2px 10px;font-size:12px;font-weight:600;white-space:nowrap}
.pill.ok{background:#dcfce7;color:#166534}
.pill.bad{background:#fee2e2;color:#991b1b}
.checks{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.card.drop{border-top:3px solid var(--drop)}
.ex{border-top:1px dashed var(--line);padding:9px 0}
.ex:first-of-type{border-top:none}
.exid{font:11.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#6366f1;word-break:break-all}
.exq{font-weight:550;margin-top:2px}
.exa{color:var(--ink2);font-size:13px;margin-top:2px}
.exd{color:#b45309;font-size:12.5px;margin-top:3px}
.pair{border:1px solid var(--line);border-radius:12px;padding:10px 12px;margin-bottom:10px}
.sides{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:10px}
.side{border-left:3px solid var(--accent);padding:2px 10px}
.side.gone{border-left-color:var(--drop)}
.role{font-size:11px;text-transform:uppercase;letter-spacing:.08em;color:var(--mute);font-weight:600}
.pinfo{font-size:12.5px;color:var(--ink2);margin-top:6px}
.minitiles{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.mt{background:#f8fafc;border:1px solid var(--line);border-radius:10px;padding:8px 14px}
.mt .tv{font-size:18px;font-weight:700}
.mt .tl{font-size:11.5px;color:var(--mute)}
.bar{display:inline-block;width:150px;height:8px;background:#eef2ff;border-radius:99px;overflow:hidden;vertical-align:middle;margin-right:8px}
.bar i{display:block;height:100%;background:var(--accent);border-radius:99px}
pre{background:#0f172a;color:#e2e8f0;border-radius:12px;padding:14px 16px;overflow:auto;font:12.5px/1.55 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;max-height:560px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef2ff;color:#3730a3;padding:1px 5px;border-radius:5px}
details{margin-top:8px}summary{cursor:pointer;color:var(--ink2);font-weight:600}
footer{color:var(--mute);font-size:12px;text-align:center;padding:30px 0 40px}
@media (max-width:900px){.tiles{grid-template-columns:repeat(3,1fr)}}
""".replace("@KEPT@", KEPT_COLOR).replace("@DROP@", DROP_COLOR)

JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows),asc=th.dataset.dir!=='asc';
      t.querySelectorAll('th').forEach(function(h){h.dataset.dir='';h.querySelector('.arrow').textContent='\\u2195';});
      th.dataset.dir=asc?'asc':'desc';th.querySelector('.arrow').textContent=asc?'\\u2191':'\\u2193';
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
        if(x===undefined){x=a.cells[i].textContent;y=b.cells[i].textContent;}
        var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){tb.appendChild(r);});
    });
  });
});
"""


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
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"{header_html(report, facts)}<nav><div class=\"wrap\">{nav}</div></nav>"
        f'<main class="wrap">{body}</main>'
        f"<footer>generated by datacraft on {generated} · self-contained, no network needed</footer>"
        f"<script>{JS}</script></body></html>"
    )


def render_html(run_dir: str) -> str:
    """Render `run_dir/report.html` from the run folder and return its path."""
    facts = collect_facts(run_dir)
    page = build_page(facts)
    path = os.path.join(run_dir, "report.html")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
