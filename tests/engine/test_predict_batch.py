"""Batch prediction at scale: one row per slide, a broken slide listed (failures.csv) without stopping
the rest, a journal keyed by slide content and model so that a re-run does no work and a killed run
resumes where it stopped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from her2score.engine import predict as predict_module
from her2score.engine.predict import predict_slides


def _count_prepares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from her2score.data.inputs.lowres import LowResImages

    calls: list[int] = []
    original = LowResImages.prepare

    def counted(self, rows, *args, **kwargs):
        calls.append(len(rows))
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(LowResImages, "prepare", counted)
    return calls


def test_a_rerun_does_no_work_and_a_changed_slide_is_redone(
    model_and_slides: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = model_and_slides
    out = tmp_path / "preds.csv"
    frame, failures = predict_slides(model, [folder], out, quiet=True, cache_dir=tmp_path / "c")
    n = len(list(folder.glob("*.tiff")))
    assert len(frame) == n
    assert [Path(f.slide).name for f in failures] == ["case_005b.tiff"]
    assert list(pd.read_csv(out.with_name("preds.failures.csv"))["slide"].map(lambda s: Path(s).name)) == [
        "case_005b.tiff"
    ]
    calls = _count_prepares(monkeypatch)
    again, _ = predict_slides(model, [folder], out, quiet=True, cache_dir=tmp_path / "c")
    assert calls == []  # nothing read again, the broken slide included
    pd.testing.assert_frame_equal(again, frame)
    changed = sorted(folder.glob("case_00*.tiff"))[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    predict_slides(model, [folder], out, quiet=True, cache_dir=tmp_path / "c")
    assert calls == [1]


def test_a_killed_run_resumes_with_what_is_left(
    model_and_slides: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = model_and_slides
    out = tmp_path / "preds.csv"
    monkeypatch.setattr(predict_module, "CHUNK", 4)
    calls = _count_prepares(monkeypatch)
    from her2score.engine.predictor import Predictor

    original = Predictor.predict
    seen = {"n": 0}

    def dies_on_third(self, prepared, index=None):
        seen["n"] += 1
        if seen["n"] == 3:
            raise KeyboardInterrupt
        return original(self, prepared, index)

    monkeypatch.setattr(Predictor, "predict", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        predict_slides(model, [folder], out, quiet=True, cache_dir=tmp_path / "c")
    assert not out.exists()
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) >= 8  # two chunks journalled
    calls.clear()
    frame, _ = predict_slides(model, [folder], out, quiet=True, cache_dir=tmp_path / "c")
    n = len(list(folder.glob("*.tiff")))
    assert len(frame) == n
    assert sum(calls) == n - 8  # only what the killed run had not journalled


def test_several_models_in_one_pass_read_each_slide_once(
    model_and_slides: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = model_and_slides
    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    shutil.copy(model, other)  # the same input settings: one reading serves both
    alone, _ = predict_slides(model, [folder], tmp_path / "alone.csv", quiet=True, cache_dir=tmp_path / "c")
    calls = _count_prepares(monkeypatch)
    out = tmp_path / "both.csv"
    frame, failures = predict_slides([model, other], [folder], out, quiet=True, cache_dir=tmp_path / "c")
    n = len(list(folder.glob("*.tiff")))
    assert calls == [n]  # one chunk, read once for the two models
    label = model.parent.name
    assert list(frame.columns[:4]) == ["slide", "status", f"{label}_predicted", f"{label}_prob_0"]
    assert "other_prob_high" in frame.columns
    assert len(frame) == n
    assert [Path(f.slide).name for f in failures] == ["case_005b.tiff"]
    for prefix in (label, "other"):
        assert list(frame[f"{prefix}_predicted"].fillna("")) == list(alone["predicted"].fillna(""))
        assert (frame[f"{prefix}_prob_high"].fillna(-1) - alone["prob_high"].fillna(-1)).abs().max() < 1e-6
    calls.clear()
    again, _ = predict_slides([model, other], [folder], out, quiet=True, cache_dir=tmp_path / "c")
    assert calls == []
    pd.testing.assert_frame_equal(again, frame)


def test_quantify_adds_the_quantifier_figures_per_slide(
    model_and_slides: tuple[Path, Path], tmp_path: Path
) -> None:
    from PIL import Image

    from her2score.data.synth.patches import render_ihc_patch

    model, _ = model_and_slides
    few = tmp_path / "few"
    few.mkdir()
    for name, category in (("a.png", "3+"), ("c.png", "0")):
        Image.fromarray(render_ihc_patch(category, size=(256, 256), mpp=0.5)[0]).save(few / name)
    (few / "b.png").write_bytes((few / "a.png").read_bytes()[:200])  # cut short
    out = tmp_path / "q.csv"
    frame, failures = predict_slides(
        model, [few], out, quiet=True, cache_dir=tmp_path / "c", quantify=True, mpp=0.5
    )
    assert list(frame["slide"].map(lambda s: Path(s).name)) == ["a.png", "b.png", "c.png"]
    assert {"predicted", "prob_high", "quantify_category", "quantify_h_score"} <= set(frame.columns)
    assert frame.columns.is_unique
    assert list(frame["quantify_status"]) == ["ok", "failed", "ok"]
    assert list(frame["quantify_category"].fillna("")) == ["3+", "", "0"]
    assert [Path(f.slide).name for f in failures] == ["b.png"]
    overlays = sorted(p.name for p in out.with_name("q.quantify").glob("*.overlay.png"))
    assert overlays == ["a.overlay.png", "c.overlay.png"]


def test_reading_runs_one_chunk_ahead_of_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next chunk is read in the background while this one is scored (reading overlaps compute)."""
    import time

    events: list[tuple[str, str]] = []

    def fake_prepare(models, settings, chunk, workers=0, quiet=True):  # type: ignore[no-untyped-def]
        events.append(("read", chunk[0].name))
        time.sleep(0.05)
        return {"first": chunk[0].name}

    monkeypatch.setattr(predict_module, "prepare_chunk", fake_prepare)
    monkeypatch.setattr(predict_module, "CHUNK", 2)
    todo = [Path(f"s{i}") for i in range(5)]
    seen = []
    for chunk, shared in predict_module._read_ahead([], None, todo, 0):  # type: ignore[arg-type]
        assert shared == {"first": chunk[0].name}
        seen.append([p.name for p in chunk])
        events.append(("score-start", chunk[0].name))
        time.sleep(0.3)
        events.append(("score-end", chunk[0].name))
    assert seen == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert [e for e in events if e[0] == "read"] == [("read", "s0"), ("read", "s2"), ("read", "s4")]
    assert events.index(("read", "s2")) < events.index(("score-end", "s0"))  # read while s0 was scored
    assert events.index(("read", "s4")) < events.index(("score-end", "s2"))
