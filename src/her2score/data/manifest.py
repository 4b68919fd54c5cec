"""Cohorts from a manifest CSV: labels per task, validation with clear errors, and patient-grouped splits.

A manifest has one row per slide: ``slide`` (path relative to the CSV or absolute), ``her2``
(``0``, ``1+``, ``2+``, ``3+``) and optionally ``ish``, ``er``, ``pr`` (``pos``/``neg``), ``patient``,
``site``, ``mpp`` (level-0 µm/px override), ``stain`` (``her2``/``er``/``pr``: the marker that slide
carries) and ``split`` (``train``/``val``/``test``). A task turns a row into a class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score import rules
from her2score.errors import ManifestError

HER2_SCORES = rules.HER2_CATEGORIES
_HER2_ALIASES = {"0": "0", "0+": "0", "1": "1+", "1+": "1+", "2": "2+", "2+": "2+", "3": "3+", "3+": "3+"}
_BINARY_ALIASES = {
    "pos": "pos", "positive": "pos", "+": "pos", "1": "pos", "true": "pos",
    "neg": "neg", "negative": "neg", "-": "neg", "0": "neg", "false": "neg",
}  # fmt: skip
SPLITS = ("train", "val", "test")
EQUIVOCAL_RULES = rules.EQUIVOCAL_RULES


@dataclass(frozen=True)
class Task:
    """A classification task: its classes (in order) and how a manifest row maps to one of them."""

    name: str
    classes: tuple[str, ...]
    label_column: str
    stain: str
    ordinal: bool
    label_of: Callable[[dict[str, Any]], str]
    description: str = ""


def _her2_3way(equivocal: str) -> Callable[[dict[str, Any]], str]:
    def label(row: dict[str, Any]) -> str:
        # ASCO/CAP: 2+ goes by ISH (unknown ISH counts as not amplified) unless ``equivocal`` says otherwise
        return rules.her2_3way(row["her2"], row.get("ish"), equivocal)

    return label


def get_task(name: str, equivocal: str = "ish") -> Task:
    """The task ``name`` (``her2-3way``, ``her2-4way``, ``er``, ``pr``).

    ``equivocal`` sets where HER2 2+ goes in ``her2-3way``: ``ish`` (high if ISH positive, else low),
    ``low`` or ``high``.
    """
    if equivocal not in EQUIVOCAL_RULES:
        raise ManifestError(f"equivocal rule must be one of {', '.join(EQUIVOCAL_RULES)}, not {equivocal!r}")
    if name == "her2-3way":
        return Task(
            name, rules.HER2_3WAY, "her2", "her2", True, _her2_3way(equivocal),
            f"HER2 0 / low (1+, 2+ ISH-) / high (3+, 2+ ISH+); 2+ rule: {equivocal}",
        )  # fmt: skip
    if name == "her2-4way":
        return Task(name, HER2_SCORES, "her2", "her2", True, lambda r: r["her2"], "HER2 IHC score 0/1+/2+/3+")
    if name in ("er", "pr"):
        return Task(
            name, rules.RECEPTOR_STATUSES, name, name, False, lambda r, c=name: r[c],
            f"{name.upper()} status neg/pos",
        )  # fmt: skip
    raise ManifestError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")


TASKS = ("her2-3way", "her2-4way", "er", "pr")


@dataclass
class Cohort:
    """Validated slides and labels for one task. ``frame`` has absolute ``slide`` paths and ``label``."""

    path: Path | None
    task: Task
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.task.classes)

    @property
    def slides(self) -> list[Path]:
        return [Path(s) for s in self.frame["slide"]]

    @property
    def y(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Patient ids (the slide itself when no patient column): splits never separate a patient."""
        return self.frame["patient"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, index: np.ndarray | list[int]) -> Cohort:
        """Rows ``index`` (positions) as a new cohort."""
        return Cohort(
            self.path, self.task, self.frame.iloc[list(index)].reset_index(drop=True), list(self.notes)
        )


