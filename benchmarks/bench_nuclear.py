"""Nuclear markers (ER/PR, Ki-67): percent positive against synthetic truth on small cohorts.

ER/PR: renders ``--n`` synthetic ER and PR IHC patches (``render_ihc_patch``, 512 x 512 px at
0.5 µm/px, positive and negative cases alternating, sites 0-3), scores each with
:func:`her2score.quantify.quantify_nuclear_image` and prints per patch the true and measured percent
of positive tumour nuclei and the ASCO/CAP 2020 group, then the mean absolute difference, Spearman's
rank correlation and the status agreement.

Ki-67: ``--ki67`` hard tiles (:func:`her2score.data.synth.ki67.render_ki67_tile`, 768 px at 0.5 µm/px:
crowded touching nuclei, faint positives, cycling lymphocytes), positive fractions 2-80 %; the index
over tumour nuclei against the truth; ``pct_positive_all_nuclei`` (every nucleus found) against the tumour
truth (what the lymphocyte leak would give) and against the all-nuclei truth.

Robustness sweep (``--sweep N``): N hard Ki-67 tiles per condition, each scored as a user would, through
``her2score quantify --marker ki67`` (:func:`~her2score.quantify.nuclear.quantify_nuclear_file`, files
in a temporary folder): the default tiles at 0.5 µm/px; scanned at 0.25 µm/px (a 40x scan, as
immunofluorescence-registered data often are) read by the file path (downsampled to its 0.5 µm/px work
resolution) and measured natively at 0.25 µm/px (``quantify_nuclear_image``); near-black positives
(the strong third at 1.2-2.0 OD DAB, hematoxylin hidden); a dense lymphocyte infiltrate (half the
nuclei); a weak counterstain (hematoxylin x 0.4); JPEG at quality 70. Per condition: the index MAE,
bias and Spearman against the tumour truth, and ``pct_positive_all_nuclei`` against the all-nuclei
truth (what an immunofluorescence truth labelling every cell gives), with the gap between the two.

Run: .venv/bin/python benchmarks/bench_nuclear.py [--n 16] [--seed 100] [--size 512] [--ki67 10]
     [--sweep 6] [--conditions base,mpp025,...]
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
from scipy.stats import spearmanr

from her2score import rules
from her2score.data.synth.patches import render_ihc_patch
from her2score.quantify import Thresholds, quantify_nuclear_image

MPP = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument(
        "--architecture", default="solid", choices=("solid", "glandular"), help="ER/PR patches' tumour"
    )
    ap.add_argument("--ki67", type=int, default=10, help="hard synthetic Ki-67 tiles (0: none)")
    ap.add_argument("--sweep", type=int, default=0, help="Ki-67 tiles per robustness condition (0: none)")
    ap.add_argument("--conditions", default=",".join(SWEEP), help="sweep conditions, comma-separated")
    args = ap.parse_args()
    if args.n > 0:
        receptor_cohort(args)
    if args.ki67 > 0:
        ki67_cohort(args.ki67, args.seed)
    if args.sweep > 0:
        ki67_sweep(args.sweep, args.seed, [c for c in args.conditions.split(",") if c])
    print("command:", " ".join(["python", *sys.argv]))


def ki67_cohort(n: int, seed: int) -> None:
    """Hard synthetic Ki-67 tiles: the index over tumour nuclei against the truth."""
    from her2score.data.synth.ki67 import render_ki67_tile, true_all_nuclei_index, true_ki67_index

    fractions = (0.02, 0.08, 0.15, 0.25, 0.4, 0.6, 0.8, 0.3, 0.5, 0.1)
    rows = []
    started = time.perf_counter()
    for i in range(n):
        rgb, truth = render_ki67_tile(fractions[i % len(fractions)], size=768, mpp=MPP, seed=seed + i)
        result = quantify_nuclear_image(rgb, MPP)
        row = result.accumulator.summary("ki67", Thresholds())
        rows.append(
            {
                "tile": f"ki67-{seed + i}",
                "true_index": true_ki67_index(truth),
                "found_index": row["ki67_index"],
                "all_nuclei_index": row["pct_positive_all_nuclei"],
                "true_all": true_all_nuclei_index(truth),
                "true_tumour": int((truth["kind"] == "tumour").sum()),
                "found_tumour": row["n_nuclei"],
                "lymphocytes": row["n_lymphocytes"],
                "lymphocytes_pos": row["n_lymphocytes_positive"],
            }
        )
    frame = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.float_format", "{:.1f}".format):
        print(frame.to_string(index=False))
    ok = frame["found_index"].notna()
    err = (frame.loc[ok, "found_index"] - frame.loc[ok, "true_index"]).abs()
    bias = (frame.loc[ok, "found_index"] - frame.loc[ok, "true_index"]).mean()
    rho = spearmanr(frame.loc[ok, "true_index"], frame.loc[ok, "found_index"]).statistic
    leak = (frame["all_nuclei_index"] - frame["true_index"]).abs().mean()
    all_err = (frame["all_nuclei_index"] - frame["true_all"]).abs().mean()
    print(
        f"\n{len(frame)} Ki-67 tiles ({int(ok.sum())} scorable): index MAE {err.mean():.2f} points "
        f"(max {err.max():.1f}, bias {bias:+.1f}), Spearman {rho:.3f}; pct_positive_all_nuclei against the "
        f"tumour truth (the lymphocyte leak) {leak:.2f}, against the all-nuclei truth {all_err:.2f}; "
        f"{time.perf_counter() - started:.0f} s"
    )


#: Robustness conditions: render_ki67_tile keyword arguments, scan resolution (µm/px), how it is read.
SWEEP: dict[str, dict] = {
    "base": {"render": {}, "mpp": 0.5},
    "mpp025-file": {"render": {}, "mpp": 0.25},
    "mpp025-native": {"render": {}, "mpp": 0.25, "native": True},
    "dark": {"render": {"strong_od": (1.2, 2.0)}, "mpp": 0.5},
    "lymph-dense": {"render": {"lymphocyte_fraction": 0.5}, "mpp": 0.5},
    "weak-hema": {"render": {"hematoxylin_scale": 0.4}, "mpp": 0.5},
    "jpeg70": {"render": {}, "mpp": 0.5, "jpeg": 70},
}
#: The sweep's positive fractions (cycled): low, intermediate and high Ki-67.
SWEEP_FRACTIONS = (0.03, 0.5, 0.12, 0.7, 0.25, 0.4, 0.06, 0.85)
#: Tile side in µm (768 px at 0.5 µm/px).
SWEEP_UM = 384.0


def ki67_sweep(n: int, seed: int, conditions: list[str]) -> None:
    """Hard synthetic Ki-67 tiles under each robustness condition (:data:`SWEEP`), scored through the
    file path as ``her2score quantify --marker ki67 --mpp M`` scores them."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from her2score.data.synth.ki67 import render_ki67_tile, true_all_nuclei_index, true_ki67_index
    from her2score.errors import Her2ScoreError
    from her2score.quantify.nuclear import quantify_nuclear_file

    unknown = sorted(set(conditions) - set(SWEEP))
    if unknown:
        raise SystemExit(f"unknown sweep condition(s) {unknown}; known: {', '.join(SWEEP)}")
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-nuclear-") as tmp:
        for name in conditions:
            cond = SWEEP[name]
            mpp = cond["mpp"]
            rows = []
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(n):
                frac = SWEEP_FRACTIONS[i % len(SWEEP_FRACTIONS)]
                size = round(SWEEP_UM / mpp)
                rgb, truth = render_ki67_tile(frac, size=size, mpp=mpp, seed=seed + i, **cond["render"])
                try:
                    if cond.get("native"):
                        result = quantify_nuclear_image(rgb, mpp)
                        row = result.accumulator.summary("ki67", Thresholds())
                    else:
                        path = Path(tmp) / f"{name}-{i}.{'jpg' if cond.get('jpeg') else 'png'}"
                        options = {"quality": cond["jpeg"]} if cond.get("jpeg") else {}
                        Image.fromarray(rgb).save(path, **options)
                        row = quantify_nuclear_file(path, Path(tmp), "ki67", mpp=mpp).row
                except Her2ScoreError as exc:  # reported, counted as not scored
                    print(f"{name} tile {i}: {exc}", flush=True)
                    row = {"ki67_index": None, "pct_positive_all_nuclei": None}
                rows.append(
                    {
                        "true": true_ki67_index(truth),
                        "found": row["ki67_index"],
                        "true_all": true_all_nuclei_index(truth),
                        "found_all": row.get("pct_positive_all_nuclei"),
                    }
                )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            f = pd.DataFrame(rows).astype(float)
            ok = f["found"].notna()
            err = f.loc[ok, "found"] - f.loc[ok, "true"]
            err_all = f["found_all"] - f["true_all"]
            rho = spearmanr(f.loc[ok, "true"], f.loc[ok, "found"]).statistic if ok.sum() > 2 else float("nan")
            gap_found = (f["found"] - f["found_all"]).abs().mean()
            gap_true = (f["true"] - f["true_all"]).abs().mean()
            lines.append(
                f"{name:14s} {int(ok.sum()):2d}/{n:<2d} index MAE {err.abs().mean():5.2f} "
                f"(max {err.abs().max():5.1f}, bias {err.mean():+5.1f}) Spearman {rho:.3f} | "
                f"all-nuclei MAE {err_all.abs().mean():5.2f} (bias {err_all.mean():+5.1f}) | "
                f"clinical - all-nuclei found {gap_found:5.2f}, true {gap_true:5.2f} | "
                f"{cpu:.0f} CPU-s, {wall:.0f} s"
            )
            print(lines[-1], flush=True)
    print(f"\nKi-67 sweep, {n} tiles per condition ({SWEEP_UM:.0f} µm square), seeds {seed}-{seed + n - 1}:")
    print("\n".join(lines))


