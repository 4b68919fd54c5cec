"""Training-free HER2 membrane quantifier: per-cell membrane DAB, membrane classes, ASCO/CAP 2018 score.

Per image (a patch, a TMA core or one tile of a slide):

* stains separated with H-DAB vectors (per-image Macenko estimate when plausible, else the defaults);
* an H&E image passed by mistake is refused (:class:`~her2score.errors.StainError`);
* cells from :mod:`her2score.stain.cells`; each membrane ring is cut into ``n_sectors`` angular
  sectors around the nucleus; a sector is *stained* when its peak DAB OD reaches the low hysteresis
  threshold (``continuity`` x faint) AND stands above the perinuclear cytoplasm (its lower
  quartile; membrane accentuation: a uniform cytoplasmic blush is not membrane staining);
* completeness = stained sectors / sectors present; membrane DAB = median peak DAB of stained sectors
  (a cell is stained only when this reaches the faint threshold and ≥ ``min_stained_fraction`` of
  its ring is stained: one stained contact with a positive neighbour is not enough);
* shared membranes explained away (:func:`own_membrane`): a membrane line between two touching
  cells is one line at 20-40x; a cell is judged on the sectors that do not face a more completely
  stained neighbour, so that an unstained cell beside a stained one stays unstained; and a cell's
  intensity leaves out the lines it shares with a clearly darker neighbour (a moderate cell beside an
  intense one is read on its own side);
* intensity 0-3 from the faint / moderate / intense thresholds; membrane class from intensity and
  completeness (complete: stained round ``complete_fraction`` of the ring with no unstained run over
  ``max_gap_fraction``); tumour cells chosen by nuclear size and shape (lymphocytes: small; fibroblasts:
  elongated) and by lying in a nest, cord or single file (:func:`in_nest`).

Per image or slide, over tumour cells: class counts and percentages, the ASCO/CAP 2018 category with
the 10 % rule, the HER2-0 subtype (``null`` / ``ultralow``), the 3-way group, the H-score and a
continuous HER2 index (100 x mean over tumour cells of membrane DAB x completeness), and DAB
statistics over the tissue. :func:`quantify_file` scores a patch or core in one piece and a whole
slide tile by tile over the tissue (streaming, over worker processes).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import ConfigError, NoTissueError, StainError
from her2score.stain.cells import CellParams, CellSegmentation, segment_cells
from her2score.stain.deconvolution import DAB, EOSIN, HDAB, HEMATOXYLIN, StainMatrix, rgb_to_od

MEMBRANE_CLASSES = ("none", "faint-incomplete", "faint-complete", "moderate-complete", "intense-complete")
CATEGORIES = ("0", "1+", "2+", "3+")


@dataclass(frozen=True)
class Thresholds:
    """Scoring parameters. DAB values are optical densities of the membrane (default H-DAB vectors).

    Defaults: a membrane peak of 0.12 OD is the faintest brown a pathologist perceives at 20x on a
    0.5 µm/px scan (at 0.15 two of the five real BCI 1+ patches read 0; README); 0.35 is clearly
    brown (moderate); 0.60 a dark-brown "chicken-wire" (intense); these follow the common DAB OD
    bands (0.2 / 0.4 / 0.6 on cell means, QuPath) shifted for a ring *peak* rather than a whole-cell
    mean. Override from JSON or derive from a control with :func:`calibrate_thresholds`.
    """

    faint: float = 0.12
    moderate: float = 0.35
    intense: float = 0.60
    #: A ring is "complete" when at least this fraction of its sectors is stained. Automatic rings
    #: lose sectors at cell contacts and tangential cuts, which an eye forgives (not 1.0); but a
    #: sector counts as stained when any of it is, and a neighbour's stained membrane lends a few
    #: sectors to an incomplete ring, so that an 80 % arc already measures ~0.85-0.9: 0.85.
    complete_fraction: float = 0.85
    #: ... and its longest unstained run of sectors spans at most this fraction of the circumference:
    #: "complete" is circumferential, and a pathologist sees one break of a tenth of a ring (36°) or
    #: more as an incomplete membrane even when the rest of the ring is stained (a partial arc's blurred ends
    #: otherwise make an 80 % arc measure as complete). Sectors that face a stained neighbour or lie
    #: outside the image break a run rather than extend it. 1.0 turns the rule off.
    max_gap_fraction: float = 0.1
    #: Low hysteresis threshold for completeness, as a fraction of ``faint``: 0.1125 OD by default,
    #: just above the 0.05-0.11 OD that unstained rings reach from noise and neighbouring membranes,
    #: so that a faint arc is not closed into a "complete" ring by noise (a lower floor, 0.09 OD, read
    #: more 1+ cases as 2+; README).
    continuity: float = 0.9375
    #: Fewer stained sectors than this fraction: no membrane staining (class ``none``).
    min_stained_fraction: float = 0.25
    n_sectors: int = 32
    #: A cell is judged on its own side (sectors not facing a stained neighbour) when that side
    #: covers at least this fraction of its ring (see ``own_membrane``).
    own_side_fraction: float = 0.15
    #: ... where "stained" neighbours are those whose ring is stained at least this much further
    #: round (a fraction of the ring) than the cell's own.
    own_side_margin: float = 0.25
    #: A cell's intensity leaves out the sectors facing a stained neighbour whose membrane is at
    #: least this many times darker than its own (the dark line between a strongly and a weakly
    #: stained cell is the strong cell's to the eye), when a quarter of its stained sectors remain.
    #: 0 turns the rule off.
    darker_neighbour_ratio: float = 1.5
    #: Membrane accentuation: a sector's peak must exceed the perinuclear cytoplasm by this (OD) ...
    membrane_contrast_od: float = 0.05
    #: ... and by this fraction of the cytoplasm DAB (so a strong blush needs a stronger membrane).
    membrane_contrast_ratio: float = 0.2
    #: The cytoplasm DAB of a cell is this quantile of its perinuclear band (see ``measure_cells``).
    cytoplasm_quantile: float = 0.25
    #: Tumour-cell filter on the nucleus: segmented tumour nuclei are 6-15 µm across (pale ones come
    #: out small, so the floor is low: 18 µm²); fibroblast nuclei are spindles (long / short axis
    #: > 2.5); lymphocytes are small (< ``lymphocyte_max_um2``) AND dark (hematoxylin above
    #: ``lymphocyte_darkness`` x the median of the image's larger nuclei); pleomorphic grade-3
    #: nuclei stay under ~250 µm²; blobs filling < 80 % of their fitted ellipse are not nuclei.
    tumour_nucleus_min_um2: float = 18.0
    tumour_nucleus_max_um2: float = 250.0
    tumour_min_ellipse_fill: float = 0.8
    tumour_max_elongation: float = 2.5
    lymphocyte_max_um2: float = 40.0
    lymphocyte_darkness: float = 1.3
    #: Invasive carcinoma grows in nests, cords or single files: a tumour cell has at least
    #: ``nest_neighbours`` other nuclei within ``nest_radius_um`` (a single file at a 15 µm spacing
    #: has four within 35 µm, and so has the corner of a nest); isolated cells in stroma are not scored.
    nest_neighbours: int = 4
    nest_radius_um: float = 35.0
    #: ASCO/CAP 10 % rule (percent of invasive tumour cells).
    positive_percent: float = 10.0
    #: Intense complete staining in this share (%) up to 10 % reads as 2+ (ASCO/CAP: equivocal).
    intense_minority_percent: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.faint < self.moderate < self.intense:
            raise ConfigError(
                f"thresholds must satisfy 0 < faint < moderate < intense (got {self.faint}, "
                f"{self.moderate}, {self.intense})"
            )
        if not 0 < self.complete_fraction <= 1 or not 0 <= self.min_stained_fraction < self.complete_fraction:
            raise ConfigError("need 0 <= min_stained_fraction < complete_fraction <= 1")
        if not 0 < self.max_gap_fraction <= 1:
            raise ConfigError(f"max_gap_fraction must be in (0, 1] (got {self.max_gap_fraction})")
        if not 0 < self.continuity <= 1:
            raise ConfigError(f"continuity must be in (0, 1] (got {self.continuity})")
        if not 0 <= self.cytoplasm_quantile <= 1:
            raise ConfigError(f"cytoplasm_quantile must be in [0, 1] (got {self.cytoplasm_quantile})")
        if not 0 <= self.own_side_fraction <= 1 or not 0 <= self.own_side_margin <= 1:
            raise ConfigError("own_side_fraction and own_side_margin must be in [0, 1]")
        if self.darker_neighbour_ratio != 0 and self.darker_neighbour_ratio < 1:
            raise ConfigError(
                f"darker_neighbour_ratio must be 0 (off) or at least 1 (got {self.darker_neighbour_ratio})"
            )
        if self.nest_neighbours < 0 or self.nest_radius_um <= 0:
            raise ConfigError("nest_neighbours must be >= 0 and nest_radius_um > 0")
        if self.n_sectors < 8:
            raise ConfigError(f"n_sectors must be at least 8 (got {self.n_sectors})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> Thresholds:
        """Build from a dict (e.g. a thresholds.json); unknown keys are an error, missing ones default."""
        data = data.get("thresholds", data)
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown threshold keys {unknown}; known: {sorted(known)}", path)
        try:
            values = {k: (int(v) if k == "n_sectors" else float(v)) for k, v in data.items()}
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(exc.cause, path) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid threshold value: {exc}", path) from None

    @classmethod
    def from_json(cls, path: str | Path) -> Thresholds:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("thresholds file not found", path) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read thresholds JSON ({exc})", path) from None
        if not isinstance(data, dict):
            raise ConfigError("thresholds JSON must be an object", path)
        return cls.from_dict(data, path)


# ---------------------------------------------------------------------------------------- stains
def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _angle_deg(a: Any, b: Any) -> float:
    return math.degrees(math.acos(float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def macenko(rgb: np.ndarray) -> StainMatrix | None:
    """Macenko stain vectors of an image (on every other pixel: as good, 4x faster); None if unstained."""
    from her2score.stain.deconvolution import estimate_stain_vectors

    try:
        return estimate_stain_vectors(rgb[::2, ::2] if min(rgb.shape[:2]) >= 256 else rgb)
    except ValueError:
        return None


def choose_stain_vectors(
    rgb: np.ndarray, mode: str = "auto", estimate: StainMatrix | None = None
) -> tuple[StainMatrix, str]:
    """H-DAB vectors for this image: a Macenko estimate when plausible, else the defaults.

    Plausible: hematoxylin within 25° and DAB within 25° of the published vectors, and the two at
    least 25° apart (an image with hardly any DAB gives a degenerate "second stain"). Returns the
    matrix and where it came from (``estimated`` or ``default``).
    """
    if mode == "default":
        return HDAB, "default"
    if mode != "auto":
        raise ConfigError(f"stain vectors must be 'auto' or 'default' (got {mode!r})")
    est = estimate if estimate is not None else macenko(rgb)
    if est is None:
        return HDAB, "default"
    h, d = est.vectors
    if _angle_deg(h, HEMATOXYLIN) < 25 and _angle_deg(d, DAB) < 25 and _angle_deg(h, d) >= 25:
        return StainMatrix(("hematoxylin", "dab"), (h, d)), "estimated"
    return HDAB, "default"


def looks_like_he(rgb: np.ndarray, tissue: np.ndarray, estimate: StainMatrix | None = None) -> bool:
    """True when the stain that is not hematoxylin is eosin-pink rather than DAB-brown.

    Two cues: most tissue pixels carry eosin in an H-E-DAB deconvolution, or the Macenko second
    stain is distinct from hematoxylin and green-dominant (eosin absorbs green, DAB most in blue).
    """
    od = rgb_to_od(rgb)[tissue]
    if od.shape[0] < 500:
        return False
    m = np.stack([_unit(HEMATOXYLIN), _unit(EOSIN), _unit(DAB)])
    conc = od[:: max(1, od.shape[0] // 100_000)] @ np.linalg.inv(m).astype(np.float32)
    eosin_share = float(np.mean(conc[:, 1] > 0.05))
    est = estimate if estimate is not None else macenko(rgb)
    if est is None:
        return eosin_share > 0.6
    other = np.asarray(est.vectors[1])
    green_over_blue = float(other[1] / max(other[2], 1e-6))
    # Eosin absorbs green most; a second stain absorbing red most is ink or a blue dye, not eosin.
    green_dominant = other[1] >= other[0] and green_over_blue > 1.2
    # A second stain almost parallel to hematoxylin means there is only one stain (a HER2-0 IHC).
    # The Macenko cue only counts when its second stain is well apart from hematoxylin: in a pale
    # HER2-0 IHC it is a hematoxylin variant. Refusing a real IHC is the worse mistake, so pale,
    # ambiguous images pass (some oddly stained H&E with little eosin then pass too).
    distinct = _angle_deg(other, HEMATOXYLIN) >= 18.0
    return eosin_share > 0.6 or (distinct and green_dominant)


def tissue_mask_for(rgb: np.ndarray, mpp: float, mask_mpp: float = 2.0) -> np.ndarray:
    """Tissue mask at the image's size, computed at ~``mask_mpp`` µm/px (fast) and scaled back.

    Uses the slide engineer's detector (pen ink, debris, shadows excluded) when present, else a
    simple optical-density threshold.
    """
    factor = max(1, int(mask_mpp / mpp))
    small = rgb[::factor, ::factor] if factor > 1 else rgb
    try:
        from her2score.slide.tissue import tissue_mask
    except ImportError:
        mask = _simple_tissue_mask(small)
    else:
        mask = np.asarray(tissue_mask(np.ascontiguousarray(small), mpp * factor), dtype=bool)
    if factor > 1:
        mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[: rgb.shape[0], : rgb.shape[1]]
    return mask


def _simple_tissue_mask(rgb: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    od = rgb_to_od(rgb).sum(axis=-1)
    mask = ndi.uniform_filter(od, 9) > 0.12
    return ndi.binary_opening(mask, iterations=2)


# ----------------------------------------------------------------------------------- per cell
def measure_cells(
    seg: CellSegmentation,
    hematoxylin: np.ndarray,
    dab: np.ndarray,
    mpp: float,
    thresholds: Thresholds,
) -> Any:
    """Per-cell table: position (px and µm), nucleus size/shape, ring DAB, completeness, class."""
    import pandas as pd

    n = seg.n_cells
    if n == 0:
        return _empty_cells()
    props = nucleus_shapes(seg.nuclei, hematoxylin)
    cy, cx = props["y"], props["x"]
    s = thresholds.n_sectors
    t = thresholds

    ring = seg.rings
    yy, xx = np.nonzero(ring)
    ids = ring[yy, xx] - 1
    values = dab[yy, xx]
    angle = np.arctan2(yy - cy[ids], xx - cx[ids])
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * s).astype(np.int64), s - 1)
    flat = ids.astype(np.int64) * s + sector
    sector_peak = np.full(n * s, -np.inf, dtype=np.float32)
    np.maximum.at(sector_peak, flat, values)
    sector_peak = sector_peak.reshape(n, s)
    present = np.isfinite(sector_peak)

    ring_count = np.bincount(ids, minlength=n)
    ring_mean = np.bincount(ids, weights=values, minlength=n) / np.maximum(ring_count, 1)
    ring_max = np.where(present.any(axis=1), np.where(present, sector_peak, 0).max(axis=1), 0.0)

    # The cytoplasm level is the lower quartile of the perinuclear band, not its mean: in small
    # cells with thick membranes (real 3+) the membrane crosses part of that band, and its mean
    # would then count the membrane itself as "blush"; a uniform blush has quartile = mean.
    cyto = seg.cytoplasm
    cyto_ids = cyto[cyto > 0] - 1
    cyto_mean = label_quantile(cyto_ids, dab[cyto > 0], n, t.cytoplasm_quantile)

    needed = cyto_mean[:, None] + np.maximum(
        t.membrane_contrast_od, t.membrane_contrast_ratio * cyto_mean[:, None]
    )
    # Hysteresis: a cell is stained when its membrane reaches the faint threshold; its ring then
    # counts as continuous wherever it stays above ``continuity`` x faint (the eye follows a faint
    # membrane all around even where one sector dips just under the threshold).
    stained = present & (sector_peak >= t.continuity * t.faint) & (sector_peak >= needed)
    n_present = present.sum(axis=1)
    contacts = sector_contacts(seg.cells, cy, cx, s, dab, t.continuity * t.faint)
    completeness, membrane_dab, gap = own_membrane(stained, present, sector_peak, contacts, t)

    intensity = intensity_level(membrane_dab, t)
    intensity[completeness < max(t.min_stained_fraction, 1e-9)] = 0
    membrane_dab = np.where(intensity > 0, membrane_dab, 0.0)
    membrane_class = classify_membrane(intensity, completeness, t, gap)

    area_um2 = props["area"] * mpp**2
    elongation = props["major"] / np.maximum(props["minor"], 1.0)
    # Nuclei are convex ellipses: a blob filling < ``tumour_min_ellipse_fill`` of its fitted ellipse
    # is stroma or a merged clump, not a nucleus.
    fill = props["area"] / np.maximum(np.pi / 4 * props["major"] * props["minor"], 1.0)
    shaped = (
        (area_um2 >= t.tumour_nucleus_min_um2)
        & (area_um2 <= t.tumour_nucleus_max_um2)
        & (elongation <= t.tumour_max_elongation)
        & (fill >= t.tumour_min_ellipse_fill)
    )
    # Darkness relative to the image's larger well-shaped nuclei: lymphocytes are denser.
    large = shaped & (area_um2 >= t.lymphocyte_max_um2)
    reference = np.median(props["hematoxylin"][large] if large.any() else props["hematoxylin"])
    darkness = props["hematoxylin"] / max(float(reference), 1e-6)
    lymphocyte = (area_um2 < t.lymphocyte_max_um2) & (darkness > t.lymphocyte_darkness)
    is_tumour = (
        shaped
        & ~lymphocyte
        & in_nest(cy * mpp, cx * mpp, t)
        & (n_present >= s // 2)  # a ring cut mostly away (image edge, crowding) cannot be scored
    )
    return pd.DataFrame(
        {
            "cell_id": np.arange(1, n + 1, dtype=np.int64),
            "x": cx.astype(np.float32),
            "y": cy.astype(np.float32),
            "x_um": (cx * mpp).astype(np.float32),
            "y_um": (cy * mpp).astype(np.float32),
            "nucleus_area_um2": area_um2.astype(np.float32),
            "nucleus_elongation": elongation.astype(np.float32),
            "nucleus_hematoxylin": props["hematoxylin"].astype(np.float32),
            "is_tumour": is_tumour,
            "ring_dab_mean": ring_mean.astype(np.float32),
            "ring_dab_max": ring_max.astype(np.float32),
            "cytoplasm_dab": cyto_mean.astype(np.float32),
            "membrane_dab": membrane_dab.astype(np.float32),
            "completeness": completeness.astype(np.float32),
            "membrane_gap": gap.astype(np.float32),
            "intensity": intensity.astype(np.int8),
            "membrane_class": pd.Categorical(membrane_class, categories=MEMBRANE_CLASSES),
        }
    )


def in_nest(y_um: np.ndarray, x_um: np.ndarray, t: Thresholds) -> np.ndarray:
    """Cells with at least ``nest_neighbours`` other nuclei within ``nest_radius_um`` (see ``Thresholds``)."""
    n = len(y_um)
    if t.nest_neighbours <= 0:
        return np.ones(n, dtype=bool)
    if n <= t.nest_neighbours:
        return np.zeros(n, dtype=bool)
    from scipy.spatial import cKDTree

    points = np.column_stack([y_um, x_um])
    dist, _ = cKDTree(points).query(points, k=t.nest_neighbours + 1, distance_upper_bound=t.nest_radius_um)
    return np.isfinite(dist[:, -1])


def sector_contacts(
    cells: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    n_sectors: int,
    dab: np.ndarray | None = None,
    min_dab: float = 0.0,
) -> np.ndarray:
    """Where touching cells meet: ``(cell, sector, neighbour, neighbour's sector)`` rows (0-based).

    Each pair of 4-connected border pixels of two different cells gives one row per side, the
    sector taken from each pixel's angle around its own nucleus centre; rows are unique. With
    ``dab``, only contacts that lie on a stained line (DAB ≥ ``min_dab`` on either pixel) count:
    two separate membranes with a pale gap between them are not one shared membrane.
    """
    h, w = cells.shape

    def sectors(ids: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        angle = np.arctan2(yy - cy[ids], xx - cx[ids])
        return np.minimum(((angle + np.pi) / (2 * np.pi) * n_sectors).astype(np.int64), n_sectors - 1)

    rows = []
    for dy, dx in ((0, 1), (1, 0)):
        a = cells[: h - dy, : w - dx]
        b = cells[dy:, dx:]
        touch = (a != b) & (a > 0) & (b > 0)
        if dab is not None:
            touch &= np.maximum(dab[: h - dy, : w - dx], dab[dy:, dx:]) >= min_dab
        yy, xx = np.nonzero(touch)
        ia = a[yy, xx].astype(np.int64) - 1
        ib = b[yy, xx].astype(np.int64) - 1
        sa, sb = sectors(ia, yy, xx), sectors(ib, yy + dy, xx + dx)
        rows += [np.stack([ia, sa, ib, sb], axis=1), np.stack([ib, sb, ia, sa], axis=1)]
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.unique(np.concatenate(rows), axis=0)


def own_membrane(
    stained: np.ndarray,
    present: np.ndarray,
    sector_peak: np.ndarray,
    contacts: np.ndarray,
    t: Thresholds,
    rounds: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Completeness, membrane DAB and largest gap per cell, with shared membranes explained away.

    Two touching cells share one membrane line at light-microscope resolution: an unstained cell
    beside a stained one shows a stained arc that is its neighbour's. Like a pathologist, judge a
    cell on its *own side*: the sectors of its ring that do not meet, on the same stained line, a
    neighbour stained clearly further round (by ``own_side_margin``). When the own side covers at
    least ``own_side_fraction`` of the ring, completeness and intensity come from it alone; a cell
    surrounded by such neighbours cannot be told apart and keeps all of its ring. Repeated
    ``rounds`` times, as a cell explained away no longer stains its neighbours.
    Then the intensity: sectors facing a stained neighbour ``darker_neighbour_ratio`` times darker
    are the neighbour's line and leave the cell's median (:func:`_darker_neighbours`).
    ``contacts`` comes from :func:`sector_contacts`. The gap is the longest run of judged, unstained
    sectors as a fraction of the ring (:func:`longest_gap`).
    """
    n, s = stained.shape
    n_present = np.maximum(present.sum(axis=1), 1)
    completeness = stained.sum(axis=1) / n_present
    membrane_dab = _median_stained_peak(stained, sector_peak)
    judged = present
    for _ in range(rounds if len(contacts) else 0):
        is_stained = _is_stained(completeness, membrane_dab, t)
        cell, neighbour, across = contacts[:, 0], contacts[:, 2], contacts[:, 3]
        # A shared stained line is the more completely stained cell's: a neighbour explains it
        # away only when it sees the same line stained on its side of the contact and its own
        # ring is stained clearly further round (near ties: both keep it).
        further = (
            is_stained[neighbour]
            & stained[neighbour, across]
            & (completeness[neighbour] >= completeness[cell] + t.own_side_margin)
        )
        faces = _facing(contacts, further, n, s)
        free = present & ~faces
        n_free = free.sum(axis=1)
        judge_free = n_free >= t.own_side_fraction * n_present
        own = np.where(judge_free[:, None], stained & free, stained)
        judged = np.where(judge_free[:, None], free, present)
        whole = stained.sum(axis=1) / n_present
        completeness = np.where(judge_free, own.sum(axis=1) / np.maximum(n_free, 1), whole)
        membrane_dab = _median_stained_peak(own, sector_peak)
    if t.darker_neighbour_ratio and len(contacts):
        membrane_dab = _darker_neighbours(stained, sector_peak, contacts, completeness, membrane_dab, t)
    return completeness, membrane_dab, longest_gap(judged & ~stained) / s


def _is_stained(completeness: np.ndarray, membrane_dab: np.ndarray, t: Thresholds) -> np.ndarray:
    """Cells whose membrane counts as stained: far enough round and at least faint."""
    return (completeness >= max(t.min_stained_fraction, 1e-9)) & (membrane_dab >= t.faint)


def _facing(contacts: np.ndarray, hit: np.ndarray, n: int, s: int) -> np.ndarray:
    """(cells x sectors) mask of the sectors in ``contacts[hit]``, widened by one sector either side
    (a sector's peak reaches the blurred membrane of a neighbour it touches only at its corner)."""
    rows = contacts[hit]
    faces = np.zeros(n * s, dtype=bool)
    faces[rows[:, 0] * s + rows[:, 1]] = True
    faces = faces.reshape(n, s)
    return faces | np.roll(faces, 1, axis=1) | np.roll(faces, -1, axis=1)


def _darker_neighbours(
    stained: np.ndarray,
    sector_peak: np.ndarray,
    contacts: np.ndarray,
    completeness: np.ndarray,
    membrane_dab: np.ndarray,
    t: Thresholds,
) -> np.ndarray:
    """Membrane DAB per cell without the stained sectors it shares with a clearly darker neighbour.

    A weakly stained cell beside an intensely stained one shows the dark shared line on that side;
    its own membrane is what the rest of its ring shows. Kept as it was when fewer than a quarter of
    its stained sectors remain (a cell among darker neighbours cannot be told apart from them).
    """
    n, s = stained.shape
    is_stained = _is_stained(completeness, membrane_dab, t)
    cell, neighbour, across = contacts[:, 0], contacts[:, 2], contacts[:, 3]
    darker = (
        is_stained[neighbour]
        & stained[neighbour, across]
        & (membrane_dab[neighbour] >= t.darker_neighbour_ratio * membrane_dab[cell])
    )
    own = stained & ~_facing(contacts, darker, n, s)
    enough = own.sum(axis=1) >= np.maximum(1, 0.25 * stained.sum(axis=1))
    return np.where(enough & is_stained, _median_stained_peak(own, sector_peak), membrane_dab)


def longest_gap(gap: np.ndarray) -> np.ndarray:
    """Longest circular run of True per row of ``gap`` (cells x sectors), in sectors."""
    n, s = gap.shape
    run = np.zeros(n, dtype=np.int64)
    best = np.zeros(n, dtype=np.int64)
    for j in range(2 * s):  # twice round, so that a run through sector 0 is counted whole
        run = np.where(gap[:, j % s], run + 1, 0)
        best = np.maximum(best, run)
    return np.minimum(best, s)


def _median_stained_peak(stained: np.ndarray, sector_peak: np.ndarray) -> np.ndarray:
    """Median peak DAB over each cell's stained sectors (0 where none is stained)."""
    peaks = np.where(stained, sector_peak, np.nan)
    with warnings.catch_warnings():  # cells without a stained sector: all-NaN rows, median 0
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.nanmedian(peaks, axis=1), nan=0.0)


