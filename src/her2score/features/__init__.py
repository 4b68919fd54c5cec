"""Tile features for multiple-instance models: tiles over tissue at a chosen µm/px, tile encoders (a
timm network, a cheap stain encoder) and a per-slide feature cache that the ``bag`` input kind reads.

Torch is imported only by the encoders that need it.
"""

from her2score.features.encoders import StainEncoder, TileEncoder, TimmEncoder, make_encoder
from her2score.features.extract import extract_features, feature_key, write_bag_manifest
from her2score.features.tiles import read_tiles, tissue_tiles

__all__ = [
    "StainEncoder",
    "TileEncoder",
    "TimmEncoder",
    "extract_features",
    "feature_key",
    "make_encoder",
    "read_tiles",
    "tissue_tiles",
    "write_bag_manifest",
]
