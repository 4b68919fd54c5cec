"""HER2 membrane quantifier: throughput (megapixels/s) and agreement with synthetic truth.

1. Per tile: ``quantify_image`` on 1024 x 1024 px synthetic HER2 IHC tiles at 0.5 µm/px.
2. Per slide: ``quantify_file`` on a synthetic pyramidal slide, tiled over tissue, in the main
   process and over worker processes (slide megapixels at 0.5 µm/px per second of wall time).
3. Agreement (at the synthetic generator's staining scale, ``SYNTHETIC_LAB``): the ASCO/CAP
   category of synthetic patches and of small synthetic slides
   (``make_cohort``, 1.5 x 1.0 mm, scored by ``quantify_file``) against their truth, and the
   membrane class of matched tumour cells (nearest truth cell within 4 µm); confusion matrices.
4. Real HER2 IHC images (``../shared/data/real``, BCI and MIST IHC sides, when present): category,
   HER2 index and class shares per image, beside the BCI whole-slide label (a weak check).

Run: .venv/bin/python benchmarks/bench_quantify.py [--patches 10] [--slides 1] [--cohort 24] [--seed 1,7,11,3]
[--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MPP = 0.5
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
CLASSES = ("none", "faint-incomplete", "faint-complete", "moderate-complete", "intense-complete")
CATEGORIES = ("0", "1+", "2+", "3+")


def confusion(truth: pd.Series, found: pd.Series, labels: tuple[str, ...]) -> pd.DataFrame:
    """Counts, rows truth and columns found, in ``labels`` order (plus any other found value)."""
    extra = tuple(sorted(set(found) - set(labels)))
    table = pd.crosstab(pd.Categorical(truth, labels), pd.Categorical(found, labels + extra), dropna=False)
    table.index.name, table.columns.name = "truth", "found"
    return table


def _match(found: pd.DataFrame, truth: pd.DataFrame, scale: float = 1.0) -> pd.DataFrame:
    from scipy.spatial import cKDTree

    truth = truth[truth["is_tumour"]]
    dist, idx = cKDTree(found[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy() * scale)
    ok = dist * MPP <= 4.0
    return pd.DataFrame(
        {
            "truth": truth["membrane_class"].to_numpy()[ok],
            "found": found["membrane_class"].astype(str).to_numpy()[idx[ok]],
        }
    )


def bench_tiles(n: int) -> float:
    from her2score.data.synth import render_ihc_patch
    from her2score.quantify import quantify_image

    tiles = [render_ihc_patch(c, (1024, 1024), MPP, seed=7)[0] for c in ("0", "1+", "2+", "3+")][:n]
    quantify_image(tiles[0], MPP)  # warm-up (imports)
    start = time.perf_counter()
    for rgb in tiles:
        quantify_image(rgb, MPP)
    seconds = (time.perf_counter() - start) / len(tiles)
    return 1.048576 / seconds


def agreement_patches(n_per_category: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from her2score.data.synth import render_ihc_patch
    from her2score.errors import Her2ScoreError
    from her2score.quantify import quantify_image
    from her2score.quantify.thresholds import SYNTHETIC_LAB

    rows, pairs = [], []
    for category in ("0", "1+", "2+", "3+"):
        for i in range(n_per_category):
            rgb, truth = render_ihc_patch(category, (512, 512), MPP, seed=1000 + i, site=i % 4)
            try:
                result = quantify_image(rgb, MPP, SYNTHETIC_LAB)
            except Her2ScoreError as exc:  # counted as a miss, and said
                print(f"patch {category} seed {1000 + i}: {exc}")
                rows.append((category, "failed"))
                continue
            rows.append((category, result.accumulator.summary(SYNTHETIC_LAB)["category"]))
            pairs.append(_match(result.cells, truth))
    return pd.DataFrame(rows, columns=["truth", "found"]), pd.concat(pairs)


def bench_slides(folder: Path, n: int, workers: int) -> tuple[list[dict], pd.DataFrame]:
    from her2score.data.synth.patches import _case
    from her2score.data.synth.slides import SlideSpec, write_slide
    from her2score.quantify import quantify_file
    from her2score.quantify.thresholds import SYNTHETIC_LAB
    from her2score.slide import open_slide

    rows, pairs = [], []
    categories = ("0", "1+", "2+", "3+")
    for i in range(n):
        category = categories[i % 4]
        spec = SlideSpec(
            _case(category, "her2", np.random.default_rng(i)), site=i % 4, seed=50 + i, size_mm=(3, 2)
        )
        path = write_slide(folder / f"slide_{i}_{category.replace('+', 'p')}.tiff", spec)
        with open_slide(path) as slide:
            megapixels = slide.width * slide.height * (slide.mpp / MPP) ** 2 / 1e6
        for w in sorted({0, workers}):
            start = time.perf_counter()
            result = quantify_file(
                path, folder / f"out_{w}", thresholds=SYNTHETIC_LAB, workers=w, whole_image_pixels=0
            )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "slide": path.name,
                    "truth": category,
                    "found": result.row["category"],
                    "workers": w,
                    "megapixels": megapixels,
                    "seconds": seconds,
                    "mp_per_s": megapixels / seconds,
                    "tumour_cells": result.row["n_tumour_cells"],
                }
            )
        truth = pd.read_parquet(path.with_name(path.stem + ".cells.parquet"))
        found = pd.read_parquet(result.cells_path)
        pairs.append(_match(found, truth))
    return rows, pd.concat(pairs)


def agreement_cohort(folder: Path, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Small synthetic slides (1.5 x 1.0 mm pyramidal TIFFs from ``make_cohort``) via ``quantify_file``."""
    from her2score.data.synth import make_cohort
    from her2score.errors import Her2ScoreError
    from her2score.quantify import quantify_file
    from her2score.quantify.thresholds import SYNTHETIC_LAB

    manifest = make_cohort(folder, n, seed=seed, kind="slides", size_mm=(1.5, 1.0), workers=0)
    rows, pairs = [], []
    for rec in pd.read_csv(manifest).itertuples():
        path = manifest.parent / rec.slide
        try:
            result = quantify_file(path, folder / "out", thresholds=SYNTHETIC_LAB)
        except Her2ScoreError as exc:  # counted as a miss, and said
            print(f"slide {rec.slide}: {exc}")
            rows.append({"slide": f"{seed}/{rec.slide}", "truth": str(rec.her2), "found": "failed"})
            continue
        row = result.row
        rows.append(
            {
                "slide": f"{seed}/{rec.slide}",
                "truth": str(rec.her2),
                "found": row["category"],
                "her2_index": row["her2_index"],
                "her2_index_mean": row["her2_index_mean"],
                "h_score": row["h_score"],
                "tumour": row["n_tumour_cells"],
                **{c[:10]: row[f"pct_{c.replace('-', '_')}"] for c in CLASSES[1:]},
            }
        )
        truth = pd.read_parquet(path.with_name(path.stem + ".cells.parquet"))
        pairs.append(_match(pd.read_parquet(result.cells_path), truth))
    return pd.DataFrame(rows), pd.concat(pairs)


