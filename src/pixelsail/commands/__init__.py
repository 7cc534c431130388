"""CLI command groups; see pixelsail.cli."""
from __future__ import annotations

import typer


def fail(message: str) -> None:
    """End a command with one ``error: ...`` line on stderr and exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)
