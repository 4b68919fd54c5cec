"""Patch collections in class folders (``class_0/ class_1/ class_2/ class_3+/``, as the public HER2-IHC-40x
set of 1024² patches is laid out) turned into a manifest every her2score command reads.

A folder's HER2 score comes from its name: ``class_0``, ``class_1`` or ``class_1+``, ..., ``class_3+``
(the ``class_`` prefix optional, ``0``/``1+``/``2+``/``3+`` alone work too). Folders named ``train``,
``val`` or ``test`` above the class folders become the manifest's ``split`` column (their fixed splits
are then used); other folders are an error, so a typo is not silently dropped.

Each patch is its own case (``patient`` = its file stem) unless ``patient_pattern``, a regular expression
whose first group is the patient or slide id in the file name, says which patches share a slide:
patches of one slide must not land on both sides of a split.

The patches become bags with ``her2score features --patches DIR --mpp M`` (tiles over each patch at
``--tile-mpp``), which the patch classifier and the MIL models train on (``her2score train --model
patch-classifier``), with the usual reports.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from her2score.errors import ManifestError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLIT_FOLDERS = ("train", "val", "test")
_CLASS = re.compile(r"^(?:class[_ -]?)?([0-3])\+?$", re.IGNORECASE)


def class_folder_score(name: str) -> str | None:
    """The HER2 score a class folder's name stands for (``class_2`` -> ``2+``), or None."""
    found = _CLASS.match(name.strip())
    if found is None:
        return None
    digit = found.group(1)
    return "0" if digit == "0" else f"{digit}+"


def patch_folder_manifest(
    root: str | Path,
    out_path: str | Path,
    mpp: float | None = None,
    patient_pattern: str | None = None,
) -> pd.DataFrame:
    """Write a manifest (``slide``, ``her2``, ``patient``, and ``split``/``mpp`` when known) of every
    image under ``root``'s class folders to ``out_path`` (paths relative to its folder); the frame."""
    from her2score.io import write_csv

    root, out_path = Path(root), Path(out_path)
    if not root.is_dir():
        raise ManifestError("not a folder of class folders (class_0/ ... class_3+/)", root)
    pattern = re.compile(patient_pattern) if patient_pattern else None
    rows = []
    for split, folder in _class_parents(root):
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            score = class_folder_score(child.name)
            if score is None:
                expected = "class_0, class_1, class_2, class_3+"
                raise ManifestError(f"folder {child.name!r} is not a class folder ({expected})", child)
            for image in sorted(child.rglob("*")):
                if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                    continue
                rows.append({
                    "slide": os.path.relpath(image.resolve(), out_path.parent.resolve()),
                    "her2": score, "patient": _patient(image, pattern), "split": split,
                })  # fmt: skip
    if not rows:
        raise ManifestError("no image (png, jpg, tif) in class folders class_0/ ... class_3+/", root)
    frame = pd.DataFrame(rows)
    if frame["split"].eq("").all():
        frame = frame.drop(columns="split")
    if mpp is not None:
        frame["mpp"] = float(mpp)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_path, frame, index=False)
    return frame


def _class_parents(root: Path) -> list[tuple[str, Path]]:
    """``[(split, folder holding class folders)]``: ``root`` itself, or its train/val/test folders."""
    children = [p for p in root.iterdir() if p.is_dir()]
    splits = [p for p in children if p.name.lower() in SPLIT_FOLDERS]
    if splits:
        return [(p.name.lower(), p) for p in sorted(splits)]
    return [("", root)]


def _patient(image: Path, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return image.stem
    found = pattern.search(image.name)
    if found is None or not found.groups():
        raise ManifestError(f"--patient-pattern {pattern.pattern!r} finds no group in the file name", image)
    return found.group(1)
