"""Intensity thresholds from a control of known HER2 category (``her2score calibrate``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import ConfigError, StainError
from her2score.quantify.thresholds import Thresholds
from her2score.rules import HER2_CATEGORIES as CATEGORIES

#: Where a control's strong staining (90th percentile of its tumour cells' membrane DAB, the
#: ``membrane_dab`` that grades intensity) is expected to lie, as a multiple of the default
#: thresholds: 3+ well above intense (0.9 OD), 2+ between moderate and intense (0.45), 1+ between
#: faint and moderate (0.21). Real BCI patches that read their own label at the defaults (membrane
#: cell model) have their 90th percentiles at 0.49-1.08 (3+), 0.48-0.75 (2+) and 0.21-0.22 OD (1+).
_CONTROL_REFERENCE = {"3+": ("intense", 2.0), "2+": ("moderate", 1.8), "1+": ("faint", 1.75)}
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


def calibrate_file(
    control: str | Path, category: str, mpp: float | None = None, base: Thresholds | None = None
) -> tuple[Thresholds, dict[str, Any]]:
    """Score a control image or slide at ``base``; thresholds from it by :func:`calibrate_thresholds`.

    Raises :class:`~her2score.errors.StainError` naming the control when it cannot calibrate.
    """
    import tempfile

    import pandas as pd

    from her2score.quantify.pipeline import quantify_file

    base = base or Thresholds()
    with tempfile.TemporaryDirectory() as tmp:
        result = quantify_file(control, Path(tmp), mpp, base)
        cells = pd.read_parquet(result.cells_path)
    try:
        new, evidence = calibrate_thresholds(cells, category, base)
    except StainError as exc:
        raise StainError(exc.cause, control) from None
    evidence["control"] = str(control)
    return new, evidence
