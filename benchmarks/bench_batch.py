"""Batch scoring at scale: a folder of 200 small synthetic slides with a broken one in the middle.

Trains a tiny low-resolution model (1 epoch, 32 px, on 16 of the slides), then ``predict_slides`` over
the whole folder: slides/s of the first run (wall and this process's CPU time), that the broken slide is
the only failure (listed in ``<out>.failures.csv``), and the re-run's seconds, which must read no slide
(counted). With ``--dask-workers N`` the same run goes through a Dask ``LocalCluster`` of N worker
processes (``predict --scheduler``), from an empty journal and an empty image cache.

Run: .venv/bin/python benchmarks/bench_batch.py [--slides 200] [--size 256] [--dask-workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_slide(path: Path, seed: int, size: int, mpp: float = 4.0) -> None:
    """A glass background with one tissue ellipse tinted from blue (HER2 0) to brown (3+) by ``seed % 4``."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    (cx, cy), (rx, ry) = rng.uniform(0.35, 0.65, 2), rng.uniform(0.15, 0.3, 2)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    level = (seed % 4) / 3
    colour = (1 - level) * np.array([150.0, 160, 210]) + level * np.array([150.0, 95, 50])
    img = np.full((size, size, 3), 242.0)
    img[inside] = colour + rng.normal(0, 12, (int(inside.sum()), 3))
    res = 1e4 / mpp
    tifffile.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), photometric="rgb",
                     resolution=(res, res), resolutionunit="CENTIMETER")  # fmt: skip


def make_folder(folder: Path, n: int, size: int) -> Path:
    """``n`` slides ``slide_000.tiff``...; a broken ``slide_<n/2>b.tiff`` sorts into the middle."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _write_slide(folder / f"slide_{i:03d}.tiff", i, size)
    (folder / f"slide_{n // 2:03d}b.tiff").write_bytes(b"II*\x00" + b"\x01" * 300)  # a TIFF header, no image
    return folder


def train_tiny_model(folder: Path, work: Path) -> Path:
    from her2score.data.manifest import load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.train import train_run

    names = [f"slide_{i:03d}.tiff" for i in range(16)]
    scores = ["0", "1+", "2+", "3+"]
    lines = ["slide,her2,ish,patient"] + [
        f"{folder / s},{scores[i % 4]},{'pos' if i % 4 == 3 else 'neg'},P{i}" for i, s in enumerate(names)
    ]
    manifest = work / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, epochs=1, input_size=32, batch_size=4, n_boot=0, device="cpu",
                      cache_dir=str(work / "train-cache"))  # fmt: skip
    run = train_run(load_manifest(manifest), cfg, work / "run", quiet=True, log=lambda s: None, heatmaps=0)
    return run.model_paths[0]


def timed_predict(model: Path, folder: Path, out: Path, cache: Path, scheduler: str | None) -> dict:
    """One ``predict_slides`` run: wall and CPU seconds, rows, failures, slides read."""
    from her2score.data.inputs.lowres import LowResImages
    from her2score.engine.predict import predict_slides

    read = {"n": 0}
    original = LowResImages.prepare

    def counted(self, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        read["n"] += len(rows)
        return original(self, rows, *args, **kwargs)

    LowResImages.prepare = counted  # type: ignore[method-assign]
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        frame, failures = predict_slides(
            model, [folder], out, quiet=True, cache_dir=cache, device="cpu", scheduler=scheduler
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        LowResImages.prepare = original  # type: ignore[method-assign]
    return {
        "wall": wall,
        "cpu": cpu,
        "rows": len(frame),
        "failures": failures,
        "read": read["n"],
        "frame": frame,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="slide side in px (at 4 µm/px)")
    parser.add_argument("--dask-workers", type=int, default=0, help="also run on a Dask LocalCluster")
    args = parser.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        folder = make_folder(work / "slides", args.slides, args.size)
        model = train_tiny_model(folder, work)
        setup = time.perf_counter() - t0
        print(f"{args.slides} slides + 1 broken written and a tiny model trained in {setup:.1f} s")
        runs = [("local", None)]
        cluster = None
        if args.dask_workers:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=args.dask_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)  # fmt: skip
            runs.append((f"dask x{args.dask_workers}", cluster.scheduler_address))
        rows, ok = [], True
        reference = None
        try:
            for name, scheduler in runs:
                out = work / name.replace(" ", "_") / "predictions.csv"
                first = timed_predict(model, folder, out, work / f"cache-{len(rows)}", scheduler)
                again = timed_predict(model, folder, out, work / f"cache-{len(rows)}", scheduler)
                broken = [Path(f.slide).name for f in first["failures"]]
                listed = pd.read_csv(out.with_name("predictions.failures.csv"))["slide"].map(
                    lambda s: Path(s).name
                )
                good = (
                    first["rows"] == args.slides + 1
                    and broken == [f"slide_{args.slides // 2:03d}b.tiff"]
                    and list(listed) == broken
                    and again["read"] == 0
                    and again["frame"].equals(first["frame"])
                )
                if reference is not None:
                    diff = (
                        (first["frame"].filter(like="prob_") - reference.filter(like="prob_"))
                        .abs()
                        .max()
                        .max()
                    )
                    good = good and diff < 1e-5
                reference = first["frame"] if reference is None else reference
                ok &= good
                rows.append((name, first, again, broken, good))
        finally:
            if cluster is not None:
                cluster.close()
    print(f"\n{'run':<10} {'slides':>6} {'first s':>8} {'slides/s':>8} {'CPU s':>6} {'failures':<18} "
          f"{'re-run s':>8} {'re-read':>7} ok")  # fmt: skip
    for name, first, again, broken, good in rows:
        print(f"{name:<10} {first['rows']:>6} {first['wall']:>8.1f} {first['rows'] / first['wall']:>8.1f} "
              f"{first['cpu']:>6.1f} {','.join(broken):<18} {again['wall']:>8.2f} {again['read']:>7} "
              f"{'yes' if good else 'NO'}")  # fmt: skip
    print("\nCPU s: this process only (Dask workers' time not included)")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
