"""Quantifier speed on a large image: MP/s of tissue at 0.5 µm/px, whole pipeline beside stain separation.

Builds one synthetic IHC field of ``--tiles`` x ``--tiles`` patches of 1024 px at 0.5 µm/px (HER2 3+,
2+, 1+, 0 patches in turn, or synthetic Ki-67 tiles with ``--marker ki67``), saves it as a PNG, then
times:

* ``stain separation``: reading the image and H-DAB separation alone (per tile, in this process);
* ``pipeline, N workers``: ``quantify_file`` end to end (tiled over the tissue, cells, scores, regions,
  parquet, overlays) with 0 (in process), 1 and 2 worker processes (``forkserver``).

Megapixels are of tissue (the tissue mask of the image at 0.5 µm/px). Wall time and CPU time (this
process plus its workers' per-tile CPU) are both printed: on a shared machine, wall time is inflated by
other load while CPU time is not. ``2-core est.`` is MP per CPU-second x 2, what two idle cores would
reach at best: an estimate, not a measurement. With workers it counts their per-tile CPU only;
``CPU s all`` and ``2-core est. all`` count everything the workers spent (start-up from the fork
server, opening the image, tiles, sending results; from ``/proc``, Linux only), not the fork server's
one-time imports. The load average is printed before and after.

Run: .venv/bin/python benchmarks/bench_quantify_speed.py [--tiles 4] [--marker her2] [--workers 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPP = 0.5


def cpu_seconds() -> float:
    """CPU time (user + system) of this process (worker processes report theirs in the result row:
    forkserver workers are not this process's children, so ``RUSAGE_CHILDREN`` misses them)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def workers_cpu_seconds() -> float | None:
    """CPU time of every worker process that has exited so far, all told (start-up, opening the
    image, tiles, sending results): the ``forkserver`` reaps them, so their time is its children's
    time in ``/proc`` (Linux; ``None`` elsewhere, or before the fork server has started)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None if pid is None else 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def build_image(path: Path, tiles: int, marker: str) -> Path:
    """A ``tiles`` x ``tiles`` mosaic of 1024 px synthetic patches at 0.5 µm/px, saved as PNG."""
    from PIL import Image

    rows = []
    for r in range(tiles):
        row = []
        for c in range(tiles):
            i = r * tiles + c
            if marker == "her2":
                from her2score.data.synth.patches import render_ihc_patch

                rgb, _ = render_ihc_patch(("3+", "2+", "1+", "0")[i % 4], size=(1024, 1024), mpp=MPP, seed=i)
            else:
                from her2score.data.synth.ki67 import render_ki67_tile

                rgb, _ = render_ki67_tile((0.1, 0.3, 0.6)[i % 3], size=1024, mpp=MPP, seed=i)
            row.append(rgb)
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def time_stain_separation(path: Path) -> tuple[float, float, float]:
    """Wall s, CPU s and tissue MP for reading the image and separating H-DAB tile by tile."""
    from her2score.quantify.pipeline import tissue_mask_for
    from her2score.slide import open_slide
    from her2score.stain.deconvolution import separate_stains
    from her2score.stain.detect import choose_stain_vectors

    wall, cpu = time.perf_counter(), cpu_seconds()
    tissue_px = 0
    with open_slide(path, mpp=MPP) as slide:
        overview, _ = slide.read_overview(max_size=4000)
        matrix, _ = choose_stain_vectors(overview, "auto")
        for y in range(0, slide.height, 1024):
            for x in range(0, slide.width, 1024):
                rgb = slide.read_region((x, y), (1024, 1024), MPP)
                separate_stains(rgb, matrix)
                tissue_px += int(tissue_mask_for(rgb, MPP).sum())
    return time.perf_counter() - wall, cpu_seconds() - cpu, tissue_px / 1e6


def time_pipeline(
    path: Path, out: Path, workers: int, marker: str
) -> tuple[float, float, float | None, dict]:
    """Wall s, CPU s (this process plus the workers' per-tile CPU), CPU s all told (this process plus
    the workers' whole CPU, :func:`workers_cpu_seconds`; ``None`` when it cannot be read) and the row."""
    from her2score.quantify import quantify_file

    before = workers_cpu_seconds() or 0.0
    wall, cpu = time.perf_counter(), cpu_seconds()
    row = quantify_file(path, out, mpp=MPP, workers=workers, marker=marker).row
    wall, own = time.perf_counter() - wall, cpu_seconds() - cpu
    cpu = own + (row.get("tiles_cpu_s", 0.0) if workers > 0 else 0.0)
    if workers <= 0:
        return wall, cpu, cpu, row
    after = None
    for _ in range(20):  # the fork server reaps the exited workers on its own time
        time.sleep(0.1)
        after = workers_cpu_seconds()
        if after is None or after - before >= row.get("tiles_cpu_s", 0.0):
            break
    return wall, cpu, None if after is None else own + after - before, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4, help="mosaic side in 1024 px patches")
    ap.add_argument("--marker", default="her2", choices=("her2", "ki67", "er", "pr"))
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    args = ap.parse_args()
    print("load average before (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        image = build_image(Path(tmp) / "field.png", args.tiles, args.marker)
        wall, cpu, tissue_mp = time_stain_separation(image)
        size = args.tiles * 1024
        print(f"image {size} x {size} px at {MPP} µm/px, {tissue_mp:.1f} MP of tissue; {os.cpu_count()} CPUs")
        head = f"{'step':<24}{'wall s':>8}{'CPU s':>8}{'MP/s wall':>11}{'MP/s CPU':>10}{'2-core est.':>13}"
        print(f"{head}{'tiles CPU s':>13}{'CPU s all':>11}{'2-core est. all':>17}")
        rates = f"{tissue_mp / wall:11.2f}{tissue_mp / cpu:10.2f}{2 * tissue_mp / cpu:13.2f}"
        print(f"{'stain separation':<24}{wall:8.1f}{cpu:8.1f}{rates}")
        for w in (int(v) for v in args.workers.split(",")):
            wall, cpu, cpu_all, row = time_pipeline(image, Path(tmp) / f"out{w}", w, args.marker)
            name = f"pipeline, {w} workers"
            tiles_cpu = row.get("tiles_cpu_s", float("nan"))
            rates = f"{tissue_mp / wall:11.2f}{tissue_mp / cpu:10.2f}{2 * tissue_mp / cpu:13.2f}"
            na = f"{'n/a':>11}{'n/a':>17}"
            every = f"{cpu_all:11.1f}{2 * tissue_mp / cpu_all:17.2f}" if cpu_all else na
            print(f"{name:<24}{wall:8.1f}{cpu:8.1f}{rates}{tiles_cpu:13.1f}{every}")
        print(f"last result: {row['mode']}, {row['category']}, regions {row.get('heterogeneity')}")
    print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print("command:", " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
