"""ONNX export: the exported graph predicts what torch predicts (within 1e-4), through the same
``predict`` command, with the model's metadata inside the ONNX file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score.cli.main import main
from her2score.data.manifest import load_manifest
from her2score.engine.config import load_config
from her2score.engine.train import train_run
from her2score.errors import CheckpointError

pytest.importorskip("onnxruntime")


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.slow
def test_exported_model_predicts_like_torch(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        epochs=1,
        input_size=64,
        batch_size=4,
        n_boot=10,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )  # fmt: skip  (the default recipe: ResNet-18 with the stain head, whose quantiles must export too)
    run = train_run(
        load_manifest(tiny_manifest), cfg, tmp_path / "run", quiet=True, log=lambda s: None, heatmaps=0
    )
    model = run.model_paths[0]
    onnx_file = tmp_path / "model.onnx"
    assert _run(["export", "--model", str(model), "--onnx", str(onnx_file)]) == 0
    slides = sorted((tiny_manifest.parent / "slides").glob("*.tiff"))[:5]
    args = [str(s) for s in slides] + ["--quiet", "--device", "cpu", "--cache", str(tmp_path / "c")]
    assert _run(["predict", "--model", str(model), "--out", str(tmp_path / "torch.csv"), *args]) == 0
    assert _run(["predict", "--model", str(onnx_file), "--backend", "onnxruntime",
                 "--out", str(tmp_path / "onnx.csv"), *args]) == 0  # fmt: skip
    a, b = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    cols = [c for c in a.columns if c.startswith("prob_")]
    assert list(a["slide"]) == list(b["slide"])
    assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-4
    assert list(a["predicted"]) == list(b["predicted"])


def test_a_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    from her2score.export.onnx import OnnxModel

    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx at all")
    with pytest.raises(CheckpointError, match=r"x\.onnx.*not a readable ONNX"):
        OnnxModel(bad)


def test_the_onnx_backend_survives_a_folder_where_every_slide_fails(tmp_path: Path) -> None:
    """No row reaches the model: the empty result still has one column per class (no torch module)."""
    from her2score.engine.predictor import Predictor
    from her2score.export.onnx import OnnxModel

    class Empty:
        def __len__(self) -> int:
            return 0

    predictor = Predictor(object.__new__(OnnxModel), None, {}, "cpu", num_classes=3)
    assert predictor.predict(Empty()).shape == (0, 3)
