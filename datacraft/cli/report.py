"""`datacraft report OUT` (re-render report.html) and `datacraft why OUT ID` (explain one row)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the `report` and `why` commands to the datacraft CLI."""

    @app.command(
        "report",
        epilog="Example: datacraft report out/default   (then open out/default/report.html in a browser)",
    )
    def report_cmd(out: Annotated[str, typer.Argument(help="a finished run folder (holds report.json)")]) -> None:
        """Re-render OUT/report.html from OUT/report.json, the output rows and the dropped rows; print its path."""
        from datacraft.report.html import render_html

        try:
            path = render_html(out)
        except FileNotFoundError as err:
            Console(stderr=True).print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
        print(path)

    @app.command(
        "why",
        epilog="Examples: datacraft why out/default llamafactory_alpaca_en_demo:17 ; datacraft why out/default 3fa2c1 --json",
    )
    def why_cmd(
        out: Annotated[str, typer.Argument(help="a finished run folder")],
        row_id: Annotated[str, typer.Argument(metavar="ID", help="the row's id (or a unique prefix of it)")],
        as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
    ) -> None:
        """Why was this row dropped (stage, reason, detail)? Where did it come from (its lineage down to the seed rows)?"""
        from datacraft.report.explain import explain_row, render_explanation

        try:
            expl = explain_row(out, row_id)
        except FileNotFoundError as err:
            Console(stderr=True).print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
        if as_json:
            print(json.dumps(expl, indent=2, ensure_ascii=False, default=str))
        else:
            Console().print(render_explanation(expl))
        if not expl.get("found"):
            raise typer.Exit(1)
