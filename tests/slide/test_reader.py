"""The slide reader: µm/px from metadata, reading by resolution, and a clear error for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from slide_fixtures import BAD_INPUTS, LEVEL0_MPP, SIZE, write_pyramid

from her2score.errors import MissingMPPError, SlideError
from her2score.slide import load_rgb, open_slide, sniff_format
from her2score.slide.reader import check_decodable_size


def _record_levels(slide) -> list[int]:
    """Make the slide record which pyramid level each read touches."""
    seen: list[int] = []
    backend = slide._backend
    original = backend.read

    def read(level, *args):
        seen.append(level)
        return original(level, *args)

    backend.read = read
    return seen


# ---------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("fixture", ["pyramid_tiff", "subifd_tiff"])
def test_pyramid_levels_and_mpp_from_resolution_tags(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    with open_slide(path) as slide:
        assert (slide.width, slide.height) == SIZE
        assert slide.mpp == pytest.approx(LEVEL0_MPP, rel=1e-6)
        assert [lv.downsample for lv in slide.levels] == pytest.approx([1, 2, 4, 8])
        assert [lv.mpp for lv in slide.levels] == pytest.approx([0.25, 0.5, 1.0, 2.0])


def test_openslide_sees_successive_ifds_but_not_subifds(pyramid_tiff: Path, subifd_tiff: Path) -> None:
    """Why the reader has its own TIFF path: OpenSlide drops SubIFD levels of generic TIFFs."""
    import openslide

    with openslide.OpenSlide(str(pyramid_tiff)) as s:
        assert s.level_count == 4
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(LEVEL0_MPP)
    with openslide.OpenSlide(str(subifd_tiff)) as s:
        assert s.level_count == 1
    with open_slide(subifd_tiff) as slide:
        assert len(slide.levels) == 4


def test_tiff_without_resolution_needs_mpp(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    path = write_pyramid(tmp_path / "nores.tif", tissue_rgb[:1024, :1024], levels=2, resolution=False)
    slide = open_slide(path)
    assert slide.mpp is None
    with pytest.raises(MissingMPPError, match=r"nores\.tif"):
        slide.read_overview(max_size=256)
    assert open_slide(path, mpp=0.5).read_overview(mpp=2.0)[0].shape == (256, 256, 3)


def test_implausible_mpp_is_refused(pyramid_tiff: Path) -> None:
    with pytest.raises(SlideError, match="plausible"):
        open_slide(pyramid_tiff, mpp=0.0)


# ---------------------------------------------------------------------------- reading by µm/px
@pytest.mark.parametrize("fixture", ["pyramid_tiff", "subifd_tiff"])
def test_overview_never_touches_level0(fixture: str, request: pytest.FixtureRequest) -> None:
    with open_slide(request.getfixturevalue(fixture)) as slide:
        seen = _record_levels(slide)
        overview, used = slide.read_overview(max_size=480)
        assert max(overview.shape[:2]) == 480
        assert used == pytest.approx(LEVEL0_MPP * 4096 / 480)
        assert seen == [3]  # the coarsest level (2 µm/px) is finer than 2.13 µm/px


def test_best_level_is_coarsest_at_least_as_fine(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        assert slide.best_level(0.25) == 0
        assert slide.best_level(0.49) == 0
        assert slide.best_level(0.5) == 1
        assert slide.best_level(1.9) == 2
        assert slide.best_level(16.0) == 3


def test_subifd_and_ifd_pyramids_read_the_same(pyramid_tiff: Path, subifd_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as a, open_slide(subifd_tiff) as b:
        for mpp in (0.25, 0.5, 1.3, 2.0):
            ra = a.read_region((1003, 517), (200, 150), mpp=mpp)
            rb = b.read_region((1003, 517), (200, 150), mpp=mpp)
            assert ra.shape == rb.shape == (150, 200, 3)
            assert np.array_equal(ra, rb)


def test_generic_tiff_pixels_match_openslide(pyramid_tiff: Path) -> None:
    """Our tifffile reading of generic TIFFs gives OpenSlide's pixels, level by level."""
    import openslide

    with open_slide(pyramid_tiff) as ours, openslide.OpenSlide(str(pyramid_tiff)) as theirs:
        assert ours.vendor == "generic-tiff"
        for level, mpp in enumerate((0.25, 0.5, 1.0, 2.0)):
            mine = ours.read_region((1024, 512), (200, 150), mpp=mpp)
            ref = np.asarray(theirs.read_region((1024, 512), level, (200, 150)))[..., :3]
            assert np.abs(mine.astype(int) - ref).mean() < 0.5
        # Off the level grid OpenSlide places the region at a fractional level pixel, we at the pixel
        # below: at most half a level pixel apart.
        mine = ours.read_region((1003, 517), (200, 150), mpp=1.0)
        ref = np.asarray(theirs.read_region((1003, 517), 2, (200, 150)))[..., :3]
        assert np.abs(mine.astype(int) - ref).mean() < 5.0


