"""Image and slide scores from per-cell membrane classes: counts, ASCO/CAP category, H-score, HER2 index.

Per image or slide, over tumour cells: class counts and percentages, the ASCO/CAP 2018 category with
the 10 % rule, the HER2-0 subtype (``null`` / ``ultralow``), the 3-way group, the H-score and a
continuous HER2 index (``her2_index``: 100 x the mean, over the most strongly stained tenth of the tumour
cells, of the membrane DAB above the image's unstained background x completeness,
:func:`~her2score.quantify.membrane.background_dab` and :func:`top_share_mean`: the ASCO/CAP 10 % rule as a
number; ``her2_index_mean``, the same over all tumour cells), and DAB statistics over the tissue. The
rules themselves live in :mod:`her2score.rules`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2score import rules
from her2score.quantify.membrane import CELL_KINDS
from her2score.quantify.thresholds import Thresholds
from her2score.rules import MEMBRANE_CLASSES

#: The category of an image or slide that cannot be scored; its row says why in ``reason``.
NOT_SCORABLE = "not scorable"


def not_scorable_reason(n_tumour: int, thresholds: Thresholds) -> str:
    """Why ``n_tumour`` invasive tumour cells cannot be scored (``""``: they can).

    The 10 % rule needs a denominator: with fewer than ``thresholds.min_tumour_cells`` (20 by default)
    one cell is more than 5 % of the score, and a pathologist would call the sample insufficient.
    """
    if n_tumour <= 0:
        return "no tumour cells"
    if n_tumour < thresholds.min_tumour_cells:
        return f"too few tumour cells ({n_tumour} < {thresholds.min_tumour_cells})"
    return ""


def _add_counts(counts: dict[str, int], column: Any, keep: np.ndarray | None) -> None:
    """Add how many rows of ``column`` (optionally only ``keep``) hold each value to ``counts`` (a column
    :func:`cell_columns` left as it is; a categorical one comes as codes, :func:`_add_code_counts`)."""
    for name, count in (column if keep is None else column[keep]).value_counts().items():
        counts[str(name)] += int(count)


def _add_code_counts(
    counts: dict[str, int], codes: np.ndarray, categories: list[Any], keep: np.ndarray | None
) -> None:
    """``_add_counts`` of a categorical column given as its codes (-1: missing) and categories."""
    codes = codes if keep is None else codes[keep]
    found = np.bincount(codes[codes >= 0].astype(np.int64), minlength=len(categories))
    for i in np.flatnonzero(found).tolist():
        counts[str(categories[i])] += int(found[i])


def cell_columns(cells: Any) -> dict[str, Any]:
    """The columns of a per-cell table that :meth:`ScoreAccumulator.add_columns` sums, as arrays (a
    categorical as its codes and categories), taken out of the frame once: a tile's regions then sum
    their rows without a filtered copy of the frame each."""
    columns: dict[str, Any] = {
        "is_tumour": cells["is_tumour"].to_numpy(dtype=bool),
        "membrane_class": _codes(cells["membrane_class"]),
        "intensity": cells["intensity"].to_numpy(),
        "membrane_dab": cells["membrane_dab"].to_numpy(dtype=np.float64),
        "completeness": cells["completeness"].to_numpy(dtype=np.float64),
    }
    if "cell_kind" in cells:
        columns["cell_kind"] = _codes(cells["cell_kind"])
    if "background_dab" in cells:
        columns["background_dab"] = cells["background_dab"].to_numpy(dtype=np.float64)
    return columns


def _codes(column: Any) -> Any:
    """A categorical column's ``(codes, categories)``; another column as it is (counted by value)."""
    import pandas as pd

    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), list(column.cat.categories)
    return column


