"""``her2score serve``: the scoring web service (FastAPI + uvicorn), on 127.0.0.1 unless told."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the CLI."""
    app.command("serve")(serve)


def serve(
    model: Annotated[
        Path | None, typer.Option("--model", help="A model.safetensors: adds class probabilities to scores.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder whose slides GET /api/slides lists and scores.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Upload size limit.")
    ] = 200.0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Serve GET /health, POST /api/score (multipart 'file'), GET /api/slides, GET /api/slides/NAME/score,
    deep-zoom tiles and overlay layers, the slide viewer at / (after `make viewer`) and OpenAPI docs at
    /docs. A token in $HER2SCORE_TOKEN guards the /api routes (Bearer).

    Exit status: 0 stopped; 2 bad options or a missing web dependency.
    """
    from her2score.cli.checks import check_input_file
    from her2score.errors import CheckpointError, ConfigError

    try:
        import uvicorn

        from her2score.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"the web service needs its extra: pip install 'her2score[serve]' ({exc.name})"
        ) from None
    if model is not None:
        check_input_file(model, "model", CheckpointError, "; pass the model.safetensors inside a run folder")
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError("--data-dir is not a folder", data_dir)
    app = create_app(model, data_dir, os.environ.get("HER2SCORE_TOKEN") or None, max_upload_mb, device)
    uvicorn.run(app, host=host, port=port, log_level="info")
