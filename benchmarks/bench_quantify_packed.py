"""HER2 quantifier on fields packed with tumour: does an image-relative reference rise with the staining?

Several quantities are measured relative to the image itself on the assumption that much of it is
unstained: the DAB background that ``her2_index`` subtracts
(:func:`~her2score.quantify.membrane.background_dab`), the unstained floor of cell growth
(:func:`~her2score.quantify.cells.unstained_floor`), the per-image stain vectors, the per-tile
references of tiled scoring. A TMA core of gastric-like tumour with intense complete membranes almost
everywhere (glands back to back, little stroma, a cytoplasmic blush) is where they could fail. This
renders such fields with the synthetic generator (``render_ihc_patch(tumour_fraction=1.0,
blush=...)``: tumour over all of the tissue, solid sheets or glands, at 3+, 2+ and 1+, with and without
a blush), scores them with ``quantify_file`` (default thresholds, whole-image path for patches, tiled
path for the larger "cores") and prints per case: category, ``her2_index``, H-score, the background
DAB, the unstained floor(s), the stain-vector source and the membrane-class shares; then whether any
3+ reads 2+ or lower or has an index below a 2+'s of the same layout.

``--dab-gain 0.45`` weakens all membrane staining to the real scale of a 3+ (the 90th percentile of
the 3+ membranes 0.43-0.58 OD instead of 0.76-1.33 on 768² fields; the 1+ then fall below the faint
threshold).

Run: .venv/bin/python benchmarks/bench_quantify_packed.py [--size 768] [--core 2048] [--mpp 0.4,0.5]
[--blush 0,0.1,0.2,0.3] [--dab-gain 0.7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHORT = {
    "intense-complete": "IC",
    "moderate-complete": "MC",
    "faint-complete": "FC",
    "intense-incomplete": "II",
    "moderate-incomplete": "MI",
    "faint-incomplete": "FI",
    "none": "no",
}


def run_case(
    category: str,
    architecture: str,
    blush: float,
    mpp: float,
    size: int,
    seed: int,
    tmp: Path,
    dab_gain: float | None = None,
) -> dict:
    """Render one packed field, score it, and return what the report prints."""
    from PIL import Image

    from her2score.data.synth import render_ihc_patch
    from her2score.quantify import cells as cells_mod
    from her2score.quantify import quantify_file

    rgb, truth = render_ihc_patch(
        category,
        (size, size),
        mpp,
        seed=seed,
        site=seed % 3,
        architecture=architecture,
        tumour_fraction=1.0,
        blush=blush,
        dab_gain=dab_gain,
    )
    path = tmp / f"{architecture}_{category}_{blush:.2f}_{mpp}_{size}.png"
    Image.fromarray(rgb).save(path)
    floors: list[float] = []
    original = cells_mod.unstained_floor

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        value = original(*args, **kwargs)
        floors.append(value)
        return value

    cells_mod.unstained_floor = recording
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        res = quantify_file(path, tmp, mpp=mpp, workers=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        cells_mod.unstained_floor = original
    row = res.row
    true_tumour = truth[truth["is_tumour"]]
    true_ic = float((true_tumour["membrane_class"].astype(str) == "intense-complete").mean())
    cells = pd.read_parquet(res.cells_path)
    tumour = cells[cells["is_tumour"]]
    shares = tumour["membrane_class"].astype(str).value_counts(normalize=True)
    background = cells["background_dab"].to_numpy(dtype=float) if "background_dab" in cells else np.zeros(1)
    cyto = tumour["cytoplasm_dab"].to_numpy(dtype=float)
    path.unlink()
    return {
        "arch": architecture[:5],
        "truth": category,
        "blush": blush,
        "mpp": mpp,
        "px": size,
        "mode": row.get("mode", ""),
        "category": row.get("category", row.get("her2_category", "")),
        "index": float(row.get("her2_index", np.nan)),
        "h_score": float(row.get("h_score", np.nan)),
        "bg": f"{np.min(background):.3f}-{np.max(background):.3f}",
        "floor": f"{min(floors):.3f}-{max(floors):.3f}" if floors else "",
        "cyto": float(np.median(cyto)) if len(cyto) else np.nan,
        "mem90": float(np.quantile(tumour["membrane_dab"], 0.9)) if len(tumour) else np.nan,
        "stains": row.get("stain_vectors", ""),
        "n_tum": len(tumour),
        "true_ic": true_ic,
        "classes": " ".join(f"{SHORT[k]}{100 * v:.0f}" for k, v in shares.items() if v >= 0.02),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=768, help="patch side (px), scored whole; 0: none")
    ap.add_argument("--core", type=int, default=2048, help="core side (px), scored tiled; 0: none")
    ap.add_argument("--mpp", default="0.4,0.5")
    ap.add_argument("--architectures", default="solid,glandular")
    ap.add_argument("--blush", default="0,0.1,0.2,0.3", help="cytoplasmic DAB (OD) of the 3+ fields")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dab-gain", type=float, default=None, help="membrane staining x (0.45: real 3+ scale)")
    args = ap.parse_args(argv)

    blushes = [float(b) for b in args.blush.split(",")]
    rows = []
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="packed_") as d:
        tmp = Path(d)
        for mpp in [float(m) for m in args.mpp.split(",")]:
            for size in [s for s in (args.size, args.core) if s > 0]:
                for arch in args.architectures.split(","):
                    for category in ("3+", "2+", "1+"):
                        for blush in blushes if category == "3+" else [0.0, max(blushes)]:
                            r = run_case(category, arch, blush, mpp, size, args.seed, tmp, args.dab_gain)
                            rows.append(r)
                            print(
                                f"{r['arch']:5} {r['truth']:2} blush {blush:.2f} {mpp} µm/px {size:5d} px "
                                f"{r['mode']:5} -> {r['category']:2} index {r['index']:.3f} "
                                f"H {r['h_score']:5.1f} bg {r['bg']} floor {r['floor']} "
                                f"cyto {r['cyto']:.3f} mem90 {r['mem90']:.2f} {r['stains']} n {r['n_tum']} | "
                                f"true IC{100 * r['true_ic']:.0f} | {r['classes']} "
                                f"({r['cpu_s']:.1f} CPU s)",
                                flush=True,
                            )
    frame = pd.DataFrame(rows)
    print(
        f"\n{len(frame)} fields, {time.process_time() - c0:.0f} CPU s, {time.perf_counter() - t0:.0f} s wall"
    )
    bad = 0
    for (arch, mpp, px), g in frame.groupby(["arch", "mpp", "px"]):
        threes = g[g["truth"] == "3+"]
        twos = g[g["truth"] == "2+"]
        low = threes[threes["category"] != "3+"]
        below = threes[threes["index"] <= twos["index"].max()] if len(twos) else threes.iloc[:0]
        bad += len(low) + len(below)
        print(
            f"{arch:5} {mpp} µm/px {px:5d} px: 3+ read {', '.join(threes['category'])}; 3+ index "
            f"{threes['index'].min():.3f}-{threes['index'].max():.3f} vs 2+ {twos['index'].max():.3f} "
            f"vs 1+ {g[g['truth'] == '1+']['index'].max():.3f}; failures {len(low) + len(below)}"
        )
    print(f"failures: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
