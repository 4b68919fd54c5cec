"""The BCI dataset layout (Liu et al., CVPR Workshops 2022): paired H&E / HER2-IHC patches.

``ROOT/HE/`` and ``ROOT/IHC/`` hold files of the same name, ``NNNNN_{train,test}_{0,1+,2+,3+}.png``,
directly or under ``train/`` and ``test/`` subfolders. The official split and the HER2 level come from
the name. The files end in ``.png`` but may hold JPEG bytes (they are read by content). The level is
that of the whole slide the patch was cut from, not of the patch: some "3+" patches show stroma or fat
with little stain, so the labels are weak.

:func:`find_bci_pairs` checks every pair (a partner missing, or of another size, is an error naming
both files); :func:`write_bci_manifests` writes the manifests of the paired model and of its
single-stain baselines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from her2score.errors import ManifestError

BCI_NAME = re.compile(r"^(?P<index>\d+)_(?P<split>train|test)_(?P<her2>0|1\+|2\+|3\+)\.png$", re.IGNORECASE)
#: BCI patches are 1024 px wide at 20x: about 0.46-0.5 µm/px (PNG files carry no resolution).
BCI_MPP = 0.5
LABEL_WARNING = (
    "BCI HER2 levels are slide-level: every patch carries the level of the slide it was cut from, so some "
    "patches show little of the stain that scored it; treat accuracy on BCI as agreement with a weak label"
)


@dataclass(frozen=True)
class BCIPair:
    """One H&E patch and the IHC patch of the next section, with the official split and HER2 level."""

    he: Path
    ihc: Path
    index: str
    split: str
    her2: str


def _stain_folder(root: Path, name: str) -> Path:
    for candidate in (root / name, root / name.lower()):
        if candidate.is_dir():
            return candidate
    raise ManifestError(f"no {name}/ folder (the BCI layout has HE/ and IHC/ side by side)", root)


def _images(folder: Path) -> dict[str, Path]:
    """Relative name (``train/00001_train_1+.png`` or ``00001_train_1+.png``) -> path."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:  # by content: a .png may hold JPEG bytes
            return img.size
    except Exception as exc:
        raise ManifestError(f"cannot be read as an image ({type(exc).__name__}: {exc})", path) from exc


def _matched_files(
    he_dir: Path, ihc_dir: Path, check_sizes: bool, root: Path
) -> list[tuple[str, Path, Path]]:
    """``(relative name, H&E path, IHC path)`` of every pair of same-named files; a file without its
    partner, or a pair of two sizes, is an error naming both files."""
    he, ihc = _images(he_dir), _images(ihc_dir)
    for name in sorted(set(he) ^ set(ihc)):
        have, missing = (he[name], ihc_dir / name) if name in he else (ihc[name], he_dir / name)
        raise ManifestError(f"has no partner: {missing} does not exist (pairs share a file name)", have)
    out = []
    for name in sorted(he, key=lambda n: (Path(n).name, n)):
        if check_sizes:
            he_size, ihc_size = _image_size(he[name]), _image_size(ihc[name])
            if he_size != ihc_size:
                raise ManifestError(
                    f"is {he_size[0]}x{he_size[1]} px but its IHC partner {ihc[name]} is "
                    f"{ihc_size[0]}x{ihc_size[1]} px (a pair must be the same size)",
                    he[name],
                )
        out.append((name, he[name], ihc[name]))
    if not out:
        raise ManifestError(f"no image pairs under {he_dir.name}/ and {ihc_dir.name}/", root)
    return out


