"""``her2score models``: the registered slide-level models, their input and tasks."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``models`` to the CLI."""
    app.command("models")(models)


def models() -> None:
    """List the models 'her2score train --model' accepts."""
    from rich.table import Table

    from her2score.cli.checks import make_console
    from her2score.models.registry import list_models

    table = Table("model", "input", "tasks", "description")
    for spec in list_models():
        table.add_row(spec.name, spec.input_kind, ", ".join(spec.tasks), spec.description)
    make_console(stderr=False).print(table)  # the list is the result: on stdout
