"""Small generated slides and bad files for the reader, tissue and CLI tests (written with tifffile).

Plain functions (``make_bad_files``, ``write_pyramid``) so that tests outside this folder can reuse
them; the fixtures in ``conftest.py`` wrap them.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

REAL = Path(__file__).parents[2] / ".." / "shared" / "data" / "real"

LEVEL0_MPP = 0.25
SIZE = (4096, 3072)  # width, height at level 0


def synthetic_tissue(width: int, height: int, seed: int = 0) -> np.ndarray:
    """White glass with one textured pinkish-brown tissue piece and a pale hematoxylin-only piece."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 242, np.float32)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    # Coarse texture upsampled (cheap) so that levels differ only by resampling.
    coarse = rng.normal(0, 1, (height // 32 + 1, width // 32 + 1)).astype(np.float32)
    texture = np.kron(coarse, np.ones((32, 32), np.float32))[:height, :width]
    texture += rng.normal(0, 0.5, (height, width)).astype(np.float32)
    piece = ((xx - 0.35 * width) / (0.22 * width)) ** 2 + ((yy - 0.5 * height) / (0.35 * height)) ** 2 < 1
    pale = ((xx - 0.75 * width) / (0.12 * width)) ** 2 + ((yy - 0.45 * height) / (0.2 * height)) ** 2 < 1
    img[piece] = np.array([190, 140, 150], np.float32) + 12 * texture[piece, None]
    img[pale] = np.array([215, 215, 228], np.float32) + 5 * texture[pale, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(
    path: Path, rgb: np.ndarray, mpp: float = LEVEL0_MPP, levels: int = 4, subifds: bool = False,
    compression: str = "jpeg", resolution: bool = True,
) -> Path:  # fmt: skip
    """Tiled pyramidal TIFF, each level half the previous; µm/px in the resolution tags when asked."""
    import tifffile
    from PIL import Image

    pyramid = [rgb]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        size = (prev.shape[1] // 2, prev.shape[0] // 2)
        pyramid.append(np.asarray(Image.fromarray(prev).resize(size, Image.Resampling.BOX)))
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": compression}

    def res(k: int) -> dict:
        if not resolution:
            return {}
        ppcm = 1e4 / (mpp * 2**k)
        return {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}

    with tifffile.TiffWriter(path) as tif:
        if subifds:
            tif.write(pyramid[0], subifds=levels - 1, **opts, **res(0))
            for k, lvl in enumerate(pyramid[1:], start=1):
                tif.write(lvl, subfiletype=1, **opts, **res(k))
        else:
            for k, lvl in enumerate(pyramid):
                tif.write(lvl, subfiletype=1 if k else 0, **opts, **res(k))
    return path


def huge_png_header() -> bytes:
    """A valid PNG whose header claims 100000x100000 px (the data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


#: Every bad input that must fail with a clear message naming the file and the cause.
BAD_INPUTS = [
    "truncated-tiff",
    "text-as-svs",
    "zero-bytes",
    "missing",
    "folder",
    "grayscale",
    "grayscale-16bit",
    "one-pixel",
    "larger-than-memory",
    "truncated-jpeg",
]


def make_bad_files(d: Path, pyramid_tiff: Path) -> dict[str, tuple[Path, str]]:
    """Write each bad input under ``d``; returns name -> (path, a fragment its error must contain)."""
    from PIL import Image

    data = pyramid_tiff.read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 2])
    (d / "notes.svs").write_text("This is a text file, not a slide.\n" * 10)
    (d / "empty.png").write_bytes(b"")
    (d / "a-folder.svs").mkdir()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(d / "gray.png")
    Image.fromarray(np.full((64, 64), 30000, np.uint16)).save(d / "gray16.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "one-pixel.png")
    (d / "huge.png").write_bytes(huge_png_header())
    jpeg = d / "cut.jpg"
    Image.fromarray(synthetic_tissue(256, 256)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:2000])
    return {
        "truncated-tiff": (d / "truncated.tif", "truncated"),
        "text-as-svs": (d / "notes.svs", "not a recognised slide or image format"),
        "zero-bytes": (d / "empty.png", "empty"),
        "missing": (d / "does-not-exist.svs", "does not exist"),
        "folder": (d / "a-folder.svs", "folder"),
        "grayscale": (d / "gray.png", "grayscale"),
        "grayscale-16bit": (d / "gray16.png", "grayscale"),
        "one-pixel": (d / "one-pixel.png", "too small"),
        "larger-than-memory": (d / "huge.png", "too large"),
        "truncated-jpeg": (d / "cut.jpg", "truncated"),
    }
