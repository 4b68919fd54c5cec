"""Tiny pyramidal TIFF slides and a hand-written manifest, written with tifffile (not by her2score).

Each slide is a 1 mm square at 1 µm/px with one elliptical tissue piece whose brown (DAB) tint
grows with the HER2 score, so a model can in principle tell the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCORES = ("0", "1+", "2+", "3+")


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float = 0.5) -> Path:
    """Tiled pyramidal TIFF (levels /1, /4) with µm/px in the resolution tags, readable by OpenSlide."""
    import tifffile
    from PIL import Image

    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER")
        small = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 4, rgb.shape[0] // 4)))
        tif.write(
            small, tile=(256, 256), photometric="rgb", subfiletype=1,
            resolution=(res / 4, res / 4), resolutionunit="CENTIMETER",
        )  # fmt: skip
    return path


def slide_image(score: str, seed: int, size: int = 1024) -> np.ndarray:
    """A glass background with an elliptical tissue piece, tinted by the HER2 score, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.35, 0.65, 2)
    rx, ry = rng.uniform(0.15, 0.3, 2)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    level = SCORES.index(score) / 3
    blue = np.array([150, 160, 210], dtype=np.float64)
    brown = np.array([150, 95, 50], dtype=np.float64)
    colour = (1 - level) * blue + level * brown
    img = np.full((size, size, 3), 242.0)
    img[inside] = colour + rng.normal(0, 12, (int(inside.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tiny_cohort(folder: Path, n: int = 12, seed: int = 0, size: int = 1024, mpp: float = 1.0) -> Path:
    """``n`` slides (balanced over 0/1+/2+/3+, two sites, one patient each) and ``manifest.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slides").mkdir(exist_ok=True)
    lines = ["slide,her2,ish,patient,site"]
    for i in range(n):
        score = SCORES[i % 4]
        ish = "pos" if score == "3+" else ("pos" if score == "2+" and i % 8 == 2 else "neg")
        name = f"slides/case_{i:03d}.tiff"
        write_pyramid_tiff(folder / name, slide_image(score, seed * 1000 + i, size), mpp)
        lines.append(f"{name},{score},{ish},P{i:03d},site{i % 2}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"
