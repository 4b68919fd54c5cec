"""Runs that survive interruption and overlap: output-folder locks, results.csv kept on Ctrl-C and
SIGTERM, no outputs of an earlier run mixed with a new one's, no partial files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from her2score.errors import ConfigError
from her2score.io import LOCK_NAME, OUTPUTS_NAME, output_lock, write_png
from her2score.quantify import batch
from her2score.quantify.batch import BatchInterrupted, quantify_batch

SRC = str(Path(__file__).parents[1] / "src")
HOLD = """
import sys, time
from her2score.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".part" in p.name or p.name.endswith(".lock"))


# ------------------------------------------------------------------------------------------ locks
def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_holder_s_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    proc = _hold(tmp_path / "out")
    try:
        busy = rf"another her2score run is writing here \(pid {proc.pid}\)"
        with pytest.raises(ConfigError, match=busy), output_lock(tmp_path / "out"):
            pass
    finally:
        proc.kill()  # dies without cleaning up: its lock file stays, with its pid
        proc.wait(timeout=30)
    assert (tmp_path / "out" / LOCK_NAME).is_file()
    with output_lock(tmp_path / "out"), output_lock(tmp_path / "out"):  # taken over; nesting is fine
        pass
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released and removed


def test_a_lock_on_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"), output_lock(tmp_path / "file"):
        pass


def test_quantify_into_a_folder_another_run_holds_is_refused_at_once(tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png", _tiny_rgb())
    proc = _hold(tmp_path / "out")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "her2score", "quantify", str(image), "--out", str(tmp_path / "out"), "-q"],
            capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert done.returncode == 2
    assert "another her2score run is writing here" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.csv").exists()


# ------------------------------------------------------------------------------------------ quantify
def _tiny_rgb():
    import numpy as np

    return np.full((16, 16, 3), 240, dtype=np.uint8)


def _fake_score(written: list[str] | None = None, stop_at: int | None = None):
    """A stand-in for the per-image scorer: writes an overlay, returns a row; Ctrl-C at image ``stop_at``."""
    calls = {"n": 0}

    def score_one(path, stem, out, *args, **kwargs):
        calls["n"] += 1
        if stop_at is not None and calls["n"] == stop_at:
            raise KeyboardInterrupt
        write_png(Path(out) / f"{stem}.overlay.png", _tiny_rgb())
        if written is not None:
            written.append(stem)
        return {"image": str(path), "status": "ok", "error": "", "category": "1+", "scorable": True}

    return score_one


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return [write_png(tmp_path / "in" / f"img{i}.png", _tiny_rgb()) for i in range(5)]


def test_ctrl_c_keeps_every_finished_image_in_results_csv(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "score_one", _fake_score(stop_at=4))
    out = tmp_path / "out"
    with pytest.raises(BatchInterrupted) as info:
        quantify_batch(images, out)
    assert (info.value.done, info.value.total) == (3, 5)
    assert str(info.value) == "interrupted after 3/5 images; results.csv holds the 3 finished"
    frame = pd.read_csv(out / "results.csv")
    assert [Path(p).name for p in frame["image"]] == ["img0.png", "img1.png", "img2.png"]
    assert _leftovers(out) == []


def test_a_rerun_removes_the_outputs_the_earlier_run_wrote_and_nothing_else(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "score_one", _fake_score())
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.overlay.png").write_bytes(b"the user's own file")
    quantify_batch(images, out)
    assert (out / "img4.overlay.png").is_file()
    assert (out / OUTPUTS_NAME).is_file()
    quantify_batch(images[:2], out)
    assert sorted(p.name for p in out.glob("*.overlay.png")) == [
        "img0.overlay.png", "img1.overlay.png", "mine.overlay.png",
    ]  # fmt: skip
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_an_interrupted_rerun_lists_only_its_own_images(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(batch, "score_one", _fake_score())
    quantify_batch(images, out)
    monkeypatch.setattr(batch, "score_one", _fake_score(stop_at=2))
    with pytest.raises(BatchInterrupted):
        quantify_batch(images, out)
    assert sorted(p.name for p in out.glob("*.overlay.png")) == ["img0.overlay.png"]
    assert len(pd.read_csv(out / "results.csv")) == 1


SLOW_QUANTIFY = """
import sys, time
from pathlib import Path
from her2score.quantify import batch
from her2score.cli.main import main

batch.FLUSH_EVERY = 1

def score_one(path, stem, out, *args, **kwargs):
    time.sleep(0.4)
    return {"image": str(path), "status": "ok", "error": "", "category": "0", "scorable": True}

batch.score_one = score_one
main(["quantify", *sys.argv[1:], "-q"])
"""


def test_sigterm_keeps_finished_images_says_how_far_it_got_and_exits_143(
    images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    many = images * 8  # 40 inputs, 0.4 s each
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_QUANTIFY, *map(str, many), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (out / "results.csv").is_file() and len(pd.read_csv(out / "results.csv")) >= 2:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    frame = pd.read_csv(out / "results.csv")
    assert 2 <= len(frame) < len(many)
    assert (
        f"interrupted after {len(frame)}/{len(many)} images; results.csv holds the {len(frame)} finished"
        in (stderr)
    )
    assert _leftovers(out) == []
