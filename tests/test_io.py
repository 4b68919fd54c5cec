"""Atomic outputs: permissions follow the umask, strict JSON, nothing half-written left behind."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from her2score.io import atomic_path, to_json_safe, write_json, write_png, write_text


@pytest.fixture
def umask() -> Iterator[callable]:
    """Set the process umask for one test; the old one is restored afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    assert _mode(write_text(tmp_path / "a.txt", "x")) == expected
    assert _mode(write_json(tmp_path / "a.json", {"a": 1})) == expected
    assert _mode(write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))) == expected


def test_nan_and_inf_are_written_as_null(tmp_path: Path) -> None:
    obj = {
        "auc": float("nan"),
        "ratio": math.inf,
        "neg": -math.inf,
        "np": np.float32("nan"),
        "arr": np.array([1.0, np.nan, np.inf]),
        "nested": [{"x": np.float64(0.5)}, (np.int64(3), np.bool_(True))],
        "path": Path("a/b"),
        "ok": 1.5,
    }
    path = write_json(tmp_path / "m.json", obj)

    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {
        "auc": None,
        "ratio": None,
        "neg": None,
        "np": None,
        "arr": [1.0, None, None],
        "nested": [{"x": 0.5}, [3, True]],
        "path": "a/b",
        "ok": 1.5,
    }


def test_numpy_keys_and_unknown_types() -> None:
    assert to_json_safe({np.int64(2): "x"}) == {2: "x"}
    with pytest.raises(TypeError, match="set"):
        to_json_safe({"a": {1, 2}})


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_unserialisable_json_leaves_the_old_file(tmp_path: Path) -> None:
    target = write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
