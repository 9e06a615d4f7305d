"""YAML → pydantic config (extra="forbid"), `--set` overrides, and the config hash.

A config names its input, an ordered list of stages (each `{name, id?, **params}`, parameters
validated by the stage's own `Params` model), the output, and the default engines:

    input:  {path: examples/data/alpaca_mix.jsonl, format: auto}
    llm:    {engine: transformers, model: embedded}
    stages:
      - name: heuristics
      - name: filter
        where: "length.response >= 20"
    output: {path: out/default, format: parquet}

Every error (wrong key, wrong type, unknown stage) names the file, the key path and, where the
YAML gives it, the line — before any work starts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datacraft.core import yaml_limits
from datacraft.core.graph import GRAPH_KEYS, READ_LABEL, StagePlan, plan_stages, stage_params
from datacraft.core.rows import SCORE_PREFIX
from datacraft.core.run_folder import CACHE_DIR
from datacraft.core.stage import BASE_COLUMNS, RunContext, Stage
from datacraft.llm.config import EngineConfig
from datacraft.stages.registry import UnknownStageError, stage_class


class ConfigError(ValueError):
    """A config that cannot run; the message names the file, key and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputConfig(_Strict):
    path: str | list[str]
    format: str = "auto"
    batch_size: int = Field(4096, ge=1)
    max_row_chars: int = Field(2_000_000, ge=1)
    allow_empty_response: bool = False
    limit: int | None = Field(None, ge=1, description="read at most this many records per file (a dry look)")
    split: str = "train"
    task_field: str = Field("task", description="record field that holds the task label (mixtures)")
    license: str | None = Field(None, description="the input's license, a Hub license id (apache-2.0, cc-by-4.0, …): the published card's license")

    def read_options(self) -> Any:
        from datacraft.io.readers import ReadOptions

        return ReadOptions(format=self.format, batch_size=self.batch_size, max_row_chars=self.max_row_chars,
                           allow_empty_response=self.allow_empty_response, limit=self.limit, split=self.split,
                           task_field=self.task_field)


class OutputConfig(_Strict):
    path: str | None = None
    format: Literal["parquet", "jsonl", "datasets"] = "parquet"
    row_format: str = Field("datacraft", description="datacraft | keep (the input's own format) | alpaca | sharegpt | …")
    split: str = "train"
    shard_rows: int = Field(200_000, ge=1)
    dropped_format: Literal["jsonl", "parquet"] = "jsonl"
    keep_embedding: bool = False
    overwrite: bool = False
    html_report: bool = Field(True, description="also render report.html (report.json is always written)")


class EmbedderConfig(_Strict):
    kind: Literal["sentence-transformers", "static"] = "sentence-transformers"
    model: str = "embedded"
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"


class RunnerConfig(_Strict):
    runner: str = "FnApiRunner"
    options: list[str] = Field(default_factory=list, description="extra Beam pipeline options")


