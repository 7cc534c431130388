"""The ``pixelsail`` command line. Each command group lives in ``pixelsail.commands.<name>`` and registers itself."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Pixel-SAIL: one transformer for pixel-grounded understanding.", no_args_is_help=True,
                  add_completion=False)

# modules in pixelsail.commands that define ``register(app: typer.Typer) -> None``
COMMAND_MODULES: list[str] = [
    "train",
    "shapes",
    "evaluate",
    "data",
    "use",
    "experts",
    "ablate",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"pixelsail.commands.{name}").register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
