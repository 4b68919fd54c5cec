"""Score a batch of images and slides: one row each in ``results.csv``, failures included.

Used by ``her2score quantify`` and from Python::

    from her2score.quantify import quantify_batch
    result = quantify_batch(["slides/"], "out/", mpp=0.5)
    result.frame  # one row per input; result.failed: the inputs that could not be scored
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from her2score.quantify.pipeline import quantify_file, worker_pool
from her2score.quantify.thresholds import Thresholds, load_thresholds

#: Leading columns of results.csv; the per-class counts and percentages follow.
RESULT_COLUMNS = (
    "image",
    "status",
    "error",
    "category",
    "her2_0_subtype",
    "her2_3way",
    "h_score",
    "her2_index",
)
_TEXT_COLUMNS = ("error", "category", "her2_0_subtype", "her2_3way")


@dataclass
class BatchResult:
    """What :func:`quantify_batch` scored and wrote."""

    frame: Any  #: pandas DataFrame, one row per input (RESULT_COLUMNS first), in input order
    results_path: Path
    thresholds_path: Path
    thresholds: Thresholds

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(input, cause)`` of each input that could not be scored."""
        bad = self.frame[self.frame["status"] != "ok"]
        return list(zip(bad["image"].astype(str), bad["error"].astype(str), strict=True))

    @property
    def ok(self) -> Any:
        """The rows of the inputs that were scored."""
        return self.frame[self.frame["status"] == "ok"]


def quantify_batch(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    thresholds: Thresholds | str | Path | None = None,
    mpp: float | None = None,
    workers: int = 0,
    quiet: bool = True,
    stains: str = "auto",
) -> BatchResult:
    """Score each image or slide of ``inputs`` (files, or folders: the slides and images in them, by
    content) and write ``results.csv``, ``thresholds.json`` and per input ``<stem>.cells.parquet`` and
    ``<stem>.overlay.png`` into ``out_dir``; stems stay unique when two inputs share a file name.

    ``thresholds``: a :class:`Thresholds`, a JSON file (e.g. from ``calibrate``) or None (defaults).
    ``workers`` > 0: several files are scored one per worker process; a single slide's tiles over
    ``workers`` processes. A broken input does not stop the batch: its row has status ``failed`` and
    the cause. ``quiet=False`` draws progress bars on stderr. Workers start by ``forkserver``: a script
    that calls this with ``workers`` > 0 needs the ``if __name__ == "__main__":`` guard.
    """
    from her2score.errors import ConfigError
    from her2score.io import write_csv, write_json
    from her2score.slide.discover import expand_inputs

    t = load_thresholds(thresholds)
    if stains not in ("auto", "default"):
        raise ConfigError(f"stain vectors must be auto or default (got {stains!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = (
        str(thresholds)
        if isinstance(thresholds, str | Path)
        else "defaults"
        if thresholds is None
        else "given"
    )
    thresholds_path = write_json(out / "thresholds.json", {"thresholds": t.to_dict(), "source": source})
    paths = expand_inputs(inputs)
    rows = _score_all(paths, out, mpp, t, stains, workers, quiet)
    frame = results_frame(rows)
    results_path = write_csv(out / "results.csv", frame)
    return BatchResult(frame, results_path, thresholds_path, t)


def _score_all(
    paths: list[Path], out: Path, mpp: float | None, t: Thresholds, stains: str, workers: int, quiet: bool
) -> list[dict[str, Any]]:
    from her2score.io import unique_stems
    from her2score.progress import progress_bar

    stems = unique_stems(paths)
    rows: list[dict[str, Any]] = []
    with progress_bar(quiet) as progress:
        task = progress.add_task("quantify", total=len(paths))
        if workers > 0 and len(paths) > 1:
            # Several files: one file per process (a slide's tiles then run in its process).
            with worker_pool(workers) as pool:
                futures = [
                    pool.submit(score_one, path, stem, out, mpp, t, stains)
                    for path, stem in zip(paths, stems, strict=True)
                ]
                for future in futures:
                    rows.append(future.result())
                    progress.advance(task)
        else:
            for path, stem in zip(paths, stems, strict=True):
                rows.append(score_one(path, stem, out, mpp, t, stains, workers, progress))
                progress.advance(task)
    return rows


def score_one(
    path: Path,
    stem: str,
    out: Path,
    mpp: float | None,
    t: Thresholds,
    stains: str = "auto",
    workers: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """One input's results row; a failure gives status ``failed`` and the cause instead of raising."""
    from her2score.errors import Her2ScoreError

    try:
        result = quantify_file(
            path, out, mpp, t, stains=stains, workers=workers, progress=progress, stem=stem
        )
        return result.row
    except Her2ScoreError as exc:
        return {"image": str(path), "status": "failed", "error": exc.cause}
    except Exception as exc:  # an unexpected bug must not sink the batch; it is reported per image
        return {"image": str(path), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def results_frame(rows: list[dict[str, Any]]) -> Any:
    """Rows as a DataFrame with :data:`RESULT_COLUMNS` first (present even when every input failed)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in frame:
            frame[col] = "" if col in _TEXT_COLUMNS else None
    rest = [c for c in frame.columns if c not in RESULT_COLUMNS]
    return frame[[*RESULT_COLUMNS, *rest]]
