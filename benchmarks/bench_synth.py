"""Time a synthetic demo cohort (default: 60 HER2 slides, 2 workers), one slide alone, and patch pairs.

Also prints a low-resolution sanity check of learnability: the mean DAB of tissue read at 8 µm/px per
HER2 category, and the AUC of that single number for 3+ vs the rest (a CNN should do better).

    .venv/bin/python benchmarks/bench_synth.py [--n 60] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="slides in the cohort")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=40, help="H&E/IHC pairs to time (0 to skip)")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to keep the cohort (default: temporary)"
    )
    args = parser.parse_args()

    import pandas as pd

    from her2score.data.synth import Case, SlideSpec, make_cohort, write_slide
    from her2score.slide import open_slide, tissue_mask
    from her2score.stain import separate_stains

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-"))
    rows = []

    for i, her2 in enumerate(("2+", "3+")):
        t, cpu = time.perf_counter(), _cpu_seconds()
        write_slide(root / "single" / f"{i}.tiff", SlideSpec(Case(her2=her2, grade=0.5), site=0, seed=i))
        what = "cold" if i == 0 else "warm"
        rows.append((f"one slide 3.5x2.5 mm at 0.5 um/px, {what} (wall)", time.perf_counter() - t))
        rows.append((f"one slide 3.5x2.5 mm at 0.5 um/px, {what} (CPU)", _cpu_seconds() - cpu))

    t = time.perf_counter()
    manifest = make_cohort(root / "slides", args.n, seed=0, workers=args.workers)
    rows.append((f"{args.n}-slide cohort, {args.workers} workers (wall)", time.perf_counter() - t))
    single_cpu = sum(sec for what, sec in rows if what.endswith("(CPU)")) / 2
    rows.append(
        (
            f"  projected on {args.workers} idle cores: {args.n} x one-slide CPU / workers",
            single_cpu * args.n / max(1, args.workers),
        )
    )
    if args.pairs:
        t = time.perf_counter()
        make_cohort(root / "pairs", args.pairs, seed=0, kind="pairs", workers=args.workers)
        rows.append((f"{args.pairs} H&E/IHC pairs 512 px, {args.workers} workers", time.perf_counter() - t))

    frame = pd.read_csv(manifest, dtype=str)
    size_mb = sum(p.stat().st_size for p in (root / "slides" / "slides").glob("*.tiff")) / 1e6
    feats = []
    for row in frame.itertuples():
        with open_slide(manifest.parent / row.slide) as slide:
            rgb, _ = slide.read_overview(mpp=8.0)
        mask = tissue_mask(rgb)
        dab = separate_stains(rgb)["dab"]
        feats.append(float(dab[mask].mean()) if mask.any() else 0.0)
    frame["dab"] = feats

    print(f"# her2score synth benchmark ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print(f"# command: {' '.join([sys.executable, *sys.argv])}")
    print(f"{'what':<60} {'seconds':>8}")
    for what, sec in rows:
        print(f"{what:<60} {sec:8.1f}")
    print(f"cohort TIFFs on disk: {size_mb:.0f} MB; peak RSS of this process {_peak_mb():.0f} MB")
    print("\nmean tissue DAB at 8 um/px by HER2 category (mean, min-max):")
    for cat, grp in frame.groupby("her2"):
        d = grp["dab"]
        print(f"  {cat:>3}: {d.mean():.3f} ({d.min():.3f}-{d.max():.3f}), n={len(grp)}")
    y = (frame["her2"] == "3+").to_numpy()
    print(f"AUC of that one number, 3+ vs rest: {_auc(frame['dab'].to_numpy(), y):.3f}")
    low = frame["her2"].isin(["1+", "2+"]).to_numpy()
    zero = (frame["her2"] == "0").to_numpy()
    print(f"AUC, low (1+/2+) vs 0: {_auc(frame['dab'].to_numpy()[low | zero], low[low | zero]):.3f}")
    print(f"(files under {root})")


def _auc(score, positive) -> float:
    import numpy as np

    score, positive = np.asarray(score), np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
        / (len(pos) * len(neg))
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process (load-independent, unlike wall time)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
