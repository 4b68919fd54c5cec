"""HER2 quantifier on glandular tumour: synthetic tubular glands of columnar cells (``architecture=
"glandular"``, :mod:`her2score.data.synth.glands`), which nothing else in the project exercises.

For synthetic patches (512 px at 0.5 µm/px, every category and site) and small glandular slides
("cores", ``make_cohort(architecture="glandular")``, scored tiled by ``quantify_file``), under the
breast rulebook (the default) and the gastric one (``--rules gastric``: basolateral "U" membranes
count as complete), at the generator's staining scale (``SYNTHETIC_LAB``), prints:

* category agreement against the truth *of that rulebook* (the generator's category is the gastric
  one; for breast, basolateral cells are re-read as incomplete) and the confusion matrix;
* Spearman of ``her2_index`` and ``h_score`` against the truth category (0..3);
* per cell (nearest found cell within 4 µm of a true nucleus): detection of tumour cells, tumour-kind
  recall (found cell kind ``tumour``), fibroblasts and lymphocytes read as tumour, and membrane-class
  agreement of the matched tumour cells.

``--architecture solid`` runs the same on the solid (nests and sheets) generator, for comparison.

Run: .venv/bin/python benchmarks/bench_quantify_glands.py [--patches 6] [--cores 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MPP = 0.5
ARCHITECTURE = "glandular"
CATEGORIES = ("0", "1+", "2+", "3+")
MATCH_UM = 4.0


def truth_classes(truth: pd.DataFrame, rules: str) -> pd.Series:
    """True membrane class per cell under ``rules``: the breast rulebook reads a basolateral (U)
    membrane as incomplete, the gastric one as complete (the generator's class)."""
    classes = truth["membrane_class"].astype(str)
    if rules == "breast" and "membrane_pattern" in truth:
        u = (truth["membrane_pattern"] == "basolateral") & (classes != "none")
        classes = classes.where(~u, "faint-incomplete")
    return classes


def truth_category(truth: pd.DataFrame, rules: str) -> str:
    """The true HER2 category of a patch or core under ``rules`` (its tumour cells' classes)."""
    from her2score.rules import her2_category

    tumour = truth[truth["is_tumour"]]
    counts = truth_classes(tumour, rules).value_counts().to_dict()
    return her2_category(counts, organ=rules)


def match_cells(found: pd.DataFrame, truth: pd.DataFrame, rules: str) -> pd.DataFrame:
    """Each true tumour cell, fibroblast and lymphocyte with its nearest found cell (within 4 µm)."""
    from scipy.spatial import cKDTree

    if len(found) == 0:
        idx, ok = np.zeros(len(truth), dtype=np.int64), np.zeros(len(truth), dtype=bool)
    else:
        dist, idx = cKDTree(found[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
        ok = dist * MPP <= MATCH_UM
        idx = np.minimum(idx, len(found) - 1)
    kind = found["cell_kind"].astype(str).to_numpy()[idx] if len(found) else np.full(len(truth), "")
    cls = found["membrane_class"].astype(str).to_numpy()[idx] if len(found) else np.full(len(truth), "")
    return pd.DataFrame(
        {
            "type": truth["cell_type"].to_numpy(),
            "matched": ok,
            "kind": np.where(ok, kind, ""),
            "truth_class": truth_classes(truth, rules).to_numpy(),
            "found_class": np.where(ok, cls, ""),
        }
    )


def cell_figures(pairs: pd.DataFrame) -> str:
    """One line of per-cell figures from :func:`match_cells` pairs: detection, kinds, membrane classes."""
    t = pairs[pairs["type"] == "tumour"]
    det = t["matched"].mean()
    m = t[t["matched"]]
    recall = (m["kind"] == "tumour").mean()
    kinds = m["kind"].value_counts(normalize=True).round(3).to_dict()
    mt = m[m["kind"] == "tumour"]
    agree = (mt["truth_class"] == mt["found_class"]).mean()
    parts = [f"tumour cells detected {100 * det:.1f}% of {len(t)}", f"tumour-kind recall {100 * recall:.1f}%"]
    for cell_type in ("fibroblast", "lymphocyte"):
        s = pairs[(pairs["type"] == cell_type) & pairs["matched"]]
        parts.append(f"{cell_type}s read as tumour {100 * (s['kind'] == 'tumour').mean():.1f}% of {len(s)}")
    parts.append(f"membrane-class agreement {100 * agree:.1f}% of {len(mt)}")
    return "; ".join(parts) + f"\n  matched tumour cells by kind: {kinds}"


def spearman(rows: pd.DataFrame) -> str:
    """Spearman of ``her2_index`` and ``h_score`` against the true category level, failed images left out."""
    from scipy.stats import spearmanr

    ok = rows[rows["found"] != "failed"]
    level = ok["truth"].map(CATEGORIES.index)
    return ", ".join(
        f"{col} Spearman {spearmanr(level, ok[col]).statistic:.3f}" for col in ("her2_index", "h_score")
    )


def report(name: str, rows: pd.DataFrame, pairs: pd.DataFrame) -> None:
    """Print category agreement, Spearman, the confusion matrix and the per-cell figures of one run."""
    from her2score.rules import HER2_CATEGORIES

    right = (rows["truth"] == rows["found"]).sum()
    print(
        f"\n{name}: category {right}/{len(rows)} = {100 * right / max(len(rows), 1):.1f}%; {spearman(rows)}"
    )
    table = pd.crosstab(
        pd.Categorical(rows["truth"], HER2_CATEGORIES),
        pd.Categorical(rows["found"], sorted(set(HER2_CATEGORIES) | set(rows["found"]))),
        dropna=False,
    )
    table.index.name, table.columns.name = "truth", "found"
    print(table.to_string())
    print("  " + cell_figures(pairs))


def patches(n: int, seed: int, rules_list: list[str]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``n`` glandular 512 px patches per category, scored whole under each rulebook: per-image rows and
    per-cell pairs by rulebook."""
    from her2score.data.synth import render_ihc_patch
    from her2score.errors import Her2ScoreError
    from her2score.quantify import quantify_image
    from her2score.quantify.thresholds import SYNTHETIC_LAB

    out = {r: ([], []) for r in rules_list}
    for category in CATEGORIES:
        for i in range(n):
            s = 2000 + 100 * seed + i
            rgb, truth = render_ihc_patch(
                category, (512, 512), MPP, seed=s, site=i % 4, architecture=ARCHITECTURE
            )
            truth = truth[truth["cell_type"] != "adipocyte"]
            for rules in rules_list:
                t = dataclasses.replace(SYNTHETIC_LAB, her2_rules=rules)
                rows, pairs = out[rules]
                try:
                    result = quantify_image(rgb, MPP, t)
                except Her2ScoreError as exc:
                    print(f"patch {category} seed {s}: {exc}")
                    rows.append({"truth": truth_category(truth, rules), "found": "failed"})
                    continue
                summary = result.accumulator.summary(t)
                rows.append(
                    {
                        "truth": truth_category(truth, rules),
                        "found": summary["category"] if summary["scorable"] else "not scorable",
                        "her2_index": summary["her2_index"],
                        "h_score": summary["h_score"],
                    }
                )
                pairs.append(match_cells(result.cells, truth, rules))
    return {r: (pd.DataFrame(v[0]), pd.concat(v[1])) for r, v in out.items()}


def cores(
    folder: Path, n: int, seed: int, rules_list: list[str]
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``n`` glandular 1.2 mm cores written under ``folder`` and scored tiled by ``quantify_file`` under
    each rulebook: per-core rows and per-cell pairs by rulebook."""
    from her2score.data.synth import make_cohort
    from her2score.quantify import quantify_file
    from her2score.quantify.thresholds import SYNTHETIC_LAB

    manifest = make_cohort(
        folder, n, seed=seed, kind="slides", size_mm=(1.2, 1.2), mpp=MPP, workers=0, architecture=ARCHITECTURE
    )
    out = {r: ([], []) for r in rules_list}
    for rec in pd.read_csv(manifest).itertuples():
        path = manifest.parent / rec.slide
        truth = pd.read_parquet(path.with_name(path.stem + ".cells.parquet"))
        for rules in rules_list:
            t = dataclasses.replace(SYNTHETIC_LAB, her2_rules=rules)
            result = quantify_file(path, folder / f"out-{rules}", thresholds=t)
            row = result.row
            rows, pairs = out[rules]
            rows.append(
                {
                    "truth": truth_category(truth, rules),
                    "found": row["category"] or "not scorable",
                    "her2_index": row["her2_index"],
                    "h_score": row["h_score"],
                }
            )
            pairs.append(match_cells(pd.read_parquet(result.cells_path), truth, rules))
    return {r: (pd.DataFrame(v[0]), pd.concat(v[1])) for r, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the patches and cores under each rulebook and print the figures."""
    global MPP, ARCHITECTURE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=6, help="glandular 512 px patches per category")
    parser.add_argument("--cores", type=int, default=8, help="glandular 1.2 x 1.2 mm slides")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rules", default="breast,gastric", help="rulebooks to score under")
    parser.add_argument("--mpp", type=float, default=MPP, help="µm/px of the patches and cores")
    parser.add_argument("--architecture", default=ARCHITECTURE, choices=("glandular", "solid"))
    args = parser.parse_args(argv)
    MPP, ARCHITECTURE = args.mpp, args.architecture
    rules_list = [r.strip() for r in args.rules.split(",") if r.strip()]
    wall, cpu = time.perf_counter(), time.process_time()
    if args.patches:
        for rules, (rows, pairs) in patches(args.patches, args.seed, rules_list).items():
            report(f"{ARCHITECTURE} patches, {rules} rules", rows, pairs)
    if args.cores:
        with tempfile.TemporaryDirectory(prefix="bench-glands-") as tmp:
            for rules, (rows, pairs) in cores(Path(tmp), args.cores, args.seed, rules_list).items():
                report(f"{ARCHITECTURE} cores, {rules} rules", rows, pairs)
    print(f"\n{time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")
    print("command:", " ".join(["python", *sys.argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
