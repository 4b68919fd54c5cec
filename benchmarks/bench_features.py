"""Tile features: tiles/s of the full extraction (read + encode) next to the bare encoder on random
tiles and the bare reader, at 1 µm/px on a synthetic slide, for the stain encoder and a timm network.

The extraction's reader thread reads ahead of the encoder, so extraction should run close to the slower
of the two bare rates (the encoder, for a network): the model, not the reader, is the bottleneck.

Run: .venv/bin/python benchmarks/bench_features.py [--encoders stain timm:resnet18] [--mpp 1.0]
     [--tile 224] [--size-mm 8 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _slide(folder: Path, size_mm: tuple[float, float]) -> Path:
    from her2score.data.synth.cells import Case
    from her2score.data.synth.slides import SlideSpec, write_slide

    return write_slide(folder / "slide.tiff", SlideSpec(Case(her2="2+"), seed=0, size_mm=size_mm))


def _bare_encoder(encoder: object, tile: int, n: int, batch: int) -> float:
    tiles = np.random.default_rng(0).integers(0, 256, (batch, tile, tile, 3), dtype=np.uint8)
    encoder(tiles[:2])  # warm-up
    start = time.perf_counter()
    done = 0
    while done < n:
        encoder(tiles)
        done += batch
    return done / (time.perf_counter() - start)


def _bare_reader(slide_path: Path, mpp: float, tile: int, batch: int) -> tuple[int, float, float]:
    from her2score.features.tiles import read_tiles, tissue_tiles
    from her2score.slide import open_slide

    with open_slide(slide_path) as slide:
        start = time.perf_counter()
        tiles = tissue_tiles(slide, mpp, tile)
        tiling = time.perf_counter() - start
        start = time.perf_counter()
        for _ in read_tiles(slide, tiles, batch):
            pass
        return len(tiles), len(tiles) / (time.perf_counter() - start), tiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["stain", "timm:resnet18"])
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size-mm", type=float, nargs=2, default=(8.0, 6.0))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from her2score.features.encoders import make_encoder
    from her2score.features.extract import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        slide = _slide(folder, tuple(args.size_mm))
        print(f"synthetic slide {args.size_mm[0]}x{args.size_mm[1]} mm at 0.5 µm/px written in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        n_tiles, read_rate, tiling = _bare_reader(slide, args.mpp, args.tile, args.batch)
        print(
            f"{n_tiles} tissue tiles of {args.tile} px at {args.mpp:g} µm/px (tissue mask and grid "
            f"{tiling:.2f} s, part of the extraction's time); "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"\n{'encoder':<18} {'dim':>5} {'bare reader':>12} {'bare encoder':>13} "
            f"{'extraction':>11} {'ratio':>6}"
        )
        for name in args.encoders:
            encoder = make_encoder(name, device=args.device)
            bare = _bare_encoder(encoder, args.tile, max(n_tiles, args.batch), args.batch)
            start = time.perf_counter()
            frame = extract_features(
                [slide], folder / name.replace(":", "_"), encoder, mpp=args.mpp, tile_size=args.tile,
                batch_size=args.batch, quiet=True,
            )  # fmt: skip
            full = int(frame["n_tiles"][0]) / (time.perf_counter() - start)
            print(
                f"{name:<18} {encoder.dim:>5} {read_rate:>10.0f}/s {bare:>11.1f}/s "
                f"{full:>9.1f}/s {full / bare:>6.2f}"
            )
        print("\n(tiles/s; ratio: extraction ÷ bare encoder, 1.0 when reading is fully hidden)")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
