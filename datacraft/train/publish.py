"""Publish a finished run folder as a Hugging Face dataset: Hub-layout shards + a curation card.

    datacraft publish OUT --repo user/name [--dry-run]

1. checks first, before any work: the repo name is `user/name`, a token is in the environment
   (`HF_TOKEN`, unless `--dry-run`), and OUT holds `report.json`;
2. builds the folder: TRL-format Parquet shards `<config>/<split>-SSSSS-of-NNNNN.parquet`
   (`export_frame`), `README.md` (YAML metadata: license, task_categories, size_categories,
   configs/data_files; body: curation funnel, score histograms, lineage statistics, the resolved
   config and its hash), `images/*.png`, and the run's `config.yaml` / `report.json`;
3. validates the card offline (official enums, `configs` data_files resolve to files);
4. uploads the folder with `HfApi.create_repo` + `HfApi.upload_folder` (not `DatasetCard.push_to_hub`,
   which always validates against huggingface.co).

The token is passed to `HfApi` only; it is never printed, logged or written, and is scrubbed from
error messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from datacraft.core.rows import SCORE_PREFIX, score_columns
from datacraft.report.agreement import summary_for
from datacraft.stages.handoff.export import DecontaminateParams, ExportResult, export_frame

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
#: huggingface_hub's DatasetCardData / datasets' size_categories.json values
SIZE_CATEGORIES = (
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
    "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T",
)
#: the Hub's task categories for text datasets (huggingface.js pipeline types)
TASK_CATEGORIES = frozenset({
    "text-generation", "text-classification", "token-classification", "question-answering",
    "table-question-answering", "zero-shot-classification", "translation", "summarization",
    "feature-extraction", "fill-mask", "sentence-similarity", "text-ranking", "text-retrieval",
    "reinforcement-learning", "other",
})
#: license identifiers the Hub accepts (hub-docs "Licenses")
LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql",
    "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "gemma", "unknown", "other",
})
_REPO_RE = re.compile(r"^[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?$")


class PublishError(ValueError):
    """A publish request that cannot run; raised before any work where the input allows."""


# ---------------------------------------------------------------------------------------------
# checks that run before any work


def check_repo_id(repo_id: str) -> str:
    """`user/name` (letters, digits, `-`, `_`, `.`; no `--`/`..`, at most 96 chars per part)."""
    if not isinstance(repo_id, str) or not _REPO_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise PublishError(f"repo {repo_id!r} is not of the form user/name (e.g. --repo alice/my-sft-data)")
    if any(len(part) > 96 for part in repo_id.split("/")):
        raise PublishError(f"repo {repo_id!r}: user and name must be at most 96 characters each")
    return repo_id


def token_from_env() -> str:
    """The Hub token from HF_TOKEN (or HUGGING_FACE_HUB_TOKEN); a clear error when neither is set."""
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise PublishError(
        "no Hugging Face token: set HF_TOKEN in the environment (a write token from "
        "https://huggingface.co/settings/tokens), or use --dry-run to only build the folder"
    )


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """(report.json, config.yaml text) of a finished run folder."""
    run = Path(run_dir)
    report_path = run / "report.json"
    if not run.is_dir():
        raise PublishError(f"{run}: no such run folder")
    if not report_path.exists():
        raise PublishError(f"{run}: no report.json — not a finished run folder (run `datacraft run CONFIG -o {run}` first)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PublishError(f"{report_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(report, dict) or not isinstance(report.get("stages", []), list):
        raise PublishError(f"{report_path}: expected an object with a `stages` list")
    config_path = run / "config.yaml"
    return report, config_path.read_text(encoding="utf-8") if config_path.exists() else ""


def read_run_rows(run_dir: str | Path) -> pl.DataFrame:
    """Kept rows of a run folder (`data/`), in batch layout."""
    from datacraft.io.readers import read_all

    data = Path(run_dir) / "data"
    if not data.is_dir():
        raise PublishError(f"{run_dir}: no data/ folder")
    kept, _ = read_all(str(data))
    return kept


# ---------------------------------------------------------------------------------------------
# card contents


def size_category(n: int) -> str:
    """The official size_categories value for n rows."""
    bounds = [(1_000, 0), (10_000, 1), (100_000, 2), (1_000_000, 3), (10_000_000, 4), (100_000_000, 5),
              (10**9, 6), (10**10, 7), (10**11, 8), (10**12, 9)]
    for bound, idx in bounds:
        if n < bound:
            return SIZE_CATEGORIES[idx]
    return SIZE_CATEGORIES[-1]


def funnel_rows(report: dict[str, Any], export: ExportResult | None = None) -> list[dict[str, Any]]:
    """Per stage: in, created, kept, dropped (total and by reason); the export step appended."""
    rows = []
    for st in report.get("stages", []):
        dropped = st.get("dropped") or {}
        rows.append({
            "stage": st.get("name", "?"), "in": int(st.get("in", 0)), "created": int(st.get("created", 0)),
            "kept": int(st.get("kept", 0)), "dropped": int(sum(dropped.values())), "reasons": dict(dropped),
        })
    if export is not None:
        n_out = sum(sum(v.values()) for v in export.rows.values())
        reasons = export.drop_counts()
        rows.append({"stage": "export (publish)", "in": n_out + sum(reasons.values()), "created": 0, "kept": n_out,
                     "dropped": sum(reasons.values()), "reasons": reasons})
    return rows


def funnel_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| stage | in | created | kept | dropped | dropped by reason |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"| {r['stage']} | {r['in']} | {r['created']} | {r['kept']} | {r['dropped']} | {reasons} |")
    return "\n".join(lines)


def lineage_stats(rows: pl.DataFrame) -> dict[str, Any]:
    """Rows per lineage method, derived rows, distinct parents, sources and tasks (top 10)."""
    if rows.height == 0:
        return {"rows": 0}
    method = rows["lineage"].struct.field("method").fill_null("unknown")
    n_parents = rows["lineage"].struct.field("parent_ids").list.len().fill_null(0)
    parents = rows["lineage"].struct.field("parent_ids").explode().drop_nulls()

    def top(col: str) -> dict[str, int]:
        counts = rows[col].fill_null("(none)").value_counts(sort=True).head(10)
        return dict(zip(counts[col].to_list(), counts["count"].to_list(), strict=True))

    return {
        "rows": rows.height,
        "by_method": dict(Counter(method.to_list()).most_common()),
        "derived_rows": int((n_parents > 0).sum()),
        "distinct_parents": int(parents.n_unique()) if parents.len() else 0,
        "mean_parents_per_derived_row": round(float(n_parents.filter(n_parents > 0).mean() or 0.0), 3),
        "preference_rows": int((rows["chosen"].is_not_null() & rows["rejected"].is_not_null()).sum()),
        "top_sources": top("source"),
        "top_tasks": top("task"),
    }


def write_histograms(rows: pl.DataFrame, folder: Path, bins: int = 30) -> dict[str, str]:
    """One PNG per score column under `images/`; returns {score: relative path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    for col in score_columns(rows):
        values = rows[col].drop_nulls().drop_nans().to_numpy()
        if values.size == 0:
            continue
        name = col[len(SCORE_PREFIX) :]
        rel = f"images/score_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        ax.hist(values, bins=bins, color="#4c72b0")
        ax.set_title(f"{name} (n={values.size}, median={float(sorted(values)[values.size // 2]):.3g})")
        ax.set_xlabel(name)
        ax.set_ylabel("rows")
        fig.tight_layout()
        fig.savefig(folder / rel)
        plt.close(fig)
        out[name] = rel
    return out


def configs_metadata(export: ExportResult) -> list[dict[str, Any]]:
    """The card's `configs:` block: one entry per config, a data_files pattern per split."""
    out = []
    for i, (config, splits) in enumerate(export.files.items()):
        entry: dict[str, Any] = {"config_name": config}
        if i == 0:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"{config}/{s}-*"} for s in splits]
        out.append(entry)
    return out