class ScoreAccumulator:
    """Running sums over tumour cells (tile by tile) for the image/slide score; memory stays flat."""

    def __init__(self) -> None:
        self.n_cells = 0
        self.n_tumour = 0
        self.class_counts = dict.fromkeys(MEMBRANE_CLASSES, 0)
        self.intensity_counts = [0, 0, 0, 0]
        self.index_sum = 0.0
        self.tissue_px = 0
        self.tissue_dab_sum = 0.0
        self.tissue_dab_above = [0, 0, 0]
        self.kind_counts = dict.fromkeys(CELL_KINDS, 0)
        self.index_hist = np.zeros(INDEX_BINS, dtype=np.int64)

    def add_cells(self, cells: Any) -> None:
        """Add a per-cell table's tumour cells (see :meth:`add_columns`)."""
        self.add_columns(cell_columns(cells))

    def add_columns(self, columns: dict[str, Any], rows: np.ndarray | None = None) -> None:
        """Add the cells of :func:`cell_columns` (only ``rows``, a boolean mask, when given): column by
        column on arrays (no filtered copy of the frame, no value_counts): this runs per tile and per
        region of a tile."""

        def take(values: np.ndarray) -> np.ndarray:
            return values if rows is None else values[rows]

        def count(counts: dict[str, int], column: Any, keep: np.ndarray | None) -> None:
            if isinstance(column, tuple):
                codes, categories = column
                _add_code_counts(counts, take(codes), categories, keep)
            else:
                _add_counts(counts, column if rows is None else column[rows], keep)

        tumour = take(columns["is_tumour"])
        self.n_cells += len(tumour)
        self.n_tumour += int(tumour.sum())
        if "cell_kind" in columns:
            count(self.kind_counts, columns["cell_kind"], None)
        count(self.class_counts, columns["membrane_class"], tumour)
        levels = np.bincount(take(columns["intensity"])[tumour].astype(np.int64), minlength=4)
        for level in np.flatnonzero(levels).tolist():
            self.intensity_counts[level] += int(levels[level])
        above = take(columns["membrane_dab"])[tumour]
        if "background_dab" in columns:  # membrane DAB above the image's unstained background
            background = take(columns["background_dab"])[tumour]
            above = np.where(above > 0, np.maximum(above - background, 0.0), 0.0)
        else:  # NaN (no membrane measured) counts as 0, as pandas sums
            above = np.where(np.isnan(above), 0.0, above)
        per_cell = above * take(columns["completeness"])[tumour]
        self.index_sum += float(per_cell.sum())
        self.index_hist += np.bincount(index_bins(per_cell), minlength=INDEX_BINS)

    def merge(self, part: ScoreAccumulator) -> None:
        """Add another accumulator's sums (a tile's) to this one."""
        self.n_cells += part.n_cells
        self.n_tumour += part.n_tumour
        for k in CELL_KINDS:
            self.kind_counts[k] += part.kind_counts[k]
        for c in MEMBRANE_CLASSES:
            self.class_counts[c] += part.class_counts[c]
        for i in range(4):
            self.intensity_counts[i] += part.intensity_counts[i]
        self.index_sum += part.index_sum
        self.index_hist += part.index_hist
        self.tissue_px += part.tissue_px
        self.tissue_dab_sum += part.tissue_dab_sum
        for i in range(3):
            self.tissue_dab_above[i] += part.tissue_dab_above[i]

    def add_tissue(self, dab: np.ndarray, tissue: np.ndarray, thresholds: Thresholds) -> None:
        values = dab[tissue]
        self.tissue_px += int(values.size)
        self.tissue_dab_sum += float(values.sum())
        for i, thr in enumerate((thresholds.faint, thresholds.moderate, thresholds.intense)):
            self.tissue_dab_above[i] += int(np.count_nonzero(values >= thr))

    def summary(self, thresholds: Thresholds) -> dict[str, Any]:
        return (
            score_counts(
                self.class_counts,
                self.intensity_counts,
                self.n_cells,
                self.n_tumour,
                self.index_sum,
                thresholds,
                self.index_hist,
            )
            | self._tissue_stats()
            | self.kind_summary()
        )

    def kind_summary(self) -> dict[str, int]:
        """How many cells of each kind were found (``n_cells_<kind>``, see
        :func:`~her2score.quantify.membrane.cell_kinds`); ``n_cells_tumour`` also counts tumour cells
        cut by the image edge, which ``n_tumour_cells`` (the scored ones) leaves out."""
        return {f"n_cells_{kind}": int(self.kind_counts[kind]) for kind in CELL_KINDS}

    def _tissue_stats(self) -> dict[str, Any]:
        n = max(self.tissue_px, 1)
        return {
            "tissue_dab_mean": self.tissue_dab_sum / n,
            "tissue_pct_dab_faint": 100.0 * self.tissue_dab_above[0] / n,
            "tissue_pct_dab_moderate": 100.0 * self.tissue_dab_above[1] / n,
            "tissue_pct_dab_intense": 100.0 * self.tissue_dab_above[2] / n,
        }


