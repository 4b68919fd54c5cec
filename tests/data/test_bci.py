"""The BCI adapter: pairs found by name, official split, clear errors for bad pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from her2score.data.bci import (
    find_bci_pairs,
    find_unlabelled_pairs,
    write_bci_manifests,
    write_unlabelled_manifest,
)
from her2score.errors import ManifestError

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
REAL_BCI = REAL / "bci-her2-pairs"
REAL_MIST = REAL / "mist-her2-pairs"


def _write(path: Path, size: int = 32, jpeg: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((size, size, 3), 200, dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG" if jpeg else "PNG")  # BCI: JPEG bytes in .png files


def _layout(root: Path, names: list[str], subfolders: bool = False) -> None:
    for name in names:
        sub = name.split("_")[1] if subfolders else ""
        for stain in ("HE", "IHC"):
            _write(root / stain / sub / name, jpeg=True)


@pytest.mark.parametrize("subfolders", [False, True])
def test_pairs_carry_the_official_split_and_level(tmp_path: Path, subfolders: bool) -> None:
    _layout(tmp_path, ["00000_train_1+.png", "00001_train_3+.png", "00002_test_0.png"], subfolders)
    pairs = find_bci_pairs(tmp_path)
    assert [(p.split, p.her2) for p in pairs] == [("train", "1+"), ("train", "3+"), ("test", "0")]
    paths = write_bci_manifests(pairs, tmp_path / "manifests")
    frame = pd.read_csv(paths["pairs"], dtype=str)
    assert list(frame.columns) == ["slide", "he", "her2", "patient", "split", "mpp"]
    assert all("/IHC/" in s for s in frame["slide"])
    assert all("/HE/" in s for s in frame["he"])
    assert all("/HE/" in s for s in pd.read_csv(paths["he"])["slide"])


def test_a_missing_partner_names_both_files(tmp_path: Path) -> None:
    _layout(tmp_path, ["00000_train_1+.png"])
    _write(tmp_path / "HE" / "00001_train_2+.png")
    with pytest.raises(ManifestError) as err:
        find_bci_pairs(tmp_path)
    message = str(err.value)
    assert "HE/00001_train_2+.png" in message
    assert "IHC/00001_train_2+.png" in message


def test_a_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _write(tmp_path / "HE" / "00000_test_0.png", size=32)
    _write(tmp_path / "IHC" / "00000_test_0.png", size=48)
    with pytest.raises(ManifestError, match=r"HE/00000_test_0.png.*IHC/00000_test_0.png"):
        find_bci_pairs(tmp_path)


def test_a_name_outside_the_pattern_is_refused(tmp_path: Path) -> None:
    _layout(tmp_path, ["patch_a.png"])
    with pytest.raises(ManifestError, match="BCI pattern"):
        find_bci_pairs(tmp_path)


@pytest.mark.skipif(not REAL_BCI.is_dir(), reason="needs ../shared/data/real")
def test_the_real_bci_pairs_are_found() -> None:
    pairs = find_bci_pairs(REAL_BCI)
    assert len(pairs) == 13
    assert {p.her2 for p in pairs} == {"0", "1+", "2+", "3+"}


def _unlabelled(root: Path, he: str, ihc: str, names: list[str], sizes: tuple[int, int] = (32, 32)) -> None:
    for name in names:
        _write(root / he / name, size=sizes[0], jpeg=True)
        _write(root / ihc / name, size=sizes[1], jpeg=True)


def test_unlabelled_pairs_in_both_layouts_keep_slides_together(tmp_path: Path) -> None:
    _unlabelled(tmp_path / "flat", "HE", "IHC", ["15M21_18_18.jpg", "15M21_21_24.jpg", "19M24_31_28.jpg"])
    pairs = find_unlabelled_pairs(tmp_path / "flat")
    assert [p.slide for p in pairs] == ["15M21", "15M21", "19M24"]
    assert {p.split for p in pairs} == {"train"}
    _unlabelled(tmp_path / "mist", "trainA", "trainB", ["a_1.jpg", "a_2.jpg"])
    _unlabelled(tmp_path / "mist", "valA", "valB", ["b_1.jpg"])
    pairs = find_unlabelled_pairs(tmp_path / "mist")
    assert [(p.name, p.split) for p in pairs] == [
        ("a_1.jpg", "train"),
        ("a_2.jpg", "train"),
        ("b_1.jpg", "test"),
    ]
    frame = pd.read_csv(write_unlabelled_manifest(pairs, tmp_path / "m.csv"), dtype=str)
    assert list(frame.columns) == ["slide", "he", "patient", "split", "mpp"]
    assert frame["slide"].str.contains("trainB|valB").all()
    assert frame["he"].str.contains("trainA|valA").all()


def test_bad_unlabelled_pairs_name_both_files(tmp_path: Path) -> None:
    _unlabelled(tmp_path / "a", "HE", "IHC", ["s_1.jpg"])
    _write(tmp_path / "a" / "IHC" / "s_2.jpg")
    with pytest.raises(ManifestError, match=r"IHC/s_2.jpg.*HE/s_2.jpg"):
        find_unlabelled_pairs(tmp_path / "a")
    _unlabelled(tmp_path / "b", "trainA", "trainB", ["s_1.jpg"], sizes=(32, 40))
    with pytest.raises(ManifestError) as err:
        find_unlabelled_pairs(tmp_path / "b")
    for part in ("trainA/s_1.jpg", "trainB/s_1.jpg", "32x32", "40x40"):
        assert part in str(err.value)
    (tmp_path / "c" / "HE").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no partner folder IHC"):
        find_unlabelled_pairs(tmp_path / "c")


@pytest.mark.skipif(not REAL_MIST.is_dir(), reason="needs ../shared/data/real")
def test_the_real_mist_pairs_are_found() -> None:
    pairs = find_unlabelled_pairs(REAL_MIST)
    assert len(pairs) == 8
    assert all(p.he.name == p.ihc.name for p in pairs)
