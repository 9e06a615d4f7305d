"""`datacraft lift`: does a recipe's selection train a better student than random rows of the same pool?

    pool + held-out  = the records split BY INSTRUCTION (seeded): no held-out instruction is in the pool
    for each arm     : N rows of the pool (a built-in rule, or a datacraft config run through the real
                       pipeline over the pool, optionally ranked by one score column)
    for each seed    : SFT the same student with TRL on those N rows (the seed sets the training
                       order, LoRA init and the random arm's draw), then the held-out loss = mean
                       answer-token NLL of the reference answers to the held-out instructions
    report           : per arm mean ± sd over seeds, the paired (same seed) difference vs the baseline
                       (random) with its sd, and the fraction of the baseline → ceiling (oracle) gap
                       closed; `lift.json` + `lift.html` (`lift_section_html` renders the section)

Every arm-seed result is cached under `OUT/runs/` by a hash of what decides it (student settings,
held-out set, the exact training rows, seed), and every recipe run under `OUT/recipes/<arm>/`, so a
rerun with more seeds or arms only trains what is new. See configs/lift_alpacaeval.yaml.
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from datacraft.core.rows import SCORE_PREFIX, batch_from_rows, content_hash, meta_of, response_expr

BUILTIN_ARMS = {
    "random": "N pool rows drawn at random (the baseline)",
    "length": "the N longest answers (characters)",
    "oracle": "N answers of the reference generator (the ceiling)",
}
REPO = Path(__file__).resolve().parents[1]


class LiftError(ValueError):
    """A lift config or request that cannot run; raised before any training."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PoolSpec(_Strict):
    """Where the records come from and how they split into pool and held-out."""

    files: str | list[str] = Field(description="JSONL globs (alpaca fields + id); relative paths resolve against --data")
    reference: str = Field("gpt4_1106_preview", description="generator whose answers are the held-out set and the oracle")
    generator_field: str | None = Field(None, description="record field naming the generator (default: the id before ':')")
    heldout: int = Field(200, ge=1, description="instructions held out (each with its reference answer)")
    split_seed: int = 1234
    pool_instructions: int | None = Field(None, ge=1, description="use only this many pool instructions (tiny runs)")


class StudentSpec(_Strict):
    """The one student every arm trains (TRL SFTTrainer, prompt-completion, loss on the answer)."""

    model: str = Field("embedded", description="Hub name, local path, or `embedded` (SmolLM2-135M-Instruct)")
    max_length: int = Field(256, ge=8, description="training sequence length (prompt + answer tokens)")
    eval_max_length: int | None = Field(None, ge=8, description="held-out sequence length (default: max_length)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (tests)")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: str = "constant"
    train_layers: int | None = Field(
        None, ge=1, description="train only the top K decoder layers + final norm (CPU cost knob); null = all weights"
    )
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    bf16: bool | None = Field(None, description="bf16 autocast; default: on a GPU, or a CPU with avx512_bf16 / AMX")
    eval_batch_size: int = Field(8, ge=1)
    torch_threads: int | None = Field(None, ge=1, description="CPU threads (default: 1 when the machine is oversubscribed)")
    trl: dict[str, Any] = Field(default_factory=dict, description="more SFTConfig fields, passed through")

    @model_validator(mode="after")
    def _one_cost_knob(self) -> StudentSpec:
        if self.lora and self.train_layers:
            raise ValueError("set either lora or train_layers, not both")
        return self


class ArmSpec(_Strict):
    """One way of choosing N rows: a built-in rule, or a recipe (a config file or inline stages) whose
    kept rows are taken — ranked by `score` when given (`-name` ranks ascending)."""

    name: str
    builtin: Literal["random", "length", "oracle"] | None = None
    recipe: str | None = Field(None, description="a datacraft pipeline config; its input and output are replaced")
    stages: list[dict[str, Any]] | None = Field(None, description="inline stages instead of a recipe file")
    set: list[str] = Field(default_factory=list, description="--set overrides of the recipe; {budget} becomes N")
    score: str | None = Field(None, description="rank the recipe's kept rows by scores.<score> (higher first)")
    skip: list[str] = Field(default_factory=list, description="recipe stages (name or id) left out, e.g. its synthesis and training")
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value, "builtin": value}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ArmSpec:
        sources = [s for s in (self.builtin, self.recipe, self.stages) if s]
        if len(sources) != 1:
            raise ValueError(f"arm {self.name!r}: give exactly one of builtin, recipe, stages")
        return self

    @property
    def kind(self) -> str:
        return "builtin" if self.builtin else "recipe"


