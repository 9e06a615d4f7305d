"""Tolerant parsers for the tagged sections that teacher models write.

Models do not follow output formats reliably: closing tags go missing, the template's own tags are
echoed back, sections come in another case or as `Name:` headers, and placeholders ("your answer",
"N/A") stand in for content. Every parser here returns a `Parsed` value whose `status` says what
happened (`ok`, `missing`, `empty`, `placeholder`), so callers can keep the original and count the
failure instead of losing it silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OK, MISSING, EMPTY, PLACEHOLDER = "ok", "missing", "empty", "placeholder"

#: texts that mean "the model filled in the template, not the content"
_PLACEHOLDERS = (
    "your instruction",
    "your answer",
    "your new instruction",
    "your new answer",
    "your better answer",
    "your rewritten prompt",
    "your created prompt",
    "your improved prompt",
    "new instruction here",
    "new answer here",
    "insert ",
    "n/a",
    "none",
    "...",
    "…",
    "tbd",
)


@dataclass(frozen=True)
class Parsed:
    """A parsed section: `value` is None unless `status == "ok"`."""

    value: str | None
    status: str
    truncated: bool = False  # taken from an answer cut at max_tokens (the section may be cut too)

    @property
    def ok(self) -> bool:
        return self.status == OK


def normalize_ws(text: str) -> str:
    """Collapse whitespace (used to compare texts: a copy of the original is not a change)."""
    return " ".join(text.split())


def is_placeholder(text: str) -> bool:
    """True for empty text, bare template words, or text that still holds a placeholder phrase."""
    t = normalize_ws(text).strip(" .:;-*\"'`[]<>()").lower()
    if not t:
        return True
    if t in _PLACEHOLDERS or re.fullmatch(r"[\W_]+", t):
        return True
    short = len(t) <= 40
    return short and any(p in t for p in _PLACEHOLDERS if len(p) > 4)


def _checked(value: str | None) -> Parsed:
    if value is None:
        return Parsed(None, MISSING)
    value = value.strip()
    if not value:
        return Parsed(None, EMPTY)
    if is_placeholder(value):
        return Parsed(None, PLACEHOLDER)
    return Parsed(value, OK)


def _first_valid(candidates: list[str]) -> Parsed:
    """The first candidate that is real content; else the most informative failure."""
    if not candidates:
        return Parsed(None, MISSING)
    results = [_checked(c) for c in candidates]
    for r in results:
        if r.ok:
            return r
    # among failed candidates a placeholder is more telling than an empty section
    return Parsed(None, PLACEHOLDER if any(r.status == PLACEHOLDER for r in results) else EMPTY)


def _tag_name_re(name: str) -> str:
    return r"\s*".join(re.escape(part) for part in name.split())


def angle_sections(text: str, tag: str) -> list[str]:
    """All `<Tag> … </Tag>` bodies (case-insensitive, flexible inner spacing).

    A section without its closing tag runs to the next opening `<Other Tag>` or to the end.
    """
    name = _tag_name_re(tag)
    open_re = re.compile(rf"<\s*{name}\s*>", re.IGNORECASE)
    close_re = re.compile(rf"<\s*/\s*{name}\s*>", re.IGNORECASE)
    any_open = re.compile(r"<\s*[A-Za-z][A-Za-z0-9 _-]{0,40}>")
    out: list[str] = []
    pos = 0
    while True:
        m = open_re.search(text, pos)
        if m is None:
            break
        start = m.end()
        close = close_re.search(text, start)
        nxt = any_open.search(text, start)
        nxt_same = open_re.search(text, start)
        ends = [x.start() for x in (close, nxt, nxt_same) if x is not None]
        end = min(ends) if ends else len(text)
        out.append(text[start:end])
        pos = close.end() if close is not None and close.start() == end else end
    return out


def extract_angle(text: str, tag: str) -> Parsed:
    """The first real `<Tag>` section (echoed template tags and placeholders are skipped)."""
    return _first_valid(angle_sections(text, tag))


#: section names our prompts define; an unterminated section stops at the next of these headers
SECTION_NAMES = ("Feedback", "New Instruction", "New Answer", "Better Answer", "Instruction", "Answer")


def _header_re(name: str) -> str:
    pat = _tag_name_re(name)
    return rf"\[\s*{pat}\s*\]\s*:?|^[ \t]*(?:\*\*)?{pat}(?:\*\*)?[ \t]*:(?:\*\*)?"


def bracket_sections(text: str, name: str, stop_names: tuple[str, ...] = SECTION_NAMES, closed_only: bool = False) -> list[str]:
    """All `[Name] … [End]` bodies; also accepts `Name:` / `**Name:**` headers at a line start.

    A section ends at `[End]`, at the next header of one of `stop_names`, or at the end of the text
    (content lines such as `Ingredients:` do not end it). `closed_only` leaves out a section that
    runs to the end of the text: in an answer cut at max_tokens that one may be cut too.
    """
    start_re = re.compile(_header_re(name), re.IGNORECASE | re.MULTILINE)
    stop_re = re.compile("|".join([r"\[\s*end[^\]]*\]", *(_header_re(n) for n in stop_names)]), re.IGNORECASE | re.MULTILINE)
    out: list[str] = []
    for m in start_re.finditer(text):
        start = m.end()
        stop = stop_re.search(text, start)
        if stop or not closed_only:
            out.append(text[start : stop.start() if stop else len(text)])
    return out


def extract_bracket(text: str, *names: str, closed_only: bool = False) -> Parsed:
    """The first real `[Name] … [End]` section for any of `names` (tried in order)."""
    candidates: list[str] = []
    for n in names:
        candidates.extend(bracket_sections(text, n, closed_only=closed_only))
    return _first_valid(candidates)


_INT = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(text: str, tag: str = "Score", lo: float = 1, hi: float = 10) -> float | None:
    """The first number inside `<Score>` (or after `Score:`), clipped to [lo, hi]; None if absent."""
    bodies = angle_sections(text, tag) or [m.group(1) for m in re.finditer(rf"(?i){_tag_name_re(tag)}\s*[:=]\s*([^\n]+)", text)]
    for body in bodies:
        m = _INT.search(body)
        if m:
            return min(max(float(m.group()), lo), hi)
    return None


def split_items(text: str, limit: int | None = None) -> list[str]:
    """Comma / semicolon / newline separated items, bullets and numbering stripped, deduplicated."""
    items: list[str] = []
    seen: set[str] = set()
    for raw in re.split(r"[,;\n]", text):
        item = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", raw).strip().strip(".\"'`")
        key = item.lower()
        if item and key not in seen and not is_placeholder(item) and len(item) <= 80:
            seen.add(key)
            items.append(item)
    return items[:limit] if limit else items


def parse_triples(text: str) -> list[tuple[str, str, str]]:
    """Knowledge-graph triples written as `[head, relation, tail]`, `(h, r, t)` or `h | r | t` lines."""
    triples: list[tuple[str, str, str]] = []
    for m in re.finditer(r"[\[(]([^\[\]()\n]+)[\])]", text):
        parts = [p.strip().strip("\"'") for p in m.group(1).split(",")]
        if len(parts) == 3 and all(parts):
            triples.append((parts[0], parts[1], parts[2]))
    if not triples:
        for line in text.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and all(parts):
                triples.append((parts[0], parts[1], parts[2]))
    return triples


@dataclass(frozen=True)
class Choice:
    text: str
    correct: bool


def parse_choices(text: str) -> list[Choice]:
    """Options written one per line as `correct. …` / `incorrect. …` (bullets and letters allowed)."""
    body = next((b for b in angle_sections(text, "Choices") if b.strip()), text)
    out: list[Choice] = []
    for line in body.splitlines():
        m = re.match(r"^\s*(?:[-*•]\s*)?(?:[A-Da-d][.)]\s*)?(incorrect|correct)\s*[.:)-]\s*(.+)$", line, re.IGNORECASE)
        if m and m.group(2).strip():
            out.append(Choice(m.group(2).strip(), m.group(1).lower() == "correct"))
    return out


def parse_yes_no(text: str) -> str | None:
    """`Yes` / `No` from a binary answer (the first one mentioned), or None."""
    m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    return m.group(1).capitalize() if m else None
