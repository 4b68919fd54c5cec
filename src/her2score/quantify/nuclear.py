"""Nuclear markers (ER, PR, Ki-67): per tumour nucleus DAB, positive / negative and intensity; per image
the percent positive, H-score, Allred score, ER/PR status (ASCO/CAP 2020) and the Ki-67 index.

Per image (patch, core or tile):

1. stains separated as for HER2 (per-image Macenko H-DAB vectors when plausible, else the defaults;
   :mod:`her2score.stain.detect`);
2. nuclei detected by :func:`detect_nuclei` on hematoxylin *and* DAB (a strongly positive nucleus is
   brown with little blue left): foreground from the nuclear density (hematoxylin plus capped DAB,
   top-hat, Otsu with hysteresis) or from DAB itself; the brown and the blue foreground split apart,
   so that a positive nucleus touching a negative one stays two nuclei; touching nuclei split by a
   seeded watershed. Independent of the HER2 cell model (:mod:`her2score.quantify.cells`);
3. each nucleus taken for tumour, lymphocyte, stromal or other by size and shape
   (:func:`nucleus_kinds`): small round nuclei are lymphocytes *whatever their stain*, so that
   cycling (Ki-67 positive) lymphocytes do not leak into the index; spindles are stromal;
4. the image's own hematoxylin read off its non-tumour nuclei (:func:`nuclear_hematoxylin`) and the
   stains separated again with it: real counterstains are greyer than the published vector and a
   DAB-negative nucleus would otherwise read as weakly positive;
5. each nucleus's mean DAB OD graded 0 / 1+ weak / 2+ moderate / 3+ strong by
   :class:`NuclearThresholds` (how they were derived is in its docstring); positive is 1+ or more;
6. scores by :mod:`her2score.rules`: ``pct_positive``, H-score (0-300), Allred (ER/PR), the
   ER/PR reporting group (``negative`` < 1 %, ``low`` 1-10 %, ``positive`` > 10 %) and the Ki-67
   index (percent positive tumour nuclei, whatever the intensity), with the count of each kind of
   nucleus and of the positive lymphocytes left out. Fewer tumour nuclei than
   ``Thresholds.min_tumour_cells``: not scorable, with the reason. Beside the clinical figures,
   ``pct_positive_all_nuclei``: the percent positive over *every* nucleus found, of any kind
   (tumour, lymphocyte, stromal, other), the denominator of a truth that labels every cell (e.g.
   immunofluorescence with DAPI), not a clinical index.

Files (:func:`quantify_nuclear_file`): patches in one piece; anything larger than about a tile
(cores, fields, slides) tile by tile over all its tissue with regions for heterogeneity
(:mod:`her2score.quantify.tiled`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from her2score import rules
from her2score.errors import ConfigError, NoTissueError, StainError
from her2score.quantify.cells import CellParams
from her2score.quantify.membrane import half_maximum, nucleus_shapes
from her2score.quantify.scoring import NOT_SCORABLE, not_scorable_reason
from her2score.quantify.thresholds import Thresholds
from her2score.stain.deconvolution import StainMatrix

#: Markers scored on nuclei; ``her2`` is scored on membranes (:mod:`her2score.quantify.membrane`).
NUCLEAR_MARKERS = ("er", "pr", "ki67")
#: Every marker ``quantify`` scores, the default first.
MARKERS = ("her2", *NUCLEAR_MARKERS)
#: What a nucleus was taken for (``kind`` column); only ``tumour`` nuclei are scored.
NUCLEUS_KINDS = ("tumour", "lymphocyte", "stromal", "other")
#: Nuclear intensity names, 0..3.
NUCLEAR_INTENSITIES = ("negative", "weak", "moderate", "strong")
#: Leading columns of a nuclear results row (``results.csv``); per-intensity counts follow.
NUCLEAR_RESULT_COLUMNS = (
    "image",
    "status",
    "error",
    "marker",
    "category",
    "scorable",
    "reason",
    "n_nuclei",
    "pct_positive",
    "h_score",
    "allred",
    "allred_proportion",
    "allred_intensity",
    "receptor_status",
    "ki67_index",
    "pct_positive_all_nuclei",
)


@dataclass(frozen=True)
class NuclearThresholds:
    """Nuclear DAB thresholds: mean DAB optical density over a nucleus, and the lymphocyte filter.

    Grades 0.12 / 0.30 / 0.50 OD (weak / moderate / strong; positive from weak). How derived:

    * the scale is QuPath's "Nucleus: DAB OD mean" of its positive cell detection, the usual tool
      for ER, PR and Ki-67, whose default grades are 0.2 / 0.4 / 0.6 and whose Ki-67 tutorials set
      the single positive threshold at 0.1-0.2: real positive nuclei span ~0.15-1.0 OD on it;
    * the floor must sit above what a DAB-negative nucleus reads. Measured on the 21 real IHC patches
      of ``../shared/data/real`` (BCI and MIST HER2 stains: their nuclei carry no DAB): once the
      image's own hematoxylin is used (:func:`nuclear_hematoxylin`), the per-nucleus mean reads
      0.01-0.04 OD at the median and 0.03-0.12 OD at the 90th percentile on the 0 and 1+ patches;
      0.12 sits at the top of that range and under the faint positives (0.14-0.28 OD) of the synthetic Ki-67
      tiles (:mod:`her2score.data.synth.ki67`) and the weakest ER/PR positives of the patch renderer;
    * moderate and strong split the positives at 0.30 / 0.50, between QuPath's grades and the
      synthetic renderers' class means; they change the H-score and the Allred intensity, not the
      percent positive or the Ki-67 index.

    No real ER/PR/Ki-67 image with known truth was available; a lab should confirm them on its own
    controls (``--nuclear-thresholds`` / ``--positive-od``).
    """

    weak: float = 0.12
    moderate: float = 0.30
    strong: float = 0.50
    #: Small round nuclei are lymphocytes (not scored): area at half the nucleus's own density below
    #: this (µm², :func:`~her2score.quantify.membrane.half_maximum`) ... A lymphocyte's nucleus is 5-7 µm
    #: across (≤ 38 µm²).
    lymphocyte_max_um2: float = 45.0
    #: ... and elongation (major / minor axis) below this.
    lymphocyte_max_elongation: float = 1.5
    #: An elongated nucleus is stromal (spindle) only when narrower than this (µm, minor axis as
    #: segmented): fibroblast and endothelial nuclei are 2-4 µm wide (4.5-5.3 µm as segmented on the
    #: synthetic Ki-67 tiles), a tumour nucleus 6 µm or more; a wider elongated object in a nest is
    #: touching tumour nuclei merged into one (8.7-17 µm wide there), counted by area as a clump.
    stromal_max_width_um: float = 7.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number (got {value!r})")
        if self.stromal_max_width_um < 0:
            raise ConfigError(f"stromal_max_width_um must be ≥ 0 (got {self.stromal_max_width_um})")
        if self.lymphocyte_max_um2 < 0 or self.lymphocyte_max_elongation < 1:
            raise ConfigError(
                "lymphocyte_max_um2 must be ≥ 0 and lymphocyte_max_elongation ≥ 1 "
                f"(got {self.lymphocyte_max_um2}, {self.lymphocyte_max_elongation})"
            )
        if not 0 < self.weak < self.moderate < self.strong < 5:
            raise ConfigError(
                "nuclear thresholds must satisfy 0 < weak < moderate < strong < 5 "
                f"(got {self.weak}, {self.moderate}, {self.strong})"
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def load_nuclear_thresholds(
    path: str | Path | None = None, overrides: dict[str, float | None] | None = None
) -> NuclearThresholds:
    """Nuclear thresholds from a JSON file and/or overrides (None values ignored); defaults otherwise.

    The file holds the fields of :class:`NuclearThresholds` at the top level, or under a
    ``nuclear_thresholds`` key (the ``thresholds.json`` a nuclear ``quantify`` run writes). Unknown keys
    and bad values raise :class:`ConfigError` naming the file.
    """
    import json

    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read nuclear thresholds from {path}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("nuclear_thresholds"), dict):
            data = data["nuclear_thresholds"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of nuclear thresholds")
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(NuclearThresholds)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}unknown nuclear threshold(s) {unknown}; expected some of {sorted(known)}")
    try:
        return NuclearThresholds(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def check_marker(marker: str) -> str:
    """``marker`` lower-cased when it is one of :data:`MARKERS`, else :class:`ConfigError`."""
    name = str(marker).strip().lower()
    if name not in MARKERS:
        raise ConfigError(f"marker must be one of {', '.join(MARKERS)} (got {marker!r})")
    return name


def empty_nuclei() -> Any:
    """An empty per-nucleus table with the columns and dtypes of :func:`measure_nuclei`."""
    return _nuclei_frame(
        np.zeros(0, np.int64),
        *(np.zeros(0, np.float32) for _ in range(6)),
        np.zeros(0, np.int8),
        0.5,
        n_est=np.zeros(0, np.int16),
    )


def _nuclei_frame(
    ids: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    area_um2: np.ndarray,
    elongation: np.ndarray,
    hema: np.ndarray,
    dab: np.ndarray,
    kind: np.ndarray,
    mpp: float,
    t: NuclearThresholds | None = None,
    n_est: np.ndarray | None = None,
) -> Any:
    import pandas as pd

    t = t or NuclearThresholds()
    if n_est is None:
        n_est = np.ones(len(ids), dtype=np.int16)
    intensity = np.digitize(dab, [t.weak, t.moderate, t.strong]).astype(np.int8)
    return pd.DataFrame(
        {
            "cell_id": ids.astype(np.int64),
            "x": cx.astype(np.float32),
            "y": cy.astype(np.float32),
            "x_um": (cx * mpp).astype(np.float32),
            "y_um": (cy * mpp).astype(np.float32),
            "nucleus_area_um2": area_um2.astype(np.float32),
            "nucleus_elongation": elongation.astype(np.float32),
            "nucleus_hematoxylin": hema.astype(np.float32),
            "nuclear_dab": dab.astype(np.float32),
            "is_tumour": kind == 0,
            "n_nuclei_est": np.asarray(n_est, dtype=np.int16),
            "kind": pd.Categorical(np.asarray(NUCLEUS_KINDS, dtype=object)[kind], categories=NUCLEUS_KINDS),
            "intensity": intensity,
            "intensity_class": pd.Categorical(
                np.asarray(NUCLEAR_INTENSITIES, dtype=object)[intensity], categories=NUCLEAR_INTENSITIES
            ),
            "positive": intensity > 0,
        }
    )


def measure_nuclei(
    nuclei: np.ndarray,
    hematoxylin: np.ndarray,
    dab: np.ndarray,
    mpp: float,
    thresholds: Thresholds | None = None,
    nuclear_thresholds: NuclearThresholds | None = None,
) -> Any:
    """Per-nucleus table: position (px and µm), size and shape, mean hematoxylin and DAB OD, tumour
    or not, intensity 0-3 (``intensity``, ``intensity_class``) and ``positive`` (intensity ≥ 1)."""
    t = thresholds or Thresholds()
    nt = nuclear_thresholds or NuclearThresholds()
    n = int(nuclei.max())
    if n == 0:
        return empty_nuclei()
    props = nucleus_shapes(nuclei, hematoxylin)
    hema = props["hematoxylin"]
    yy, xx = np.nonzero(nuclei)
    ids = nuclei[yy, xx] - 1
    count = np.maximum(np.bincount(ids, minlength=n), 1)
    mean_dab = np.maximum(np.bincount(ids, weights=dab[yy, xx], minlength=n) / count, 0.0)
    props["core_area"], _, _ = half_maximum(nuclei, hematoxylin + dab, n, mpp)
    kind = nucleus_kinds(props, mpp, t, nt, mean_dab)
    n_est = nuclei_per_object(props, mpp, kind == 0, t)
    # Every other object is one nucleus of its kind, but for the pale brown objects that are not
    # nuclei at all (cytoplasm or stroma; :func:`nucleus_kinds`).
    n_est[kind != 0] = 1
    n_est[_pale_non_nuclei(props["hematoxylin"], mean_dab, nt) & (kind != 0)] = 0
    # Larger than a clump of nuclei: a fold, stain precipitate or merged tissue, not scored.
    too_large = n_est > MAX_NUCLEI_PER_OBJECT
    kind[too_large], n_est[too_large] = 3, 0
    return _nuclei_frame(
        np.arange(1, n + 1),
        props["x"],
        props["y"],
        props["area"] * mpp**2,
        props["major"] / np.maximum(props["minor"], 1.0),
        hema,
        mean_dab,
        kind,
        mpp,
        nt,
        n_est,
    )


#: Fewer well-shaped single tumour nuclei than this in an image or tile: every object counts as one
#: nucleus (:func:`nuclei_per_object` has no reliable single-nucleus area to divide by).
MIN_SINGLE_NUCLEI = 10
#: An object counted as more nuclei than this is not a clump of nuclei (a fold, stain precipitate, merged
#: tissue) and is not scored (kind ``other``); the largest clumps of touching nuclei on the hard synthetic
#: Ki-67 tiles count ~15.
MAX_NUCLEI_PER_OBJECT = 20
#: A tumour nucleus filling at least this share of its fitted ellipse is taken for a single nucleus
#: when the image's typical nucleus area is measured (two merged nuclei make a waisted outline).
SINGLE_NUCLEUS_FILL = 0.9


def nuclei_per_object(
    props: dict[str, np.ndarray], mpp: float, tumour: np.ndarray, t: Thresholds
) -> np.ndarray:
    """How many nuclei each tumour object holds (0 for the others; :func:`measure_nuclei` then counts
    each other nucleus once): its area over the image's typical single tumour nucleus, rounded, at
    least 1.

    Why: in crowded nests touching nuclei are not all split apart, and pale negative nuclei merge more
    often than brown ones (the brown and the blue foreground are split apart, two blue neighbours are
    not; a positive nucleus is denser and keeps its own peak). Counting each merged object as one
    nucleus drops negatives from the denominator and over-calls the index: on the hard synthetic
    Ki-67 tiles 40-70 % of the true negative nuclei were found as such, 80-96 % of the positives.
    The typical area is the median of the tumour objects that fill their fitted ellipse
    (:data:`SINGLE_NUCLEUS_FILL`) and lie within the tumour-nucleus size range; with fewer than
    :data:`MIN_SINGLE_NUCLEI` of them every tumour object counts once. Objects too large for one
    nucleus (over ``t.tumour_nucleus_max_um2``, in a nest, taken for tumour by :func:`nucleus_kinds`)
    are clumps of several and are counted the same way.
    """
    area = props["area"] * mpp**2
    fill = props["area"] / np.maximum(np.pi / 4 * props["major"] * props["minor"], 1.0)
    single = tumour & (fill >= SINGLE_NUCLEUS_FILL) & (area <= t.tumour_nucleus_max_um2)
    out = tumour.astype(np.int16)
    if single.sum() < MIN_SINGLE_NUCLEI:
        return out
    typical = float(np.median(area[single]))
    k = np.clip(np.round(area / typical), 1, np.iinfo(np.int16).max).astype(np.int16)
    return np.where(tumour, k, 0).astype(np.int16)


#: An object with less hematoxylin than this fraction of the image's median nucleus and less than
#: moderate DAB is not a nucleus (see :func:`nucleus_kinds`).
PALE_HEMATOXYLIN_FRACTION = 0.3


def nucleus_kinds(
    props: dict[str, np.ndarray],
    mpp: float,
    t: Thresholds,
    nt: NuclearThresholds,
    mean_dab: np.ndarray | None = None,
) -> np.ndarray:
    """Index into :data:`NUCLEUS_KINDS` per nucleus: tumour, lymphocyte, stromal or other.

    * stromal (fibroblast, endothelial, smooth muscle): a spindle, elongation above
      ``t.tumour_max_elongation`` and narrower than ``nt.stromal_max_width_um`` (a wider elongated
      object is merged tumour nuclei);
    * lymphocyte: small and round, area at half maximum (``props["core_area"]`` when given, see
      :func:`~her2score.quantify.membrane.half_maximum`; else the segmented area) below
      ``nt.lymphocyte_max_um2`` and elongation below
      ``nt.lymphocyte_max_elongation``, *whatever its stain*: cycling lymphocytes are Ki-67 positive
      and would leak into the index (the known "lymphocyte leak" of automated Ki-67 counts), and a
      positive lymphocyte has lost its dark blue to the brown, so darkness cannot tell it;
    * other: too small for a tumour nucleus, or not convex, or (with ``mean_dab``) weakly brown with
      hardly any hematoxylin (under :data:`PALE_HEMATOXYLIN_FRACTION` of the median nucleus's): pale
      cytoplasm or stroma;
    * tumour: the rest, in a nest, cord or file (:func:`~her2score.quantify.membrane.in_nest`),
      including objects too large for one nucleus (over ``t.tumour_nucleus_max_um2``): in a nest
      these are clumps of touching nuclei that were not split, scored as several
      (:func:`nuclei_per_object`) rather than dropped (dropping them lost mostly negative nuclei).

    Size tells a lymphocyte only roughly: a low-grade tumour with nuclei under ~7 µm across loses
    some of its nuclei to the lymphocyte class (a lab can lower ``lymphocyte_max_um2``).
    """
    from her2score.quantify.membrane import in_nest, palisade

    area = props["area"] * mpp**2
    elongation = props["major"] / np.maximum(props["minor"], 1.0)
    fill = props["area"] / np.maximum(np.pi / 4 * props["major"] * props["minor"], 1.0)
    kind = np.full(len(area), 3, dtype=np.int8)
    sized = (area >= t.tumour_nucleus_min_um2) & (area <= t.tumour_nucleus_max_um2)
    stromal = (elongation > t.tumour_max_elongation) & (props["minor"] * mpp < nt.stromal_max_width_um)
    # Elongated nuclei standing side by side in a palisade are columnar epithelium (glands), not spindles:
    # the HER2 cell kinds' rule (:func:`~her2score.quantify.membrane.palisade`).
    stromal &= ~palisade(props, mpp, t, stromal & sized & (fill >= t.tumour_min_ellipse_fill))
    # Size at half maximum (``props["core_area"]``, :func:`~her2score.quantify.membrane.half_maximum`)
    # when measured.
    size = props["core_area"] * mpp**2 if "core_area" in props else area
    lymphocyte = (size < nt.lymphocyte_max_um2) & (elongation < nt.lymphocyte_max_elongation) & ~stromal
    tumour = sized & ~stromal & ~lymphocyte & (fill >= t.tumour_min_ellipse_fill)
    tumour |= (area > t.tumour_nucleus_max_um2) & ~stromal
    if mean_dab is not None and len(area):
        tumour &= ~_pale_non_nuclei(props["hematoxylin"], mean_dab, nt)
    tumour &= in_nest(props["y"] * mpp, props["x"] * mpp, t)
    kind[stromal] = 2
    kind[lymphocyte] = 1
    kind[tumour] = 0
    return kind


def _pale_non_nuclei(hema: np.ndarray, mean_dab: np.ndarray | None, nt: NuclearThresholds) -> np.ndarray:
    """Objects weakly brown and hardly blue: pale cytoplasm or stroma that passed the DAB foreground,
    not nuclei (a weakly positive nucleus keeps its counterstain; only strong DAB masks it)."""
    if mean_dab is None or not len(hema):
        return np.zeros(len(hema), dtype=bool)
    return (hema < PALE_HEMATOXYLIN_FRACTION * np.median(hema)) & (mean_dab < nt.moderate)


class NuclearAccumulator:
    """Running counts of tumour nuclei per intensity, and of nuclei per kind (tile by tile); memory
    stays flat. The excluded positive lymphocytes are counted too (``n_lymphocytes_positive``): they
    are what an all-nuclei Ki-67 count would have leaked into the index. So are the nuclei of every
    kind, and the positive ones among them (``n_nuclei_est`` each, clumps counted as several):
    ``pct_positive_all_nuclei``."""

    def __init__(self) -> None:
        self.n_nuclei_all = 0
        self.intensity_counts = [0, 0, 0, 0]
        self.kind_counts = dict.fromkeys(NUCLEUS_KINDS, 0)
        self.lymphocytes_positive = 0
        self.all_nuclei = 0
        self.all_nuclei_positive = 0

    def add_nuclei(self, nuclei: Any) -> None:
        self.n_nuclei_all += len(nuclei)
        tumour = nuclei[nuclei["is_tumour"].to_numpy(dtype=bool)]
        weights = tumour["n_nuclei_est"].to_numpy(dtype=np.float64) if "n_nuclei_est" in tumour else None
        counts = np.bincount(tumour["intensity"].to_numpy(dtype=np.int64), weights=weights, minlength=4)
        counts = np.round(counts).astype(np.int64)
        for i in range(4):
            self.intensity_counts[i] += int(counts[i])
        if "kind" in nuclei:
            for name, count in nuclei["kind"].value_counts().items():
                self.kind_counts[str(name)] += int(count)
            lymph = nuclei["kind"].astype(str).to_numpy() == "lymphocyte"
            self.lymphocytes_positive += int((lymph & nuclei["positive"].to_numpy(dtype=bool)).sum())
        if "n_nuclei_est" in nuclei:
            est = nuclei["n_nuclei_est"].to_numpy(dtype=np.int64)
            self.all_nuclei += int(est.sum())
            self.all_nuclei_positive += int(est[nuclei["positive"].to_numpy(dtype=bool)].sum())

    def merge(self, part: NuclearAccumulator) -> None:
        self.n_nuclei_all += part.n_nuclei_all
        for i in range(4):
            self.intensity_counts[i] += part.intensity_counts[i]
        for name in NUCLEUS_KINDS:
            self.kind_counts[name] += part.kind_counts[name]
        self.lymphocytes_positive += part.lymphocytes_positive
        self.all_nuclei += part.all_nuclei
        self.all_nuclei_positive += part.all_nuclei_positive

    def summary(self, marker: str, thresholds: Thresholds) -> dict[str, Any]:
        row = score_nuclear_counts(marker, self.intensity_counts, self.n_nuclei_all, thresholds)
        row |= {
            "n_lymphocytes": self.kind_counts["lymphocyte"],
            "n_lymphocytes_positive": self.lymphocytes_positive,
            "n_stromal": self.kind_counts["stromal"],
            "n_other": self.kind_counts["other"],
            "pct_positive_all_nuclei": (
                100.0 * self.all_nuclei_positive / self.all_nuclei if self.all_nuclei else None
            ),
        }
        return row


def score_nuclear_counts(
    marker: str, intensity_counts: list[int], n_nuclei_all: int, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """The image or slide row from tumour-nucleus counts per intensity (0..3).

    ``category``: the ER/PR reporting group (:func:`~her2score.rules.receptor_group`), also in
    ``receptor_status``; for Ki-67 the index rounded, e.g. ``"23%"``. Fewer tumour nuclei than
    ``thresholds.min_tumour_cells``: category ``not scorable`` and the ``reason``, scores left empty.
    """
    marker = check_marker(marker)
    t = thresholds or Thresholds()
    counts = [int(c) for c in intensity_counts]
    n = sum(counts)
    reason = not_scorable_reason(n, t).replace("tumour cells", "tumour nuclei")
    row: dict[str, Any] = {
        "marker": marker,
        "category": NOT_SCORABLE if reason else "",
        "scorable": not reason,
        "reason": reason,
        "n_nuclei": n,
        "n_nuclei_all": int(n_nuclei_all),
    }
    pct = [100.0 * c / max(n, 1) for c in counts]
    pct_positive = 100.0 - pct[0] if n else 0.0
    receptor = marker in ("er", "pr")
    positives = np.repeat(np.arange(4), counts)
    row |= {
        "pct_positive": pct_positive if not reason else None,
        "h_score": sum(level * p for level, p in enumerate(pct)) if not reason else None,
        "allred": rules.allred_score(pct_positive, positives) if receptor and not reason else None,
        "allred_proportion": rules.allred_proportion_score(pct_positive) if receptor and not reason else None,
        "allred_intensity": rules.allred_intensity_score(positives) if receptor and not reason else None,
        "receptor_status": rules.receptor_group(pct_positive) if receptor and not reason else "",
        "ki67_index": pct_positive if marker == "ki67" and not reason else None,
    }
    if not reason:
        row["category"] = row["receptor_status"] if receptor else f"{pct_positive:.0f}%"
    for name, c, p in zip(NUCLEAR_INTENSITIES, counts, pct, strict=True):
        row[f"n_{name}"] = c
        row[f"pct_{name}"] = p
    return row


#: DAB counts towards the nuclear density up to this OD (about a tumour nucleus's hematoxylin) when no
#: cap is given; :func:`detect_nuclei` gives the image's own hematoxylin level instead.
NUCLEAR_DAB_CAP_OD = 0.3


def nuclear_density(hematoxylin: np.ndarray, dab: np.ndarray, cap: float = NUCLEAR_DAB_CAP_OD) -> np.ndarray:
    """The map nuclei are segmented on: hematoxylin plus DAB capped at ``cap`` OD.

    A positive nucleus has lost most of its blue to the brown, so hematoxylin alone misses it; but
    with DAB uncapped, strongly positive nuclei are so much denser than negative ones that Otsu's
    threshold falls between the two and the negative nuclei are lost (on synthetic ER slides half
    of them were). Capped, a positive nucleus is about as dense as a negative one. The cap must follow
    the image's counterstain: :func:`detect_nuclei` passes the Otsu threshold of its hematoxylin over
    the tissue (0.28-0.30 OD on the synthetic Ki-67 tiles, about the fixed 0.3; 0.13-0.14 with the
    counterstain at 0.4x, where a fixed 0.3 over-called the index by 6.8 points: pale negatives were
    lost; ``benchmarks/bench_nuclear.py --sweep``).
    """
    return hematoxylin + np.minimum(dab, np.float32(cap))


#: The unstained DAB floor under the nuclear DAB foreground is this quantile of the smoothed DAB over the
#: tissue (:func:`~her2score.quantify.cells.unstained_floor`): the palest 2 %, stroma or unstained
#: cytoplasm even where most nuclei are positive.
DAB_FLOOR_QUANTILE = 0.02


@dataclass(frozen=True)
class NucleusParams:
    """Nucleus detection for nuclear markers, in µm and OD (independent of the HER2 cell model)."""

    #: Gaussian σ on the nuclear density before the foreground threshold (chromatin texture, noise).
    smoothing_um: float = 0.75
    #: Width of the local-background window (a grey opening wider than the largest nucleus).
    background_um: float = 20.0
    #: Lowest density above the local background accepted as nuclear, whatever Otsu says.
    min_density_od: float = 0.05
    #: Foreground threshold as a fraction of Otsu's over the tissue (below 1 keeps pale nuclei whole).
    otsu_fraction: float = 0.8
    #: Nuclei keep their extent down to this fraction of the threshold (1.0: no hysteresis).
    hysteresis: float = 0.5
    #: Smoothed DAB above this OD, and at least ``dab_foreground_contrast_od`` above the image's unstained
    #: floor (:data:`DAB_FLOOR_QUANTILE`), is nuclear whatever the hematoxylin: the stain is nuclear, and
    #: in a cluster of positive nuclei the local background is itself brown, so the top-hat loses them.
    dab_foreground_od: float = 0.15
    #: ... (dim or tinted scans read 0.12-0.18 OD of "DAB" over bare stroma: real BCI patches, where a
    #: fixed 0.15 OD cut made the whole stroma foreground and then "nuclei").
    dab_foreground_contrast_od: float = 0.1
    #: DAB counts towards the nuclear density up to the image's hematoxylin level, never less than this
    #: (OD): on the palest real scans (BCI 00000, 00007, 00118) the hematoxylin's Otsu level is 0.05-0.06,
    #: nuclei barely visible, and a cap that low lost 70-80 % of the nuclei found; no synthetic figure
    #: changed with it (the weak-counterstain tiles sit at 0.13-0.14).
    min_dab_cap_od: float = 0.1
    #: Gaussian σ of the blob map whose peaks seed nuclei (about half a small nucleus's radius).
    seed_smoothing_um: float = 1.0
    #: DAB counts towards the seed map up to this OD.
    seed_dab_cap_od: float = 0.8
    #: Seeds closer than this are one nucleus (small lymphocytes are ~5 µm across).
    min_separation_um: float = 3.0
    #: Objects smaller than this are debris (µm²).
    min_area_um2: float = 8.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def detect_nuclei(
    hematoxylin: np.ndarray,
    dab: np.ndarray,
    mpp: float,
    tissue: np.ndarray | None = None,
    params: NucleusParams | None = None,
) -> np.ndarray:
    """Label nuclei (int32, 0 = background) from hematoxylin and DAB OD maps, for nuclear markers.

    Foreground: the nuclear density (:func:`nuclear_density`) above its local background (white
    top-hat) over a fraction of Otsu's threshold, or DAB above ``dab_foreground_od``. Touching nuclei
    split by a seeded watershed: one seed per peak of the density smoothed at about a nucleus's
    half radius (a blob detector: crowded, overlapping nuclei each keep a dark centre), at least
    ``min_separation_um`` apart, flooded on the smoothed density within the foreground.
    """
    # Compiled kernels with scipy's / scikit-image's results, pixel for pixel
    # (``tests/quantify/test_morphology.py``): the Gaussians to the last bit, flat morphology, hole
    # filling, hysteresis, peaks and the seeded watersheds.
    from her2score.quantify import morphology as morph
    from her2score.quantify.cells import (
        _drop_small,
        _relabel,
        flood,
        local_peaks,
        nucleus_threshold,
        unstained_floor,
    )
    from her2score.quantify.compiled import gaussian
    from her2score.quantify.kernels import hysteresis

    p = params or NucleusParams()
    hema = np.maximum(hematoxylin.astype(np.float32), 0.0)
    dab = np.maximum(dab.astype(np.float32), 0.0)
    # DAB counts towards the density up to the image's own hematoxylin level (its Otsu threshold over the
    # tissue), not a fixed OD, and at least up to ``min_dab_cap_od`` (see :func:`nuclear_density`).
    cap = nucleus_threshold(gaussian(hema, p.smoothing_um / mpp), tissue, p.min_density_od)
    cap = max(cap, p.min_dab_cap_od)
    density = nuclear_density(hema, dab, cap)
    smooth = gaussian(density, p.smoothing_um / mpp)
    width = max(3, round(p.background_um / mpp))
    contrast = smooth - morph.grey_opening_rect(smooth, width, width)
    thr = max(p.min_density_od, p.otsu_fraction * nucleus_threshold(contrast, tissue, p.min_density_od))
    # Brown foreground clear of the image's unstained DAB floor as well as above the fixed cut.
    smooth_dab = gaussian(dab, p.smoothing_um / mpp)
    region = np.ones(dab.shape, dtype=bool) if tissue is None else tissue
    floor = unstained_floor(smooth_dab, region, None, DAB_FLOOR_QUANTILE)
    brown = smooth_dab > max(p.dab_foreground_od, floor + p.dab_foreground_contrast_od)
    # Hysteresis: a nucleus must reach the threshold somewhere, then keeps its extent down to
    # ``hysteresis`` x the threshold, so that a pale (vesicular) negative nucleus is segmented as whole
    # as a brown one, which the DAB foreground keeps whole; cut to its dark chromatin it would read
    # as a small lymphocyte and negative nuclei would be lost from the denominator.
    mask = hysteresis(contrast, max(p.hysteresis * thr, p.min_density_od), thr) | brown
    if tissue is not None:
        mask &= tissue
    mask = morph.fill_holes(mask)
    if not mask.any():
        return np.zeros(density.shape, dtype=np.int32)
    # Seeds: dark centres, with DAB capped high so that a brown nucleus is not a flat plateau whose
    # noise seeds it twice. (A distance-transform term was tried: crowded nuclei merge in the
    # foreground and its peaks fall between them; on synthetic Ki-67 tiles it lost seeds.)
    seed_map = hema + np.minimum(dab, np.float32(p.seed_dab_cap_od))
    blobs = gaussian(seed_map, p.seed_smoothing_um / mpp)
    # Peaks over the whole image, then kept inside the foreground (``peak_local_max`` with its default
    # threshold, the image's minimum).
    peaks = local_peaks(blobs, max(1, round(p.min_separation_um / mpp)), float(blobs.min()))
    # A brown nucleus touching a blue one is two nuclei whatever the seeds say: the brown and the
    # blue foreground are split apart first, each then by its own seeded watershed (a merged pair
    # would otherwise read as one half-stained nucleus, and a negative one turn positive).
    # A blue fringe around a brown nucleus (its blurred edge, or the paler rim of a weak one) has no
    # seed of its own: it is flooded back from the brown nucleus it belongs to, not made a nucleus.
    brown_part = morph.binary_opening_cross(mask & brown, iterations=max(1, round(0.5 / mpp)))
    blue_part = mask & ~brown_part
    brown_labels = _seeded_watershed(brown_part, peaks, blobs, -smooth, seed_all=True)
    blue_labels = _seeded_watershed(blue_part, peaks, blobs, -smooth, seed_all=False)
    markers = np.where(blue_labels > 0, blue_labels + brown_labels.max(), brown_labels)
    labels = flood(-smooth, markers, mask=mask)
    rest = _seeded_watershed(mask & (labels == 0), peaks[:0], blobs, -smooth, seed_all=True)
    labels = np.where(rest > 0, rest + labels.max(), labels)
    labels = _drop_small(labels, max(2, round(p.min_area_um2 / mpp**2)))
    return _relabel(labels.astype(np.int32))


def _seeded_watershed(
    mask: np.ndarray, peaks: np.ndarray, blobs: np.ndarray, elevation: np.ndarray, seed_all: bool = True
) -> np.ndarray:
    """Watershed of ``elevation`` within ``mask`` from the ``peaks`` inside it; with ``seed_all``, an
    object without a peak gets one seed at its highest ``blobs`` point (else it stays unlabelled)."""
    from her2score.quantify.cells import flood
    from her2score.quantify.kernels import label4

    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    inside = peaks[mask[peaks[:, 0], peaks[:, 1]]]
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[inside[:, 0], inside[:, 1]] = np.arange(1, len(inside) + 1, dtype=np.int32)
    components, n_comp = label4(mask)
    unseeded = np.setdiff1d(np.arange(1, n_comp + 1), np.unique(components[markers > 0]))
    if unseeded.size and seed_all:
        # The highest point of each unseeded object, vectorised over just their pixels
        # (``ndimage.maximum_position`` sorts the whole image per call: a third of the time).
        flat = np.flatnonzero(np.isin(components, unseeded))
        owner = components.ravel()[flat]
        order = np.lexsort((blobs.ravel()[flat], owner))
        last = np.r_[owner[order][1:] != owner[order][:-1], True]
        top = flat[order[last]]
        markers.ravel()[top] = np.arange(len(inside) + 1, len(inside) + 1 + len(top), dtype=np.int32)
    return flood(elevation, markers, mask=mask)


#: Nuclei used as the hematoxylin reference: the bluest half of the non-tumour nuclei when there are
#: at least this many of them, else the bluest :data:`REFERENCE_BLUEST_ALL` of all nuclei.
REFERENCE_MIN_NUCLEI = 20
REFERENCE_BLUEST_ALL = 0.1
#: The nuclear hematoxylin direction is used when within this angle (degrees) of the published one.
REFERENCE_MAX_ANGLE_DEG = 35.0


def nuclear_hematoxylin(
    rgb: np.ndarray,
    labels: np.ndarray,
    matrix: StainMatrix,
    mpp: float,
    thresholds: Thresholds | None = None,
    nuclear_thresholds: NuclearThresholds | None = None,
) -> StainMatrix | None:
    """H-DAB vectors whose hematoxylin is this image's own, read off its negative nuclei; None to keep
    ``matrix``.

    Why: on real IHC scans the counterstain is often greyer than the published hematoxylin vector
    (on the BCI HER2 patches it lies ~20° from it, towards DAB), so a hematoxylin-only nucleus reads
    0.08-0.2 OD of "DAB" and a DAB-negative slide would read mostly positive at any real-scale
    threshold. A nuclear marker has an internal negative control: lymphocytes and stromal nuclei
    are ER/PR-negative and, but for a few cycling lymphocytes, Ki-67-negative. Their mean OD
    direction (the bluest half of them, so that a positive lymphocyte does not pull it towards DAB)
    is the image's hematoxylin; the DAB vector is kept. With too few non-tumour nuclei, the bluest
    tenth of all nuclei serves (in a nearly all-positive image this leans towards DAB and reads
    weak positives lower). Used only when within :data:`REFERENCE_MAX_ANGLE_DEG` of the published
    hematoxylin and clearly apart from DAB.
    """
    from her2score.optics import rgb_to_od
    from her2score.stain.deconvolution import HEMATOXYLIN

    t = thresholds or Thresholds()
    nt = nuclear_thresholds or NuclearThresholds()
    n = int(labels.max())
    if n < REFERENCE_MIN_NUCLEI:
        return None
    flat = labels.ravel()
    inside = flat > 0
    ids = flat[inside] - 1
    od = rgb_to_od(rgb).reshape(-1, 3)[inside]
    count = np.maximum(np.bincount(ids, minlength=n), 1)
    mean_od = np.stack([np.bincount(ids, weights=od[:, j], minlength=n) for j in range(3)], axis=1)
    mean_od /= count[:, None]
    norm = np.linalg.norm(mean_od, axis=1)
    ok = norm > 0.1  # nuclei dense enough for a direction
    directions = mean_od / np.maximum(norm, 1e-9)[:, None]
    dab_dir = np.asarray(matrix.vectors[1], dtype=np.float64)
    dab_dir /= np.linalg.norm(dab_dir)
    away_from_dab = np.degrees(np.arccos(np.clip(directions @ dab_dir, -1.0, 1.0)))
    props = nucleus_shapes(labels, np.zeros(labels.shape, np.float32))
    non_tumour = ok & (nucleus_kinds(props, mpp, t, nt) != 0)
    if non_tumour.sum() >= REFERENCE_MIN_NUCLEI:
        chosen = non_tumour & (away_from_dab >= np.median(away_from_dab[non_tumour]))
    elif ok.sum() >= REFERENCE_MIN_NUCLEI:
        chosen = ok & (away_from_dab >= np.quantile(away_from_dab[ok], 1.0 - REFERENCE_BLUEST_ALL))
    else:
        return None
    h = directions[chosen].mean(axis=0)
    h /= np.linalg.norm(h)
    ref = np.asarray(HEMATOXYLIN) / np.linalg.norm(HEMATOXYLIN)
    to_ref = float(np.degrees(np.arccos(np.clip(h @ ref, -1.0, 1.0))))
    to_dab = float(np.degrees(np.arccos(np.clip(h @ dab_dir, -1.0, 1.0))))
    if to_ref > REFERENCE_MAX_ANGLE_DEG or to_dab < 8.0:
        return None
    return StainMatrix(matrix.names, (tuple(float(v) for v in h), tuple(float(v) for v in dab_dir)))


@dataclass
class NuclearQuantification:
    """Everything measured on one in-memory image for a nuclear marker."""

    nuclei: Any  #: per-nucleus table (:func:`measure_nuclei`)
    labels: np.ndarray  #: nucleus label image (ids = ``cell_id``)
    tissue: np.ndarray
    dab: np.ndarray
    stain_source: str
    accumulator: NuclearAccumulator


def quantify_nuclear_image(
    rgb: np.ndarray,
    mpp: float,
    thresholds: Thresholds | None = None,
    nuclear_thresholds: NuclearThresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str | StainMatrix = "auto",
    path: str | Path | None = None,
    check_stain: bool = True,
    require_tissue: bool = True,
    nucleus_params: NucleusParams | None = None,
) -> NuclearQuantification:
    """Segment the nuclei of one RGB image at ``mpp`` µm/px and grade their DAB.

    Raises :class:`NoTissueError` (no tissue), :class:`StainError` (H&E image, or no nuclei).
    """
    from her2score.quantify.pipeline import MIN_IMAGE_TISSUE_UM2, _simple_tissue_mask, tissue_mask_for
    from her2score.stain.deconvolution import separate_stains
    from her2score.stain.detect import choose_stain_vectors, looks_like_he, macenko

    del cell_params  # the HER2 cell model's parameters: nuclei here follow ``nucleus_params``
    rgb = np.ascontiguousarray(rgb[..., :3])
    tissue = tissue_mask_for(rgb, mpp)
    if tissue.sum() * mpp**2 < MIN_IMAGE_TISSUE_UM2:
        # The slide detector removed (nearly) everything. Seen on a tile filled with tissue whose dense
        # lymphocytes read as vivid blue "pen ink" against the tissue's own white point, the ink's
        # 16 µm margin then covering the tile: when optical density says the field is filled with
        # tissue (over half of it; not an image of glass and ink), score that instead. Near-black
        # pixels are never tissue (the detector's own rule): a black frame or padding stays "no tissue".
        from her2score.slide.tissue import near_black

        dense = _simple_tissue_mask(rgb) & ~near_black(rgb)
        if dense.mean() > 0.5:
            tissue = dense
    if require_tissue and tissue.sum() * mpp**2 < MIN_IMAGE_TISSUE_UM2:
        raise NoTissueError("no tissue found in the image", path)
    estimate = macenko(rgb) if check_stain or stains == "auto" else None
    if check_stain and looks_like_he(rgb, tissue, estimate):
        raise StainError("looks like H&E (eosin-pink, no DAB): pass an IHC image", path)
    if isinstance(stains, StainMatrix):
        matrix, source = stains, "given"
    else:
        matrix, source = choose_stain_vectors(rgb, stains, estimate)
    conc = separate_stains(rgb, matrix)
    hema = conc["hematoxylin"]
    dab = np.maximum(conc[matrix.names[1]], 0.0)
    labels = detect_nuclei(hema, dab, mpp, tissue, nucleus_params)
    if require_tissue and labels.max() == 0:
        raise StainError("no nuclei found (no counterstain, or blank tissue)", path)
    refined = nuclear_hematoxylin(rgb, labels, matrix, mpp, thresholds, nuclear_thresholds)
    if refined is not None:
        matrix, source = refined, f"{source}+nuclear-hematoxylin"
        conc = separate_stains(rgb, matrix)
        hema = conc["hematoxylin"]
        dab = np.maximum(conc[matrix.names[1]], 0.0)
    nuclei = measure_nuclei(labels, hema, dab, mpp, thresholds, nuclear_thresholds)
    acc = NuclearAccumulator()
    acc.add_nuclei(nuclei)
    return NuclearQuantification(nuclei, labels, tissue, dab, source, acc)


def quantify_nuclear_file(
    path: str | Path,
    out_dir: str | Path,
    marker: str,
    mpp: float | None = None,
    thresholds: Thresholds | None = None,
    nuclear_thresholds: NuclearThresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str = "auto",
    progress: Any = None,
    stem: str | None = None,
    whole_image_pixels: int | None = None,
    workers: int = 0,
) -> Any:
    """Score one image or slide for a nuclear marker; write ``<stem>.cells.parquet`` (one row per
    nucleus, level-0 px) and ``<stem>.overlay.png``; return a
    :class:`~her2score.quantify.pipeline.FileResult`.

    Patches up to ``whole_image_pixels`` in one piece; larger images (cores, fields, slides) tile by
    tile over all their tissue over ``workers`` processes (:mod:`her2score.quantify.tiled`: a nucleus
    belongs to the tile whose core holds its centre; regions and heterogeneity reported).
    """
    from her2score.quantify import pipeline
    from her2score.slide import open_slide

    marker = check_marker(marker)
    if marker not in NUCLEAR_MARKERS:
        raise ConfigError(f"{marker} is not a nuclear marker ({', '.join(NUCLEAR_MARKERS)})")
    t = thresholds or Thresholds()
    nt = nuclear_thresholds or NuclearThresholds()
    p = cell_params or CellParams()
    path, out_dir = Path(path), Path(out_dir)
    limit = pipeline.WHOLE_IMAGE_PIXELS if whole_image_pixels is None else whole_image_pixels
    with open_slide(path, mpp=mpp) as slide:
        level0 = slide.require_mpp()
        work = pipeline.work_mpp_for(level0, path)
        scale = level0 / work
        stem = stem or path.stem
        if slide.width * slide.height * scale * scale <= limit:
            return _nuclear_whole(slide, path, stem, out_dir, marker, work, t, nt, p, stains)
        return pipeline.quantify_tiled_file(
            slide,
            path,
            stem,
            out_dir,
            mpp,
            work,
            marker,
            t,
            p,
            stains,
            workers,
            progress,
            nuclear_thresholds=nt,
        )


def _nuclear_whole(
    slide: Any,
    path: Path,
    stem: str,
    out_dir: Path,
    marker: str,
    work: float,
    t: Thresholds,
    nt: NuclearThresholds,
    p: CellParams,
    stains: str,
) -> Any:
    from her2score.io import atomic_path, write_png
    from her2score.quantify.overlay import nuclear_overlay
    from her2score.quantify.pipeline import FileResult, _cells_to_level0, _row_head

    rgb = slide.read_bounds((0, 0, slide.width, slide.height), work)
    result = quantify_nuclear_image(rgb, work, t, nt, p, stains=stains, path=path)
    row = _row_head(path, slide, work, "image", result.stain_source) | result.accumulator.summary(marker, t)
    nuclei = _cells_to_level0(result.nuclei, work / slide.require_mpp())
    cells_path = out_dir / f"{stem}.cells.parquet"
    with atomic_path(cells_path) as tmp:
        nuclei.to_parquet(tmp, index=False)
    overlay = nuclear_overlay(rgb, result.nuclei, result.labels, row)
    return FileResult(row, cells_path, write_png(out_dir / f"{stem}.overlay.png", overlay))
