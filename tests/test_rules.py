"""The HER2 / ER / PR rulebook: boundary cases of each rule, and synthetic truth scored by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score import rules
from her2score.errors import ConfigError
from her2score.rules import (
    HER2_CATEGORIES,
    MEMBRANE_CLASSES,
    class_counts,
    her2_0_subtype,
    her2_3way,
    her2_category,
    her2_category_of_cells,
    is_her2_low,
    receptor_group,
    receptor_status,
)


def _cells(**counts: int) -> list[str]:
    return [c for c in MEMBRANE_CLASSES for _ in range(counts.get(c.replace("-", "_"), 0))]


@pytest.mark.parametrize(
    ("counts", "category"),
    [
        ({"none": 100}, "0"),
        ({"none": 90, "faint_incomplete": 10}, "0"),  # exactly 10 %: not more than 10 %
        ({"none": 89, "faint_incomplete": 11}, "1+"),
        ({"none": 88, "faint_incomplete": 6, "faint_complete": 6}, "1+"),  # any staining counts for 1+
        ({"none": 90, "faint_complete": 10}, "0"),  # complete staining in exactly 10 %: not 2+ nor 1+
        ({"none": 89, "faint_complete": 11}, "2+"),
        ({"none": 89, "moderate_complete": 11}, "2+"),
        ({"none": 88, "moderate_complete": 6, "intense_complete": 6}, "2+"),  # intense counts as complete
        ({"none": 90, "intense_complete": 10}, "2+"),  # intense in <= 10 %: the equivocal minority
        ({"none": 99, "intense_complete": 1}, "2+"),  # ... from 1 % of tumour cells
        ({"none": 995, "intense_complete": 5}, "0"),  # 0.5 %: stray cells, no pattern
        ({"none": 850, "faint_incomplete": 145, "intense_complete": 5}, "1+"),  # ... counted as staining
        ({"none": 89, "intense_complete": 11}, "3+"),
        ({"none": 60, "faint_incomplete": 29, "intense_complete": 11}, "3+"),
        ({}, "0"),  # no tumour cells
    ],
)
def test_her2_category_boundaries(counts: dict[str, int], category: str) -> None:
    cells = _cells(**counts)
    assert her2_category_of_cells(cells) == category
    assert her2_category(class_counts(cells)) == category
    # indices work as names do
    assert her2_category_of_cells([MEMBRANE_CLASSES.index(c) for c in cells]) == category


def test_her2_category_parameters_and_errors() -> None:
    counts = {"none": 95, "intense-complete": 5}
    assert her2_category(counts) == "2+"
    assert her2_category(counts, intense_minority_percent=6.0) == "0"
    assert her2_category(counts, positive_percent=4.0) == "3+"
    assert her2_category({"none": 100, "intense-complete": 0}, intense_minority_percent=0.0) == "0"
    with pytest.raises(ConfigError, match="unknown membrane class"):
        her2_category({"moderate-incomplete": 3})
    with pytest.raises(ConfigError, match="unknown membrane class"):
        class_counts(["none", "brown"])


def test_her2_0_subtypes() -> None:
    assert her2_0_subtype("0", {"none": 100}) == "null"
    assert her2_0_subtype("0", {"none": 95, "faint-incomplete": 5}) == "ultralow"
    assert her2_0_subtype("0", {"none": 90, "faint-incomplete": 10}) == "ultralow"  # <= 10 %
    assert her2_0_subtype("0", {"none": 999, "intense-complete": 1}) == "ultralow"  # a stray stained cell
    assert her2_0_subtype("1+", {"none": 80, "faint-incomplete": 20}) == ""
    with pytest.raises(ConfigError):
        her2_0_subtype("4+", {})


@pytest.mark.parametrize(
    ("category", "ish", "equivocal", "group"),
    [
        ("0", None, "ish", "0"),
        ("1+", "pos", "ish", "low"),  # ISH does not move a 1+
        ("2+", "pos", "ish", "high"),
        ("2+", "neg", "ish", "low"),
        ("2+", None, "ish", "low"),  # unknown ISH: not amplified
        ("2+", "pos", "low", "low"),
        ("2+", "neg", "high", "high"),
        ("3+", "neg", "ish", "high"),
    ],
)
def test_three_way_groups(category: str, ish: str | None, equivocal: str, group: str) -> None:
    assert her2_3way(category, ish, equivocal) == group


def test_her2_low_and_bad_rules() -> None:
    assert [is_her2_low(c) for c in HER2_CATEGORIES] == [False, True, True, False]
    assert not is_her2_low("2+", "pos")
    with pytest.raises(ConfigError, match="equivocal rule"):
        her2_3way("2+", None, "maybe")
    with pytest.raises(ConfigError, match="HER2 category"):
        her2_3way("2")


def test_receptor_one_percent_rule_and_er_low() -> None:
    assert receptor_status([True] + [False] * 99) == "pos"  # exactly 1 %
    assert receptor_status([True] + [False] * 100) == "neg"  # just under 1 %
    assert receptor_status([]) == "neg"
    assert [receptor_group(p) for p in (0.0, 0.99, 1.0, 10.0, 10.5, 100.0)] == [
        "negative", "negative", "low", "low", "positive", "positive",
    ]  # fmt: skip
    with pytest.raises(ConfigError):
        receptor_group(101.0)


def test_manifest_uses_the_rulebook() -> None:
    from her2score.data.manifest import EQUIVOCAL_RULES, HER2_SCORES, get_task

    assert HER2_SCORES == rules.HER2_CATEGORIES
    assert EQUIVOCAL_RULES == rules.EQUIVOCAL_RULES
    task = get_task("her2-3way", "ish")
    assert task.classes == rules.HER2_3WAY
    assert task.label_of({"her2": "2+", "ish": "pos"}) == "high"
    assert get_task("her2-3way", "high").label_of({"her2": "2+", "ish": None}) == "high"


# ----------------------------------------------------------------------- synthetic truth by the rule
def test_synthetic_slides_truth_cells_score_the_slides_category(tmp_path: Path) -> None:
    """Each synthetic slide's own per-cell truth, scored by the rulebook, gives its manifest category."""
    from her2score.data.synth import make_cohort

    manifest = make_cohort(tmp_path, 8, seed=3, kind="slides", size_mm=(1.0, 0.6), workers=0)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert set(frame["her2"]) == set(HER2_CATEGORIES)
    for rec in frame.itertuples():
        slide = manifest.parent / rec.slide
        truth = pd.read_parquet(slide.with_name(slide.stem + ".cells.parquet"))
        tumour = truth.loc[truth["is_tumour"], "membrane_class"].astype(str)
        assert len(tumour) > 20
        assert her2_category_of_cells(tumour) == rec.her2, rec.slide
        counts = class_counts(tumour)
        if rec.her2 == "0":
            assert her2_0_subtype("0", counts) in rules.HER2_0_SUBTYPES


@pytest.mark.parametrize("category", HER2_CATEGORIES)
def test_synthetic_patches_truth_cells_score_their_category(category: str) -> None:
    from her2score.data.synth import render_ihc_patch

    for seed in range(3):
        _, cells = render_ihc_patch(category, (256, 256), 0.5, seed=seed)
        assert her2_category_of_cells(cells.loc[cells["is_tumour"], "membrane_class"]) == category


def test_synthetic_truth_never_puts_the_intense_minority_pattern_in_a_0_or_1plus_case() -> None:
    """The generator's relabelling keeps 0 and 1+ cases free of intense complete cells, which the rule
    reads as 2+ from 1 % of tumour cells."""
    from her2score.data.synth.cells import enforce_her2_category

    rng = np.random.default_rng(5)
    for category in ("0", "1+"):
        for n in (30, 200, 1000):
            codes = rng.integers(0, 5, n).astype(np.int8)
            fixed = enforce_her2_category(codes, category, rng)
            assert her2_category_of_cells(fixed) == category
            assert not (fixed == 4).any()
