"""Entry point: builds the Typer app from the subcommand modules and turns expected errors into
one readable line and a non-zero exit code (never a bare traceback)."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from her2score import __version__
from her2score.errors import Her2ScoreError

app = typer.Typer(
    name="her2score",
    help="HER2 scoring from digital pathology: slides, stains, ASCO/CAP quantifier, slide-level models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

#: Subcommand modules; each defines ``register(app)``. Their heavy imports live inside the commands.
COMMAND_MODULES = (
    "her2score.cli.info",
    "her2score.cli.synth",
    "her2score.cli.models",
    "her2score.cli.train",
    "her2score.cli.learning_curve",
    "her2score.cli.evaluate",
    "her2score.cli.predict",
    "her2score.cli.demo",
    "her2score.cli.quantify",
    "her2score.cli.features",
    "her2score.cli.export",
    "her2score.cli.serve",
    "her2score.cli.compare",
    "her2score.cli.benchmark",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"her2score {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """HER2 scoring from digital pathology."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every command cleans up (temporary files, locks, partial
    results) the same way; the exit status is then 143 (128 + SIGTERM) instead of 130."""


_terminated = False


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    raise Terminated()


def _install_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        signal.signal(signal.SIGTERM, _on_sigterm)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures print ``error: FILE: cause`` and exit with status 2; Ctrl-C exits
    with 130, SIGTERM with 143, both after the command has cleaned up."""
    _install_sigterm()
    try:
        try:
            app(args=argv, prog_name="her2score")
        except SystemExit as exc:
            if _terminated and exc.code in (1, 130):
                print("terminated; what was written is complete", file=sys.stderr)
                sys.exit(143)
            if exc.code == 130:  # typer turns Ctrl-C into exit 130 without a word
                print("interrupted; what was written is complete", file=sys.stderr)
            raise
    except Her2ScoreError as exc:
        from rich.text import Text

        from her2score.cli.checks import make_console

        # The message holds file names: text, never markup ("[/]" in a name must not crash this).
        make_console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", one_line(str(exc))))
        sys.exit(2)
    except Exception as exc:  # a bug or an unforeseen input: one line, the traceback only when asked
        if os.environ.get("HER2SCORE_DEBUG"):
            raise
        message = one_line(f"{type(exc).__name__}: {exc}")
        print(
            f"error: unexpected failure ({message}); set HER2SCORE_DEBUG=1 for the traceback and please "
            "report it",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(143 if _terminated else 130)


def one_line(message: str) -> str:
    """``message`` on one line: a newline in a file name or a library's message must not split it."""
    return " ".join(message.splitlines()) if "\n" in message or "\r" in message else message
