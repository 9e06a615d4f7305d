"""The lift result as HTML: `lift_section_html(result)` is one `<section>` in report.html's style (a
table of arms and an inline-SVG plot of held-out loss per arm and seed); `lift_page_html` wraps it in
a self-contained page (`OUT/lift.html`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from datacraft.report.charts import _fig, _style_axes, fig_svg
from datacraft.report.format import esc
from datacraft.report.html import _card, _section, _table, _td, page_css, page_js

SEED_COLORS = ["#4f46e5", "#f97360", "#10b981", "#f59e0b", "#06b6d4", "#a855f7", "#64748b", "#ec4899"]


def arm_order(result: Mapping[str, Any]) -> list[str]:
    """Baseline first, then length, the other arms in config order, the ceiling last."""
    arms = list(result["arms"])
    base, ceil = result["baseline"], result["ceiling"]
    middle = [a for a in arms if a not in (base, ceil)]
    middle.sort(key=lambda a: a != "length")
    return [a for a in (base, *middle, ceil) if a in result["arms"]]


def loss_plot_svg(result: Mapping[str, Any]) -> str:
    """The loss plot as inline SVG."""
    return fig_svg(loss_plot_figure(result))


def loss_plot_figure(result: Mapping[str, Any]) -> Any:
    """Held-out loss per arm (x) and seed (colour), the mean as a bar; dashed lines at the baseline's
    and the ceiling's means."""
    order = arm_order(result)
    arms = result["arms"]
    seeds = sorted({s for a in order for s in arms[a]["losses"]}, key=int)
    fig = _fig(max(5.0, 1.0 + 0.85 * len(order)), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    for x, name in enumerate(order):
        mean = arms[name]["mean"]
        ax.hlines(mean, x - 0.32, x + 0.32, color="#0f172a", linewidth=2.2, zorder=3)
        for j, seed in enumerate(seeds):
            value = arms[name]["losses"].get(seed)
            if value is not None:
                offset = (j - (len(seeds) - 1) / 2) * 0.12
                ax.scatter([x + offset], [value], s=28, color=SEED_COLORS[j % len(SEED_COLORS)], zorder=4,
                           label=f"seed {seed}" if x == 0 else None, edgecolors="white", linewidths=0.6)
    for name, color in ((result["baseline"], "#94a3b8"), (result["ceiling"], "#059669")):
        if name in arms:
            ax.axhline(arms[name]["mean"], color=color, linestyle="--", linewidth=1, zorder=1)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=20 if len(order) > 5 else 0, ha="right" if len(order) > 5 else "center")
    ax.set_ylabel("held-out answer loss (NLL / token)", fontsize=9, color="#475569")
    ax.margins(y=0.15)
    if seeds:
        ax.legend(fontsize=8, frameon=False, loc="upper right", ncols=min(len(seeds), 4))
    return fig


