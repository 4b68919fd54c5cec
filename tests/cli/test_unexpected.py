"""A bug or an unforeseen input still ends in one line, not a traceback (the traceback on request)."""

from __future__ import annotations

import pytest

import her2score.cli.info as info_module
from her2score.cli.main import main


def test_an_unexpected_exception_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(info_module, "open_slide", broken, raising=False)
    monkeypatch.setattr("her2score.slide.open_slide", broken)
    monkeypatch.delenv("HER2SCORE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["info", __file__])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "RuntimeError: something nobody foresaw second line" in err
    assert "HER2SCORE_DEBUG=1" in err
    monkeypatch.setenv("HER2SCORE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["info", __file__])
