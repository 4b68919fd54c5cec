"""The low- vs high-resolution comparison on a synthetic cohort shaped like the acceptance cohort: ``--n``
pyramidal IHC slides of 4096×3072 px at 0.5 µm/px (2.048×1.536 mm), manifest ``slide, her2, patient,
site``, then ``her2score compare`` with the given flags; prints the table, the headline and the cost ratio
of every patch-based row to the low-res row (the acceptance check asks for at least 10×).

Run: .venv/bin/python benchmarks/bench_compare.py --out /tmp/cmp [--n 48] [--seed 7] [-- COMPARE FLAGS]
     e.g. ... -- --sweep --epochs 10
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def cohort(folder: Path, n: int, seed: int) -> Path:
    """The synthetic slides and a manifest with only the acceptance cohort's columns."""
    import pandas as pd

    from her2score.data.synth.cohort import make_cohort

    manifest = folder / "M.csv"
    if manifest.is_file():
        return manifest
    full = make_cohort(folder, n, seed, size_mm=(4096 * 0.5e-3, 3072 * 0.5e-3), mpp=0.5, workers=1)
    frame = pd.read_csv(full, dtype=str)
    frame[["slide", "her2", "patient", "site"]].to_csv(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("compare", nargs=argparse.REMAINDER, help="flags for her2score compare, after --")
    args = parser.parse_args()
    flags = [f for f in args.compare if f != "--"]
    manifest = cohort(args.out / "cohort", args.n, args.seed)
    from her2score.cli.main import main as cli

    command = ["compare", "--manifest", str(manifest), "--task", "her2-3way", "--out", str(args.out / "run"),
               "--patch-mpp", "1.0", "--quiet", *flags]  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        cli(command)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    import pandas as pd

    table = pd.read_csv(args.out / "run" / "comparison.csv")
    table["total_s_per_slide"] = table["prep_s_per_slide"] + table["infer_s_per_slide"].fillna(0)
    low = table[table["method"] == "lowres"]
    ref = low[low["mpp"] == 8.0] if (low["mpp"] == 8.0).any() else low
    base = float(ref["total_s_per_slide"].iloc[0])
    table["x_lowres"] = table["total_s_per_slide"] / base
    shown = ["method", "mpp", "auc_macro", "f1_macro", "accuracy", "prep_s_per_slide", "infer_s_per_slide",
             "total_s_per_slide", "x_lowres", "input"]  # fmt: skip
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    patch = table[~table["method"].isin(["lowres", "stain"])]
    ratio = patch["x_lowres"]
    print(f"patch-based cost / low-res cost: min {ratio.min():.1f}x, max {ratio.max():.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{wall:.0f} s wall, {cpu:.0f} s CPU (this process), peak RSS {peak:.0f} MB, {os.cpu_count()} CPUs")
    print("command: python benchmarks/bench_compare.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
