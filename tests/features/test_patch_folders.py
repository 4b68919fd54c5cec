"""Patch collections in class folders (class_0/ ... class_3+/) become a manifest, then bags of tile
features, on which the patch classifier trains and is evaluated with the usual reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from her2score.data.patch_folders import class_folder_score, patch_folder_manifest
from her2score.errors import ManifestError

FOLDERS = {"class_0": "0", "class_1": "1+", "class_2": "2+", "class_3+": "3+"}


def patch_image(level: float, seed: int, size: int = 128) -> np.ndarray:
    """Tissue filling the patch, blue (hematoxylin) to brown (DAB) with ``level`` (0..1), plus noise."""
    rng = np.random.default_rng(seed)
    colour = (1 - level) * np.array([150, 160, 210.0]) + level * np.array([150, 95, 50.0])
    img = colour + rng.normal(0, 12, (size, size, 3))
    img[: size // 8] = 242  # a strip of glass
    return np.clip(img, 0, 255).astype(np.uint8)


def class_folders(root: Path, per_class: int = 6, splits: bool = False) -> Path:
    for k, name in enumerate(FOLDERS):
        for i in range(per_class):
            part = ("train" if i < per_class - 2 else "test") if splits else ""
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch_image(k / 3, 100 * k + i)).save(folder / f"slide{i % 3}_patch{k}{i}.png")
    return root


def test_class_folder_names_give_her2_scores() -> None:
    names = ("class_0", "class_1", "class_2+", "class_3+", "3+", "CLASS_2")
    assert [class_folder_score(n) for n in names] == ["0", "1+", "2+", "3+", "3+", "2+"]
    assert class_folder_score("class_4") is None
    assert class_folder_score("negative") is None


def test_manifest_from_class_folders_keeps_splits_patients_and_mpp(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "patches", per_class=4, splits=True)
    frame = patch_folder_manifest(root, tmp_path / "out" / "m.csv", mpp=0.25, patient_pattern=r"^(slide\d+)_")
    assert len(frame) == 16
    assert sorted(frame["her2"].unique()) == ["0", "1+", "2+", "3+"]
    assert set(frame["split"]) == {"train", "test"}
    assert set(frame["patient"]) == {"slide0", "slide1", "slide2"}
    assert (frame["mpp"] == 0.25).all()
    written = pd.read_csv(tmp_path / "out" / "m.csv", dtype=str)
    assert (tmp_path / "out" / written["slide"][0]).resolve().is_file()  # relative to the manifest
    # each patch its own case by default, and no split column without split folders
    flat = patch_folder_manifest(class_folders(tmp_path / "flat", 2), tmp_path / "flat.csv")
    assert flat["patient"].is_unique
    assert "split" not in flat


def test_a_folder_that_is_not_a_class_folder_is_an_error(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "patches", per_class=1)
    (root / "clas_3").mkdir()
    with pytest.raises(ManifestError, match="not a class folder"):
        patch_folder_manifest(root, tmp_path / "m.csv")
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no image"):
        patch_folder_manifest(tmp_path / "empty", tmp_path / "m.csv")


def test_patch_classifier_trains_and_reports_on_class_folder_patches(tmp_path: Path) -> None:
    from her2score.cli.main import main
    from her2score.data.manifest import load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.train import train_run

    root = class_folders(tmp_path / "patches", per_class=8)
    feats = tmp_path / "feats"
    with pytest.raises(SystemExit) as exit_info:
        main([
            "features", "--patches", str(root), "--mpp", "1.0", "--tile-mpp", "1.0", "--tile", "48",
            "--encoder", "stain", "--out", str(feats), "--quiet",
        ])  # fmt: skip
    assert exit_info.value.code in (0, None)
    bags = pd.read_csv(feats / "manifest.csv")
    assert len(bags) == 32
    assert bags["slide"].str.endswith(".safetensors").all()
    cfg = load_config(
        None, model="patch-classifier", task="her2-4way", epochs=15, batch_size=4, lr=1e-2, n_boot=10,
        device="cpu", test_fraction=0.25, val_fraction=0.2, patience=0, select="last",
        model_args={"in_dim": 29, "hidden": 16, "dropout": 0.0},
    )  # fmt: skip
    result = train_run(load_manifest(feats / "manifest.csv", "her2-4way"), cfg, tmp_path / "run", quiet=True,
                       log=lambda s: None)  # fmt: skip
    assert result.metrics["accuracy"] >= 0.75, result.metrics  # 8 held-out patches, chance 1/4
    assert (tmp_path / "run" / "predictions.csv").is_file()
    assert (tmp_path / "run" / "report.html").is_file()
