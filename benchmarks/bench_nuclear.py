"""Nuclear markers (ER/PR, Ki-67): percent positive against synthetic truth on small cohorts.

ER/PR: renders ``--n`` synthetic ER and PR IHC patches (``render_ihc_patch``, 512 x 512 px at
0.5 µm/px, positive and negative cases alternating, sites 0-3), scores each with
:func:`her2score.quantify.quantify_nuclear_image` and prints per patch the true and measured percent
of positive tumour nuclei and the ASCO/CAP 2020 group, then the mean absolute difference, Spearman's
rank correlation and the status agreement.

Ki-67: ``--ki67`` hard tiles (:func:`her2score.data.synth.ki67.render_ki67_tile`, 768 px at 0.5 µm/px:
crowded touching nuclei, faint positives, cycling lymphocytes), positive fractions 2-80 %; the index
over tumour nuclei against the truth, with the all-nuclei index (what the lymphocyte leak would give).

Run: .venv/bin/python benchmarks/bench_nuclear.py [--n 16] [--seed 100] [--size 512] [--ki67 10]
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
    ap.add_argument("--ki67", type=int, default=10, help="hard synthetic Ki-67 tiles (0: none)")
    args = ap.parse_args()
    if args.n > 0:
        receptor_cohort(args)
    if args.ki67 > 0:
        ki67_cohort(args.ki67, args.seed)
    print("command:", " ".join(["python", *sys.argv]))


def ki67_cohort(n: int, seed: int) -> None:
    """Hard synthetic Ki-67 tiles: the index over tumour nuclei against the truth."""
    from her2score.data.synth.ki67 import render_ki67_tile, true_ki67_index

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
                "all_nuclei_index": 100.0 * float(result.nuclei["positive"].mean()),
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
    print(
        f"\n{len(frame)} Ki-67 tiles ({int(ok.sum())} scorable): index MAE {err.mean():.2f} points "
        f"(max {err.max():.1f}, bias {bias:+.1f}), Spearman {rho:.3f}; all-nuclei index MAE {leak:.2f}; "
        f"{time.perf_counter() - started:.0f} s"
    )


def receptor_cohort(args: argparse.Namespace) -> None:
    """Synthetic ER/PR patches: percent positive and status against the truth."""
    rows = []
    started = time.perf_counter()
    for i in range(args.n):
        marker = ("er", "pr")[i % 2]
        status = ("pos", "pos", "neg", "neg")[i % 4] if i % 8 < 4 else ("pos", "neg")[i % 2]
        rgb, truth = render_ihc_patch(
            status, size=(args.size, args.size), mpp=MPP, seed=args.seed + i, site=i % 4, marker=marker
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
