"""Not scorable instead of a category (no tissue, no or too few tumour cells); implausible thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from her2score.errors import ConfigError
from her2score.quantify import Thresholds, score_counts
from her2score.quantify.batch import RESULT_COLUMNS, results_frame
from her2score.quantify.scoring import NOT_SCORABLE


def _row(n_tumour: int, stained: int = 0) -> dict:
    counts = {"none": n_tumour - stained, "intense-complete": stained}
    return score_counts(
        counts, [n_tumour - stained, 0, 0, stained], n_tumour + 5, n_tumour, 0.0, Thresholds()
    )


@pytest.mark.parametrize(
    ("n_tumour", "reason"),
    [(0, "no tumour cells"), (5, "too few tumour cells (5 < 20)"), (19, "too few tumour cells (19 < 20)")],
)
def test_too_few_tumour_cells_is_not_scorable_and_says_why(n_tumour: int, reason: str) -> None:
    row = _row(n_tumour, stained=n_tumour // 2)
    assert (row["category"], row["scorable"], row["reason"]) == (NOT_SCORABLE, False, reason)
    assert row["her2_3way"] == ""
    assert row["her2_0_subtype"] == ""


def test_enough_tumour_cells_get_a_category() -> None:
    row = _row(20, stained=10)
    assert (row["category"], row["scorable"], row["reason"]) == ("3+", True, "")
    assert (
        score_counts({"none": 5}, [5, 0, 0, 0], 5, 5, 0.0, Thresholds(min_tumour_cells=5))["category"] == "0"
    )


def test_results_have_scorable_and_reason_columns() -> None:
    frame = results_frame([{"image": "a.png", "status": "ok"}])
    assert list(frame.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert {"scorable", "reason"} <= set(frame.columns)


def test_a_blank_image_is_not_scorable_for_want_of_tissue(tmp_path: Path) -> None:
    import numpy as np

    from her2score.io import write_png
    from her2score.quantify import quantify_batch

    blank = write_png(tmp_path / "blank.png", np.full((64, 64, 3), 245, np.uint8))
    row = quantify_batch([blank], tmp_path / "out", mpp=0.5).frame.iloc[0]
    assert (row["status"], row["scorable"], row["reason"]) == ("failed", False, "no tissue")
    assert row["category"] == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"positive_percent": -5}, "positive_percent must be in"),
        ({"positive_percent": 150}, "positive_percent must be in"),
        ({"intense_minority_percent": 20}, "intense_minority_percent"),
        ({"faint": 0.5, "moderate": 0.4}, "faint < moderate < intense"),
        ({"intense": 0.2}, "faint < moderate < intense"),
        ({"complete_fraction": 1.5}, "complete_fraction"),
        ({"cytoplasm_quantile": -0.1}, "cytoplasm_quantile"),
        ({"tumour_min_ellipse_fill": 2}, "tumour_min_ellipse_fill"),
        ({"tumour_nucleus_min_um2": 300}, "tumour_nucleus_min_um2"),
        ({"min_tumour_cells": 0}, "min_tumour_cells"),
        ({"membrane_contrast_od": -1}, "membrane_contrast_od"),
        ({"intense": "Infinity"}, "intense must be a finite number"),
    ],
)
def test_implausible_thresholds_are_refused_naming_the_file_and_key(
    values: dict, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"thresholds": values}))
    with pytest.raises(ConfigError, match=message) as info:
        Thresholds.from_json(path)
    assert str(info.value).startswith(f"{path}: ")