#: what each column of the published shards holds (the card's "Columns" section)
COLUMN_DOCS = {
    "id": "stable row id (the source id, a content hash, or for synthesized rows a hash of parents + method)",
    "messages": "the conversation, `[{role, content}]` (TRL's conversational SFT format)",
    "prompt": "the prompt turns, `[{role, content}]`",
    "completion": "the answer turn, `[{role, content}]`",
    "chosen": "the preferred answer, `[{role, content}]`",
    "rejected": "the dispreferred answer, `[{role, content}]`",
    "task": "mixture / task label (null when the input had none)",
    "source": "where the row came from (input file or synthesis stage)",
    "scores": "the scores datacraft computed, name → float (see Score distributions)",
}


def derive_license(config_text: str, rows: pl.DataFrame) -> tuple[str | None, str]:
    """The input's license and where it was found: `input.license` of the run's config, else a
    `license` field all the rows that carry one agree on; (None, why) when unknown."""
    try:
        config = yaml.safe_load(config_text) if config_text else None
    except yaml.YAMLError:
        config = None
    given = ((config or {}).get("input") or {}).get("license") if isinstance(config, dict) else None
    if isinstance(given, str) and given:
        return given, "input.license in the run's config"
    found: set[str] = set()
    if "meta" in rows.columns:
        for meta in rows["meta"].drop_nulls().to_list():
            record = json.loads(meta) if isinstance(meta, str) else meta
            value = record.get("license", record.get("record.license")) if isinstance(record, dict) else None
            if isinstance(value, str) and value:
                found.add(value.lower())
    if len(found) == 1:
        return found.pop(), "the `license` field of the input rows"
    if found:
        return None, f"the input rows carry {len(found)} different licenses ({', '.join(sorted(found)[:5])})"
    return None, "the run's config has no input.license and the input rows carry no license field"


