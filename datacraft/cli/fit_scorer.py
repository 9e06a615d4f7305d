"""The `datacraft fit-scorer` command: fit a preference head (`datacraft.stages.score.prefhead`) on preference files."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the `fit-scorer` command to the datacraft CLI."""

    @app.command(
        "fit-scorer",
        epilog=(
            "Example: datacraft fit-scorer ../shared/data/pref/alpaca_eval_judge_annotations.part00.jsonl "
            "../shared/data/pref/hh_rlhf_harmless_base_test.jsonl -o heads/mine   "
            "(then: stages: [{name: pref_head, model: heads/mine}])"
        ),
    )
    def fit_scorer_cmd(
        pairs: Annotated[list[str], typer.Argument(help="preference files (prompt, chosen, rejected or any format with chosen/rejected)")],
        output: Annotated[str, typer.Option("-o", "--output", help="folder to write the head to (weights.npz + metadata.json)")],
        features: Annotated[str, typer.Option(help="comma-separated: response, product, cos, loglen, lenprompt, heuristics, format, style, ngrams")] = "response,loglen,heuristics,format,style,ngrams",
        holdout: Annotated[float, typer.Option(help="share of instructions held out of the fit (for the reported accuracy)")] = 0.25,
        l2: Annotated[float | None, typer.Option(help="L2 strength (default: chosen by grouped cross-validation)")] = None,
        embedder: Annotated[str, typer.Option(help="sentence-transformers (MiniLM) | static (≈70× faster, less accurate)")] = "sentence-transformers",
        embedder_model: Annotated[str, typer.Option(help="embedder model name or path")] = "embedded",
        license_: Annotated[list[str], typer.Option("--license", help="FILE=LICENCE, recorded in the metadata (default: from a MANIFEST.md beside the file)")] = [],  # noqa: B006
        weak_answers: Annotated[list[str], typer.Option("--weak-answers", help="answers of AlpacaEval-rated generators (ids `<generator>:<n>`): "
                                                        "weak pairs, the stronger generator's answer preferred, from training-side instructions only")] = [],  # noqa: B006
        weak_weight: Annotated[float, typer.Option(help="weight of one weak pair relative to a labelled one")] = 1.0,
        weak_balanced: Annotated[bool, typer.Option(help="only weak pairs whose answers are within 30%% in length")] = False,
        cross_fit: Annotated[int, typer.Option(help="also record accuracy cross-fitted over every instruction with this many folds (0: off)")] = 0,
        ngram_l2: Annotated[float, typer.Option(help="L2 of the hashed n-gram block (feature ngrams)")] = 0.3,
    ) -> None:
        """Fit a Bradley–Terry head on MiniLM embeddings of preference pairs, split by instruction; print its held-out accuracy."""
        from datacraft.stages.score.prefhead import ALL_FEATURES, fit_from_files

        console = Console(stderr=True)
        names = [f.strip() for f in features.split(",") if f.strip()]
        unknown = [f for f in names if f not in ALL_FEATURES]
        if unknown or not names:
            console.print(f"[bold red]error:[/] --features {features!r}: expected some of {', '.join(ALL_FEATURES)}")
            raise typer.Exit(2)
        if embedder not in ("sentence-transformers", "static"):
            console.print(f"[bold red]error:[/] --embedder {embedder!r}: expected sentence-transformers or static")
            raise typer.Exit(2)
        if weak_weight <= 0 or ngram_l2 <= 0 or cross_fit == 1 or cross_fit < 0:
            console.print("[bold red]error:[/] --weak-weight and --ngram-l2 must be > 0 and --cross-fit 0 or ≥ 2")
            raise typer.Exit(2)
        if not 0.0 <= holdout < 1.0:
            console.print("[bold red]error:[/] --holdout must be in [0, 1)")
            raise typer.Exit(2)
        licenses = {}
        for item in license_:
            name, sep, text = item.partition("=")
            if not sep:
                console.print(f"[bold red]error:[/] --license {item!r}: expected FILE=LICENCE")
                raise typer.Exit(2)
            licenses[name.split("/")[-1]] = text
        try:
            meta = fit_from_files(pairs, output, features=names, holdout=holdout, l2=l2, licenses=licenses,
                                  embedder={"kind": embedder, "model": embedder_model}, weak_answers=weak_answers, weak_weight=weak_weight,
                                  weak_balance=0.7 if weak_balanced else None,
                                  cross_fit_folds=cross_fit, ngram_l2=ngram_l2)
        except (FileNotFoundError, ValueError) as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
        if meta["restricted_training_data"]:
            console.print("[yellow]note:[/] some training data has no licence grant or is non-commercial: do not redistribute this head")
        keys = ("held_out_pairs", "held_out_accuracy", "held_out_length_accuracy", "l2", "train_pairs", "weak_pairs", "cross_fitted")
        print(json.dumps({k: meta[k] for k in keys if k in meta}))
        console.print(f"wrote {output}")
