"""`datacraft dedup-calibrate`: pick the semantic-dedup threshold from labelled pairs, or look at pairs near it."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    """Add `dedup-calibrate` to the datacraft CLI."""

    @app.command("dedup-calibrate")
    def dedup_calibrate(
        pairs: str = typer.Option(None, "--pairs", help="labelled pairs JSONL (text_a, text_b, label 1 = duplicate)"),
        corpus: str = typer.Option(None, "--corpus", help="unlabelled corpus (JSONL / Parquet / datasets folder): sample pairs near --threshold"),
        threshold: float = typer.Option(0.9, "--threshold", help="τ to inspect on --corpus"),
        embedder: list[str] = typer.Option(["static", "sentence-transformers"], "--embedder", help="embedder kinds to compare (repeatable)"),
        model: str = typer.Option("embedded", "--model", help="sentence-transformers name / path (default: the embedded MiniLM)"),
        text: str = typer.Option("instruction_response", "--text", help="text view embedded for --corpus"),
        samples: int = typer.Option(20, "--samples", help="pairs to show for --corpus"),
        fit_source: list[str] = typer.Option(["qqp", "mrpc"], "--fit-source", help="sources of --pairs whose F1 picks tau (repeatable; 'all' = every pair); every source is reported"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    ) -> None:
        """Precision / recall / F1 per threshold for each embedder on labelled pairs, and the best τ;
        or pairs of an unlabelled corpus whose cosine is near τ, to judge by eye.

        Example:

            datacraft dedup-calibrate --pairs tests/data/duplicate_pairs.jsonl

            datacraft dedup-calibrate --corpus examples/data/alpaca_mix_600.jsonl --threshold 0.9 --embedder static
        """
        from datacraft.vectors.calibration import calibrate_pairs, near_threshold_pairs

        if not pairs and not corpus:
            raise typer.BadParameter("give --pairs (labelled) or --corpus (unlabelled)")
        if pairs:
            result = calibrate_pairs(pairs, tuple(embedder), model, fit_sources=None if "all" in fit_source else tuple(fit_source))
            if as_json:
                typer.echo(json.dumps(result, indent=2))
            else:
                fitted_on = "+".join(result["fit_sources"])
                for name, r in result["embedders"].items():
                    typer.echo(f"\n{name}  ({r['texts_per_s']} texts/s; fit on {fitted_on}: {result['fit_pairs']} of {result['pairs']} pairs)")
                    typer.echo(f"  {'tau':>5} {'precision':>9} {'recall':>7} {'f1':>6}")
                    for row in r["table"]:
                        typer.echo(f"  {row['threshold']:>5.2f} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f}")
                    b = r["best"]
                    typer.echo(f"  best tau = {b['threshold']:.2f} on {fitted_on} (F1 {b['f1']:.3f}, precision {b['precision']:.3f}, recall {b['recall']:.3f})")
                    typer.echo(f"  {'source':<6} {'pairs':>5} {'dup':>4} {'F1@fit':>7} {'P@fit':>6} {'R@fit':>6} {'own tau':>7} {'own F1':>6} {'F1 all-dup':>10}")
                    for src, ps in r["per_source"].items():
                        at, own = ps["at_fit"], ps["best"]
                        typer.echo(f"  {src:<6} {ps['pairs']:>5} {ps['positives']:>4} {at['f1']:>7.3f} {at['precision']:>6.3f} {at['recall']:>6.3f} {own['threshold']:>7.2f} {own['f1']:>6.3f} {ps['f1_all_duplicate']:>10.3f}")
                if "note" in result:
                    typer.echo(f"\nnote: {result['note']}")
        if corpus:
            found = near_threshold_pairs(corpus, threshold, kind=embedder[0], model=model, text=text, samples=samples)
            if as_json:
                typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
            else:
                typer.echo(f"\n{len(found)} pairs near cos={threshold} ({embedder[0]}):")
                for p in found:
                    typer.echo(f"\ncos={p['cos']}  {p['id_a']}  vs  {p['id_b']}\n  A: {p['text_a'][:200]!r}\n  B: {p['text_b'][:200]!r}")
