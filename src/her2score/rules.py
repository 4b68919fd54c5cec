"""The HER2 and ER/PR rulebook: categories, membrane classes and the scoring rules, in one place.

Synthetic truth (:mod:`her2score.data.synth`), the membrane quantifier (:mod:`her2score.quantify`),
manifest labels (:mod:`her2score.data.manifest`) and reports all take their categories and cut-offs
from here, so that a slide is scored by one rule wherever it is scored.

**HER2 IHC, breast (ASCO/CAP 2018, Wolff et al., J Clin Oncol 2018; Figure 1)**, over invasive
tumour cells:

* **3+ (positive)**: circumferential membrane staining that is complete, intense and within > 10 %
  of tumour cells.
* **2+ (equivocal)**: weak to moderate complete membrane staining observed in > 10 % of tumour cells.
* **1+ (negative)**: incomplete membrane staining that is faint / barely perceptible and within
  > 10 % of tumour cells.
* **0 (negative)**: no staining, or incomplete faint / barely perceptible membrane staining within
  ≤ 10 % of tumour cells.

Equivocal cases beyond these definitions (the note under the guideline's Figure 1, paraphrased):
unusual staining patterns not covered by the definitions are rare and, when met, should be
considered IHC 2+ (equivocal). Its examples: moderate-to-intense but *incomplete* (basolateral or
lateral) staining in some special subtypes, which can be HER2-amplified; and circumferential
staining that is *intense but within ≤ 10 %* of tumour cells (heterogeneous, very limited in
extent), which "can be considered 2+ equivocal" (additional samples may show a different share).
Tables summarising the 2018 update (and the 2013 guideline before it) fold the second example
into the 2+ definition: "weak to moderate complete staining in > 10 %, or intense complete
staining in ≤ 10 %". This rulebook does the same: **intense complete staining in ≤ 10 % of tumour
cells is 2+**, with no other qualifying staining needed.

How the definitions are read here, where they leave a gap:

* Cumulatively, strongest pattern first. Complete staining of any intensity in > 10 % is at least
  2+ (intense complete cells also count as "complete": 6 % intense + 6 % moderate complete is 2+);
  membrane staining of any kind in > 10 % is at least 1+ (6 % faint incomplete + 6 % faint complete
  is 1+, not 0).
* The guideline gives no lower bound for the intense ≤ 10 % pattern. A few intense complete cells
  among thousands are not "a pattern" a pathologist reports, and an automated count misreads a few
  cells; so it counts from :data:`INTENSE_MINORITY_PERCENT` (1 %) of tumour cells. Below that, those
  cells count as staining like any other (towards 1+ and the HER2-0 subtype).
* "> 10 %" is strict: exactly 10 % is not more than 10 %.

**HER2 IHC, gastric and gastro-oesophageal adenocarcinoma (Hofmann et al., Histopathology 2008;
52:797-805; Rüschoff et al., Virchows Arch 2012; adopted by the ASCO/CAP/ASCP guideline, Bartley et
al., J Clin Oncol 2017;35:446-464, Table 3)**, surgical (resection) specimens, over tumour cells:

* **3+ (positive)**: strong complete, basolateral or lateral membranous reactivity in ≥ 10 % of
  tumour cells.
* **2+ (equivocal)**: weak to moderate complete, basolateral or lateral membranous reactivity in
  ≥ 10 % of tumour cells.
* **1+ (negative)**: faint / barely perceptible membranous reactivity in ≥ 10 % of tumour cells;
  cells are reactive only in part of their membrane.
* **0 (negative)**: no reactivity, or membranous reactivity in < 10 % of tumour cells.

Two things differ from the breast rules. Glandular (columnar) cells rarely stain on their luminal
(apical) side, so a **"U-shaped" basolateral or lateral membrane counts like a complete one**: the
membrane quantifier reads it as ``*-complete`` (:func:`her2score.quantify.membrane.classify_membrane`
with ``her2_rules="gastric"``). And the cut-off is **≥ 10 %** (the breast "> 10 %" is strict); the
2018 breast-only "intense complete in ≤ 10 % is 2+" pattern does not exist here. The same cumulative
reading as above applies (intense complete cells count as complete, any staining towards 1+). The
guideline's biopsy rule (a cohesive cluster of ≥ 5 tumour cells, whatever share of the sample it is)
is not implemented: it needs the cells' clustering, not their counts.

**HER2-low and HER2-ultralow (ASCO/CAP 2023 update; DESTINY-Breast04/06)**: HER2-low is IHC 1+, or
IHC 2+ with a negative ISH; HER2-ultralow is IHC 0 with faint / barely perceptible incomplete
membrane staining in > 0 % and ≤ 10 % of tumour cells; HER2-null (IHC 0 with no staining at all)
otherwise. In a case that scores 0, whatever membrane staining there is sits under every cut-off
and is by definition the faint incomplete staining of an IHC 0: any stained tumour cell makes it
ultralow.

**Three groups for models** (``her2_3way``): ``0`` (IHC 0), ``low`` (1+, 2+ ISH-negative) and
``high`` (3+, 2+ ISH-positive). Where ISH is unknown, 2+ goes where the equivocal rule says:
``ish`` (by ISH; unknown ISH counts as not amplified, i.e. low), ``low`` or ``high``.

**ER / PR (ASCO/CAP 2020)**: positive when ≥ 1 % of tumour nuclei stain; 1-10 % is reported as
ER-low (PR-low) positive; < 1 % negative.

**Allred score (ER/PR; Allred et al., Mod Pathol 1998; Harvey et al., J Clin Oncol 1999)**: proportion
score 0-5 (0: no nuclei stain; 1: < 1 %; 2: 1-10 %; 3: 11-33 %, read here as > 10 % to 33 %; 4: 34-66 %,
> 33 % to 66 %; 5: > 66 %) plus intensity score 0-3 (the average intensity of the positive nuclei:
0 none, 1 weak, 2 intermediate, 3 strong), 0 or 2-8 in all.

**Ki-67 index (International Ki67 in Breast Cancer Working Group, Nielsen et al., JNCI 2021)**: the
percentage of invasive tumour nuclei with any nuclear staining, whatever its intensity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from her2score.errors import ConfigError

#: HER2 IHC categories, weakest first.
HER2_CATEGORIES = ("0", "1+", "2+", "3+")
#: Membrane class of one tumour cell, weakest first. Incomplete staining is graded no further: ASCO/CAP
#: grades intensity on complete (circumferential) membranes only.
MEMBRANE_CLASSES = ("none", "faint-incomplete", "faint-complete", "moderate-complete", "intense-complete")
#: Staining intensity (0 none .. 3 intense) of each membrane class, in :data:`MEMBRANE_CLASSES` order.
MEMBRANE_INTENSITY = (0, 1, 1, 2, 3)
#: Classes whose membrane is complete (circumferential).
COMPLETE_CLASSES = ("faint-complete", "moderate-complete", "intense-complete")
#: HER2 rulebooks by organ: ``breast`` (ASCO/CAP 2018, the default) and ``gastric`` (Hofmann 2008 /
#: ASCO/CAP/ASCP 2016 gastro-oesophageal, surgical specimens).
HER2_RULES = ("breast", "gastric")
#: Subtypes of HER2 0 (ASCO/CAP 2023).
HER2_0_SUBTYPES = ("null", "ultralow")
#: Three groups for models: 0 / low / high.
HER2_3WAY = ("0", "low", "high")
#: Where HER2 2+ goes in the three groups when it is not known from ISH.
EQUIVOCAL_RULES = ("ish", "low", "high")
#: ER/PR (and ISH) status.
RECEPTOR_STATUSES = ("neg", "pos")

#: The ASCO/CAP 10 % rule: a pattern counts when it is seen in more than this share (%) of tumour cells.
POSITIVE_PERCENT = 10.0
#: Intense complete staining in at least this share (%) of tumour cells, up to 10 %, is 2+ (see above).
INTENSE_MINORITY_PERCENT = 1.0
#: ER/PR positive from this share (%) of tumour nuclei ...
RECEPTOR_POSITIVE_PERCENT = 1.0
#: ... and "low" positive up to this share (%).
RECEPTOR_LOW_PERCENT = 10.0


def class_counts(membrane_class: Sequence[str] | np.ndarray) -> dict[str, int]:
    """Count tumour cells per membrane class; ``membrane_class`` holds class names or class indices."""
    arr = np.asarray(membrane_class)
    if arr.dtype.kind in "iu":
        codes = arr.astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= len(MEMBRANE_CLASSES)):
            raise ConfigError(f"membrane class indices must be 0..{len(MEMBRANE_CLASSES) - 1}")
    else:
        lookup = {name: i for i, name in enumerate(MEMBRANE_CLASSES)}
        try:
            codes = np.array([lookup[str(c)] for c in arr.ravel()], dtype=np.int64)
        except KeyError as exc:
            raise ConfigError(
                f"unknown membrane class {exc.args[0]!r}; expected one of {', '.join(MEMBRANE_CLASSES)}"
            ) from None
    counts = np.bincount(codes.ravel(), minlength=len(MEMBRANE_CLASSES))
    return {name: int(counts[i]) for i, name in enumerate(MEMBRANE_CLASSES)}


def _check_counts(counts: Mapping[str, float]) -> None:
    unknown = set(counts) - set(MEMBRANE_CLASSES)
    if unknown:
        raise ConfigError(
            f"unknown membrane classes {sorted(unknown)}; expected {', '.join(MEMBRANE_CLASSES)}"
        )


def check_her2_rules(name: str) -> str:
    """``name`` if it is one of :data:`HER2_RULES`, else a :class:`ConfigError` naming the choices."""
    if name not in HER2_RULES:
        raise ConfigError(f"HER2 rules must be one of {', '.join(HER2_RULES)} (got {name!r})")
    return name


def her2_category(
    counts: Mapping[str, float],
    *,
    positive_percent: float = POSITIVE_PERCENT,
    intense_minority_percent: float = INTENSE_MINORITY_PERCENT,
    organ: str = "breast",
) -> str:
    """HER2 IHC category (``0``, ``1+``, ``2+``, ``3+``) from tumour-cell counts per class.

    ``counts`` maps membrane classes (:data:`MEMBRANE_CLASSES`) to numbers of tumour cells (missing
    classes: 0). ``organ="breast"`` (ASCO/CAP 2018): 3+: intense complete in > 10 %; 2+: complete
    staining of any intensity in > 10 %, or intense complete in ``intense_minority_percent``-10 %;
    1+: membrane staining of any kind in > 10 %; else 0. ``organ="gastric"`` (Hofmann 2008): the same
    patterns in ≥ 10 % (complete classes include basolateral / lateral membranes there), no
    intense-minority 2+. No tumour cells: 0.

        >>> her2_category({"none": 90, "intense-complete": 10})  # not > 10 %: the 2+ minority pattern
        '2+'
        >>> her2_category({"none": 90, "intense-complete": 10}, organ="gastric")  # ≥ 10 %
        '3+'
        >>> her2_category({"none": 89, "faint-incomplete": 11})
        '1+'
    """
    _check_counts(counts)
    gastric = check_her2_rules(organ) == "gastric"
    n = sum(counts.get(c, 0) for c in MEMBRANE_CLASSES)
    if n <= 0:
        return "0"
    intense = counts.get("intense-complete", 0)
    complete = sum(counts.get(c, 0) for c in COMPLETE_CLASSES)
    stained = n - counts.get("none", 0)

    def over(count: float, percent: float) -> bool:  # count > (gastric: >=) percent % of n, exact
        return 100 * count >= percent * n if gastric else 100 * count > percent * n

    minority = not gastric and intense > 0 and 100 * intense >= intense_minority_percent * n
    if over(intense, positive_percent):
        return "3+"
    if over(complete, positive_percent) or minority:
        return "2+"
    if over(stained, positive_percent):
        return "1+"
    return "0"


def her2_category_of_cells(membrane_class: Sequence[str] | np.ndarray, **rule: float | str) -> str:
    """:func:`her2_category` of a set of tumour cells given by their membrane classes (names or indices).

    >>> her2_category_of_cells(["none"] * 89 + ["intense-complete"] * 11)
    '3+'
    """
    return her2_category(class_counts(membrane_class), **rule)


def her2_0_subtype(category: str, counts: Mapping[str, float]) -> str:
    """``ultralow`` or ``null`` for a HER2 0 case (ASCO/CAP 2023), ``""`` for any other category.

    Ultralow: some membrane staining (necessarily faint incomplete in ≤ 10 % in a case scored 0);
    null: none at all.
    """
    _check_category(category)
    if category != "0":
        return ""
    _check_counts(counts)
    stained = sum(counts.get(c, 0) for c in MEMBRANE_CLASSES if c != "none")
    return "ultralow" if stained > 0 else "null"


def her2_3way(category: str, ish: str | None = None, equivocal: str = "ish") -> str:
    """Three groups: ``0`` (IHC 0), ``low`` (1+, 2+ not amplified) or ``high`` (3+, 2+ amplified).

    ``equivocal`` says where 2+ goes: ``ish`` (by ``ish``: ``pos`` high, anything else, unknown
    included, low), ``low`` or ``high``.

        >>> her2_3way("2+", ish="pos"), her2_3way("2+"), her2_3way("2+", equivocal="high")
        ('high', 'low', 'high')
    """
    _check_category(category)
    if equivocal not in EQUIVOCAL_RULES:
        raise ConfigError(f"equivocal rule must be one of {', '.join(EQUIVOCAL_RULES)}, not {equivocal!r}")
    if category == "0":
        return "0"
    if category == "1+":
        return "low"
    if category == "3+":
        return "high"
    if equivocal == "ish":
        return "high" if ish == "pos" else "low"
    return equivocal


def is_her2_low(category: str, ish: str | None = None) -> bool:
    """HER2-low (ASCO/CAP 2023): IHC 1+, or IHC 2+ with ISH not amplified (unknown ISH counts as not)."""
    return her2_3way(category, ish, "ish") == "low"


def receptor_status(nuclear_positive: Sequence[bool] | np.ndarray) -> str:
    """ER/PR status, ``pos`` when at least 1 % of tumour nuclei stain, else ``neg`` (none: ``neg``)."""
    pos = np.asarray(nuclear_positive, dtype=bool)
    if pos.size == 0:
        return "neg"
    return "pos" if 100 * int(pos.sum()) >= RECEPTOR_POSITIVE_PERCENT * pos.size else "neg"


def receptor_group(percent_positive: float) -> str:
    """ER/PR reporting group from the share (%) of stained tumour nuclei: ``negative`` (< 1 %),
    ``low`` (1-10 %, "ER-low positive") or ``positive`` (> 10 %)."""
    if not 0.0 <= percent_positive <= 100.0:
        raise ConfigError(f"percent of positive nuclei must be in 0..100 (got {percent_positive})")
    if percent_positive < RECEPTOR_POSITIVE_PERCENT:
        return "negative"
    return "low" if percent_positive <= RECEPTOR_LOW_PERCENT else "positive"


#: Upper bounds (%) of the Allred proportion scores 1, 2, 3 and 4 (above the last: 5); 0 is no staining.
ALLRED_PROPORTION_BOUNDS = (1.0, 10.0, 100.0 / 3.0, 200.0 / 3.0)


def allred_proportion_score(percent_positive: float) -> int:
    """Allred proportion score 0-5 from the share (%) of stained tumour nuclei.

    >>> [allred_proportion_score(p) for p in (0, 0.5, 1, 10, 20, 50, 90)]
    [0, 1, 2, 2, 3, 4, 5]
    """
    if not 0.0 <= percent_positive <= 100.0:
        raise ConfigError(f"percent of positive nuclei must be in 0..100 (got {percent_positive})")
    if percent_positive == 0:
        return 0
    if percent_positive < ALLRED_PROPORTION_BOUNDS[0]:
        return 1
    return 2 + sum(percent_positive > bound for bound in ALLRED_PROPORTION_BOUNDS[1:])


def allred_intensity_score(positive_intensities: Sequence[int] | np.ndarray) -> int:
    """Allred intensity score 0-3: the average intensity (1 weak .. 3 strong) of the positive nuclei,
    rounded half up; no positive nuclei: 0."""
    levels = np.asarray(positive_intensities, dtype=np.float64)
    levels = levels[levels > 0]
    if levels.size == 0:
        return 0
    if levels.max() > 3:
        raise ConfigError(f"nuclear intensities must be 0..3 (got {levels.max():g})")
    return int(np.floor(levels.mean() + 0.5))


def allred_score(percent_positive: float, positive_intensities: Sequence[int] | np.ndarray) -> int:
    """Allred score 0-8: proportion score plus intensity score (0 when no nucleus stains).

    >>> allred_score(50.0, [1, 2, 3, 3])
    6
    """
    proportion = allred_proportion_score(percent_positive)
    return proportion + allred_intensity_score(positive_intensities) if proportion else 0


def ki67_index(nuclear_positive: Sequence[bool] | np.ndarray) -> float:
    """Ki-67 index: percent of tumour nuclei that stain (any intensity); no nuclei: 0."""
    pos = np.asarray(nuclear_positive, dtype=bool)
    return 100.0 * float(pos.mean()) if pos.size else 0.0


def _check_category(category: str) -> None:
    if category not in HER2_CATEGORIES:
        raise ConfigError(f"HER2 category must be one of {', '.join(HER2_CATEGORIES)} (got {category!r})")
