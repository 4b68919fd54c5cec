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


#: The level each BCI patch shows by eye (README table "Each BCI patch by eye"; 0/1+ = 0.5, stroma or fat
#: without tumour = 0): what the continuous scores should rank by, as a pathologist's score would.
BY_EYE = {
    "00052": 3, "00057": 3, "00361": 2, "00249": 2, "00003": 1, "00640": 0.5, "00000": 0.5, "00007": 0.5,
    "00004": 0, "00118": 0, "00002": 0, "00001": 0, "00011": 0,
}  # fmt: skip


def by_eye_ranking(table: pd.DataFrame) -> str:
    """Spearman's rho of the HER2 index and the H-score against the by-eye levels (all labelled BCI
    patches, and those with at least 20 tumour cells)."""
    from scipy.stats import spearmanr

    stems = table["image"].str.split("/").str[-1].str[:5]
    eye = stems.map(BY_EYE)
    rows = table[eye.notna()].assign(eye=eye[eye.notna()])
    scorable = rows[rows["tumour_cells"] >= 20]
    parts = [
        f"{col} {spearmanr(rows['eye'], rows[col]).statistic:.3f} "
        f"({spearmanr(scorable['eye'], scorable[col]).statistic:.3f} over the {len(scorable)} scorable)"
        for col in ("her2_index", "her2_index_mean", "h_score")
    ]
    return f"Spearman against the by-eye levels ({len(rows)} BCI patches): " + ", ".join(parts)


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
            "mean_index": frame["her2_index_mean"].round(1),
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
    print(
        by_eye_ranking(
            table.assign(
                her2_index=frame["her2_index"].to_numpy(),
                her2_index_mean=frame["her2_index_mean"].to_numpy(),
                h_score=frame["h_score"].to_numpy(),
            )
        )
    )
    print("command:", " ".join(["python", *sys.argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
