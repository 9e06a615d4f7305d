"""CLI: `datacraft train sft|dpo` and `datacraft publish` (wired by `datacraft.cli.main` through `register`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    """`key.path=value` overrides; values parsed as YAML scalars (`1e-4`, `true`, `[a, b]`)."""
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected key=value (e.g. trl.max_steps=20)")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _train(
    kind: str, data: str | None, config: Path | None, output: str | None, model: str | None, max_steps: int | None,
    lora: bool | None, test_size: float | None, decontaminate: str | None, sets: list[str] | None,
) -> None:
    from datacraft.stages.handoff.trainer import TrainError, load_train_config, train

    overrides = _parse_sets(sets)
    for key, value in (("data", data), ("output_dir", output), ("model", model), ("trl.max_steps", max_steps),
                       ("lora.enabled", lora), ("test_size", test_size)):
        if value is not None:
            overrides[key] = value
    if decontaminate:
        overrides["decontaminate"] = {"eval_path": decontaminate}
    try:
        cfg = load_train_config(config, kind, overrides)  # type: ignore[arg-type]
        result = train(cfg)
    except (TrainError, FileNotFoundError) as err:
        _fail(err)
        return
    summary = result.to_dict()
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (None, None)
    typer.echo(
        f"{kind}: {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_second:.3f} steps/s), "
        f"loss {first} → {last}; model and configs in {result.output_dir}"
    )
    typer.echo(f"launch it yourself: trl {kind} --config {summary['files']['trl_cli_config']}")
    typer.echo(json.dumps({k: summary[k] for k in ("kind", "steps", "seconds", "steps_per_second", "eval_loss", "files")}))


_DATA = typer.Argument(help="run folder (with report.json), export folder, or JSONL/Parquet file; overrides `data:`")
_CONFIG = typer.Option("--config", "-c", help="train YAML (configs/train_sft.yaml / configs/train_dpo.yaml)")
_OUT = typer.Option("--output", "-o", help="output_dir for the model and configs")
_MODEL = typer.Option("--model", "-m", help="Hub name, local path, or `embedded`")
_STEPS = typer.Option("--max-steps", help="trl.max_steps")
_LORA = typer.Option("--lora/--no-lora", help="train LoRA adapters (peft) instead of all weights")
_TEST = typer.Option("--test-size", help="hold out this fraction (<1) or count as the eval split")
_DECON = typer.Option("--decontaminate", help="eval set file: drop training rows overlapping it by n-grams")
_SETS = typer.Option("--set", help="override any config key, e.g. --set trl.learning_rate=1e-4")


_TRAIN_DOCS = {
    "sft": """Supervised fine-tuning (TRL SFTTrainer) on the rows of a finished run folder.

    Example:

        datacraft train sft out/default -c configs/train_sft.yaml -o ckpt/sft --max-steps 20

    Writes the model, trl_config.json (the SFTConfig used) and trl_sft.yaml (for `trl sft --config`).
    """,
    "dpo": """Preference tuning (TRL DPOTrainer) on the preference rows of a finished run folder.

    Example:

        datacraft train dpo tests/data/llamafactory_dpo_60.jsonl -c configs/train_dpo.yaml -o ckpt/dpo --lora

    Pairs with an empty chosen/rejected answer or chosen == rejected are dropped (data/dropped.jsonl).
    Writes the model, trl_config.json (the DPOConfig used) and trl_dpo.yaml (for `trl dpo --config`).
    """,
}


def train_command(kind: str) -> Any:
    """The typer command of `datacraft train <kind>`."""

    def command(
        data: Annotated[str | None, _DATA] = None, config: Annotated[Path | None, _CONFIG] = None,
        output: Annotated[str | None, _OUT] = None, model: Annotated[str | None, _MODEL] = None,
        max_steps: Annotated[int | None, _STEPS] = None, lora: Annotated[bool | None, _LORA] = None,
        test_size: Annotated[float | None, _TEST] = None, decontaminate: Annotated[str | None, _DECON] = None,
        sets: Annotated[list[str] | None, _SETS] = None,
    ) -> None:
        _train(kind, data, config, output, model, max_steps, lora, test_size, decontaminate, sets)

    command.__doc__ = _TRAIN_DOCS[kind]
    command.__name__ = f"train_{kind}"
    return command


def publish_cmd(
    out: Annotated[Path, typer.Argument(help="finished run folder (holds report.json and data/)")],
    repo: Annotated[str, typer.Option("--repo", help="dataset repo on the Hub, user/name")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="build the exact folder, upload nothing (no token needed)")] = False,
    folder: Annotated[Path | None, typer.Option("--folder", help="where to build the folder (default: OUT-hub)")] = None,
    private: Annotated[bool, typer.Option("--private", help="create the repo as private")] = False,
    license: Annotated[str | None, typer.Option("--license", help="Hub license id, e.g. apache-2.0, mit, cc-by-4.0 (default: the input's, from input.license or the rows' license field; else unknown)")] = None,  # noqa: A002
    language: Annotated[list[str] | None, typer.Option("--language", help="ISO language code (repeatable)")] = None,
    task_category: Annotated[list[str] | None, typer.Option("--task-category", help="Hub task category (repeatable)")] = None,
    pretty_name: Annotated[str | None, typer.Option("--pretty-name")] = None,
    test_size: Annotated[float | None, typer.Option("--test-size", help="hold out this fraction (<1) or count as `test`")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the train/test split")] = 0,
    decontaminate: Annotated[str | None, typer.Option("--decontaminate", help="eval set: drop rows overlapping it")] = None,
    ngram: Annotated[int, typer.Option("--ngram", help="decontamination word n-gram length")] = 8,
    threshold: Annotated[float, typer.Option("--threshold", help="decontamination overlap threshold")] = 0.5,
) -> None:
    """Publish a run folder as a Hugging Face dataset with a curation card (token from HF_TOKEN).

    Example:

        datacraft publish out/default --repo alice/curated-sft --license apache-2.0 --test-size 0.05 --dry-run

    Builds OUT-hub/ (Parquet shards per config/split, README.md with metadata, funnel, histograms,
    lineage, config + hash) and uploads it with huggingface_hub.HfApi unless --dry-run.
    """
    from datacraft.train.publish import CardOptions, PublishError, publish

    options = CardOptions(
        license=license, language=language or ["en"], task_categories=task_category or ["text-generation"],
        pretty_name=pretty_name,
    )
    decon = {"eval_path": decontaminate, "n": ngram, "threshold": threshold} if decontaminate else None
    try:
        summary = publish(
            out, repo, dry_run=dry_run, folder=folder, private=private, options=options, test_size=test_size,
            seed=seed, decontaminate=decon,
        )
    except (PublishError, FileNotFoundError) as err:
        _fail(err)
        return
    where = "built (dry run, nothing uploaded)" if dry_run else f"uploaded: {summary.get('commit_url')}"
    typer.echo(f"{repo}: {where}; folder {summary['folder']}")
    typer.echo(json.dumps(summary, default=str))


def register(app: typer.Typer) -> None:
    """Add `train sft|dpo` and `publish` to the datacraft app."""
    train_app = typer.Typer(help="Train on a finished run with TRL (SFT / DPO); needs the extra: pip install 'datacraft-curate\\[train]'.",
                            no_args_is_help=True)
    for kind in ("sft", "dpo"):
        train_app.command(kind)(train_command(kind))
    app.add_typer(train_app, name="train")
    app.command("publish")(publish_cmd)