def label_quantile(ids: np.ndarray, values: np.ndarray, n: int, q: float) -> np.ndarray:
    """The ``q`` quantile (nearest rank) of ``values`` per label ``ids`` (0..n-1); 0 for empty labels."""
    out = np.zeros(n, dtype=np.float64)
    if ids.size == 0:
        return out
    order = np.lexsort((values, ids))
    counts = np.bincount(ids, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    rank = starts[has] + np.floor(q * (counts[has] - 1)).astype(np.int64)
    out[has] = values[order][rank]
    return out


def nucleus_shapes(nuclei: np.ndarray, hematoxylin: np.ndarray) -> dict[str, np.ndarray]:
    """Per nucleus (labels 1..n): centre, area (px), ellipse axis lengths and mean hematoxylin.

    Image moments by ``bincount`` (one pass; ``regionprops`` loops over objects in Python).
    """
    n = int(nuclei.max())
    yy, xx = np.nonzero(nuclei)
    ids = nuclei[yy, xx] - 1
    area = np.bincount(ids, minlength=n).astype(np.float64)
    safe = np.maximum(area, 1)
    cy = np.bincount(ids, weights=yy, minlength=n) / safe
    cx = np.bincount(ids, weights=xx, minlength=n) / safe
    dy, dx = yy - cy[ids], xx - cx[ids]
    myy = np.bincount(ids, weights=dy * dy, minlength=n) / safe + 1 / 12  # + pixel's own extent
    mxx = np.bincount(ids, weights=dx * dx, minlength=n) / safe + 1 / 12
    mxy = np.bincount(ids, weights=dx * dy, minlength=n) / safe
    half_trace = (myy + mxx) / 2
    root = np.sqrt(np.maximum(((myy - mxx) / 2) ** 2 + mxy**2, 0))
    hema = np.bincount(ids, weights=hematoxylin[yy, xx], minlength=n) / safe
    return {
        "y": cy,
        "x": cx,
        "area": area,
        "major": 4 * np.sqrt(half_trace + root),
        "minor": 4 * np.sqrt(np.maximum(half_trace - root, 0)),
        "hematoxylin": hema,
    }


def _empty_cells() -> Any:
    import pandas as pd

    cols = {
        "cell_id": "int64", "x": "float32", "y": "float32", "x_um": "float32", "y_um": "float32",
        "nucleus_area_um2": "float32", "nucleus_elongation": "float32", "nucleus_hematoxylin": "float32",
        "is_tumour": "bool", "ring_dab_mean": "float32", "ring_dab_max": "float32",
        "cytoplasm_dab": "float32", "membrane_dab": "float32", "completeness": "float32",
        "membrane_gap": "float32", "intensity": "int8",
    }  # fmt: skip
    frame = pd.DataFrame({k: pd.Series(dtype=v) for k, v in cols.items()})
    frame["membrane_class"] = pd.Categorical([], categories=MEMBRANE_CLASSES)
    return frame


def intensity_level(membrane_dab: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """0 none, 1 faint, 2 moderate, 3 intense, from the membrane DAB OD."""
    t = thresholds
    return np.digitize(np.asarray(membrane_dab), [t.faint, t.moderate, t.intense]).astype(np.int8)


def classify_membrane(
    intensity: np.ndarray,
    completeness: np.ndarray,
    thresholds: Thresholds,
    gap: np.ndarray | None = None,
) -> np.ndarray:
    """Membrane class per cell.

    Incomplete rings count as ``faint-incomplete`` whatever their intensity: ASCO/CAP 2018 only
    grades complete (circumferential) staining by intensity; incomplete staining is the 1+ pattern.
    A ring is complete when stained far enough round and (given ``gap``, the longest unstained
    run as a fraction of the ring) broken nowhere by more than ``max_gap_fraction``.
    """
    classes = np.asarray(MEMBRANE_CLASSES, dtype=object)
    complete = np.asarray(completeness) >= thresholds.complete_fraction
    if gap is not None:
        complete &= np.asarray(gap) <= thresholds.max_gap_fraction
    idx = np.where(intensity == 0, 0, np.where(complete, 1 + np.asarray(intensity), 1))
    return classes[idx]


# ------------------------------------------------------------------------------- aggregation
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

    def add_cells(self, cells: Any) -> None:
        self.n_cells += len(cells)
        tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
        self.n_tumour += len(tumour)
        for name, count in tumour["membrane_class"].value_counts().items():
            self.class_counts[str(name)] += int(count)
        for level, count in tumour["intensity"].value_counts().items():
            self.intensity_counts[int(level)] += int(count)
        self.index_sum += float((tumour["membrane_dab"] * tumour["completeness"]).sum())

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
            )
            | self._tissue_stats()
        )

    def _tissue_stats(self) -> dict[str, Any]:
        n = max(self.tissue_px, 1)
        return {
            "tissue_dab_mean": self.tissue_dab_sum / n,
            "tissue_pct_dab_faint": 100.0 * self.tissue_dab_above[0] / n,
            "tissue_pct_dab_moderate": 100.0 * self.tissue_dab_above[1] / n,
            "tissue_pct_dab_intense": 100.0 * self.tissue_dab_above[2] / n,
        }