class PipelineConfig(_Strict):
    name: str = "datacraft"
    input: InputConfig
    stages: list[dict[str, Any]] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    llm: EngineConfig = Field(default_factory=EngineConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    cache_dir: str | None = None
    seed: int = 0

    def context(self, output_dir: str | None = None) -> RunContext:
        """`output_dir`: the folder the run writes into (a fresh `--overwrite` run builds beside OUT)."""
        return RunContext(
            output_dir=output_dir or self.output.path,
            cache_dir=self.cache_dir or (str(Path(self.output.path) / CACHE_DIR) if self.output.path else None),
            llm=self.llm.model_dump(),
            embedder=self.embedder.model_dump(),
            seed=self.seed,
            config_hash=config_hash(self),
        )

    def stage_labels(self) -> list[str]:
        return [s.get("id") or s["name"] for s in self.stages]

    def build_stages(self, given: Mapping[str, Mapping[str, Any]] | None = None, output_dir: str | None = None) -> list[Stage]:
        """The stages in config order; `given` maps a label to extra constructor arguments
        (an injected client or resource: tests, a shared server)."""
        ctx = self.context(output_dir)
        out = []
        for spec in self.stages:
            label = spec.get("id") or spec["name"]
            out.append(stage_class(spec["name"])(stage_params(spec), label=label, context=ctx, **dict((given or {}).get(label, {}))))
        return out

    def plan(self) -> list[StagePlan]:
        """Where each stage reads from and which branch it is on (see `StagePlan`)."""
        return plan_stages(self.stages)

    def hash(self) -> str:
        return config_hash(self)


def config_hash(config: PipelineConfig) -> str:
    """Hash of what decides the result: where it is written, whether it overwrites, which runner
    runs it and the input's license (card metadata) are left out, so the same curation gives the same hash wherever it runs."""
    data = config.model_dump(mode="json", exclude={"input": {"license"}, "output": {"path", "overwrite"}, "runner": True})
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map key paths (as tuples) to 1-based YAML lines."""
    index: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
                index[(*path, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return index


def _where(source: str, lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> str:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return f"{source}:{lines[path[:n]]}"
    return source


def _fmt_path(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _validation_messages(err: ValidationError, source: str, lines: dict[tuple[Any, ...], int], prefix: tuple[Any, ...] = ()) -> list[str]:
    """One `file:line: key.path: what` line per pydantic error."""
    msgs = []
    for e in err.errors():
        path = (*prefix, *e["loc"])
        what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        msgs.append(f"{_where(source, lines, path)}: {_fmt_path(path)}: {what}")
    return msgs


def _raise_problems(problems: list[str]) -> None:
    """One ConfigError listing every problem found (a lone problem as one line)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"invalid config ({len(problems)} problems):\n  " + "\n  ".join(problems))


def _graph_key_problems(spec: Mapping[str, Any], i: int, earlier: set[str], source: str, lines: dict[tuple[Any, ...], int]) -> list[str]:
    """`from` names an earlier stage (or `read`), `branch` is a plain name, `slice` a positive count."""
    problems: list[str] = []

    def fail(key: str, what: str) -> None:
        problems.append(f"{_where(source, lines, ('stages', i, key))}: stages[{i}].{key}: {what}")

    label = spec.get("id") or spec["name"]
    if label == READ_LABEL:
        fail("id" if "id" in spec else "name", f"{READ_LABEL!r} is the reader's label; give the stage another 'id'")
    src = spec.get("from")
    if src is not None and (not isinstance(src, str) or (src != READ_LABEL and src not in earlier)):
        known = ", ".join([READ_LABEL, *sorted(earlier)])
        fail("from", f"{src!r} is not an earlier stage (earlier: {known})")
    branch = spec.get("branch")
    if branch is not None and (not isinstance(branch, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", branch)):
        fail("branch", f"{branch!r}: a branch is a name of letters, digits, '_' or '-'")
    cut = spec.get("slice")
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int) or cut < 1):
        fail("slice", f"{cut!r}: the number of rows that go through the stage (>= 1)")
    return problems


def stage_problems(stages: Any, source: str = "<config>", lines: dict[tuple[Any, ...], int] | None = None) -> list[str]:
    """Every problem of the `stages:` list: a missing or unknown name, a repeated label, a bad
    graph key, an unknown or mistyped parameter — all of them, each with file:line and key."""
    lines = lines or {}
    if not isinstance(stages, list):
        return []  # the top-level validation names it
    problems: list[str] = []
    seen: set[str] = set()
    for i, spec in enumerate(stages):
        if not isinstance(spec, dict):
            continue  # the top-level validation names it
        if "name" not in spec:
            problems.append(f"{_where(source, lines, ('stages', i))}: stages[{i}]: missing 'name'")
            continue
        label = spec.get("id") or spec["name"]
        if label in seen:
            problems.append(f"{_where(source, lines, ('stages', i))}: stages[{i}]: a second stage labelled {label!r}; give it an 'id'")
        problems += _graph_key_problems(spec, i, seen, source, lines)
        seen.add(label)
        try:
            cls = stage_class(spec["name"])
        except UnknownStageError as err:
            problems.append(f"{_where(source, lines, ('stages', i, 'name'))}: stages[{i}].name: {err}")
            continue
        try:
            cls.Params.model_validate(stage_params(spec))
        except ValidationError as err:
            problems += _validation_messages(err, source, lines, ("stages", i))
    return problems


