"""HER2 continuous scores on heterogeneous cores: the mean HER2 index, the top-decile index and the H-score.

Builds "cores" from synthetic HER2 IHC patches (``render_ihc_patch``, 512 x 512 px at 0.5 µm/px; a
core is ``--patches`` of them, scored patch by patch and summed as the tiled path sums tiles):
homogeneous 0, 1+, 2+ and 3+ cores, and heterogeneous 3+ cores (3+ staining in 1 or 2 of the patches,
the rest 0 or 1+; gastric HER2 is often focal). Prints each core's category and scores, then Spearman's
rho against the level (heterogeneous cores count as 3+, as the 10 % rule reads those with 2 of 8 patches
3+; those with 1 of 8 are borderline and listed but left out of the figures) and the AUC of 3+ against
the rest: what an ISH-status AUC on real cores rewards.

Run: .venv/bin/python benchmarks/bench_index_heterogeneity.py [--repeats 3] [--patches 8] [--seed 5000]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy.stats import spearmanr

MPP = 0.5
LEVEL = {"0": 0, "1+": 1, "2+": 2, "3+": 3}
SCORES = ("her2_index", "her2_index_mean", "h_score")


def main(argv: list[str] | None = None) -> int:
    from her2score.data.synth import render_ihc_patch
    from her2score.quantify import quantify_image
    from her2score.quantify.scoring import ScoreAccumulator
    from her2score.quantify.thresholds import SYNTHETIC_LAB

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=5000)
    args = parser.parse_args(argv)
    started, cpu = time.perf_counter(), time.process_time()
    n = args.patches
    cores = []
    for _ in range(args.repeats):
        cores += [(c, c, [c] * n) for c in LEVEL]
        for k in (1, 2):
            for rest in ("0", "1+"):
                level = "3+" if k / n >= 0.2 else "3+?"  # a fifth of the area or more: clearly over 10 %
                cores.append((level, f"3+ in {k}/{n}, rest {rest}", ["3+"] * k + [rest] * (n - k)))
    seed = args.seed
    rows = []
    for truth, name, categories in cores:
        acc = ScoreAccumulator()
        for category in categories:
            seed += 1
            rgb, _ = render_ihc_patch(category, (512, 512), MPP, seed=seed, site=seed % 4)
            acc.merge(quantify_image(rgb, MPP, SYNTHETIC_LAB).accumulator)
        row = acc.summary(SYNTHETIC_LAB)
        rows.append((truth, row))
        print(
            f"{name:18s} level {truth:3s} reads {row['category']:3s} "
            + " ".join(f"{s} {row[s]:6.1f}" for s in SCORES)
        )
    kept = [(t, r) for t, r in rows if t in LEVEL]
    level = np.array([LEVEL[t] for t, _ in kept])
    for score in SCORES:
        values = np.array([r[score] for _, r in kept])
        pos, neg = values[level == 3], values[level < 3]
        auc = float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))
        print(f"{score}: Spearman {spearmanr(level, values).statistic:.3f}, 3+ vs rest AUC {auc:.3f}")
    print(
        f"{len(rows)} cores ({len(kept)} in the figures), {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu:.0f} s CPU"
    )
    print("command:", " ".join(["python", *sys.argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
