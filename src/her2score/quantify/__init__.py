"""Training-free HER2 membrane quantifier: per-cell membrane DAB, membrane classes, ASCO/CAP 2018 score.

The pipeline, one module a step:

* :mod:`~her2score.quantify.thresholds`: scoring thresholds (:class:`Thresholds`), JSON load and save;
* :mod:`~her2score.quantify.cells`: nuclei and cells with their membrane rings from hematoxylin and DAB;
* :mod:`~her2score.quantify.membrane`: per-cell membrane measurement, membrane class, tumour cells;
* :mod:`~her2score.quantify.scoring`: image and slide scores from the cells by the rules of
  :mod:`her2score.rules` (category, HER2-0 subtype, 3-way group, H-score, HER2 index);
* :mod:`~her2score.quantify.calibrate`: thresholds from a control of known category;
* :mod:`~her2score.quantify.pipeline`: one image (:func:`quantify_image`) and one file
  (:func:`quantify_file`);
* :mod:`~her2score.quantify.tiled`: cores, fields and slides tile by tile over all their tissue, over
  worker processes, with per-region categories (heterogeneity);
* :mod:`~her2score.quantify.overlay`: overlay PNGs for a pathologist;
* :mod:`~her2score.quantify.batch`: many files and folders (:func:`quantify_batch`);
* :mod:`~her2score.quantify.nuclear`: nuclear markers (ER, PR, Ki-67), nucleus by nucleus.

Stain vectors and H&E detection are in :mod:`her2score.stain.detect`.
"""

from her2score.quantify.batch import BatchResult, quantify_batch
from her2score.quantify.calibrate import calibrate_file, calibrate_thresholds
from her2score.quantify.cells import CellParams
from her2score.quantify.nuclear import NuclearThresholds, quantify_nuclear_image
from her2score.quantify.pipeline import FileResult, ImageQuantification, quantify_file, quantify_image
from her2score.quantify.scoring import ScoreAccumulator, score_counts
from her2score.quantify.thresholds import Thresholds, load_thresholds

__all__ = [
    "BatchResult",
    "CellParams",
    "FileResult",
    "ImageQuantification",
    "NuclearThresholds",
    "ScoreAccumulator",
    "Thresholds",
    "calibrate_file",
    "calibrate_thresholds",
    "load_thresholds",
    "quantify_batch",
    "quantify_file",
    "quantify_image",
    "quantify_nuclear_image",
    "score_counts",
]
