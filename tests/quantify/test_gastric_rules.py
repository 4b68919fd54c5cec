"""HER2 rulebooks: ``breast`` (ASCO/CAP 2018) and ``gastric`` (Hofmann 2008, U-shaped membranes complete)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from her2score.errors import ConfigError
from her2score.quantify import Thresholds, quantify_image
from her2score.quantify.membrane import classify_membrane
from her2score.rules import her2_category

from .test_quantify import MPP, draw_ihc

GASTRIC = Thresholds(her2_rules="gastric")


def test_u_shaped_ring_is_complete_under_gastric_rules_only() -> None:
    intensity = np.array([3, 3, 3, 3, 2])
    completeness = np.array([1.0, 0.65, 0.6, 0.4, 0.95])
    # closed ring; one U-shaped arc (gap 35 %); two arcs with two 20 % gaps; a short arc; a ring
    # broken once by 5 %
    gap = np.array([0.0, 0.35, 0.2, 0.6, 0.05])
    assert classify_membrane(intensity, completeness, Thresholds(), gap).tolist() == [
        "intense-complete",
        "faint-incomplete",
        "faint-incomplete",
        "faint-incomplete",
        "moderate-complete",
    ]
    assert classify_membrane(intensity, completeness, GASTRIC, gap).tolist() == [
        "intense-complete",
        "intense-complete",  # basolateral / lateral: positive in gastric cancer
        "faint-incomplete",  # two separate arcs are not one U
        "faint-incomplete",  # under half the ring
        "moderate-complete",
    ]


def test_gastric_category_uses_at_least_ten_percent_and_no_intense_minority() -> None:
    ten = {"none": 90, "intense-complete": 10}
    assert her2_category(ten) == "2+"  # breast: not > 10 %, the intense-minority 2+
    assert her2_category(ten, organ="gastric") == "3+"  # gastric: >= 10 %
    few = {"none": 95, "intense-complete": 5}
    assert her2_category(few) == "2+"
    assert her2_category(few, organ="gastric") == "0"
    assert her2_category({"none": 90, "moderate-complete": 10}, organ="gastric") == "2+"
    assert her2_category({"none": 90, "faint-incomplete": 10}, organ="gastric") == "1+"
    with pytest.raises(ConfigError, match="breast, gastric"):
        her2_category(ten, organ="lung")


def test_thresholds_record_and_check_the_rules(tmp_path: Path) -> None:
    path = GASTRIC.save(tmp_path / "t.json")
    assert json.loads(path.read_text())["thresholds"]["her2_rules"] == "gastric"
    assert Thresholds.from_json(path) == GASTRIC
    with pytest.raises(ConfigError, match="HER2 rules must be one of breast, gastric"):
        Thresholds(her2_rules="colon")


def test_drawn_u_shaped_membranes_read_3_plus_gastric_and_not_breast() -> None:
    """Intense membranes round half of each ring, one arc: incomplete (1+) by the breast rules,
    basolateral (3+) by the gastric rules; a fifth of a ring stays incomplete by both."""
    rgb = draw_ihc(membrane_od=1.0, arc=0.5, size_um=120.0)
    breast = quantify_image(rgb, MPP, stains="default")
    gastric = quantify_image(rgb, MPP, GASTRIC, stains="default")
    b_row, g_row = breast.accumulator.summary(Thresholds()), gastric.accumulator.summary(GASTRIC)
    assert b_row["n_tumour_cells"] >= 20
    assert b_row["her2_rules"] == "breast"
    assert g_row["her2_rules"] == "gastric"
    assert b_row["pct_intense_complete"] < 10
    assert b_row["category"] == "1+"
    assert g_row["pct_intense_complete"] > 60
    assert g_row["category"] == "3+"
    short = quantify_image(draw_ihc(membrane_od=1.0, arc=0.2, size_um=120.0), MPP, GASTRIC, stains="default")
    s_row = short.accumulator.summary(GASTRIC)
    assert s_row["pct_intense_complete"] < 10
    assert s_row["category"] == "1+"
