"""Manifests: labels per task, validation errors naming file/row/cause, patient-grouped splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from her2score.data.manifest import fixed_splits, get_task, holdout_split, kfold_splits, load_manifest
from her2score.errors import ManifestError


def _write(
    folder: Path, rows: list[str], header: str = "slide,her2,ish,patient,site", touch: bool = True
) -> Path:
    for row in rows:
        name = row.split(",")[0]
        if touch and name and not Path(name).is_absolute():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")
    path = folder / "m.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_her2_3way_maps_equivocal_by_ish(tmp_path: Path) -> None:
    rows = ["a.tif,0,,p1,s", "b.tif,1+,,p2,s", "c.tif,2+,neg,p3,s", "d.tif,2+,pos,p4,s", "e.tif,3+,,p5,s",
            "f.tif,2+,,p6,s"]  # fmt: skip
    cohort = load_manifest(_write(tmp_path, rows), "her2-3way")
    assert list(cohort.frame["label_name"]) == ["0", "low", "low", "high", "high", "low"]
    assert cohort.classes == ["0", "low", "high"]
    assert all(Path(s).is_absolute() and Path(s).exists() for s in cohort.frame["slide"])
    as_low = load_manifest(tmp_path / "m.csv", "her2-3way", equivocal="low")
    assert list(as_low.frame["label_name"])[3] == "low"
    four = load_manifest(tmp_path / "m.csv", "her2-4way")
    assert list(four.y) == [0, 1, 2, 2, 3, 2]


def test_er_task_uses_rows_of_its_stain(tmp_path: Path) -> None:
    rows = ["a.tif,her2,1+,pos,p1", "b.tif,er,,pos,p1", "c.tif,er,,neg,p2", "d.tif,pr,,,p2"]
    path = _write(tmp_path, rows, header="slide,stain,her2,er,patient")
    cohort = load_manifest(path, "er")
    assert [Path(s).name for s in cohort.frame["slide"]] == ["b.tif", "c.tif"]
    assert list(cohort.frame["label_name"]) == ["pos", "neg"]
    assert len(load_manifest(path, "her2-3way")) == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["a.tif,4+,,p1,s"], "row 2: unknown HER2 score '4+'"),
        (["a.tif,1+,maybe,p1,s"], "row 2: unknown ISH value"),
        (["a.tif,0,,p1,s", "a.tif,1+,,p2,s"], "row 3: duplicate slide a.tif (also on row 2)"),
    ],
)
def test_errors_name_file_row_and_cause(tmp_path: Path, rows: list[str], message: str) -> None:
    path = _write(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"m\.csv") as info:
        load_manifest(path)
    assert message in str(info.value)


def test_missing_slide_file_and_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path, ["gone.tif,0,,p1,s"], touch=False)
    with pytest.raises(ManifestError, match=r"row 2: slide file not found: .*gone\.tif"):
        load_manifest(path)
    bad = tmp_path / "b.csv"
    bad.write_text("file,her2\nx,0\n")
    with pytest.raises(ManifestError, match="no 'slide' column"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")


def test_patient_on_both_sides_of_split_is_refused(tmp_path: Path) -> None:
    rows = ["a.tif,0,,p1,s,train", "b.tif,1+,,p1,s,test", "c.tif,3+,,p2,s,train"]
    path = _write(tmp_path, rows, header="slide,her2,ish,patient,site,split")
    with pytest.raises(ManifestError, match="patient p1 is on both sides of the split"):
        load_manifest(path)


def test_fixed_splits_from_column(tmp_path: Path) -> None:
    rows = ["a.tif,0,,p1,s,train", "b.tif,1+,,p2,s,val", "c.tif,3+,,p3,s,test", "d.tif,0,,p1,s,train"]
    cohort = load_manifest(_write(tmp_path, rows, header="slide,her2,ish,patient,site,split"))
    parts = fixed_splits(cohort)
    assert list(parts["train"]) == [0, 3]
    assert list(parts["val"]) == [1]
    assert list(parts["test"]) == [2]


def _cohort(tmp_path: Path, n: int = 40):
    rng = np.random.default_rng(1)
    scores = ["0", "1+", "2+", "3+"]
    rows = [f"s{i}.tif,{scores[i % 4]},neg,p{i // 2},site{i % 3}" for i in range(n)]  # 2 slides a patient
    rng.shuffle(rows)
    return load_manifest(_write(tmp_path, rows), "her2-4way")


def test_kfold_is_patient_grouped_stratified_and_seeded(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path)
    folds = kfold_splits(cohort, 4, seed=3)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested) == list(range(len(cohort)))  # every slide tested exactly once
    for train, test in folds:
        assert not set(cohort.groups[train]) & set(cohort.groups[test])
        assert len(set(cohort.y[test])) >= 3  # stratified: classes spread over folds
    again = kfold_splits(cohort, 4, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    other = kfold_splits(cohort, 4, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_holdout_and_bad_fold_counts(tmp_path: Path) -> None:
    cohort = _cohort(tmp_path)
    train, test = holdout_split(cohort, 0.25, seed=0)
    assert 6 <= len(test) <= 14
    assert not set(cohort.groups[train]) & set(cohort.groups[test])
    with pytest.raises(ManifestError, match="folds need"):
        kfold_splits(cohort, 50)
    with pytest.raises(ManifestError, match="unknown task"):
        get_task("her2-5way")
