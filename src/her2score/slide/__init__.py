"""Reading slides and images by µm/px, tissue detection and tiling."""

from her2score.slide.reader import Level, Slide, SlideInfo, load_rgb, open_slide, sniff_format
from her2score.slide.tissue import Tile, slide_tissue_mask, tile_grid, tissue_bbox, tissue_mask

__all__ = [
    "Level",
    "Slide",
    "SlideInfo",
    "Tile",
    "load_rgb",
    "open_slide",
    "slide_tissue_mask",
    "sniff_format",
    "tile_grid",
    "tissue_bbox",
    "tissue_mask",
]
