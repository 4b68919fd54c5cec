"""Specificity of the palisade rule against drawn sheets of smooth muscle (nucleus properties, no image).

A sheet of parallel spindle nuclei (16-18 x 3.2-3.5 µm, 7.5 µm apart side by side) in 16 columns 300 µm
long, nuclei placed along each column with a given mean tip-to-tip gap, is classified by
:func:`~her2score.quantify.membrane.cell_kinds` with and without the free-end rule
(``Thresholds.palisade_free_end``); printed: nuclei read ``tumour`` in all and in the interior (over 40 µm
from the sheet's ends, where a free end is not expected). Also a lattice sheet of 12 x 6 nuclei.

    python benchmarks/bench_palisade_sheets.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from her2score.quantify import Thresholds
from her2score.quantify.membrane import cell_kinds


def sheet_props(y_um, x_um, long_um, short_um, theta) -> dict[str, np.ndarray]:
    """Nucleus properties at 1 µm/px, as :func:`~her2score.quantify.membrane.nucleus_shapes` names them."""
    y, x = np.asarray(y_um, float), np.asarray(x_um, float)
    major, minor = np.asarray(long_um, float), np.broadcast_to(np.asarray(short_um, float), y.shape).copy()
    theta = np.broadcast_to(np.asarray(theta, float), y.shape).copy()
    area = np.pi / 4 * major * minor
    return {"y": y, "x": x, "area": area, "major": major, "minor": minor, "orientation": theta,
            "hematoxylin": np.full(y.shape, 0.4)}  # fmt: skip


def count(props: dict[str, np.ndarray], interior: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(all, interior) nuclei read tumour, without and with the free-end rule."""
    out = []
    for t in (Thresholds(palisade_free_end=0.0), Thresholds()):
        tumour = cell_kinds(props, 1.0, t, props["y"], props["x"]) == "tumour"
        out.append((int(tumour.sum()), int((tumour & interior).sum())))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    start = time.process_time()
    rng = np.random.default_rng(0)
    for pitch in (22.0, 26.0, 30.0):
        col, row = np.repeat(np.arange(12), 6), np.tile(np.arange(6), 12)
        y = row * pitch + (col % 2) * pitch / 2 + rng.uniform(-2, 2, col.size)
        props = sheet_props(y, col * 7.5, rng.uniform(16, 18, col.size), 3.3, np.pi / 2)
        (old, _), (new, _) = count(props, np.ones(col.size, bool))
        print(f"lattice 12 x 6, rows {pitch:.0f} µm apart: tumour {old}/72 before, {new}/72 after")
    for mean_gap in (5, 10, 20, 30):
        totals = np.zeros((2, 2), int)
        n_all = n_inner = 0
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            ys, xs, lengths = [], [], []
            for c in range(16):
                y = rng.uniform(0, 20)
                while y < 300:
                    length = rng.uniform(16, 18)
                    ys.append(y + length / 2)
                    xs.append(c * 7.5 + rng.uniform(-3.7, 3.7))
                    lengths.append(length)
                    y += length + 2 + rng.exponential(mean_gap - 2)
            n = len(ys)
            props = sheet_props(
                ys, xs, lengths, rng.uniform(3.2, 3.5, n), np.pi / 2 + rng.uniform(-0.15, 0.15, n)
            )
            interior = (np.asarray(ys) > 40) & (np.asarray(ys) < 260)
            totals += np.asarray(count(props, interior))
            n_all, n_inner = n_all + n, n_inner + int(interior.sum())
        print(
            f"random sheets, mean tip-to-tip gap {mean_gap:2d} µm: tumour {totals[0, 0]}/{n_all} before, "
            f"{totals[1, 0]} after; interior {totals[0, 1]}/{n_inner} before, {totals[1, 1]} after"
        )
    print(f"{time.process_time() - start:.1f} s CPU")
    print(f"command: python benchmarks/bench_palisade_sheets.py --seeds {args.seeds}")


if __name__ == "__main__":
    main()
