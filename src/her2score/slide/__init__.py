"""Reading slides and images by µm/px, tissue detection and tiling."""

from her2score.slide.reader import Level, Slide, SlideInfo, load_rgb, open_slide, sniff_format

__all__ = ["Level", "Slide", "SlideInfo", "load_rgb", "open_slide", "sniff_format"]