def test_outside_the_slide_reads_as_white(subifd_tiff: Path) -> None:
    with open_slide(subifd_tiff) as slide:
        region = slide.read_region((SIZE[0] - 100, SIZE[1] - 100), (64, 64), mpp=0.5)
        assert region.shape == (64, 64, 3)
        assert (region[-10:, -10:] == 255).all()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mpp=st.floats(min_value=0.6, max_value=3.0),
    x=st.integers(min_value=0, max_value=2500),
    y=st.integers(min_value=0, max_value=1500),
)
def test_coarse_level_agrees_with_resized_level0(pyramid_tiff: Path, mpp: float, x: int, y: int) -> None:
    """A region read at a coarse µm/px (via level k) matches level 0 read and resized by hand."""
    with open_slide(pyramid_tiff) as slide:
        out = 96
        coarse = slide.read_region((x, y), (out, out), mpp=mpp)
        side0 = round(out * mpp / LEVEL0_MPP)
        fine = slide.read_region((x, y), (side0, side0), mpp=LEVEL0_MPP)
        resized = np.asarray(Image.fromarray(fine).resize((out, out), Image.Resampling.BOX))
        assert coarse.shape == resized.shape == (out, out, 3)
        assert np.abs(coarse.astype(int) - resized).mean() < 6.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mpp=st.floats(min_value=0.25, max_value=10.0),
    x0=st.integers(min_value=0, max_value=3000),
    y0=st.integers(min_value=0, max_value=2000),
    w=st.integers(min_value=40, max_value=1000),
    h=st.integers(min_value=40, max_value=1000),
)
def test_output_sizes_follow_the_mpp_ratio(
    subifd_tiff: Path, mpp: float, x0: int, y0: int, w: int, h: int
) -> None:
    with open_slide(subifd_tiff) as slide:
        scale = LEVEL0_MPP / mpp
        region = slide.read_bounds((x0, y0, x0 + w, y0 + h), mpp=mpp)
        assert region.shape == (max(1, round(h * scale)), max(1, round(w * scale)), 3)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        assert slide.read_region((x0, y0), size, mpp=mpp).shape == (size[1], size[0], 3)


# ---------------------------------------------------------------------------- plain images
def test_format_is_sniffed_from_content_not_extension(tmp_path: Path) -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200
    jpeg_named_png = tmp_path / "pair.png"
    Image.fromarray(rgb).save(jpeg_named_png, format="JPEG")
    assert sniff_format(jpeg_named_png) == "jpeg"
    with open_slide(jpeg_named_png, mpp=0.5) as slide:
        assert (slide.width, slide.height) == (48, 32)
        assert slide.read_overview(mpp=0.5)[0][..., 0].mean() == pytest.approx(200, abs=3)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    rgb = load_rgb(tmp_path / "rgba.png")
    assert rgb.shape == (32, 32, 3)
    assert (rgb[:16] == (255, 0, 0)).all()
    assert (rgb[16:] == 255).all()


def test_palette_is_converted(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (120, 60, 30)
    rgb[:, 16:] = (240, 240, 240)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "pal.png")
    out = load_rgb(tmp_path / "pal.png")
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 2


def test_16bit_rgb_is_scaled_to_8_bits(tmp_path: Path) -> None:
    import tifffile

    rgb16 = np.zeros((32, 32, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32768
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    with open_slide(tmp_path / "rgb16.tif", mpp=0.5) as slide:
        px = slide.read_overview(mpp=0.5)[0][0, 0]
    assert px.dtype == np.uint8
    assert tuple(int(v) for v in px) == (255, 128, 0)


def test_size_check_from_header_only() -> None:
    check_decodable_size(4000, 3000, "ok.png")
    with pytest.raises(SlideError, match="too large"):
        check_decodable_size(100_000, 100_000, "huge.png")


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_raises_slide_error_naming_file_and_cause(name: str, bad_files: dict) -> None:
    path, cause = bad_files[name]
    with pytest.raises(SlideError) as info:
        open_slide(path, mpp=0.5)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert cause in message.lower()
    assert info.value.path == path


def test_gray_tiff_is_refused(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((512, 512), np.uint8), tile=(256, 256))
    with pytest.raises(SlideError, match="grayscale"):
        open_slide(tmp_path / "gray.tif", mpp=0.5)


def test_region_too_large_to_read_at_once(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide, pytest.raises(SlideError, match="too large to read"):
        slide.read_region((0, 0), (40_000, 40_000), mpp=0.25)
