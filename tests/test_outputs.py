"""What the commands write, as a user finds it: readable by group and others under umask 022, strict
JSON, and ``predict`` on a synthetic cohort's folder (sidecars beside the slides) gives one row per slide."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from her2score.cli.main import main


def _run(args: list[str]) -> None:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    assert code == 0, args


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _strict(token: str) -> float:
    raise AssertionError(f"not strict JSON: {token}")


@pytest.mark.slow
@pytest.mark.usefixtures("umask_022")
def test_outputs_of_synth_train_predict_and_quantify_are_shared_and_strict(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    _run(["synth", "--out", str(cohort), "--n", "8", "--size-mm", "1.2x1.0", "--mpp", "0.5", "--quiet"])
    config = tmp_path / "fast.yaml"
    config.write_text("epochs: 1\ninput_size: 64\nbatch_size: 4\nn_boot: 10\nbackbone: convnext_atto\n")
    run = tmp_path / "run"
    _run(["train", "--manifest", str(cohort / "manifest.csv"), "--out", str(run), "--config", str(config),
          "--device", "cpu", "--quiet"])  # fmt: skip
    slides = cohort / "slides" if (cohort / "slides").is_dir() else cohort
    preds = tmp_path / "preds.csv"
    _run(["predict", "--model", str(run / "model.safetensors"), str(slides), "--out", str(preds),
          "--heatmaps", str(tmp_path / "heat"), "--device", "cpu", "--quiet"])  # fmt: skip
    manifest = pd.read_csv(cohort / "manifest.csv")
    frame = pd.read_csv(preds)
    assert len(frame) == len(manifest)  # one row per slide: the folder's sidecar files are not slides
    assert set(frame["status"]) == {"ok"}
    quantified = tmp_path / "quant"
    first = sorted(slides.glob("*.tif*"))[0]
    _run(["quantify", str(first), "--out", str(quantified), "--quiet"])

    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "fast.yaml"]
    assert len(written) > 20
    private = [str(p.relative_to(tmp_path)) for p in written if not p.stat().st_mode & stat.S_IROTH]
    assert not private, private
    for path in (p for p in written if p.suffix == ".json"):
        json.loads(path.read_text(), parse_constant=_strict)
    assert not [p for p in written if ".part" in p.name]
