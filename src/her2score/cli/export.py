"""``her2score export``: a trained model as ONNX, for ``predict --backend onnxruntime`` or any runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``export`` to the CLI."""
    app.command("export")(export)


def export(
    model: Annotated[Path, typer.Option("--model", help="A model.safetensors written by 'her2score train'.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="The ONNX file to write.")],
    opset: Annotated[int, typer.Option("--opset", min=18, help="ONNX opset.")] = 18,
) -> None:
    """Export the model's inference module to ONNX (dynamic batch size; probabilities out), checked against
    torch on random inputs before it is written (largest difference at most 1e-4).

    Exit status: 0 written; 2 the model cannot be exported or the paths are bad.
    """
    from her2score.cli.checks import check_input_file, check_output_file, make_console
    from her2score.errors import CheckpointError
    from her2score.export.onnx import export_onnx

    check_input_file(model, "model", CheckpointError, "; pass the model.safetensors inside a run folder")
    check_output_file(onnx, "--onnx")
    check = export_onnx(model, onnx, opset)
    make_console().print(
        f"{check['model']} -> {onnx} (ONNX opset {opset}, {check['input_size']} px input; largest difference "
        f"from torch on {check['checked_batch']} random inputs: {check['max_abs_diff']:.1e})"
    )