@dataclass
class CardOptions:
    """Card metadata chosen by the user (license etc.) — the rest is computed from the run.
    `license=None`: derived from the input (`derive_license`), else `unknown` with how to set it."""

    license: str | None = None
    language: list[str] = field(default_factory=lambda: ["en"])
    task_categories: list[str] = field(default_factory=lambda: ["text-generation"])
    pretty_name: str | None = None
    tags: list[str] = field(default_factory=list)


def render_card(
    repo_id: str, report: dict[str, Any], config_text: str, export: ExportResult, rows: pl.DataFrame,
    images: dict[str, str], options: CardOptions,
) -> DatasetCard:
    """README.md: YAML metadata + body (funnel, histograms, lineage, config + hash)."""
    n_rows = sum(sum(v.values()) for v in export.rows.values())
    kinds = sorted({"dpo" if "chosen" in cols else "sft" for cols in export.columns.values()})
    if options.license:
        license_id, license_md = options.license, f"License: `{options.license}` (given with `--license`)."
    else:
        license_id, why = derive_license(config_text, rows)
        license_md = (f"License: `{license_id}` (from {why}; the input's own license terms apply to its rows)." if license_id else
                      f"License: **unknown** — {why}. Set it with `input: {{license: <Hub license id>}}` in the config "
                      "or `datacraft publish … --license <id>` (e.g. apache-2.0, cc-by-4.0).")
        license_id = license_id or "unknown"
    data = DatasetCardData(
        license=license_id,
        language=options.language or None,
        task_categories=options.task_categories,
        size_categories=[size_category(n_rows)],
        pretty_name=options.pretty_name or repo_id.split("/")[1],
        tags=sorted({"datacraft", "curated", *kinds, *options.tags}),
        configs=configs_metadata(export),
    )
    config_hash = report.get("config_hash") or "(not recorded)"
    name = options.pretty_name or repo_id.split("/")[1]
    lineage = lineage_stats(rows)
    load_lines = "\n".join(
        f'ds = load_dataset("{repo_id}", "{config}")  # splits: {", ".join(splits)}' for config, splits in export.files.items()
    )
    split_table = "\n".join(
        f"| {config} | {split} | {n} | {', '.join(export.columns[config])} |"
        for config, splits in export.rows.items()
        for split, n in splits.items()
    )
    all_columns = list(dict.fromkeys(c for cols in export.columns.values() for c in cols))
    columns_md = "\n".join(f"- `{c}`: {COLUMN_DOCS.get(c, 'carried over from the run')}" for c in all_columns)
    hist_md = "\n\n".join(f"![{score}]({path})\n\n*{score}*: {summary_for(score)}" for score, path in images.items()) or "_No scores were computed in this run._"
    decon = export.decontamination
    decon_md = (
        f"Rows overlapping the eval set by ≥ {decon.get('threshold')} of their {decon.get('n')}-grams were removed: "
        f"**{decon.get('removed', 0)}** rows." if decon else "No decontamination against an eval set was requested at publish time."
    )
    body = f"""
# {name}

Instruction-tuning data curated with [datacraft](https://pypi.org/project/datacraft-curate/), in TRL's formats
(SFT: conversational `messages`; DPO: `prompt` / `chosen` / `rejected` message lists).

```python
from datasets import load_dataset
{load_lines}
```

| config | split | rows | columns |
|---|---|---:|---|
{split_table}

{license_md}

## Columns

{columns_md}

## Curation funnel

Run `{report.get("name", "datacraft")}` read `{report.get("input", "?")}`; started {report.get("started", "?")},
took {float(report.get("seconds", 0) or 0):.1f} s. Every input row is either kept or dropped with a reason
(`in + created = kept + dropped` per stage).

{funnel_markdown(funnel_rows(report, export))}

## Decontamination

{decon_md}

## Score distributions

{hist_md}

## Lineage

```json
{json.dumps(lineage, indent=2, ensure_ascii=False)}
```

## Configuration

Config hash: `{config_hash}` (also in `datacraft_report.json`; the resolved config is `datacraft_config.yaml`).

```yaml
{config_text.strip() or "# (config.yaml not found in the run folder)"}
```
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def validate_card(folder: str | Path) -> list[str]:
    """Offline checks of `folder/README.md`: it parses, uses official enum values, and every
    `configs` data_files pattern resolves to files. Returns the problems (empty when valid)."""
    from datasets.utils.metadata import MetadataConfigs

    folder = Path(folder)
    problems: list[str] = []
    try:
        card = DatasetCard.load(folder / "README.md")
    except Exception as err:  # noqa: BLE001 - any parse error is a problem to report
        return [f"README.md does not parse: {err}"]
    data = card.data.to_dict()
    for key in ("license", "task_categories", "size_categories", "configs"):
        if not data.get(key):
            problems.append(f"missing metadata field {key!r}")
    licenses = data.get("license") or []
    for lic in [licenses] if isinstance(licenses, str) else licenses:
        if lic not in LICENSES:
            problems.append(f"license {lic!r} is not a Hub license id")
    for value in data.get("size_categories") or []:
        if value not in SIZE_CATEGORIES:
            problems.append(f"size_categories {value!r} is not an official value {SIZE_CATEGORIES}")
    for value in data.get("task_categories") or []:
        if value not in TASK_CATEGORIES:
            problems.append(f"task_categories {value!r} is not a Hub task category")
    try:
        configs = MetadataConfigs.from_dataset_card_data(card.data)
    except ValueError as err:
        return [*problems, f"configs: {err}"]
    for name, cfg in configs.items():
        for item in cfg.get("data_files") or []:
            patterns = item["path"] if isinstance(item, dict) else item
            for pattern in [patterns] if isinstance(patterns, str) else patterns:
                if not list(folder.glob(pattern)):
                    problems.append(f"config {name!r}: data_files {pattern!r} matches no file")
    return problems


# ---------------------------------------------------------------------------------------------
# build and upload


@dataclass
class PublishPlan:
    """The built folder and what is in it."""

    folder: Path
    repo_id: str
    files: list[str]
    export: ExportResult
    card: DatasetCard

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "repo": self.repo_id, "files": self.files, "export": self.export.summary()}


def default_folder(run_dir: str | Path) -> Path:
    """`<OUT>-hub` next to the run folder (not inside it, so readers of OUT never see the copies)."""
    run = Path(run_dir).resolve()
    return run.with_name(run.name + "-hub")


def build_publish_folder(
    run_dir: str | Path,
    repo_id: str,
    folder: str | Path | None = None,
    *,
    options: CardOptions | None = None,
    test_size: float | int | None = None,
    seed: int = 0,
    decontaminate: DecontaminateParams | dict[str, Any] | None = None,
    shard_rows: int = 100_000,
) -> PublishPlan:
    """Build exactly the folder that would be uploaded (shards, README.md, images, config, report)."""
    check_repo_id(repo_id)
    options = options or CardOptions()
    report, config_text = load_run(run_dir)
    target = Path(folder) if folder is not None else default_folder(run_dir)
    if target.resolve() == Path(run_dir).resolve() or Path(run_dir).resolve() in target.resolve().parents:
        raise PublishError(f"{target}: the publish folder must not be inside the run folder")
    if target.exists() and any(target.iterdir()):
        if not (target / "datacraft_report.json").exists():
            raise PublishError(f"{target}: exists and is not a folder built by `datacraft publish`; choose another --folder")
        shutil.rmtree(target)  # a previous build of this command
    target.mkdir(parents=True)
    rows = read_run_rows(run_dir)
    export = export_frame(rows, target, test_size=test_size, seed=seed, decontaminate=decontaminate, shard_rows=shard_rows)
    images = write_histograms(rows, target)
    (target / "datacraft_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    if config_text:
        (target / "datacraft_config.yaml").write_text(config_text, encoding="utf-8")
    card = render_card(repo_id, report, config_text, export, rows, images, options)
    card.save(str(target / "README.md"))
    problems = validate_card(target)
    if problems:
        raise PublishError("the dataset card does not validate: " + "; ".join(problems))
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    return PublishPlan(target, repo_id, files, export, card)


def _scrub(message: str, token: str) -> str:
    return message.replace(token, "***") if token else message


def upload_folder(plan: PublishPlan, token: str, *, private: bool = False, commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Create the dataset repo (if needed) and upload the built folder in one commit; returns the commit URL."""
    api = api or HfApi(token=token)
    message = commit_message or f"datacraft publish ({plan.export.summary()['rows']})"
    try:
        api.create_repo(repo_id=plan.repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=plan.repo_id, repo_type="dataset", folder_path=str(plan.folder), commit_message=message[:200],
        )
    except Exception as err:  # noqa: BLE001 - re-raised without the token
        raise PublishError(f"upload to {plan.repo_id} failed: {_scrub(f'{type(err).__name__}: {err}', token)}") from None
    return str(getattr(info, "commit_url", info))


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    dry_run: bool = False,
    folder: str | Path | None = None,
    private: bool = False,
    options: CardOptions | None = None,
    test_size: float | int | None = None,
    seed: int = 0,
    decontaminate: DecontaminateParams | dict[str, Any] | None = None,
    api: HfApi | None = None,
) -> dict[str, Any]:
    """Check, build, validate, upload (unless `dry_run`). Returns a summary (never the token)."""
    check_repo_id(repo_id)
    token = "" if dry_run else token_from_env()
    load_run(run_dir)  # report.json present before any work
    plan = build_publish_folder(
        run_dir, repo_id, folder, options=options, test_size=test_size, seed=seed, decontaminate=decontaminate
    )
    summary = plan.summary()
    summary["dry_run"] = dry_run
    if not dry_run:
        summary["commit_url"] = upload_folder(plan, token, private=private, api=api)
    return summary


def parse_card_yaml(folder: str | Path) -> dict[str, Any]:
    """The README's YAML metadata as a dict (for tests and `--dry-run` output)."""
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---", 2)[1]) or {}