#: Per-cell HER2 index contributions (membrane DAB above the background x completeness, OD) are kept
#: as a histogram of this many bins of :data:`INDEX_BIN_OD` (the last holds everything above), so that
#: the index (:func:`top_share_mean`) streams over tiles with memory flat.
INDEX_BINS = 1000
INDEX_BIN_OD = 0.0025
#: The share of tumour cells whose mean contribution is ``her2_index``: the ASCO/CAP and gastric
#: rules grade the staining of the most strongly stained tenth of the tumour cells (the 10 % rule).
TOP_SHARE = 0.1


def index_bins(per_cell: np.ndarray) -> np.ndarray:
    """Histogram bin of each per-cell index contribution (OD): 0 for none, bin ``i`` for
    ``((i - 1) w, i w]`` (``w`` = :data:`INDEX_BIN_OD`), the last bin for everything above."""
    return np.clip(np.ceil(np.asarray(per_cell) / INDEX_BIN_OD).astype(np.int64), 0, INDEX_BINS - 1)


def top_share_mean(hist: np.ndarray, share: float = TOP_SHARE) -> float:
    """Mean contribution (OD, at bin centres) of the ``share`` of cells with the highest ones in ``hist``
    (at least one cell; 0 for an empty histogram)."""
    total = int(hist.sum())
    if total == 0:
        return 0.0
    k = max(1.0, share * total)
    centres = np.maximum(np.arange(len(hist)) - 0.5, 0.0) * INDEX_BIN_OD
    counts = hist[::-1].astype(np.float64)
    before = np.cumsum(counts) - counts
    taken = np.clip(k - before, 0.0, counts)
    return float((taken * centres[::-1]).sum() / k)


def score_counts(
    class_counts: dict[str, int],
    intensity_counts: list[int],
    n_cells: int,
    n_tumour: int,
    index_sum: float,
    thresholds: Thresholds,
    index_hist: np.ndarray | None = None,
) -> dict[str, Any]:
    """HER2 category and companions from tumour-cell class counts (rules: :mod:`her2score.rules`, the
    rulebook ``thresholds.her2_rules``, recorded in the row as ``her2_rules``).

    Fewer tumour cells than ``thresholds.min_tumour_cells``: category :data:`NOT_SCORABLE`,
    ``scorable`` False and the ``reason`` (no tumour cells, too few); otherwise ``scorable`` True and:

    The category by :func:`~her2score.rules.her2_category` (the 10 % rule, with intense complete
    staining in ``intense_minority_percent``-10 % read as 2+), the HER2-0 subtype (``null`` /
    ``ultralow``), the 3-way group (2+ without ISH: low), the H-score and the HER2 index.
    """
    pct = {c: 100.0 * class_counts.get(c, 0) / max(n_tumour, 1) for c in MEMBRANE_CLASSES}
    reason = not_scorable_reason(n_tumour, thresholds)
    if reason:
        category, subtype, group = NOT_SCORABLE, "", ""
    else:
        category = rules.her2_category(
            class_counts,
            positive_percent=thresholds.positive_percent,
            intense_minority_percent=thresholds.intense_minority_percent,
            organ=thresholds.her2_rules,
        )
        # HER2-ultralow / null is a breast subtype (ASCO/CAP 2023); gastric rules leave it empty.
        breast = thresholds.her2_rules == "breast"
        subtype = rules.her2_0_subtype(category, class_counts) if breast else ""
        group = rules.her2_3way(category)
    n_t = max(n_tumour, 1)
    h_score = sum(level * 100.0 * count / n_t for level, count in enumerate(intensity_counts))
    row: dict[str, Any] = {
        "category": category,
        "scorable": not reason,
        "reason": reason,
        "her2_0_subtype": subtype,
        "her2_3way": group,
        "h_score": h_score,
        # The continuous score is the index of the most strongly stained tenth of the tumour cells (the
        # 10 % rule as a number; the mean inverts focal 3+ and homogeneous 2+); the mean is kept beside it.
        "her2_index": 100.0 * top_share_mean(index_hist)
        if index_hist is not None
        else 100.0 * index_sum / n_t,
        "her2_index_mean": 100.0 * index_sum / n_t,
        "n_cells": n_cells,
        "n_tumour_cells": n_tumour,
        "her2_rules": thresholds.her2_rules,
    }
    for c in MEMBRANE_CLASSES:
        row[f"n_{c.replace('-', '_')}"] = int(class_counts.get(c, 0))
    for c in MEMBRANE_CLASSES:
        row[f"pct_{c.replace('-', '_')}"] = pct[c]
    return row
