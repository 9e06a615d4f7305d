"""CLI commands of the LLM layer: `datacraft serve` (wired by `datacraft/cli.py` through `register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `serve` to the datacraft CLI."""

    @app.command("serve")
    def serve_command(
        model: str = typer.Option("embedded", help="`embedded` (SmolLM2-135M), a Hub name or a local path"),
        host: str = typer.Option("127.0.0.1", help="interface to bind"),
        port: int = typer.Option(8000, help="TCP port"),
        batch_size: int = typer.Option(8, min=1, help="most requests per engine call"),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:1 …"),
        max_wait_ms: float = typer.Option(10.0, min=0, help="how long a batch waits to fill up (engines without step-level batching)"),
    ) -> None:
        """Serve a model through an OpenAI-compatible API (chat and raw completions), so several workers share it.

        Example:

            datacraft serve --model embedded --port 8000

        then point a config at it:  llm: {engine: openai, base_url: "http://127.0.0.1:8000/v1", model: embedded}
        """
        from datacraft.llm.server import serve

        serve(model=model, host=host, port=port, batch_size=batch_size, device=device, max_wait_ms=max_wait_ms)
