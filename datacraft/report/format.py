"""Numbers and text as the report page writes them: HTML-escaped, thousands separated, short."""

from __future__ import annotations

import html
from typing import Any


def esc(value: Any) -> str:
    """HTML-escaped text of a value (None: empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_int(n: Any) -> str:
    """An integer with thousands separators (anything else escaped as is)."""
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return esc(n)


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number to about `digits` significant digits; whole numbers with separators, booleans as yes / no."""
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
    """A duration in ms, s, min or h."""
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