def load_manifest(
    path: str | Path, task: str | None = "her2-3way", equivocal: str = "ish", check_files: bool = True
) -> Cohort:
    """Read and validate a manifest CSV for ``task``.

    Raises:
        ManifestError: missing columns, unknown labels, missing or duplicate slides, or a patient in
            more than one split; the message names the file, the row (CSV line) and the cause.
    """
    path = Path(path)
    raw = read_manifest_table(path)
    spec = get_task(task or "her2-3way", equivocal)
    for column in ("slide", spec.label_column):
        if column not in raw.columns:
            raise ManifestError(
                f"no '{column}' column (columns: {', '.join(raw.columns)}){_separator_hint(raw)}", path
            )
    if raw.empty:
        raise ManifestError("manifest has no rows", path)

    rows, notes, seen = [], [], {}
    for i, record in enumerate(raw.to_dict("records")):
        line = i + 2  # header is line 1
        record = {k: str(v).strip() for k, v in record.items()}
        if "stain" in record and record["stain"] and record["stain"].lower() != spec.stain:
            continue
        rows.append(_validate_row(record, line, path, spec, seen, check_files))
    if not rows:
        raise ManifestError(f"no rows for task {spec.name} (stain column has no '{spec.stain}' slides)", path)
    frame = pd.DataFrame(rows)
    _check_split_leak(frame, path)
    return Cohort(path, spec, frame, notes)


