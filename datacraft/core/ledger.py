"""The ledger: one `LedgerEntry` per batch per stage, added up with `+` into one entry per stage,
and the balance check (`in + created == kept + dropped` for every stage, and each stage's `in`
equals the previous stage's `kept`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

#: lists in `extras` keep at most this many items across batches (examples, matches)
MAX_EXTRA_ITEMS = 50


def merge_extras(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Fold `new` into `into`: lists concatenated (capped), dicts merged with numbers summed, else replaced."""
    for key, value in new.items():
        if isinstance(value, list):
            into.setdefault(key, [])
            room = MAX_EXTRA_ITEMS - len(into[key])
            if room > 0:
                into[key].extend(value[:room])
        elif isinstance(value, dict):
            target = into.setdefault(key, {})
            for k, v in value.items():
                if isinstance(v, int | float) and isinstance(target.get(k), int | float) and not isinstance(v, bool):
                    target[k] = target[k] + v
                else:
                    target[k] = v
        else:
            into[key] = value
    return into


@dataclass
class LedgerEntry:
    """What one stage did to some rows: counts, drops by reason, time, counters and report facts."""

    stage: str
    n_in: int = 0
    kept: int = 0
    created: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_batch(cls, stage: str, n_in: int, kept: pl.DataFrame, dropped: pl.DataFrame | None = None, *, created: int = 0,
                 seconds: float = 0.0, counters: Mapping[str, float] | None = None, extras: Mapping[str, Any] | None = None) -> LedgerEntry:
        """The entry of one batch: drop reasons counted from the dropped rows' `drop_reason`."""
        reasons: Counter[str] = Counter()
        if dropped is not None and dropped.height:
            reasons.update(dropped["drop_reason"].to_list())
        return cls(stage, n_in, kept.height, created, dict(reasons), seconds, dict(counters or {}), dict(extras or {}))

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def __add__(self, other: LedgerEntry) -> LedgerEntry:
        if other.stage != self.stage:
            raise ValueError(f"cannot add ledger entries of {self.stage!r} and {other.stage!r}")
        dropped = dict(self.dropped)
        for reason, n in other.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        counters = dict(self.counters)
        for name, v in other.counters.items():
            counters[name] = counters.get(name, 0) + v
        extras = merge_extras(merge_extras({}, self.extras), other.extras)
        return LedgerEntry(self.stage, self.n_in + other.n_in, self.kept + other.kept, self.created + other.created,
                           dropped, self.seconds + other.seconds, counters, extras)

    def problems(self) -> list[str]:
        """Ways this entry fails to balance (empty: it balances)."""
        if self.n_in + self.created != self.kept + self.n_dropped:
            return [f"{self.stage}: in {self.n_in} + created {self.created} != kept {self.kept} + dropped {self.n_dropped}"]
        return []

    def to_dict(self) -> dict[str, Any]:
        """The report.json form."""
        return {"name": self.stage, "in": self.n_in, "kept": self.kept, "created": self.created, "dropped": dict(self.dropped),
                "seconds": self.seconds, "counters": dict(self.counters), "extras": dict(self.extras)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerEntry:
        return cls(d["name"], d["in"], d["kept"], d.get("created", 0), dict(d.get("dropped", {})), d.get("seconds", 0.0),
                   dict(d.get("counters", {})), dict(d.get("extras", {})))


def merge_entries(entries: Iterable[LedgerEntry]) -> dict[str, LedgerEntry]:
    """Per-batch entries → one entry per stage label (in first-seen order)."""
    out: dict[str, LedgerEntry] = {}
    for e in entries:
        out[e.stage] = out[e.stage] + e if e.stage in out else e + LedgerEntry(e.stage)
    return out


def ledger_problems(stages: Iterable[Mapping[str, Any] | LedgerEntry]) -> list[str]:
    """Every way the counts of a run's stages (in pipeline order) fail to add up; empty = it balances.
    A stage dict with `from` (a branch of the graph) is checked against that stage's kept rows."""
    problems: list[str] = []
    previous_kept: int | None = None
    kept_of: dict[str, int] = {}
    for s in stages:
        entry = s if isinstance(s, LedgerEntry) else LedgerEntry.from_dict(s)
        source = None if isinstance(s, LedgerEntry) else s.get("from")
        problems += entry.problems()
        if source is not None and source in kept_of:
            if entry.n_in != kept_of[source]:
                problems.append(f"{entry.stage}: in {entry.n_in} != kept {kept_of[source]} of {source!r}, which it reads")
        elif previous_kept is not None and entry.n_in != previous_kept:
            problems.append(f"{entry.stage}: in {entry.n_in} != previous stage's kept {previous_kept}")
        previous_kept = kept_of[entry.stage] = entry.kept
    return problems
