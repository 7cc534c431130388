"""CLI command groups; see pixelsail.cli."""
from __future__ import annotations

import typer


def fail(message: str) -> None:
    """End a command with one ``error: ...`` line on stderr and exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def load_dataset_plugins() -> None:
    """Register the datasets defined outside ``pixelsail.data`` (the distillation cache's "distilled" wrapper).

    Called by the commands that build datasets from a config, not at start-up: the cache module imports torch,
    which would make every command (``--help`` included) pay about a second for it.
    """
    import pixelsail.experts.cache  # noqa: F401  registers "distilled"