def read_manifest_table(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """The manifest CSV as text columns with lower-case names; ``ManifestError`` naming the file when it
    is not a readable CSV or lacks a ``required`` column (with a hint for ';'- or tab-separated files)."""
    path = Path(path)
    if not path.is_file():  # checked without opening: a named pipe would block
        raise ManifestError(_not_a_file(path), path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:
        raise ManifestError(f"cannot be read as CSV ({type(exc).__name__}: {exc})", path) from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    for column in required:
        if column not in raw.columns:
            raise ManifestError(
                f"no '{column}' column (columns: {', '.join(raw.columns)}){_separator_hint(raw)}", path
            )
    return raw


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read as a manifest: missing, a folder, a link loop."""
    import errno
    import os

    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "manifest file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (it never reaches a file)"
        return f"cannot be looked at ({exc.strerror or exc})"
    import stat

    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a manifest CSV file"
    return "is not a regular file (a named pipe, device or socket); pass a manifest CSV file"


def _separator_hint(raw: pd.DataFrame) -> str:
    """A hint when the header is one column holding another separator (a European-locale export)."""
    if len(raw.columns) != 1:
        return ""
    header = str(raw.columns[0])
    for sep, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if sep in header:
            return f"; looks like {name}-separated: her2score reads comma-separated CSV"
    return ""


def _validate_row(
    record: dict[str, str], line: int, path: Path, spec: Task, seen: dict[str, int], check_files: bool
) -> dict[str, Any]:
    def fail(cause: str) -> ManifestError:
        return ManifestError(f"row {line}: {cause}", path)

    if not record["slide"]:
        raise fail("empty 'slide' path")
    slide = Path(record["slide"]).expanduser()
    slide = (slide if slide.is_absolute() else path.parent / slide).resolve()
    if check_files and not slide.exists():
        raise fail(f"slide file not found: {slide}")
    key = str(slide)
    if key in seen:
        raise fail(f"duplicate slide {record['slide']} (also on row {seen[key]})")
    seen[key] = line

    out: dict[str, Any] = {"slide": key, "row": line}
    if record.get("he"):  # the H&E image of the same tissue (paired H&E/IHC models)
        he = Path(record["he"]).expanduser()
        he = (he if he.is_absolute() else path.parent / he).resolve()
        if check_files and not he.exists():
            raise fail(f"H&E file not found: {he}")
        out["he"] = str(he)
    her2 = record.get("her2", "")
    if her2 or spec.label_column == "her2":
        if her2.lower() not in _HER2_ALIASES:
            raise fail(f"unknown HER2 score {her2!r}; expected one of 0, 1+, 2+, 3+")
        out["her2"] = _HER2_ALIASES[her2.lower()]
    for column in ("ish", "er", "pr"):
        value = record.get(column, "")
        if not value:
            out[column] = None
            continue
        if value.lower() not in _BINARY_ALIASES:
            raise fail(f"unknown {column.upper()} value {value!r}; expected pos or neg")
        out[column] = _BINARY_ALIASES[value.lower()]
    if spec.label_column in ("er", "pr") and out[spec.label_column] is None:
        raise fail(f"no {spec.label_column.upper()} status for task {spec.name}")
    out["label_name"] = spec.label_of(out)
    out["label"] = spec.classes.index(out["label_name"])
    out["patient"] = record.get("patient") or f"slide:{key}"
    out["site"] = record.get("site") or "unknown"
    mpp = record.get("mpp", "")
    try:
        out["mpp"] = float(mpp) if mpp else None
    except ValueError:
        raise fail(f"mpp {mpp!r} is not a number (µm/px)") from None
    if out["mpp"] is not None and not (0.01 <= out["mpp"] <= 1000):
        raise fail(f"mpp {out['mpp']} is outside the plausible range 0.01-1000 µm/px")
    split = record.get("split", "").lower()
    if split and split not in SPLITS:
        raise fail(f"unknown split {record['split']!r}; expected train, val or test")
    out["split"] = split or None
    return out


def _check_split_leak(frame: pd.DataFrame, path: Path) -> None:
    if frame["split"].isna().all():
        return
    if frame["split"].isna().any():
        line = int(frame.loc[frame["split"].isna(), "row"].iloc[0])
        raise ManifestError(f"row {line}: no split while other rows have one", path)
    per_patient = frame.groupby("patient")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        patient = leaked.index[0]
        splits = sorted(frame.loc[frame["patient"] == patient, "split"].unique())
        raise ManifestError(
            f"patient {patient} is on both sides of the split ({', '.join(splits)}); "
            "all slides of a patient must share one split",
            path,
        )


# ---------------------------------------------------------------------------------------------- splits
def kfold_splits(cohort: Cohort, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, patient-grouped k-fold: ``[(train_positions, test_positions), ...]``."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(cohort.groups))
    if folds < 2 or folds > n_groups:
        raise ManifestError(f"{folds} folds need 2..{n_groups} patients", cohort.path)
    largest_class = int(np.bincount(cohort.y).max())
    if folds > largest_class:
        raise ManifestError(f"{folds} folds need a class with at least {folds} slides", cohort.path)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (np.sort(tr), np.sort(te))
        for tr, te in splitter.split(np.zeros(len(cohort)), cohort.y, cohort.groups)
    ]


def holdout_split(cohort: Cohort, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified, patient-grouped holdout of about ``fraction`` of the slides."""
    if not 0.0 < fraction < 1.0:
        raise ManifestError(f"holdout fraction must be in (0, 1), not {fraction}", cohort.path)
    folds = max(2, min(round(1.0 / fraction), len(set(cohort.groups)), int(np.bincount(cohort.y).max())))
    return kfold_splits(cohort, folds, seed)[0]


def fixed_splits(cohort: Cohort) -> dict[str, np.ndarray]:
    """Positions of each split named in the ``split`` column (``train``, ``val``, ``test``)."""
    if cohort.frame["split"].isna().all():
        raise ManifestError("the manifest has no 'split' column", cohort.path)
    return {s: np.flatnonzero(cohort.frame["split"].to_numpy() == s) for s in SPLITS}


def has_fixed_splits(cohort: Cohort) -> bool:
    """True when every row names its split."""
    return "split" in cohort.frame and cohort.frame["split"].notna().all()
