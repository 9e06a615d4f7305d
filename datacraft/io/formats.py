"""Input formats ↔ the canonical row.

Recognised formats (`detect_format` looks at the keys of one record):

    alpaca       instruction, input?, output            (system?)
    sharegpt     conversations: [{from, value}]          (system?)
    messages     messages: [{role, content}]
    completion   prompt, completion                     (strings or message lists)
    preference   prompt, chosen, rejected               (strings or message lists)
    datacraft    our own written rows (id, messages, lineage, scores, …)

`to_row(record, fmt)` converts one record, raising `RecordError(field, message)` on a bad record;
`from_row(row, fmt)` writes it back in the user's format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from datacraft.core.rows import (
    PROMPT_COLUMN,
    SCORE_PREFIX,
    is_written_layout,
    make_row,
    meta_of,
    written_messages,
)

FORMATS = ("alpaca", "sharegpt", "messages", "completion", "preference", "datacraft")

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
_CANONICAL_ROLES = {"system", "user", "assistant", "tool"}
# Keys that carry no content and are kept as metadata.
_ID_KEYS = ("id", "idx", "uid", "sample_id")
# meta keys the reader sets itself; a record field of the same name is kept as `record.<name>`
RESERVED_META = frozenset({"format", "input", "prompt_is_text", "answers_are_text", "where", "raw"})
RECORD_PREFIX = "record."


class RecordError(ValueError):
    """A record that cannot be converted; `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field = field


class FormatDetectionError(ValueError):
    """The format of a record cannot be told from its keys."""


def detect_format(record: Mapping[str, Any]) -> str | None:
    """The format of one record from its keys, or None when no known format fits."""
    keys = set(record)
    if is_written_layout(keys):
        return "datacraft"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if "prompt" in keys and ("completion" in keys or "response" in keys):
        return "completion"
    return None


def describe_unknown(record: Mapping[str, Any]) -> str:
    return (
        f"cannot tell the format from the fields {sorted(record)}; expected one of: "
        "alpaca (instruction, input, output), sharegpt (conversations), messages (messages), "
        "completion (prompt, completion), preference (prompt, chosen, rejected); pass --format"
    )


def _text(record: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError(key, "missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(key, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value: Any, field: str, default_role: str) -> list[dict[str, str]]:
    """A string (one message of `default_role`) or a list of {role, content} / {from, value}."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise RecordError(field, f"expected a string or a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise RecordError(f"{field}[{i}]", "expected an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role is None or content is None:
            raise RecordError(f"{field}[{i}]", "needs role/content (or from/value)")
        role = _SHAREGPT_ROLES.get(str(role).lower(), str(role).lower())
        if role not in _CANONICAL_ROLES:
            raise RecordError(f"{field}[{i}].role", f"unknown role {role!r}")
        content = _content_text(content, f"{field}[{i}].content")
        out.append({"role": role, "content": content})
    return out


def _content_text(content: Any, field: str) -> str:
    """A message's content as text: a string, or OpenAI content parts (`[{"type": "text", "text": …}]`)
    joined by newlines; other JSON values are kept as JSON text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, Mapping) and "type" in p for p in content):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RecordError(f"{field}[{j}]", f"content part of type {part.get('type')!r}: only text parts are read")
            texts.append(part["text"])
        return "\n".join(texts)
    return json.dumps(content, ensure_ascii=False)


def canonical_text(value: Any) -> str:
    """A scalar or JSON value as one string: strings as they are, anything else as canonical JSON
    (sorted keys, no spaces), so `{"k": 0}` and `{"j": 0}` stay distinct ids on every path."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _extras(record: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    """The record's other fields, sorted by name (one order on every read path); a field named like
    a reserved meta key is kept as `record.<name>`."""
    keys = sorted(k for k in record if k not in used and k not in _ID_KEYS and k not in ("task", "source"))
    return {(RECORD_PREFIX + k if k in RESERVED_META else k): _finite(record[k]) for k in keys}


def _finite(value: Any) -> Any:
    """NaN / ±inf (a Parquet float column) become null: `meta` must stay valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _source_id(record: Mapping[str, Any]) -> str | None:
    for key in _ID_KEYS:
        if record.get(key) is not None:
            return canonical_text(record[key])
    return None


def to_row(record: Mapping[str, Any], fmt: str, source: str | None = None, task_field: str = "task") -> dict[str, Any]:
    """One input record → one row in batch layout. Raises RecordError on a bad record."""
    if not isinstance(record, Mapping):
        raise RecordError("<record>", f"expected a JSON object, got {type(record).__name__}")
    if fmt == "datacraft":
        return _from_datacraft(record)
    meta: dict[str, Any] = {"format": fmt}
    chosen = rejected = None
    if fmt == "alpaca":
        instruction = _text(record, "instruction")
        given = _text(record, "input", required=False)
        output = _text(record, "output" if "output" in record else "response")
        user = f"{instruction}\n\n{given}" if given.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if given.strip():
            meta["input"] = given
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": _text(record, "system")})
        used = {"instruction", "input", "output", "response", "system"}
    elif fmt == "sharegpt":
        messages = _messages(record.get("conversations"), "conversations", "user")
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": _text(record, "system")})
        used = {"conversations", "system"}
    elif fmt == "messages":
        messages = _messages(record.get("messages"), "messages", "user")
        used = {"messages"}
    elif fmt == "completion":
        completion_key = "completion" if "completion" in record else "response"
        messages = _messages(record.get("prompt"), "prompt", "user") + _messages(
            record.get(completion_key), completion_key, "assistant"
        )
        meta["prompt_is_text"] = isinstance(record.get("prompt"), str)
        used = {"prompt", completion_key}
    elif fmt == "preference":
        messages = _messages(record.get("prompt"), "prompt", "user")
        chosen = _messages(record.get("chosen"), "chosen", "assistant")
        rejected = _messages(record.get("rejected"), "rejected", "assistant")
        meta["prompt_is_text"] = isinstance(record.get("prompt"), str)
        meta["answers_are_text"] = isinstance(record.get("chosen"), str)
        used = {"prompt", "chosen", "rejected"}
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if not messages:
        raise RecordError("messages", "empty conversation")
    meta.update(_extras(record, used | {task_field}))
    task = record.get(task_field)
    given_source = record.get("source")
    return make_row(
        messages,
        id=_source_id(record),
        task=canonical_text(task) if task is not None else None,
        source=(canonical_text(given_source) if given_source not in (None, "") else source) or None,
        meta=meta,
        chosen=chosen,
        rejected=rejected,
    )


def _from_datacraft(record: Mapping[str, Any]) -> dict[str, Any]:
    lineage = record.get("lineage") or {}
    if not isinstance(lineage, Mapping):
        raise RecordError("lineage", f"expected an object with parent_ids and method, got {type(lineage).__name__}")
    parents = lineage.get("parent_ids") or []
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecordError("lineage.parent_ids", "expected a list of strings")
    meta = record.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as err:
            raise RecordError("meta", f"not valid JSON: {err.msg}") from None
    if meta is not None and not isinstance(meta, Mapping):
        raise RecordError("meta", f"expected an object, got {type(meta).__name__}")
    scores = record.get("scores") or {}
    if not isinstance(scores, Mapping) or not all(v is None or isinstance(v, int | float) for v in scores.values()):
        raise RecordError("scores", "expected an object of numbers")
    for key in ("id", "task", "source"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise RecordError(key, f"expected a string, got {type(record[key]).__name__}")
    row = make_row(
        _messages(written_messages(record), "messages" if "messages" in record else PROMPT_COLUMN, "user"),
        id=record.get("id"),
        task=record.get("task"),
        source=record.get("source"),
        parent_ids=parents,
        method=str(lineage.get("method") or "seed"),
        meta=meta,
        scores=scores,
        chosen=_messages(record["chosen"], "chosen", "assistant") if record.get("chosen") else None,
        rejected=_messages(record["rejected"], "rejected", "assistant") if record.get("rejected") else None,
    )
    return row


def _last(messages: list[dict[str, str]] | None, role: str) -> str:
    for m in reversed(messages or []):
        if m["role"] == role:
            return m["content"]
    return ""


def from_row(row: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """One batch-layout row → a record in `fmt` (the inverse of `to_row` for that format)."""
    meta = meta_of(row.get("meta")) if isinstance(row.get("meta"), str) else dict(row.get("meta") or {})
    messages = list(row.get("messages") or [])
    scores = {k[len(SCORE_PREFIX) :]: v for k, v in row.items() if k.startswith(SCORE_PREFIX) and v is not None}
    extras = {k.removeprefix(RECORD_PREFIX): v for k, v in meta.items() if k not in RESERVED_META}
    out: dict[str, Any] = {"id": row["id"]}
    if fmt == "alpaca":
        system = _last(messages, "system")
        user = _last(messages, "user")
        given = meta.get("input") or ""
        instruction = user[: -len(given) - 2] if given and user.endswith("\n\n" + given) else user
        out.update({"instruction": instruction, "input": given if instruction != user else "", "output": _last(messages, "assistant")})
        if system:
            out["system"] = system
    elif fmt == "sharegpt":
        back = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
        out["conversations"] = [{"from": back[m["role"]], "value": m["content"]} for m in messages]
    elif fmt == "messages":
        out["messages"] = messages
    elif fmt == "completion":
        prompt = [m for m in messages if m is not messages[-1]] if messages else []
        if meta.get("prompt_is_text", True):
            out.update({"prompt": _last(prompt, "user"), "completion": _last(messages, "assistant")})
        else:
            out.update({"prompt": prompt, "completion": messages[-1:]})
    elif fmt == "preference":
        as_text = meta.get("answers_are_text", True)
        prompt_text = meta.get("prompt_is_text", True)
        out["prompt"] = _last(messages, "user") if prompt_text and len(messages) == 1 else messages
        out["chosen"] = _last(row.get("chosen"), "assistant") if as_text else row.get("chosen")
        out["rejected"] = _last(row.get("rejected"), "assistant") if as_text else row.get("rejected")
    else:
        raise ValueError(f"cannot write format {fmt!r}")
    if row.get("task") is not None:
        out["task"] = row["task"]
    out.update(extras)
    if scores:
        out["scores"] = scores
    return out
