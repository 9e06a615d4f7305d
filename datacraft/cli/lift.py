"""`datacraft lift CONFIG`: does curation help? (the logic is `datacraft.train.lift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datacraft.train.lift import LiftError, format_table, lift_cmd


def register(app: typer.Typer) -> None:
    """Add `datacraft lift` to the app."""
    def lift(
        config: Annotated[str, typer.Argument(help="lift YAML (configs/lift_alpacaeval.yaml)")],
        output: Annotated[str | None, typer.Option("-o", "--output", help="output folder (default: the config's output)")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="apply the config's quick: section (N=100, 1 seed)")] = False,
        seeds: Annotated[str | None, typer.Option("--seeds", help="a count (3 → 0,1,2) or a list (0,1,2)")] = None,
        budget: Annotated[int | None, typer.Option("--budget", "-n", help="rows per arm (N)")] = None,
        arms: Annotated[str | None, typer.Option("--arms", help="only these arms (comma list; baseline and ceiling always run)")] = None,
        data: Annotated[str | None, typer.Option("--data", help="data root for relative pool files (default ../shared/data)")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="override a key, e.g. --set student.max_length=128")] = None,
    ) -> None:
        """Does curation help? Train the same student on N rows chosen by each arm (random, length, recipes,
        the oracle), several seeds, and compare held-out answer loss. Writes OUT/lift.json and OUT/lift.html.

        Example:

            datacraft lift configs/lift_alpacaeval.yaml --quick -o out/lift_quick
        """
        from datacraft.stages.handoff.trainer import TrainError

        try:
            result = lift_cmd(config, output, quick, seeds, budget, arms, data, sets)
        except (LiftError, TrainError, FileNotFoundError) as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        typer.echo(format_table(result))
        goal = result.get("goal")
        if goal:
            typer.echo(f"goal ({goal['arm']} closes ≥ {goal['gap_target']:.0%} of the gap, paired diff beyond 2 sd, ≥ 3 seeds): "
                       f"{'met' if goal['met'] else 'not met'} {goal['checks']}")
        typer.echo(f"wrote {Path(result['output']) / 'lift.json'} and lift.html")

    app.command("lift")(lift)
