"""The report's charts: the funnel and the score histograms as hand-drawn inline SVG, bar charts as
matplotlib SVG (text kept as text), the 2-D embedding map as a base64 PNG (Agg renderer; no network)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from datacraft.core.ledger import LedgerEntry
from datacraft.core.run_folder import KEPT, truncate
from datacraft.report.facts import stage_balance
from datacraft.report.format import esc

HIST_BINS = 30

KEPT_COLOR = "#4f46e5"
DROP_COLOR = "#f97360"
CREATED_COLOR = "#10b981"
MUTED = "#cbd5e1"
STAGE_PALETTE = ["#f97360", "#f59e0b", "#ec4899", "#06b6d4", "#84cc16", "#a855f7", "#64748b", "#ef4444"]


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


def funnel_svg(stages: Sequence[LedgerEntry]) -> str:
    """A centred funnel: one bar per stage, width ∝ in + created; kept in the middle, dropped at the sides."""
    if not stages:
        return ""
    widest = max(max(stage_balance(s)[1:]) for s in stages) or 1
    label_w, bar_w, num_w, row_h, gap = 150, 560, 250, 30, 12
    total_w = label_w + bar_w + num_w
    height = len(stages) * (row_h + gap) + gap
    cx = label_w + bar_w / 2
    parts = [f'<svg viewBox="0 0 {total_w} {height}" class="funnel" role="img" aria-label="funnel">']
    prev: tuple[float, float] | None = None
    for i, s in enumerate(stages):
        y = gap + i * (row_h + gap)
        kept, dropped, created = s.kept, s.n_dropped, s.created
        w_all = bar_w * (kept + dropped) / widest
        w_kept = bar_w * kept / widest
        w_created = bar_w * created / widest
        x0 = cx - w_all / 2
        if prev is not None:
            px0, px1 = prev
            parts.append(
                f'<path d="M{px0:.1f},{y - gap:.1f} L{px1:.1f},{y - gap:.1f} L{x0 + w_all:.1f},{y:.1f} L{x0:.1f},{y:.1f} Z" fill="#e0e7ff" opacity="0.55"/>'
            )
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(w_all, 1):.1f}" height="{row_h}" rx="6" fill="{DROP_COLOR}" opacity="0.85"><title>{esc(s.stage)}: dropped {dropped:,}</title></rect>')
        parts.append(f'<rect x="{cx - w_kept / 2:.1f}" y="{y}" width="{max(w_kept, 1):.1f}" height="{row_h}" rx="6" fill="{KEPT_COLOR}"><title>{esc(s.stage)}: kept {kept:,}</title></rect>')
        if created:
            parts.append(f'<rect x="{cx - w_kept / 2:.1f}" y="{y + row_h - 6}" width="{max(min(w_created, w_kept), 1):.1f}" height="6" rx="3" fill="{CREATED_COLOR}"><title>created {created:,}</title></rect>')
        parts.append(f'<text x="{label_w - 12}" y="{y + row_h / 2 + 5}" text-anchor="end" class="fl">{esc(truncate(s.stage, 22))}</text>')
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
    # equal-width bins given as a count and range: numpy bins without sorting (same counts as the edges)
    series = [(np.histogram(v, bins=HIST_BINS, range=(lo, hi))[0], color, label, alpha, len(v))
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
    """Matplotlib bars as inline SVG (log scale when the values span > 50×), optionally over grey `secondary` bars."""
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