def score_counts(
    class_counts: dict[str, int],
    intensity_counts: list[int],
    n_cells: int,
    n_tumour: int,
    index_sum: float,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """ASCO/CAP 2018 category and companions from tumour-cell class counts.

    3+: intense complete in > 10 %. 2+: complete staining of any intensity in > 10 % (weak to
    moderate), or intense complete staining in ≤ 10 % (an unusual pattern read as equivocal; counted
    from ``intense_minority_percent`` so that a few stray cells do not make a 2+). 1+: any membrane
    staining (mostly faint incomplete) in > 10 %. Else 0, subtyped ``ultralow`` (some faint
    staining, ≤ 10 %) or ``null`` (none at all). The 3-way group: 0 / low (1+, 2+; 2+ is
    equivocal, low unless ISH-amplified) / high (3+).
    """
    pct = {c: 100.0 * class_counts.get(c, 0) / max(n_tumour, 1) for c in MEMBRANE_CLASSES}
    complete = pct["faint-complete"] + pct["moderate-complete"] + pct["intense-complete"]
    stained = complete + pct["faint-incomplete"]
    cut = thresholds.positive_percent
    if pct["intense-complete"] > cut:
        category = "3+"
    elif complete > cut or pct["intense-complete"] >= thresholds.intense_minority_percent:
        category = "2+"
    elif stained > cut:
        category = "1+"
    else:
        category = "0"
    subtype = ""
    if category == "0":
        subtype = "ultralow" if stained > 0 else "null"
    group = {"0": "0", "1+": "low", "2+": "low", "3+": "high"}[category]
    n_t = max(n_tumour, 1)
    h_score = sum(level * 100.0 * count / n_t for level, count in enumerate(intensity_counts))
    row: dict[str, Any] = {
        "category": category,
        "her2_0_subtype": subtype,
        "her2_3way": group,
        "h_score": h_score,
        "her2_index": 100.0 * index_sum / n_t,
        "n_cells": n_cells,
        "n_tumour_cells": n_tumour,
    }
    for c in MEMBRANE_CLASSES:
        row[f"n_{c.replace('-', '_')}"] = int(class_counts.get(c, 0))
    for c in MEMBRANE_CLASSES:
        row[f"pct_{c.replace('-', '_')}"] = pct[c]
    return row


# --------------------------------------------------------------------------------- one image
@dataclass
class ImageQuantification:
    """Everything measured on one in-memory image (patch, core or tile)."""

    cells: Any
    segmentation: CellSegmentation
    tissue: np.ndarray
    dab: np.ndarray
    stain_source: str
    accumulator: ScoreAccumulator


def quantify_image(
    rgb: np.ndarray,
    mpp: float,
    thresholds: Thresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str | StainMatrix = "auto",
    path: str | Path | None = None,
    check_stain: bool = True,
    require_tissue: bool = True,
    tissue: np.ndarray | None = None,
) -> ImageQuantification:
    """Segment and score the cells of one RGB image at ``mpp`` µm/px.

    Raises :class:`NoTissueError` (no tissue), :class:`StainError` (H&E image, or no nuclei).
    """
    from scipy import ndimage as ndi

    from her2score.stain.deconvolution import separate_stains

    t = thresholds or Thresholds()
    p = cell_params or CellParams()
    rgb = np.ascontiguousarray(rgb[..., :3])
    tissue = tissue_mask_for(rgb, mpp) if tissue is None else tissue
    if require_tissue and tissue.sum() * mpp**2 < 500.0:  # less than ~ a 22 µm square: nothing to score
        raise NoTissueError("no tissue found in the image", path)
    estimate = macenko(rgb) if check_stain or stains == "auto" else None
    if check_stain and looks_like_he(rgb, tissue, estimate):
        raise StainError("looks like H&E (eosin-pink, no DAB): pass an HER2 IHC image", path)
    if isinstance(stains, StainMatrix):
        matrix, source = stains, "given"
    else:
        matrix, source = choose_stain_vectors(rgb, stains, estimate)
    conc = separate_stains(rgb, matrix)
    hema = conc["hematoxylin"]
    dab = ndi.gaussian_filter(conc[matrix.names[1]], p.dab_smoothing_um / mpp)
    seg = segment_cells(hema, mpp, tissue, p, dab=dab)
    if require_tissue and seg.n_cells == 0:
        raise StainError(
            "no nuclei found in the hematoxylin channel (no counterstain, or blank tissue)", path
        )
    cells = measure_cells(seg, hema, dab, mpp, t)
    acc = ScoreAccumulator()
    acc.add_cells(cells)
    acc.add_tissue(dab, tissue, t)
    return ImageQuantification(cells, seg, tissue, dab, source, acc)


# -------------------------------------------------------------------------------- calibration
#: Where a control's strong staining (90th percentile of its tumour cells' membrane DAB, the
#: ``membrane_dab`` that grades intensity) is expected to lie, as a multiple of the default
#: thresholds: 3+ well above intense (0.9 OD), 2+ between moderate and intense (0.47), 1+ between
#: faint and moderate (0.24). Real BCI patches that read their own label at the defaults have their
#: 90th percentiles at 1.05 (3+), 0.46-0.51 (2+) and 0.20-0.22 OD (1+).
_CONTROL_REFERENCE = {"3+": ("intense", 1.5), "2+": ("moderate", 1.35), "1+": ("faint", 2.0)}
#: A positive control needs at least this many stained tumour cells to tell its membrane scale.
_MIN_STAINED_CONTROL_CELLS = 5


def calibrate_thresholds(
    cells: Any, category: str, base: Thresholds | None = None
) -> tuple[Thresholds, dict]:
    """Intensity thresholds from a control of known category (its per-cell table, scored at ``base``).

    For 1+/2+/3+ controls the faint/moderate/intense thresholds are scaled together so that the
    90th percentile of the control's tumour-cell membrane DAB (the measure that grades intensity)
    lands where that category's strong staining is expected (``_CONTROL_REFERENCE``); a control
    scored at the thresholds it was drawn for leaves them where they are. When fewer than 10 % of its
    cells are stained at ``base``, their ring peaks stand in, put on the membrane scale by the ratio
    of the two over the control's stained cells. A 0 control that already scores ≤ 10 % stained
    changes nothing; otherwise its faint threshold rises above the 90th percentile of its ring peaks
    (each cell's brightest ring pixel bounds its membrane DAB), so that it scores ≤ 10 % stained.
    Returns the thresholds and the evidence (percentiles, factor) for the JSON.
    """
    base = base or Thresholds()
    if category not in CATEGORIES:
        raise ConfigError(f"control category must be one of {', '.join(CATEGORIES)} (got {category!r})")
    tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
    if len(tumour) < 20:
        raise StainError(f"control has only {len(tumour)} tumour cells; need at least 20 to calibrate")
    peaks = tumour["ring_dab_max"].to_numpy(dtype=np.float64)
    membrane = tumour["membrane_dab"].to_numpy(dtype=np.float64)
    stained = tumour["membrane_class"].to_numpy() != "none"  # their membrane_dab is >= faint
    q90_peak = float(np.percentile(peaks, 90))
    evidence: dict[str, Any] = {
        "category": category, "n_tumour_cells": len(tumour), "stained_fraction": float(stained.mean()),
        "ring_peak_q90": q90_peak, "membrane_q90": float(np.percentile(membrane, 90)),
    }  # fmt: skip
    if category == "0":
        faint = base.faint if stained.mean() <= 0.1 else max(base.faint, q90_peak * 1.05)
        moderate = max(base.moderate, faint * 1.5)
        intense = max(base.intense, moderate * 1.5)
        new = replace(base, faint=faint, moderate=moderate, intense=intense)
        evidence["factor"] = faint / base.faint
        return new, evidence
    if stained.mean() >= 0.1:
        q90 = evidence["membrane_q90"]
    elif stained.sum() >= _MIN_STAINED_CONTROL_CELLS:
        scale = float(np.median(membrane[stained] / np.maximum(peaks[stained], 1e-6)))
        q90 = q90_peak * scale
        evidence["ring_peak_scale"] = scale
    else:
        raise StainError(
            f"the {category} control has {int(stained.sum())} tumour cells with membrane staining at the "
            f"faint threshold {base.faint:g} OD: too few to calibrate from (lower 'faint' in a thresholds "
            "file, or use a more strongly stained control)"
        )
    name, multiple = _CONTROL_REFERENCE[category]
    expected = getattr(base, name) * multiple
    factor = float(np.clip(q90 / expected, 0.25, 4.0))
    new = replace(
        base, faint=base.faint * factor, moderate=base.moderate * factor, intense=base.intense * factor
    )
    evidence.update(measured_q90=q90, factor=factor, clipped=factor != q90 / expected)
    return new, evidence


# ------------------------------------------------------------------------- files and slides
#: Work at ~0.5 µm/px: finer scans are read downsampled (cells stay > 10 px across), coarser ones as
#: they are, down to 1 µm/px; beyond that membranes cannot be resolved.
WORK_MPP = 0.5
FINEST_NATIVE_MPP = 0.4
COARSEST_MPP = 1.0
#: Images up to this many pixels (at the work resolution) are scored in one piece; larger ones tiled.
WHOLE_IMAGE_PIXELS = 4096 * 4096
TILE_SIZE = 1024
#: Tile overlap (px at the work resolution): 64 px = 32 µm, more than a tumour cell, so that every cell
#: lies whole in some tile; a cell belongs to the tile whose core holds its nucleus centre.
TILE_OVERLAP = 64
#: Longest side of a slide's overview overlay (px).
OVERVIEW_MAX_SIZE = 4000


@dataclass
class FileResult:
    """What :func:`quantify_file` wrote and measured for one image or slide."""

    row: dict[str, Any]
    cells_path: Path
    overlay_path: Path


def work_mpp_for(level0_mpp: float, path: str | Path | None = None) -> float:
    """The µm/px at which cells are measured for a file scanned at ``level0_mpp``."""
    from her2score.errors import SlideError

    if level0_mpp > COARSEST_MPP:
        raise SlideError(
            f"resolution {level0_mpp:g} µm/px is too coarse to see cell membranes (need ≤ {COARSEST_MPP:g})",
            path,
        )
    return level0_mpp if level0_mpp >= FINEST_NATIVE_MPP else WORK_MPP


def quantify_file(
    path: str | Path,
    out_dir: str | Path,
    mpp: float | None = None,
    thresholds: Thresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str = "auto",
    workers: int = 0,
    progress: Any = None,
    stem: str | None = None,
    whole_image_pixels: int = WHOLE_IMAGE_PIXELS,
) -> FileResult:
    """Score one image or slide and write ``<stem>.cells.parquet`` and ``<stem>.overlay.png``.

    Small images (patches, TMA cores) are scored in one piece; whole slides tile by tile over the
    tissue, streaming (memory stays flat), over ``workers`` processes. ``progress`` is an optional
    ``rich.progress.Progress`` for a per-tile bar; ``stem`` names the outputs (default: the file's).
    """
    from her2score.slide import open_slide

    t = thresholds or Thresholds()
    p = cell_params or CellParams()
    path = Path(path)
    out_dir = Path(out_dir)
    with open_slide(path, mpp=mpp) as slide:
        level0 = slide.require_mpp()
        work = work_mpp_for(level0, path)
        scale = level0 / work
        stem = stem or path.stem
        if slide.width * slide.height * scale * scale <= whole_image_pixels:
            return _quantify_whole(slide, path, stem, out_dir, work, t, p, stains)
        return _quantify_tiled(slide, path, stem, out_dir, mpp, work, t, p, stains, workers, progress)


def _row_head(path: Path, slide: Any, work: float, mode: str, stain_source: str) -> dict[str, Any]:
    return {
        "image": str(path),
        "status": "ok",
        "error": "",
        "mpp": slide.require_mpp(),
        "work_mpp": work,
        "mode": mode,
        "stain_vectors": stain_source,
    }


def _cells_to_level0(cells: Any, factor: float, dx: float = 0.0, dy: float = 0.0) -> Any:
    cells = cells.copy()
    cells["x"] = (cells["x"] * factor + dx).astype(np.float32)
    cells["y"] = (cells["y"] * factor + dy).astype(np.float32)
    return cells


def _quantify_whole(
    slide: Any, path: Path, stem: str, out_dir: Path, work: float, t: Thresholds, p: CellParams, stains: str
) -> FileResult:
    from her2score.io import atomic_path, write_png
    from her2score.stain.overlay import cell_overlay

    rgb = slide.read_bounds((0, 0, slide.width, slide.height), work)
    result = quantify_image(rgb, work, t, p, stains=stains, path=path)
    row = _row_head(path, slide, work, "image", result.stain_source) | result.accumulator.summary(t)
    cells = _cells_to_level0(result.cells, work / slide.require_mpp())
    cells_path = out_dir / f"{stem}.cells.parquet"
    with atomic_path(cells_path) as tmp:
        cells.to_parquet(tmp, index=False)
    overlay_path = write_png(
        out_dir / f"{stem}.overlay.png", cell_overlay(rgb, result.cells, result.segmentation, row)
    )
    return FileResult(row, cells_path, overlay_path)


# Worker state for tiled slides: each process opens the slide once.
_WORKER: dict[str, Any] = {}


def _init_tile_worker(
    path: str, mpp: float | None, work: float, t: Thresholds, p: CellParams, matrix: Any
) -> None:
    from her2score.slide import open_slide

    _WORKER.clear()
    _WORKER.update(slide=open_slide(path, mpp=mpp), work=work, t=t, p=p, matrix=matrix)


def _tile_task(tile: Any, core: tuple[float, float, float, float]) -> tuple[Any, ScoreAccumulator]:
    """Score one tile; keep the cells whose nucleus centre lies in the tile's core (level-0 px)."""
    slide, work, t, p = _WORKER["slide"], _WORKER["work"], _WORKER["t"], _WORKER["p"]
    rgb = slide.read_region((tile.x, tile.y), (tile.size, tile.size), work)
    result = quantify_image(
        rgb, work, t, p, stains=_WORKER["matrix"], path=slide.path, check_stain=False, require_tissue=False
    )
    factor = work / slide.require_mpp()
    cells = _cells_to_level0(result.cells, factor, tile.x, tile.y)
    x0, y0, x1, y1 = core
    keep = (cells["x"] >= x0) & (cells["x"] < x1) & (cells["y"] >= y0) & (cells["y"] < y1)
    cells = cells[keep.to_numpy()].reset_index(drop=True)
    cells["x_um"] = (cells["x"] * slide.require_mpp()).astype(np.float32)
    cells["y_um"] = (cells["y"] * slide.require_mpp()).astype(np.float32)
    acc = ScoreAccumulator()
    acc.add_cells(cells)
    # Tissue DAB statistics over the core only, so that overlaps are not counted twice.
    ys = (np.arange(rgb.shape[0]) * factor + tile.y)[:, None]
    xs = (np.arange(rgb.shape[1]) * factor + tile.x)[None, :]
    in_core = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    acc.add_tissue(result.dab, result.tissue & in_core, t)
    return cells, acc


def tile_cores(tiles: list[Any]) -> list[tuple[float, float, float, float]]:
    """Level-0 core ``(x0, y0, x1, y1)`` of each tile: an overlap with a neighbouring tile is split
    half-way; a side without an overlapping neighbour keeps the whole tile up to its edge."""
    origins = {(tile.x, tile.y) for tile in tiles}
    xs = sorted({tile.x for tile in tiles})
    ys = sorted({tile.y for tile in tiles})
    next_x = dict(zip(xs, [*xs[1:], None], strict=True))
    next_y = dict(zip(ys, [*ys[1:], None], strict=True))
    prev_x = dict(zip(xs, [None, *xs[:-1]], strict=True))
    prev_y = dict(zip(ys, [None, *ys[:-1]], strict=True))
    cores = []
    for tile in tiles:
        left, top, right, bottom = tile.x, tile.y, tile.x + tile.w, tile.y + tile.h
        px, nx, py, ny = prev_x[tile.x], next_x[tile.x], prev_y[tile.y], next_y[tile.y]
        if px is not None and px + tile.w > tile.x and (px, tile.y) in origins:
            left = (px + tile.w + tile.x) / 2
        if nx is not None and nx < tile.x + tile.w and (nx, tile.y) in origins:
            right = (tile.x + tile.w + nx) / 2
        if py is not None and py + tile.h > tile.y and (tile.x, py) in origins:
            top = (py + tile.h + tile.y) / 2
        if ny is not None and ny < tile.y + tile.h and (tile.x, ny) in origins:
            bottom = (tile.y + tile.h + ny) / 2
        cores.append((float(left), float(top), float(right), float(bottom)))
    return cores


def _quantify_tiled(
    slide: Any,
    path: Path,
    stem: str,
    out_dir: Path,
    mpp: float | None,
    work: float,
    t: Thresholds,
    p: CellParams,
    stains: str,
    workers: int,
    progress: Any,
) -> FileResult:
    import collections
    import concurrent.futures as cf

    import pyarrow as pa
    import pyarrow.parquet as pq

    from her2score.io import atomic_path, write_png
    from her2score.slide.tissue import tile_grid
    from her2score.stain.overlay import dot_overlay

    overview, overview_mpp = slide.read_overview(max_size=OVERVIEW_MAX_SIZE)
    tissue = tissue_mask_for(overview, overview_mpp, mask_mpp=overview_mpp)
    if tissue.sum() * overview_mpp**2 < 500.0:
        raise NoTissueError("no tissue found on the slide", path)
    if looks_like_he(overview, tissue):
        raise StainError("looks like H&E (eosin-pink, no DAB): pass an HER2 IHC slide", path)
    matrix, source = choose_stain_vectors(overview, stains)  # one set for the whole slide: consistent
    tiles = tile_grid(slide, TILE_SIZE, work, overlap=TILE_OVERLAP, min_tissue=0.02)
    if not tiles:
        raise NoTissueError("no tile holds enough tissue", path)
    cores = tile_cores(tiles)
    level0 = slide.require_mpp()
    total = ScoreAccumulator()
    dots_x, dots_y, dots_c = [], [], []
    class_index = {c: i for i, c in enumerate(MEMBRANE_CLASSES)}
    cells_path = out_dir / f"{stem}.cells.parquet"
    task = progress.add_task(f"{path.name}: tiles", total=len(tiles)) if progress is not None else None
    init_args = (str(path), mpp, work, t, p, matrix)
    with atomic_path(cells_path) as tmp:
        writer = None
        next_id = 1

        def consume(cells: Any, acc: ScoreAccumulator) -> None:
            nonlocal writer, next_id
            cells["cell_id"] = np.arange(next_id, next_id + len(cells), dtype=np.int64)
            next_id += len(cells)
            _merge(total, acc)
            tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
            dots_x.append((tumour["x"].to_numpy() * level0 / overview_mpp).astype(np.float32))
            dots_y.append((tumour["y"].to_numpy() * level0 / overview_mpp).astype(np.float32))
            dots_c.append(tumour["membrane_class"].astype(str).map(class_index).to_numpy(dtype=np.int8))
            table = pa.Table.from_pandas(cells, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
            if task is not None:
                progress.advance(task)

        try:
            if workers > 0:
                # A bounded window of tiles in flight keeps memory flat; results are taken in tile
                # order so that the output does not depend on timing.
                with cf.ProcessPoolExecutor(
                    workers, initializer=_init_tile_worker, initargs=init_args
                ) as pool:
                    window: collections.deque = collections.deque()
                    for tile, core in zip(tiles, cores, strict=True):
                        window.append(pool.submit(_tile_task, tile, core))
                        if len(window) >= 2 * workers:
                            consume(*window.popleft().result())
                    while window:
                        consume(*window.popleft().result())
            else:
                _init_tile_worker(*init_args)
                for tile, core in zip(tiles, cores, strict=True):
                    consume(*_tile_task(tile, core))
        finally:
            if writer is not None:
                writer.close()
            _WORKER.pop("slide", None)
        if writer is None:
            _empty_cells().to_parquet(tmp, index=False)
    if task is not None:
        progress.remove_task(task)
    row = _row_head(path, slide, work, f"slide ({len(tiles)} tiles)", source) | total.summary(t)
    xs = np.concatenate(dots_x) if dots_x else np.zeros(0, np.float32)
    ys = np.concatenate(dots_y) if dots_y else np.zeros(0, np.float32)
    cs = np.concatenate(dots_c) if dots_c else np.zeros(0, np.int8)
    overlay_path = write_png(
        out_dir / f"{stem}.overlay.png", dot_overlay(overview, xs, ys, cs, row, overview_mpp)
    )
    return FileResult(row, cells_path, overlay_path)


def _merge(total: ScoreAccumulator, part: ScoreAccumulator) -> None:
    total.n_cells += part.n_cells
    total.n_tumour += part.n_tumour
    for c in MEMBRANE_CLASSES:
        total.class_counts[c] += part.class_counts[c]
    for i in range(4):
        total.intensity_counts[i] += part.intensity_counts[i]
    total.index_sum += part.index_sum
    total.tissue_px += part.tissue_px
    total.tissue_dab_sum += part.tissue_dab_sum
    for i in range(3):
        total.tissue_dab_above[i] += part.tissue_dab_above[i]
