"""Scoring thresholds of the membrane quantifier: defaults, cross-checks, JSON load and save."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from her2score import rules
from her2score.errors import ConfigError

_INT_KEYS = ("n_sectors", "nest_neighbours", "cohesion_neighbours", "min_tumour_cells")
_TEXT_KEYS = ("her2_rules",)


@dataclass(frozen=True)
class Thresholds:
    """Scoring parameters. DAB values are optical densities of the membrane (H-DAB vectors of the image).

    Intensity defaults are on the scale of real DAB, derived from the real BCI HER2 IHC patches
    (``../shared/data/real``, 20x, scored at 0.5 µm/px with the membrane cell model): the membrane DAB of
    tumour cells stained round at least half their border lies at 0.16-0.22 OD (25th-90th
    percentile) on the 1+ patches, 0.33-0.48 on the clearly stained 2+ patch (00361) and 0.36-0.49 on
    the clearest 3+ patch (00052; 0.41-1.08 on the 3+ nest of 00057). So:

    * ``faint`` 0.12 OD: the faintest brown a pathologist perceives at 20x (at 0.15 two of the five
      real 1+ patches read 0);
    * ``moderate`` 0.25 OD: above the 90th percentile of the 1+ membranes (0.21-0.22) and below the
      lower quartile of the 2+ and 3+ ones (0.33-0.36);
    * ``intense`` 0.45 OD: the upper quartile of the real strongly stained membranes (0.41-0.44), so
      that a 3+ "chicken-wire" reads intense and a 2+ reads moderate with an intense minority.

    These are about 0.75 x the common DAB OD bands (0.2 / 0.4 / 0.6 on whole-cell means, QuPath's
    defaults) above faint: real DAB at 20x on a JPEG-compressed scan peaks at 0.35-0.5 OD on a 3+
    membrane, well below the 0.6-1.0 of a saturated chromogen. The synthetic generator draws darker
    membranes (0.16 / 0.42 / 1.0 OD before gains): score synthetic slides with
    :data:`SYNTHETIC_LAB` (its own lab's scale, as ``her2score calibrate`` would give for a lab), and a
    lab's own controls with :func:`~her2score.quantify.calibrate.calibrate_thresholds`.
    """

    faint: float = 0.12
    moderate: float = 0.25
    intense: float = 0.45
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
    #: Gastric rules (``her2_rules="gastric"``): a basolateral or lateral ("U-shaped") membrane counts as
    #: complete when its stained part covers at least this fraction of the ring (a U is the base and both
    #: sides of a cell: half its border or more) and is one arc: the ring outside its longest unstained run
    #: is stained at ``complete_fraction`` (the breast rule's tolerance for lost sectors). See
    #: :func:`~her2score.quantify.membrane.classify_membrane`.
    gastric_arc_fraction: float = 0.5
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
    #: Contrast hysteresis (:func:`~her2score.quantify.membrane.contrast_hysteresis`): a cell whose
    #: sectors pass the full contrast round at least ``accentuated_fraction`` of its ring at an intense
    #: median peak has shown its membrane; its other sectors above the faint floor then need only
    #: ``contrast_continuity`` x the contrast margin over the cytoplasm (0: just above it; README
    #: "Strongly stained cells"). 1.0 turns it off.
    contrast_continuity: float = 0.0
    accentuated_fraction: float = 0.5
    #: The cytoplasm DAB of a cell is this quantile of its perinuclear band (see ``measure_cells``).
    cytoplasm_quantile: float = 0.25
    #: Tumour-cell filter on the nucleus: segmented tumour nuclei are 6-15 µm across (pale ones come
    #: out small, so the floor is low: 18 µm²); fibroblast nuclei are spindles (long / short axis
    #: > 2.5); lymphocytes are small (< ``lymphocyte_max_um2``) AND dark (hematoxylin above
    #: ``lymphocyte_darkness`` x the median of the image's larger nuclei); size, darkness and elongation
    #: as the nucleus's core at half maximum reads them (``membrane.half_maximum``); pleomorphic grade-3
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
    #: ... and carcinoma is cohesive: at least ``cohesion_neighbours`` other nuclei within
    #: ``cohesion_radius_um`` (touching cells are 10-16 µm apart; fibroblasts lie ~20-40 µm apart in
    #: their matrix, so sparse stroma passes the nest rule but not this one). 0 turns it off.
    cohesion_neighbours: int = 2
    cohesion_radius_um: float = 20.0
    #: Lymphocytes are round: elongation (long / short axis) at most this.
    inflammatory_max_elongation: float = 1.6
    #: Columnar epithelium (gland-forming adenocarcinoma) has elongated nuclei too: an elongated
    #: nucleus in a palisade (:func:`~her2score.quantify.membrane.palisade`: plump, at least
    #: ``palisade_min_width_um`` wide, with a near-parallel neighbour (within ``palisade_max_angle_deg``)
    #: beside it on each side within ``palisade_radius_um``) is epithelial, not a spindle. 0 radius: off.
    palisade_radius_um: float = 15.0
    palisade_min_width_um: float = 3.0
    palisade_max_angle_deg: float = 40.0
    palisade_max_offset: float = 1.0
    #: ... and a palisade is one layer facing a free surface (a lumen on the apical side, stroma on the
    #: basal side): a nucleus with a near-parallel elongated nucleus in line wholly past *both* of its
    #: tips (within half its length of its axis, the near tip within this many of its lengths of the tip)
    #: lies in a many-layered sheet of spindles (smooth muscle, a fascicle), not in an epithelium. 0: off.
    palisade_free_end: float = 1.0
    #: An elongated nucleus whose edge lies within this distance (µm) of empty space (a vessel's lumen)
    #: is endothelial rather than stromal.
    lumen_distance_um: float = 3.0
    #: ASCO/CAP 10 % rule (percent of invasive tumour cells; :data:`her2score.rules.POSITIVE_PERCENT`).
    positive_percent: float = rules.POSITIVE_PERCENT
    #: Intense complete staining in this share (%) up to 10 % reads as 2+ (ASCO/CAP: equivocal;
    #: :data:`her2score.rules.INTENSE_MINORITY_PERCENT`).
    intense_minority_percent: float = rules.INTENSE_MINORITY_PERCENT
    #: Fewer invasive tumour cells than this in an image or slide: "not scorable" (one cell would be
    #: more than 5 % of the 10 % rule's denominator; see :func:`~her2score.quantify.scoring.score_counts`).
    min_tumour_cells: int = 20
    #: The HER2 rulebook (:data:`her2score.rules.HER2_RULES`): ``breast`` (ASCO/CAP 2018) or ``gastric``
    #: (Hofmann 2008 / ASCO/CAP/ASCP 2016: U-shaped membranes complete, ≥ 10 %, no intense-minority 2+;
    #: ``max_gap_fraction`` and ``intense_minority_percent`` then do not apply).
    her2_rules: str = "breast"

    def __post_init__(self) -> None:
        rules.check_her2_rules(self.her2_rules)
        if not 0 < self.gastric_arc_fraction <= 1:
            raise ConfigError(f"gastric_arc_fraction must be in (0, 1] (got {self.gastric_arc_fraction})")
        for f in fields(self):
            if f.name in _TEXT_KEYS:
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number (got {value!r})")
        if not 0 < self.positive_percent < 100:
            raise ConfigError(f"positive_percent must be in (0, 100) (got {self.positive_percent})")
        if not 0 <= self.intense_minority_percent <= self.positive_percent:
            raise ConfigError(
                "intense_minority_percent must be in [0, positive_percent] "
                f"(got {self.intense_minority_percent}, positive_percent {self.positive_percent})"
            )
        if self.min_tumour_cells < 1:
            raise ConfigError(f"min_tumour_cells must be at least 1 (got {self.min_tumour_cells})")
        if not 0 < self.tumour_nucleus_min_um2 < self.tumour_nucleus_max_um2:
            raise ConfigError(
                "need 0 < tumour_nucleus_min_um2 < tumour_nucleus_max_um2 "
                f"(got {self.tumour_nucleus_min_um2}, {self.tumour_nucleus_max_um2})"
            )
        if not 0 <= self.tumour_min_ellipse_fill <= 1:
            raise ConfigError(
                f"tumour_min_ellipse_fill must be in [0, 1] (got {self.tumour_min_ellipse_fill})"
            )
        if self.tumour_max_elongation < 1:
            raise ConfigError(f"tumour_max_elongation must be at least 1 (got {self.tumour_max_elongation})")
        for key in ("lymphocyte_max_um2", "lymphocyte_darkness"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive (got {getattr(self, key)})")
        for key in ("contrast_continuity", "accentuated_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1] (got {getattr(self, key)})")
        for key in ("membrane_contrast_od", "membrane_contrast_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0 (got {getattr(self, key)})")
        if self.intense > 5:
            raise ConfigError(f"intense must be an optical density below 5 (got {self.intense})")
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
        if (
            self.palisade_radius_um < 0
            or self.palisade_min_width_um < 0
            or self.palisade_max_offset <= 0
            or self.palisade_free_end < 0
        ):
            raise ConfigError(
                "need palisade_radius_um >= 0 (0: off), palisade_min_width_um >= 0, palisade_max_offset > 0,"
                " palisade_free_end >= 0 (0: off)"
            )
        if not 0 <= self.palisade_max_angle_deg <= 90:
            raise ConfigError(
                f"palisade_max_angle_deg must be in [0, 90] (got {self.palisade_max_angle_deg})"
            )
        if self.nest_neighbours < 0 or self.nest_radius_um <= 0:
            raise ConfigError("nest_neighbours must be >= 0 and nest_radius_um > 0")
        if self.cohesion_neighbours < 0 or self.cohesion_radius_um <= 0:
            raise ConfigError("cohesion_neighbours must be >= 0 and cohesion_radius_um > 0")
        if self.inflammatory_max_elongation < 1 or self.lumen_distance_um < 0:
            raise ConfigError("need inflammatory_max_elongation >= 1 and lumen_distance_um >= 0")
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
            values = {
                k: (str(v) if k in _TEXT_KEYS else int(v) if k in _INT_KEYS else float(v))
                for k, v in data.items()
            }
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

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write ``{"thresholds": ..., **extra}`` as JSON (atomically); read back by :meth:`from_json`."""
        from her2score.io import write_json

        return write_json(Path(path), {"thresholds": self.to_dict(), **extra})


#: The synthetic generator's staining scale (:mod:`her2score.data.synth`, membranes drawn at 0.16 / 0.42 /
#: 1.0 OD before gains, darker than real DAB): the thresholds its slides are scored at, like a lab scored
#: at its own calibrated thresholds.
SYNTHETIC_LAB = Thresholds(faint=0.12, moderate=0.35, intense=0.60)


def load_thresholds(source: Thresholds | str | Path | None) -> Thresholds:
    """Thresholds as given, read from a JSON file, or the defaults (``None``)."""
    if source is None:
        return Thresholds()
    if isinstance(source, Thresholds):
        return source
    return Thresholds.from_json(source)