def rank_agreement(scores: pd.DataFrame) -> str:
    """Spearman of the continuous scores against the true category, and the AUC of each for 3+
    against the rest (how well they would rank cores by a pathologist's score)."""
    from scipy.stats import mannwhitneyu, spearmanr

    ok = scores[scores["found"] != "failed"]
    level = ok["truth"].map({c: i for i, c in enumerate(CATEGORIES)})
    parts = []
    for col in ("her2_index", "her2_index_mean", "h_score"):
        rho = spearmanr(level, ok[col]).statistic
        pos, neg = ok.loc[level == 3, col], ok.loc[level < 3, col]
        auc = float("nan")
        if len(pos) and len(neg):
            auc = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
        parts.append(f"{col} Spearman {rho:.3f}, 3+ vs rest AUC {auc:.3f}")
    return "; ".join(parts)


def real_images(folder: Path) -> pd.DataFrame:
    """Score every BCI and MIST IHC image; one row each with the BCI label when there is one."""
    from her2score.quantify import Thresholds, quantify_image
    from her2score.slide import load_rgb

    rows = []
    files = sorted((folder / "bci-her2-pairs" / "IHC").glob("*"))
    files += sorted((folder / "mist-her2-pairs" / "IHC").glob("*"))
    for path in files:
        result = quantify_image(load_rgb(path), MPP, path=path)
        row = result.accumulator.summary(Thresholds())
        label = path.stem.rsplit("_", 1)[1] if path.parent.parent.name.startswith("bci") else "-"
        rows.append(
            {
                "image": f"{path.parent.parent.name.split('-')[0]}/{path.name}",
                "label": label,
                "category": row["category"] + (f" {row['her2_0_subtype']}" if row["her2_0_subtype"] else ""),
                "her2_index": round(row["her2_index"], 1),
                "h_score": round(row["h_score"]),
                "tumour_cells": row["n_tumour_cells"],
                **{c: round(row[f"pct_{c.replace('-', '_')}"]) for c in CLASSES},
                "stains": result.stain_source,
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=10, help="synthetic 512 px patches per category")
    parser.add_argument("--slides", type=int, default=1, help="synthetic 3 x 2 mm slides (categories cycle)")
    parser.add_argument("--tiles", type=int, default=4, help="1024 px tiles timed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cohort", type=int, default=24, help="small 1.5 x 1.0 mm synthetic slides")
    parser.add_argument(
        "--seed", default="1", help="seed(s) of the small-slide cohort(s), comma-separated: 1,7,11,3"
    )
    parser.add_argument("--real", type=int, default=1, help="1: score the real IHC images when present")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 12)

    tile_rate = bench_tiles(args.tiles)
    print(f"per tile (1024 x 1024 px at {MPP} µm/px, main process): {tile_rate:.2f} MP/s")

    if args.slides:
        with tempfile.TemporaryDirectory() as tmp:
            rows, slide_cells = bench_slides(Path(tmp), args.slides, args.workers)
        print("\nwhole slides (tiled over tissue, streaming):")
        print(pd.DataFrame(rows).round(2).to_string(index=False))
        print("slide cell membrane-class confusion (rows truth):")
        print(confusion(slide_cells.truth, slide_cells.found, CLASSES))

    if args.cohort:
        all_scores, all_cells = [], []
        seeds = [int(v) for v in str(args.seed).split(",")]
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                scores, cells = agreement_cohort(Path(tmp), args.cohort, seed)
            if len(seeds) > 1:  # per cohort; the pooled figures follow
                right = int((scores.truth == scores.found).sum())
                print(f"cohort seed {seed}: {right}/{len(scores)} slides right; rows truth, columns found:")
                print(confusion(scores.truth, scores.found, CATEGORIES))
            all_scores.append(scores)
            all_cells.append(cells)
        scores, cells = pd.concat(all_scores), pd.concat(all_cells)
        print(f"\ncategory confusion on {len(scores)} small synthetic slides (rows truth, columns found):")
        print(confusion(scores.truth, scores.found, CATEGORIES))
        right = int((scores.truth == scores.found).sum())
        print(f"slide category agreement: {right}/{len(scores)} = {right / len(scores):.1%}")
        missed = scores[scores.truth != scores.found]
        if len(missed):
            print("slides read wrong (class shares in % of tumour cells):")
            print(missed.round(1).to_string(index=False))
        print(rank_agreement(scores))
        print("slide cell membrane-class confusion (rows truth):")
        print(confusion(cells.truth, cells.found, CLASSES))
        print(f"slide cell agreement: {(cells.truth == cells.found).mean():.1%} over {len(cells)} cells")

    if args.patches:
        scores, cells = agreement_patches(args.patches)
        print(f"\ncategory confusion on {len(scores)} synthetic patches (rows truth, columns found):")
        print(confusion(scores.truth, scores.found, CATEGORIES))
        print(f"category agreement: {(scores.truth == scores.found).mean():.1%}")
        print("\ncell membrane-class confusion (tumour cells matched within 4 µm):")
        print(confusion(cells.truth, cells.found, CLASSES))
        print(f"cell agreement: {(cells.truth == cells.found).mean():.1%} over {len(cells)} cells")
    if args.real and REAL.is_dir():
        print(f"\nreal HER2 IHC images at {MPP} µm/px (BCI label: whole-slide level, weak):")
        print(real_images(REAL).to_string(index=False))
    print("\ncommand:", " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