class LiftConfig(_Strict):
    """`configs/lift_*.yaml`."""

    name: str = "lift"
    pool: PoolSpec
    budget: int = Field(600, ge=1, description="N: rows every arm trains on")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    arms: list[ArmSpec]
    baseline: str = "random"
    ceiling: str = "oracle"
    goal_arm: str | None = Field("default", description="the arm the goal is checked on")
    goal_gap: float = Field(0.5, description="fraction of the baseline → ceiling gap the goal arm must close")
    eval_base: bool = Field(True, description="also evaluate the untrained student")
    student: StudentSpec = Field(default_factory=StudentSpec)
    output: str = "out/lift"
    cache_dir: str | None = Field(None, description="LLM / embedding cache of the recipes (default OUT/cache)")
    quick: dict[str, Any] = Field(default_factory=dict, description="overrides that --quick applies")

    @field_validator("arms")
    @classmethod
    def _unique(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        names = [a.name for a in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique: {dupes}")
        return arms

    def arm(self, name: str) -> ArmSpec | None:
        return next((a for a in self.arms if a.name == name), None)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(data: dict[str, Any], item: str) -> None:
    from datacraft.pipeline.config import parse_value

    key, sep, raw = item.partition("=")
    if not sep:
        raise LiftError(f"--set {item!r}: expected key=value (e.g. budget=300, student.max_length=128)")
    target = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = parse_value(raw)


def load_lift_config(path: str | Path | None, overrides: Sequence[str] = (), *, quick: bool = False,
                     data: Mapping[str, Any] | None = None) -> LiftConfig:
    """Read a lift YAML (or a dict); `quick` applies its `quick:` section before the `--set` overrides."""
    if data is None:
        if path is None:
            raise LiftError("no lift config given")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise LiftError(f"{path}: cannot read: {err.strerror}") from None
    if not isinstance(data, Mapping):
        raise LiftError(f"{path}: the top level must be a mapping")
    raw = json.loads(json.dumps(dict(data)))
    if quick:
        extra = dict(raw.get("quick") or {})
        keep = extra.pop("arms", None)  # a list of arm names: run only those
        raw = _deep_merge(raw, extra)
        if keep:
            raw["arms"] = [a for a in raw.get("arms", []) if (a if isinstance(a, str) else a.get("name")) in keep]
    for item in overrides:
        _set_dotted(raw, item)
    try:
        return LiftConfig.model_validate(raw)
    except ValidationError as err:
        raise LiftError(f"{path or 'lift config'}: {err}") from None


# ---------------------------------------------------------------------------------------------
# the split


def default_data_root() -> Path:
    """`../shared/data` next to the repo (or next to a parent of it: worktrees live one level down)."""
    env = os.environ.get("DATACRAFT_DATA")
    if env:
        return Path(env)
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


def resolve_files(patterns: str | Sequence[str], data_root: Path | None = None) -> list[str]:
    """Glob each pattern as given, else under the data root; sorted, deduplicated."""
    root = data_root or default_data_root()
    out: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        found = sorted(glob.glob(pattern)) or sorted(glob.glob(str(root / pattern)))
        if not found:
            raise LiftError(f"{pattern}: no file matches (looked in . and {root}; pass --data DIR)")
        out.extend(found)
    return list(dict.fromkeys(out))


def read_records(files: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]


def instruction_key(record: Mapping[str, Any]) -> str:
    """What 'the same instruction' means for the split: instruction + input, case and spacing folded."""
    text = f"{record.get('instruction', '')}\n{record.get('input', '') or ''}"
    return " ".join(text.lower().split())


def generator_of(record: Mapping[str, Any], field: str | None = None) -> str:
    if field:
        return str(record.get(field))
    return str(record.get("id", "")).split(":", 1)[0]


@dataclass
class Split:
    """Pool and held-out records; `heldout_keys` never occur among the pool's instructions."""

    pool: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    pool_keys: set[str]
    heldout_keys: set[str]

    def summary(self) -> dict[str, Any]:
        gens = Counter(r["generator"] for r in self.pool)
        return {"pool": {"rows": len(self.pool), "instructions": len(self.pool_keys), "generators": dict(sorted(gens.items()))},
                "heldout": {"rows": len(self.heldout), "instructions": len(self.heldout_keys)}}


def split_by_instruction(records: Sequence[Mapping[str, Any]], spec: PoolSpec) -> Split:
    """Seeded split of the instructions: `spec.heldout` of those the reference answered are held out
    (their reference answers are the held-out set); every answer to any other instruction is the pool."""
    rows = [{**r, "generator": generator_of(r, spec.generator_field)} for r in records if str(r.get("output", "")).strip()]
    reference = {}
    for r in rows:
        if r["generator"] == spec.reference:
            reference.setdefault(instruction_key(r), r)
    if len(reference) <= spec.heldout:
        raise LiftError(f"{len(reference)} instructions answered by {spec.reference!r}: cannot hold out {spec.heldout}")
    ref_keys = sorted(reference)
    order = np.random.default_rng(spec.split_seed).permutation(len(ref_keys))
    heldout_keys = {ref_keys[i] for i in order[: spec.heldout]}
    rest = [k for k in (ref_keys[i] for i in order[spec.heldout :])]
    rest += sorted({instruction_key(r) for r in rows} - set(ref_keys))
    pool_keys = set(rest[: spec.pool_instructions] if spec.pool_instructions else rest)
    pool = sorted((r for r in rows if instruction_key(r) in pool_keys), key=lambda r: str(r["id"]))
    heldout = [reference[k] for k in sorted(heldout_keys)]
    return Split(pool=pool, heldout=heldout, pool_keys=pool_keys, heldout_keys=heldout_keys)


def to_batch(records: Sequence[Mapping[str, Any]], source: str) -> pl.DataFrame:
    """Records → a batch (the generator goes to meta, the AlpacaEval subset to `task`)."""
    from datacraft.io.formats import to_row

    return batch_from_rows([to_row(dict(r), "alpaca", source=source) for r in records])


def write_jsonl(records: Iterable[Mapping[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# choosing rows


def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(content_hash(salt, length=8), 16)])


def frame_generators(frame: pl.DataFrame) -> list[str]:
    """The generator of each row: meta.generator, else the id before ':'."""
    metas = frame["meta"].to_list() if "meta" in frame.columns else [None] * frame.height
    return [str(meta_of(m).get("generator") or str(i).split(":", 1)[0]) for m, i in zip(metas, frame["id"].to_list(), strict=True)]


def choose_random(pool: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """n rows drawn without replacement, reproducible for one seed."""
    idx = _rng(seed, "random").permutation(pool.height)[:n]
    return pool[np.sort(idx).tolist()]


def rank_by(frame: pl.DataFrame, values: Sequence[float | None], n: int, seed: int, salt: str) -> pl.DataFrame:
    """The n rows with the highest values (nulls / NaN last); ties broken by a seeded draw."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=float)
    v = np.where(np.isnan(v), -np.inf, v)
    tie = _rng(seed, salt).random(frame.height)
    order = np.lexsort((tie, -v))[:n]
    return frame[order.tolist()]


def choose_length(pool: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """The n longest responses (characters)."""
    return rank_by(pool, pool.select(response_expr().str.len_chars()).to_series().to_list(), n, seed, "length")


def choose_oracle(pool: pl.DataFrame, n: int, seed: int, reference: str) -> pl.DataFrame:
    """n of the reference generator's answers (all of them when it has ≤ n)."""
    mask = [g == reference for g in frame_generators(pool)]
    ref = pool.filter(pl.Series(mask))
    if ref.height == 0:
        raise LiftError(f"the pool holds no {reference!r} answers: the oracle arm cannot run")
    return choose_random(ref, n, seed) if ref.height > n else ref


def take_candidates(candidates: pl.DataFrame, pool: pl.DataFrame, n: int, seed: int, score: str | None, salt: str) -> tuple[pl.DataFrame, int]:
    """N rows from a recipe's kept rows: ranked by `score` (or a seeded draw when more than N are kept);
    short of N, filled by a seeded draw from the pool rows it did not keep. Returns (rows, filled)."""
    if score:
        col, sign = (score[1:], -1.0) if score.startswith("-") else (score, 1.0)
        name = col if col.startswith(SCORE_PREFIX) else SCORE_PREFIX + col
        if name not in candidates.columns:
            raise LiftError(f"score {col!r}: the recipe wrote no column {name} (it has: {[c for c in candidates.columns if c.startswith(SCORE_PREFIX)]})")
        values = [None if x is None else sign * x for x in candidates[name].to_list()]
        chosen = rank_by(candidates, values, n, seed, salt)
    else:
        chosen = choose_random(candidates, n, seed) if candidates.height > n else candidates
    filled = n - chosen.height
    if filled > 0:
        rest = pool.filter(~pl.col("id").is_in(chosen["id"].implode()))
        extra = choose_random(rest, filled, seed)
        common = [c for c in chosen.columns if c in extra.columns]
        chosen = pl.concat([chosen.select(common), extra.select(common)], how="vertical_relaxed")
    return chosen, max(filled, 0)


def recipe_data(arm: ArmSpec, base_dir: Path) -> dict[str, Any]:
    """The pipeline config dict of a recipe arm (input / output not yet set)."""
    if arm.stages is not None:
        return skip_stages(arm, {"name": arm.name, "stages": [dict(s) for s in arm.stages]})
    assert arm.recipe is not None
    for candidate in (Path(arm.recipe), base_dir / arm.recipe, base_dir.parent / arm.recipe, REPO / arm.recipe):
        if candidate.is_file():
            loaded = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise LiftError(f"{candidate}: a recipe must be a YAML mapping")
            return skip_stages(arm, loaded)
    raise LiftError(f"arm {arm.name!r}: recipe {arm.recipe} not found")


def skip_stages(arm: ArmSpec, data: dict[str, Any]) -> dict[str, Any]:
    """The recipe without the stages `arm.skip` names (by name or id); a name that matches none is an error."""
    if not arm.skip:
        return data
    stages = [s for s in data.get("stages") or [] if isinstance(s, dict)]
    labels = [{s.get("name"), s.get("id")} - {None} for s in stages]
    unknown = [k for k in arm.skip if not any(k in ls for ls in labels)]
    if unknown:
        named = sorted({x for ls in labels for x in ls})
        raise LiftError(f"arm {arm.name!r}: skip names {unknown}, which the recipe does not have (it has: {named})")
    kept = [s for s, ls in zip(stages, labels, strict=True) if not ls & set(arm.skip)]
    return {**data, "stages": kept}


def missing_stages(data: Mapping[str, Any]) -> list[str]:
    """Stages a recipe names that this installation does not register."""
    from datacraft.stages.registry import stage_names

    known = set(stage_names())
    return [s.get("name", "?") for s in data.get("stages") or [] if s.get("name") not in known]


def run_recipe(arm: ArmSpec, data: dict[str, Any], pool_path: Path, out_dir: Path, budget: int, cache_dir: str,
               pool_hash: str, log: Callable[[str], None]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run a recipe through the real pipeline over the pool (reused when the same config already ran on
    the same pool); returns (kept rows, {stages, funnel, seconds})."""
    from datacraft.io.readers import read_all
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    spec = json.loads(json.dumps(data))
    spec["input"] = {k: v for k, v in (spec.get("input") or {}).items() if k not in ("path", "format", "limit", "split")}
    spec["input"].update(path=str(pool_path), format="alpaca")
    spec.setdefault("cache_dir", cache_dir)
    overrides = [s.replace("{budget}", str(budget)) for s in arm.set]
    overrides += [f"output.path={out_dir}", "output.overwrite=true", "output.html_report=false",
                  "output.format=parquet", "output.row_format=datacraft", "output.keep_embedding=false"]
    config = load_config(None, overrides, data=spec)
    stamp = {"config_hash": config.hash(), "pool": pool_hash}
    stamp_path = out_dir / "lift_recipe.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text())["stamp"] == stamp:
        saved = json.loads(stamp_path.read_text())
        log(f"  {arm.name}: recipe output reused ({out_dir})")
    else:
        log(f"  {arm.name}: running {' → '.join(config.stage_labels())} over {pool_path.name}")
        t0 = time.perf_counter()
        report = run_config(config)
        if not report["ledger_ok"]:
            raise LiftError(f"arm {arm.name!r}: the recipe's ledger does not balance: {report['ledger_problems']}")
        funnel = [{"stage": s["name"], "in": s["in"], "kept": s["kept"]} for s in report["stages"]]
        saved = {"stamp": stamp, "stages": config.stage_labels(), "funnel": funnel, "seconds": round(time.perf_counter() - t0, 1)}
        stamp_path.write_text(json.dumps(saved, indent=2), encoding="utf-8")
    kept, _ = read_all(str(out_dir / "data"))
    return kept, {k: saved[k] for k in ("stages", "funnel", "seconds")}


# ---------------------------------------------------------------------------------------------
# the student: train with TRL, evaluate the held-out answers


def use_bf16(spec: StudentSpec) -> bool:
    import torch

    if spec.bf16 is not None:
        return spec.bf16
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tokenize_heldout(heldout: pl.DataFrame, tokenizer: Any) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per held-out row, tokenized exactly as TRL tokenizes prompt-completion
    rows (chat template; the completion starts where prompt and prompt+completion diverge)."""
    from trl.data_utils import _tokenize, common_prefix_length

    from datacraft.stages.handoff.export import convert

    rows, _ = convert(heldout, "sft", "prompt_completion", keep=())
    out = []
    for row in rows.iter_rows(named=True):
        prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
        ids = _tokenize(tokenizer, row["prompt"] + row["completion"])["input_ids"]
        out.append((list(ids), common_prefix_length(prompt_ids, ids)))
    return out


def answer_nll(model: Any, examples: Sequence[tuple[list[int], int]], max_length: int, batch_size: int, bf16: bool,
               pad_id: int) -> tuple[float, int, list[float]]:
    """Mean NLL per answer token over all held-out answers (token-weighted), the token count, and each
    row's own mean (NaN where truncation left no answer token). Batched, length-sorted."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    sums = np.zeros(len(examples))
    counts = np.zeros(len(examples), dtype=np.int64)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [examples[i][0][:max_length] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        answer = torch.zeros((len(seqs), width), dtype=torch.bool)
        for j, (s, i) in enumerate(zip(seqs, idx, strict=True)):
            ids[j, : len(s)] = torch.tensor(s)
            att[j, : len(s)] = 1
            answer[j, examples[i][1] : len(s)] = True
        ids, att, answer = ids.to(device), att.to(device), answer.to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        mask = answer[:, 1:]
        sums[idx] = (nll * mask).sum(dim=1).double().cpu().numpy()
        counts[idx] = mask.sum(dim=1).cpu().numpy()
    total = int(counts.sum())
    if total == 0:
        raise LiftError(f"no held-out answer token fits in eval_max_length={max_length}")
    per_row = [float(s / c) if c else math.nan for s, c in zip(sums, counts, strict=True)]
    return float(sums.sum() / total), total, per_row


def freeze_below(model: Any, train_layers: int) -> int:
    """Freeze every weight but the top `train_layers` decoder layers and the final norm; returns the
    trainable parameter count. (Tied input/output embeddings stay frozen.)"""
    layers = model.model.layers
    for p in model.parameters():
        p.requires_grad = False
    for module in [*layers[max(0, len(layers) - train_layers) :], model.model.norm]:
        for p in module.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _quiet() -> None:
    """Progress bars and per-step log dicts of datasets / transformers would bury the lift's own lines."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class Student:
    """The student's model path, tokenizer and tokenized held-out set, loaded once per lift run."""

    def __init__(self, spec: StudentSpec, heldout: pl.DataFrame) -> None:
        import torch
        from transformers import AutoTokenizer

        from datacraft.llm.models import resolve_model

        _quiet()
        self.spec = spec
        self.gpu = torch.cuda.is_available()
        self.model_path = resolve_model(spec.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.bf16 = use_bf16(spec)
        self.heldout = tokenize_heldout(heldout, self.tokenizer)
        self.eval_max_length = spec.eval_max_length or spec.max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)

    def settings(self) -> dict[str, Any]:
        return {**self.spec.model_dump(exclude={"torch_threads"}), "model_path": self.model_path, "bf16": self.bf16}

    def load(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        return model.to("cuda") if self.gpu else model

    def evaluate(self, model: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        loss, tokens, per_row = answer_nll(model, self.heldout, self.eval_max_length, self.spec.eval_batch_size, self.bf16, self.pad_id)
        return {"loss": loss, "eval_tokens": tokens, "eval_s": round(time.perf_counter() - t0, 1), "per_row": per_row}

    def train(self, rows: pl.DataFrame, seed: int, workdir: Path) -> dict[str, Any]:
        """SFT on `rows` with TRL (datacraft's export → SFTTrainer), then the held-out loss."""
        from transformers import PrinterCallback
        from trl import SFTTrainer

        from datacraft.stages.handoff.trainer import (
            _loss_callback,
            load_split,
            load_train_config,
            peft_config,
            prepare_data,
            trl_args,
        )

        s = self.spec
        trl = {
            "per_device_train_batch_size": s.batch_size, "gradient_accumulation_steps": s.grad_accum,
            "learning_rate": s.learning_rate, "lr_scheduler_type": s.lr_scheduler, "num_train_epochs": s.epochs,
            "max_length": s.max_length, "bf16": self.bf16, "logging_steps": 1, "disable_tqdm": True,
            "eval_strategy": "no", "model_init_kwargs": None, **({"max_steps": s.max_steps} if s.max_steps else {}), **s.trl,
        }
        overrides = {"output_dir": str(workdir), "sft_style": "prompt_completion", "seed": seed, "trl": trl,
                     "lora": {"enabled": s.lora, "r": s.lora_r, "alpha": 2 * s.lora_r}}
        cfg = load_train_config(None, "sft", overrides)
        export = prepare_data(cfg, rows)
        model = self.load()
        trainable = freeze_below(model, s.train_layers) if s.train_layers else None
        losses: list[float] = []
        trainer = SFTTrainer(model=model, args=trl_args(cfg), train_dataset=load_split(export, "sft", "train"),
                             processing_class=self.tokenizer, peft_config=peft_config(cfg), callbacks=[_loss_callback(losses)])
        trainer.remove_callback(PrinterCallback)
        train_tokens = int(sum(min(len(x), s.max_length) for x in trainer.train_dataset["input_ids"]))
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        result = self.evaluate(trainer.model)
        return {**result, "train_s": round(train_s, 1), "steps": int(trainer.state.global_step), "train_tokens": train_tokens,
                "train_tokens_per_s": round(train_tokens / train_s, 1) if train_s else None,
                "train_loss_first_last": [losses[0], losses[-1]] if losses else None, "trainable_params": trainable}


# ---------------------------------------------------------------------------------------------
# statistics


def _sd(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(losses: Mapping[str, Mapping[int, float]], baseline: str, ceiling: str, goal_arm: str | None = None,
              goal_gap: float = 0.5) -> dict[str, Any]:
    """Per arm: mean ± sd over seeds; the paired difference `baseline − arm` (positive: the arm has the
    lower held-out loss) over the seeds both ran, with its sd, se, t = mean / se and whether the mean
    lies beyond 2 sd; the fraction of the baseline → ceiling gap closed (from the means, and per seed)."""
    out: dict[str, Any] = {}
    base, ceil = losses.get(baseline, {}), losses.get(ceiling, {})
    base_mean = statistics.fmean(base.values()) if base else None
    ceil_mean = statistics.fmean(ceil.values()) if ceil else None
    for arm, per_seed in losses.items():
        vals = [per_seed[s] for s in sorted(per_seed)]
        entry: dict[str, Any] = {"losses": {str(s): per_seed[s] for s in sorted(per_seed)}, "seeds": len(vals),
                                 "mean": statistics.fmean(vals) if vals else None, "sd": _sd(vals)}
        paired = sorted(set(per_seed) & set(base))
        if arm != baseline and paired:
            d = [base[s] - per_seed[s] for s in paired]
            mean, sd = statistics.fmean(d), _sd(d)
            se = sd / math.sqrt(len(d)) if sd is not None else None
            entry["diff_vs_baseline"] = {
                "per_seed": {str(s): v for s, v in zip(paired, d, strict=True)}, "mean": mean, "sd": sd, "se": se,
                "t": mean / se if se else None, "beyond_2sd": bool(sd is not None and abs(mean) > 2 * sd),
                "wins": sum(v > 0 for v in d),
            }
        if base_mean is not None and ceil_mean is not None and base_mean != ceil_mean and entry["mean"] is not None:
            entry["gap_closed"] = (base_mean - entry["mean"]) / (base_mean - ceil_mean) + 0.0  # no -0.0
            both = sorted(set(per_seed) & set(base) & set(ceil))
            entry["gap_closed_per_seed"] = {
                str(s): (base[s] - per_seed[s]) / (base[s] - ceil[s]) for s in both if base[s] != ceil[s]
            }
        out[arm] = entry
    result: dict[str, Any] = {"arms": out}
    if goal_arm:
        g = out.get(goal_arm)
        diff = (g or {}).get("diff_vs_baseline") or {}
        closed = (g or {}).get("gap_closed")
        seeds = len(diff.get("per_seed") or {})
        checks = {"gap_closed": closed is not None and closed >= goal_gap, "beyond_2sd": bool(diff.get("beyond_2sd")) and diff["mean"] > 0,
                  "seeds>=3": seeds >= 3}
        result["goal"] = {"arm": goal_arm, "gap_target": goal_gap, "gap_closed": closed, "paired_mean": diff.get("mean"),
                          "paired_sd": diff.get("sd"), "seeds": seeds, "checks": checks, "met": g is not None and all(checks.values())}
    return result


# ---------------------------------------------------------------------------------------------
# the run


def _arm_rows(arm: ArmSpec, cfg: LiftConfig, pool: pl.DataFrame, seed: int, recipe_rows: pl.DataFrame | None) -> tuple[pl.DataFrame, int]:
    n = cfg.budget
    if arm.builtin == "random":
        return choose_random(pool, n, seed), 0
    if arm.builtin == "length":
        return choose_length(pool, n, seed), 0
    if arm.builtin == "oracle":
        return choose_oracle(pool, n, seed, cfg.pool.reference), 0
    assert recipe_rows is not None
    return take_candidates(recipe_rows, pool, n, seed, arm.score, salt=arm.name)


def _composition(rows: pl.DataFrame) -> dict[str, Any]:
    gens = Counter(frame_generators(rows))
    chars = rows.select(response_expr().str.len_chars().mean()).item()
    return {"mix": {g: round(c / rows.height, 4) for g, c in gens.most_common()}, "mean_response_chars": round(float(chars or 0), 1)}


def run_lift(cfg: LiftConfig, out_dir: str | Path | None = None, *, data_root: Path | None = None, quick: bool = False,
             config_path: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, choose, train, evaluate and summarize; writes OUT/lift.json and OUT/lift.html."""
    t_start = time.perf_counter()
    set_threads(cfg.student.torch_threads)  # before the recipes: their in-process judge / embedder share the setting
    out = Path(out_dir or cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    for name in {cfg.baseline, cfg.ceiling} - {a.name for a in cfg.arms}:
        raise LiftError(f"the baseline / ceiling arm {name!r} is not among the arms")
    base_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    files = resolve_files(cfg.pool.files, data_root)
    split = split_by_instruction(read_records(files), cfg.pool)
    assert not split.pool_keys & split.heldout_keys, "a held-out instruction is in the pool"
    pool_path, heldout_path = out / "data" / "pool.jsonl", out / "data" / "heldout.jsonl"
    write_jsonl(split.pool, pool_path)
    write_jsonl(split.heldout, heldout_path)
    pool = to_batch(split.pool, "lift_pool")
    heldout = to_batch(split.heldout, cfg.pool.reference)
    pool_hash = content_hash(sorted(pool["id"].to_list()), pool_path.stat().st_size)
    summary = split.summary()
    log(f"pool {summary['pool']['rows']} rows / {summary['pool']['instructions']} instructions "
        f"({', '.join(f'{g} {c}' for g, c in summary['pool']['generators'].items())}); "
        f"held-out {len(split.heldout)} {cfg.pool.reference} answers; N={cfg.budget}, seeds {cfg.seeds}")
    if cfg.budget > pool.height:
        raise LiftError(f"budget {cfg.budget} exceeds the pool ({pool.height} rows)")

    arms: list[ArmSpec] = []
    skipped: dict[str, str] = {}
    recipes: dict[str, pl.DataFrame] = {}
    recipe_info: dict[str, dict[str, Any]] = {}
    cache_dir = cfg.cache_dir or str(out / "cache")
    for arm in cfg.arms:
        if arm.kind == "builtin":
            arms.append(arm)
            continue
        data = recipe_data(arm, base_dir)
        missing = missing_stages(data)
        if missing:
            skipped[arm.name] = f"stage(s) {', '.join(missing)} not registered in this installation"
            log(f"  {arm.name}: skipped — {skipped[arm.name]}")
            continue
        recipes[arm.name], recipe_info[arm.name] = run_recipe(
            arm, data, pool_path, out / "recipes" / arm.name, cfg.budget, cache_dir, pool_hash, log)
        log(f"  {arm.name}: recipe kept {recipes[arm.name].height} of {pool.height} rows ({recipe_info[arm.name]['seconds']} s)")
        arms.append(arm)

    student = Student(cfg.student, heldout)
    settings = student.settings()
    heldout_hash = content_hash(heldout["id"].to_list(), [len(ids) for ids, _ in student.heldout])
    runs = out / "runs"
    runs.mkdir(exist_ok=True)

    def cached(key: str, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = runs / f"{name}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return {**saved, "cached": True}
        result = {**compute(), "key": key}
        path.write_text(json.dumps(result), encoding="utf-8")
        return {**result, "cached": False}

    base_result = None
    if cfg.eval_base:
        key = content_hash(settings, heldout_hash, "base")
        base_result = cached(key, "base", lambda: student.evaluate(student.load()))
        log(f"  base student (untrained): held-out loss {base_result['loss']:.4f} ({base_result['eval_tokens']} answer tokens)")

    losses: dict[str, dict[int, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for seed in cfg.seeds:
        for arm in arms:
            rows, filled = _arm_rows(arm, cfg, pool, seed, recipes.get(arm.name))
            ids = sorted(rows["id"].to_list())
            key = content_hash(settings, heldout_hash, ids, seed)
            t0 = time.perf_counter()
            res = cached(key, f"{arm.name}__s{seed}",
                         lambda r=rows, s=seed, a=arm, i=ids: {**student.train(r, s, out / "ckpt" / f"{a.name}-{s}"), "ids": i})
            losses.setdefault(arm.name, {})[seed] = res["loss"]
            d = details.setdefault(arm.name, {"kind": arm.kind, "description": arm.description or BUILTIN_ARMS.get(arm.builtin or "", ""),
                                              "score": arm.score,
                                              "recipe": arm.recipe or ("inline" if arm.stages else None), "per_seed": {}})
            d["per_seed"][str(seed)] = {
                "rows": rows.height, "filled": filled, **_composition(rows),
                **{k: res.get(k) for k in ("train_s", "eval_s", "steps", "train_tokens", "train_tokens_per_s", "eval_tokens", "cached")},
            }
            log(f"  seed {seed} {arm.name:<14} loss {res['loss']:.4f}  ({rows.height} rows{f', {filled} filled' if filled else ''}; "
                f"{'cached' if res['cached'] else f'{time.perf_counter() - t0:.0f} s'})")
    stats = summarize(losses, cfg.baseline, cfg.ceiling, cfg.goal_arm if cfg.arm(cfg.goal_arm or "") else None, cfg.goal_gap)
    for name, entry in stats["arms"].items():
        entry.update(details[name])
        first = next(iter(entry["per_seed"].values()))
        entry.update(rows=first["rows"], mix=first["mix"], mean_response_chars=first["mean_response_chars"])
        if name in recipe_info:
            entry["recipe_run"] = recipe_info[name]
    every = [p for e in details.values() for p in e["per_seed"].values()]
    result = {
        "benchmark": "lift", "name": cfg.name, "config": config_path, "output": str(out), "quick": quick, "budget": cfg.budget, "seeds": cfg.seeds,
        "baseline": cfg.baseline, "ceiling": cfg.ceiling, "reference": cfg.pool.reference, "files": files, **summary,
        "student": {k: v for k, v in settings.items() if k != "trl"} | {"trl": cfg.student.trl},
        "base_loss": base_result["loss"] if base_result else None, "eval_tokens": base_result["eval_tokens"] if base_result else None,
        **stats, "skipped": skipped,
        "timing": {
            "seconds": round(time.perf_counter() - t_start, 1),
            "arm_seed_runs": len(every), "trained_now": sum(not p["cached"] for p in every),
            # as measured when each run trained (cached runs keep their times)
            "mean_train_s": round(statistics.fmean(p["train_s"] for p in every), 1) if every else None,
            "mean_eval_s": round(statistics.fmean(p["eval_s"] for p in every), 1) if every else None,
            "torch_threads": _threads(),
        },
    }
    (out / "lift.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    from datacraft.report.lift import lift_page_html

    (out / "lift.html").write_text(lift_page_html(result), encoding="utf-8")
    return result


def set_threads(threads: int | None) -> None:
    """CPU: the given torch thread count, else 1 when the machine is oversubscribed (spin-waiting threads
    then cost several times their work), else every core."""
    import torch

    from datacraft.stages.handoff.trainer import cpu_threads_for_load

    if not torch.cuda.is_available():
        torch.set_num_threads(threads or cpu_threads_for_load())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# the command


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of the arms (baseline and ceiling first)."""
    arms = result["arms"]
    order = [result["baseline"], "length", *[a for a in arms if a not in (result["baseline"], "length", result["ceiling"])], result["ceiling"]]
    f = lambda x, d=4: "—" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = [f"{'arm':<16}{'loss mean':>10}{'± sd':>8}{'Δ vs ' + result['baseline']:>13}{'± sd':>8}{'gap closed':>12}  "
             f"{'ref share':>9}{'resp chars':>11}"]
    for name in dict.fromkeys(a for a in order if a in arms):
        e = arms[name]
        d = e.get("diff_vs_baseline") or {}
        lines.append(f"{name:<16}{f(e['mean']):>10}{f(e['sd']):>8}{f(d.get('mean')):>13}{f(d.get('sd')):>8}"
                     f"{f(e.get('gap_closed'), 2):>12}  {f(e['mix'].get(result['reference'], 0.0), 2):>9}{e['mean_response_chars']:>11.0f}")
    if result.get("base_loss") is not None:
        lines.append(f"{'(untrained)':<16}{result['base_loss']:>10.4f}")
    return "\n".join(lines)


def lift_cmd(
    config: str,
    output: str | None = None,
    quick: bool = False,
    seeds: str | None = None,
    budget: int | None = None,
    arms: str | None = None,
    data: str | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """The body of `datacraft lift` (also used by benchmarks/bench_lift.py)."""
    overrides = list(sets or [])
    if budget is not None:
        overrides.append(f"budget={budget}")
    if seeds:
        values = [int(s) for s in seeds.split(",")] if "," in seeds else list(range(int(seeds)))
        overrides.append(f"seeds={json.dumps(values)}")
    cfg = load_lift_config(config, overrides, quick=quick)
    if arms:
        wanted = [a.strip() for a in arms.split(",")]
        unknown = [a for a in wanted if not cfg.arm(a)]
        if unknown:
            raise LiftError(f"--arms: unknown {unknown}; the config has {[a.name for a in cfg.arms]}")
        keep = set(wanted) | {cfg.baseline, cfg.ceiling}
        cfg = cfg.model_copy(update={"arms": [a for a in cfg.arms if a.name in keep]})
    return run_lift(cfg, output, data_root=Path(data) if data else None, quick=quick, config_path=config)