def _num(x: Any, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return '<span class="dim">—</span>'
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _mix(mix: Mapping[str, float], limit: int = 3) -> str:
    top = sorted(mix.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{esc(g)} {share:.0%}" for g, share in top)


def _goal_html(goal: Mapping[str, Any] | None) -> str:
    if not goal:
        return ""
    pills = "".join(f'<span class="pill {"ok" if ok else "bad"}">{esc(name)}</span>' for name, ok in goal["checks"].items())
    closed = goal.get("gap_closed")
    text = (f"<b>{esc(goal['arm'])}</b> closes {closed:.0%} of the gap" if closed is not None else f"<b>{esc(goal['arm'])}</b>: no gap measured")
    text += f" (target ≥ {goal['gap_target']:.0%})"
    if goal.get("paired_mean") is not None:
        sd = goal.get("paired_sd")
        text += f"; paired difference {goal['paired_mean']:+.4f}" + (f" ± {sd:.4f} (sd)" if sd is not None else " (one seed: no sd)")
    verdict = '<span class="pill ok">goal met</span>' if goal["met"] else '<span class="pill bad">goal not met</span>'
    return f'<p>{verdict} {text} over {goal["seeds"]} seed(s).</p><div class="checks">{pills}</div>'


def lift_section_html(result: Mapping[str, Any]) -> str:
    """One report section: the goal verdict, the plot, the arms table, what was skipped and the setup."""
    arms = result["arms"]
    base, ceil, ref = result["baseline"], result["ceiling"], result["reference"]
    rows: list[Sequence[str]] = []
    for name in arm_order(result):
        e = arms[name]
        d = e.get("diff_vs_baseline") or {}
        per_seed = ", ".join(f"{v:.4f}" for _s, v in sorted(e["losses"].items(), key=lambda kv: int(kv[0])))
        diff = _num(d.get("mean"), signed=True) + (f' <span class="dim">± {d["sd"]:.4f}</span>' if d.get("sd") is not None else "")
        if d.get("beyond_2sd"):
            diff = f"<b>{diff}</b>"
        filled = sum(p.get("filled", 0) for p in e.get("per_seed", {}).values())
        how = esc(e.get("description") or e.get("kind", ""))
        if e.get("score"):
            how += f" · ranked by <code>{esc(e['score'])}</code>"
        if filled:
            how += f' · <span class="bad">{filled} rows filled at random</span>'
        rows.append([
            _td(f"<b>{esc(name)}</b><div class=\"dim\">{how}</div>", name),
            _td(_num(e["mean"]) + (f' <span class="dim">± {e["sd"]:.4f}</span>' if e.get("sd") is not None else ""), e["mean"], "num"),
            _td(diff, d.get("mean", 0), "num"),
            _td(_num(e.get("gap_closed"), 2), e.get("gap_closed", 0), "num"),
            _td(f"{e['mix'].get(ref, 0.0):.0%}", e["mix"].get(ref, 0.0), "num"),
            _td(f"{e['mean_response_chars']:,.0f}", e["mean_response_chars"], "num"),
            _td(f'<span class="dim">{_mix(e["mix"])}</span>'),
            _td(f'<span class="dim">{per_seed}</span>'),
        ])
    headers = ["arm", "loss mean ± sd", f"Δ vs {base} ± sd", "gap closed", f"{ref} share", "response chars", "generators", "per seed"]
    table = _table(headers, rows, [False, True, True, True, True, True, False, False])
    student = result.get("student", {})
    setup = (
        f"{result['pool']['rows']:,} pool rows ({result['pool']['instructions']} instructions), {result['heldout']['rows']} held-out "
        f"{esc(ref)} answers (instructions disjoint from the pool); N = {result['budget']} rows per arm; seeds {result['seeds']}; "
        f"student {esc(student.get('model'))}, max_length {student.get('max_length')}, {student.get('epochs')} epoch(s), "
        f"lr {student.get('learning_rate')}, batch {student.get('batch_size')}"
        + (f", top {student['train_layers']} layers trained" if student.get("train_layers") else "")
        + (", LoRA" if student.get("lora") else "") + (", bf16" if student.get("bf16") else "")
    )
    if result.get("base_loss") is not None:
        setup += f"; untrained student {result['base_loss']:.4f}"
    skipped = result.get("skipped") or {}
    skipped_html = ("<p class=\"dim\">skipped: " + "; ".join(f"<b>{esc(k)}</b> ({esc(v)})" for k, v in skipped.items()) + "</p>") if skipped else ""
    lead = (f"Held-out loss = mean answer-token NLL of the {esc(ref)} answers; lower is better. Δ = {esc(base)} − arm at the same "
            f"seed (positive: the arm helps), bold when beyond 2 sd. Gap closed = ({esc(base)} − arm) / ({esc(base)} − {esc(ceil)}).")
    body = (
        _card("Verdict", _goal_html(result.get("goal")) + f'<div class="sub">{setup}</div>' + skipped_html)
        + _card("Held-out loss per arm and seed", f'<div class="chart">{loss_plot_svg(result)}</div>', "",
                f"bars: mean over seeds; dashed: {esc(base)} (grey) and {esc(ceil)} (green) means")
        + _card("Arms", table, "wide")
    )
    return _section("lift", "Does curation help? (lift)", body, lead)


def lift_page_html(result: Mapping[str, Any]) -> str:
    """A self-contained page holding the lift section (report.html's CSS; no network)."""
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"{result.get('name', 'lift')} · datacraft lift"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{page_css()}</style></head><body>"
        f'<header><div class="wrap"><div class="kicker">datacraft lift</div><h1>{esc(result.get("name", "lift"))}</h1>'
        f'<div class="meta"><span><b>config</b>{esc(result.get("config"))}</span><span><b>wall</b>{result["timing"]["seconds"]:.0f} s</span>'
        f'<span><b>quick</b>{"yes" if result.get("quick") else "no"}</span></div></div></header>'
        f'<main class="wrap">{lift_section_html(result)}</main>'
        f"<footer>generated by datacraft on {generated} · self-contained, no network needed</footer>"
        f"<script>{page_js()}</script></body></html>"
    )