def receptor_cohort(args: argparse.Namespace) -> None:
    """Synthetic ER/PR patches: percent positive and status against the truth."""
    rows = []
    started = time.perf_counter()
    for i in range(args.n):
        marker = ("er", "pr")[i % 2]
        status = ("pos", "pos", "neg", "neg")[i % 4] if i % 8 < 4 else ("pos", "neg")[i % 2]
        rgb, truth = render_ihc_patch(
            status,
            size=(args.size, args.size),
            mpp=MPP,
            seed=args.seed + i,
            site=i % 4,
            marker=marker,
            architecture=args.architecture,
        )
        tumour = truth[truth["is_tumour"]]
        true_pct = 100.0 * float(tumour["nuclear_positive"].mean())
        row = quantify_nuclear_image(rgb, MPP).accumulator.summary(marker, Thresholds())
        rows.append(
            {
                "patch": f"{marker}-{status}-{args.seed + i}",
                "true_pct": true_pct,
                "found_pct": row["pct_positive"],
                "true_status": rules.receptor_group(true_pct),
                "found_status": row["receptor_status"],
                "true_nuclei": len(tumour),
                "found_nuclei": row["n_nuclei"],
                "h_score": row["h_score"],
                "allred": row["allred"],
            }
        )
    frame = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.float_format", "{:.1f}".format):
        print(frame.to_string(index=False))
    ok = frame["found_pct"].notna()
    err = (frame.loc[ok, "found_pct"] - frame.loc[ok, "true_pct"]).abs()
    rho = spearmanr(frame.loc[ok, "true_pct"], frame.loc[ok, "found_pct"]).statistic
    agree = float((frame["true_status"] == frame["found_status"]).mean())
    print(
        f"\n{len(frame)} patches ({int(ok.sum())} scorable): pct_positive MAE {err.mean():.2f} points "
        f"(max {err.max():.1f}), Spearman {rho:.3f}, status agreement {100 * agree:.0f} %, "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