def validate_stages(config: PipelineConfig, source: str = "<config>", lines: dict[tuple[Any, ...], int] | None = None) -> None:
    """Raise one ConfigError listing every problem of the config's stages."""
    _raise_problems(stage_problems(config.stages, source, lines))


def input_columns(config: PipelineConfig) -> set[str] | None:
    """Columns the input provides: the canonical row's, plus any scores it already carries (peeked
    from the first rows of each path). None when an input cannot be peeked."""
    from datacraft.io.readers import peek_columns

    paths = config.input.path if isinstance(config.input.path, list) else [config.input.path]
    found: set[str] = set(BASE_COLUMNS)
    for path in paths:
        cols = peek_columns(path, config.input.read_options())
        if cols is None:
            return None
        found |= cols
    return found


def _param_of(spec: Mapping[str, Any], column: str) -> str | None:
    """The stage parameter whose value names `column` (for the error's line)."""
    name = column[len(SCORE_PREFIX):] if column.startswith(SCORE_PREFIX) else column
    for key, value in spec.items():
        if key not in GRAPH_KEYS and name in json.dumps(value, default=str):
            return key
    return None


def check_columns(config: PipelineConfig, available: set[str] | None, source: str = "<config>",
                  lines: dict[tuple[Any, ...], int] | None = None) -> None:
    """Walk the stages in order: every column a stage reads must come from the input or an earlier
    stage's writes (every stage's first missing column is listed, in one error). `available=None`
    (input not peekable): scores are not checked."""
    lines = lines or {}
    have_at = {READ_LABEL: set(BASE_COLUMNS) if available is None else set(available)}
    problems: list[str] = []
    for i, (spec, stage, plan) in enumerate(zip(config.stages, config.build_stages(), config.plan(), strict=True)):
        have = have_at[plan.source]
        missing = sorted(c for c in stage.reads() - have if not (available is None and c.startswith(SCORE_PREFIX)))
        if missing:
            col = missing[0]
            key = _param_of(spec, col)
            path = ("stages", i, key) if key else ("stages", i)
            name = col[len(SCORE_PREFIX):] if col.startswith(SCORE_PREFIX) else col
            pool = [c[len(SCORE_PREFIX):] for c in have if c.startswith(SCORE_PREFIX)] if col.startswith(SCORE_PREFIX) else sorted(have)
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
            what = f"score {name!r}" if col.startswith(SCORE_PREFIX) else f"column {name!r}"
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sorted(pool)) or "none"
            problems.append(
                f"{_where(source, lines, path)}: {_fmt_path(path)}: stage {stage.label!r} reads {what}, which neither the input "
                f"nor an earlier stage writes{hint} (available: {known})"
            )
        have_at[plan.label] = have | stage.writes()
    _raise_problems(problems)


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars / flow collections: 3, 0.5, true, [a, b], {k: v}, text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides; the first key may be a stage id/name."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        value = raw if parts[-1] == "path" else parse_value(raw)  # paths stay strings, even with ':' in them
        stages = data.get("stages") if isinstance(data.get("stages"), list) else []  # validation names a bad one
        target: Any
        matches = [s for s in stages if isinstance(s, dict) and (s.get("id") or s.get("name")) == parts[0]]
        if matches and parts[0] not in PipelineConfig.model_fields:
            target = matches[0]
            parts = parts[1:]
            if not parts:
                raise ConfigError(f"--set {item!r}: name a parameter of stage {key!r}")
        else:
            target = data
        for p in parts[:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        target[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict[str, Any] | None = None,
                check_inputs: bool = True) -> PipelineConfig:
    """Load and validate a config file (or a dict), applying `--set` overrides; with `check_inputs`,
    also check every stage's declared columns against the input and the stages before it."""
    source = str(path) if path else "<config>"
    text = ""
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{source}: cannot read: {err.strerror}") from None
        try:
            data = yaml_limits.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    lines = _line_index(text) if text else {}
    problems: list[str] = []
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as err:
        problems = _validation_messages(err, source, lines)
    _raise_problems(problems + stage_problems(data.get("stages"), source, lines))
    if check_inputs:
        check_columns(config, input_columns(config), source, lines)
    return config


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=False), sort_keys=False, allow_unicode=True)
