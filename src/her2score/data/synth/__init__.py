"""Synthetic HER2/ER/PR cohorts: IHC patches, paired H&E/IHC patches and pyramidal whole slides,
seeded and reproducible, with per-cell ground truth that follows ASCO/CAP (the rules of
:mod:`her2score.rules`).

    >>> from her2score.data.synth import render_ihc_patch, her2_category
    >>> rgb, cells = render_ihc_patch("2+", size=(256, 256), seed=1)
    >>> her2_category(cells.loc[cells.is_tumour, "membrane_class"])
    '2+'
"""

from her2score.data.synth.cells import MARKERS, Case, her2_category
from her2score.data.synth.cohort import PAIR_COLUMNS, SLIDE_COLUMNS, Patient, draw_patients, make_cohort
from her2score.data.synth.patches import render_ihc_patch, render_pair
from her2score.data.synth.slides import SlideSpec, write_slide
from her2score.rules import HER2_CATEGORIES, MEMBRANE_CLASSES, receptor_status

__all__ = [
    "HER2_CATEGORIES",
    "MARKERS",
    "MEMBRANE_CLASSES",
    "PAIR_COLUMNS",
    "SLIDE_COLUMNS",
    "Case",
    "Patient",
    "SlideSpec",
    "draw_patients",
    "her2_category",
    "make_cohort",
    "receptor_status",
    "render_ihc_patch",
    "render_pair",
    "write_slide",
]
