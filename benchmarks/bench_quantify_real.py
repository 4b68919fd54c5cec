"""HER2 quantifier on every real IHC image in ``../shared/data/real``: category and HER2 index per image
beside the slide-level label from the file name, overlays saved for a look by eye.

Scores the BCI IHC patches (``bci-her2-pairs/IHC``, label = the whole slide's HER2 level in the file
name, a weak check: a patch of a 3+ slide may show stroma) and the IHC side of the MIST pairs (no
label) with :func:`her2score.quantify.quantify_batch` at 0.5 µm/px (the BCI and MIST patches carry no
resolution; both are 20x scans) and the default thresholds, writing each ``<stem>.overlay.png`` into
``--out``. Exits 0 with a message when the data folder is absent. Nothing is tuned to these images.

Run: .venv/bin/python benchmarks/bench_quantify_real.py [--out /tmp/her2score-real-overlays] [--real DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

MPP = 0.5
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def real_ihc_images(folder: Path) -> list[Path]:
    """The BCI IHC patches, then the MIST pairs' IHC images, each set sorted by name."""
    files = sorted(p for p in (folder / "bci-her2-pairs" / "IHC").glob("*") if p.is_file())
    return files + sorted(p for p in (folder / "mist-her2-pairs" / "IHC").glob("*") if p.is_file())


def label_of(path: Path) -> str:
    """The BCI slide-level label (``NNNNN_{train,test}_{0,1+,2+,3+}``), ``-`` for unlabelled images."""
    if path.parent.parent.name.startswith("bci"):
        return path.stem.rsplit("_", 1)[1]
    return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/her2score-real-overlays"))
    parser.add_argument("--real", type=Path, default=REAL, help="the real-data folder")
    args = parser.parse_args(argv)
    if not args.real.is_dir():
        print(f"skipped: no real data at {args.real}")
        return 0
    files = real_ihc_images(args.real)
    if not files:
        print(f"skipped: no IHC images under {args.real}")
        return 0
    from her2score.quantify import quantify_batch

    started = time.perf_counter()
    result = quantify_batch(files, args.out, mpp=MPP)
    frame = result.frame
    table = pd.DataFrame(
        {
            "image": [f"{Path(p).parent.parent.name.split('-')[0]}/{Path(p).name}" for p in frame["image"]],
            "label": [label_of(Path(p)) for p in frame["image"]],
            "category": [
                c + (f" {s}" if isinstance(s, str) and s else "")
                for c, s in zip(frame["category"].fillna(""), frame["her2_0_subtype"], strict=True)
            ],
            "her2_index": frame["her2_index"].round(1),
            "h_score": frame["h_score"].round(0),
            "tumour_cells": frame["n_tumour_cells"],
            **{
                kind[:5]: frame[f"n_cells_{kind}"]
                for kind in ("stromal", "inflammatory", "endothelial", "other")
            },
            "stains": frame["stain_vectors"].str.slice(0, 34),
            "status": frame["status"],
        }
    )
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    labelled = table[table["label"] != "-"]
    same = (labelled["category"].str.split().str[0] == labelled["label"]).sum()
    print(
        f"\n{len(table)} images ({len(labelled)} labelled, {same} read their slide's label), "
        f"{len(result.failed)} failed, {time.perf_counter() - started:.0f} s; overlays in {args.out}"
    )
    print("command:", " ".join(["python", *sys.argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