def find_bci_pairs(root: str | Path, check_sizes: bool = True) -> list[BCIPair]:
    """Every H&E / IHC pair under ``root`` in the BCI layout, sorted by name.

    Raises:
        ManifestError: no HE/ or IHC/ folder, no pairs, a file name outside the BCI pattern, a file
            without its partner, or a pair whose images differ in size (naming both files).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError("is not a folder (expected the BCI root, with HE/ and IHC/)", root)
    he_dir, ihc_dir = _stain_folder(root, "HE"), _stain_folder(root, "IHC")
    pairs = []
    for name, he, ihc in _matched_files(he_dir, ihc_dir, False, root):
        match = BCI_NAME.match(Path(name).name)
        if match is None:
            raise ManifestError("file name is not in the BCI pattern NNNNN_{train,test}_{0,1+,2+,3+}.png", he)
        pairs.append(BCIPair(he, ihc, match["index"], match["split"].lower(), match["her2"]))
    if check_sizes:  # after the names: a wrong name is the likelier mistake, and cheaper to find
        _matched_files(he_dir, ihc_dir, True, root)
    return pairs


@dataclass(frozen=True)
class UnlabelledPair:
    """An H&E patch and its IHC partner with no HER2 score (MIST and similar paired sets)."""

    he: Path
    ihc: Path
    name: str
    slide: str  # the slide the patch was cut from, when the name tells (MIST: before the first "_")
    split: str


#: Folder pairs (H&E, IHC, split) an unlabelled paired set may use: BCI-like, or MIST's TrainValAB.
UNLABELLED_LAYOUTS = (("HE", "IHC", "train"), ("trainA", "trainB", "train"), ("valA", "valB", "test"))


def find_unlabelled_pairs(root: str | Path, check_sizes: bool = True) -> list[UnlabelledPair]:
    """Every H&E / IHC pair under ``root`` with matching file names and no label (MIST-style).

    Layouts: ``HE/`` + ``IHC/`` (optionally with ``train/`` and ``test/``/``val/`` subfolders), or MIST's
    ``trainA/`` + ``trainB/`` and ``valA/`` + ``valB/`` (A: H&E, B: IHC; ``val`` becomes the test split).

    Raises:
        ManifestError: no such folders, no pairs, a file without its partner, or a pair whose images
            differ in size (naming both files).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError("is not a folder (expected HE/ and IHC/, or trainA/ and trainB/)", root)
    pairs = []
    for he_name, ihc_name, split in UNLABELLED_LAYOUTS:
        he_dir = next((d for d in (root / he_name, root / he_name.lower()) if d.is_dir()), None)
        ihc_dir = next((d for d in (root / ihc_name, root / ihc_name.lower()) if d.is_dir()), None)
        if he_dir is None and ihc_dir is None:
            continue
        if he_dir is None or ihc_dir is None:
            have = he_dir or ihc_dir
            raise ManifestError(f"has no partner folder {he_name if he_dir is None else ihc_name}/", have)
        for name, he, ihc in _matched_files(he_dir, ihc_dir, check_sizes, root):
            first = Path(name).parts[0].lower() if len(Path(name).parts) > 1 else ""
            sub = "test" if first in ("test", "val") else ("train" if first == "train" else split)
            stem = Path(name).stem
            pairs.append(UnlabelledPair(he, ihc, name, stem.split("_")[0] if "_" in stem else stem, sub))
    if not pairs:
        raise ManifestError("no HE/ and IHC/ (or trainA/ and trainB/) folders with image pairs", root)
    return pairs


def write_unlabelled_manifest(pairs: list[UnlabelledPair], path: str | Path, mpp: float = BCI_MPP) -> Path:
    """The paired manifest without labels: ``slide`` (IHC), ``he``, ``patient`` (the slide, so that a
    split keeps a slide's patches together), ``split``, ``mpp``."""
    from her2score.io import write_csv

    rows = [
        {"slide": str(p.ihc.resolve()), "he": str(p.he.resolve()), "patient": p.slide, "split": p.split,
         "mpp": mpp}
        for p in pairs
    ]  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_csv(path, pd.DataFrame(rows, columns=["slide", "he", "patient", "split", "mpp"]))


def pairs_frame(pairs: list[BCIPair], mpp: float = BCI_MPP) -> pd.DataFrame:
    """The paired manifest: ``slide`` (IHC), ``he``, ``her2``, ``patient``, ``split``, ``mpp``.

    BCI names no patient or slide, so each patch is its own ``patient``: the validation rows carved
    from the training split may share a slide with training rows (the official test split does not).
    """
    rows = [
        {
            "slide": str(p.ihc.resolve()),
            "he": str(p.he.resolve()),
            "her2": p.her2,
            "patient": f"bci-{p.index}",
            "split": p.split,
            "mpp": mpp,
        }
        for p in pairs
    ]
    return pd.DataFrame(rows)


def write_bci_manifests(pairs: list[BCIPair], out: str | Path, mpp: float = BCI_MPP) -> dict[str, Path]:
    """Write ``pairs.csv`` (for ``pair`` models), ``he.csv`` and ``ihc.csv`` (``slide`` = the H&E or
    the IHC image, for single-stain baselines) under ``out``; returns their paths by name."""
    from her2score.io import write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pairs_frame(pairs, mpp)
    single = frame.drop(columns=["he"])
    he_only = single.assign(slide=frame["he"])
    return {
        "pairs": write_csv(out / "pairs.csv", frame),
        "he": write_csv(out / "he.csv", he_only),
        "ihc": write_csv(out / "ihc.csv", single),
    }
