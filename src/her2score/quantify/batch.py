"""Score a batch of images and slides: one row each in ``results.csv``, failures included.

Used by ``her2score quantify`` and from Python::

    from her2score.quantify import quantify_batch
    result = quantify_batch(["slides/"], "out/", mpp=0.5)
    result.frame  # one row per input; result.failed: the inputs that could not be scored
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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
    "scorable",
    "reason",
    "her2_0_subtype",
    "her2_3way",
    "h_score",
    "her2_index",
)
_TEXT_COLUMNS = ("error", "category", "reason", "her2_0_subtype", "her2_3way")


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
        """The rows of the inputs read and measured (``scorable``: whether they got a category)."""
        return self.frame[self.frame["status"] == "ok"]


def quantify_batch(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    thresholds: Thresholds | str | Path | None = None,
    mpp: float | None = None,
    workers: int = 0,
    quiet: bool = True,
    stains: str = "auto",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    marker: str = "her2",
    nuclear_thresholds: Any = None,
    scheduler: str | None = None,
    rules: str | None = None,
) -> BatchResult:
    """Score each image or slide of ``inputs`` (files, or folders: the slides and images in them, by
    content) and write ``results.csv``, ``thresholds.json`` and per input ``<stem>.cells.parquet`` and
    ``<stem>.overlay.png`` into ``out_dir``; stems stay unique when two inputs share a file name.

    ``thresholds``: a :class:`Thresholds`, a JSON file (e.g. from ``calibrate``) or None (defaults).
    ``workers`` > 0: several files are scored one per worker process; a single slide's tiles over
    ``workers`` processes. A broken input does not stop the batch: its row has status ``failed`` and
    the cause. ``quiet=False`` draws progress bars on stderr. Workers start by ``forkserver``: a script
    that calls this with ``workers`` > 0 needs the ``if __name__ == "__main__":`` guard.

    The run holds ``out_dir`` (:func:`her2score.io.output_lock`: a second run into it is refused);
    first it removes the files an earlier run recorded there (``.her2score-outputs.json``), so that old
    overlays never mix with new results. ``results.csv`` is rewritten atomically as images finish
    (every :data:`FLUSH_EVERY` images or :data:`FLUSH_SECONDS` s, and at the end); an interruption
    (Ctrl-C, SIGTERM raised as ``KeyboardInterrupt``) writes every finished row and raises
    :class:`BatchInterrupted`. ``on_row`` is called with each finished row.

    ``marker``: ``her2`` (membrane scoring, the default) or a nuclear marker, ``er``, ``pr`` or
    ``ki67`` (:mod:`her2score.quantify.nuclear`: per-nucleus intensity, ``pct_positive``, H-score,
    Allred, ER/PR status, Ki-67 index; ``nuclear_thresholds`` a
    :class:`~her2score.quantify.nuclear.NuclearThresholds` or None for its defaults). results.csv then
    starts with :data:`~her2score.quantify.nuclear.NUCLEAR_RESULT_COLUMNS`, and ``thresholds.json``
    holds the nuclear thresholds too.

    ``rules``: the HER2 rulebook, ``breast`` (ASCO/CAP 2018) or ``gastric`` (Hofmann 2008 /
    ASCO/CAP/ASCP 2016; :mod:`her2score.rules`); it replaces ``thresholds.her2_rules`` (None: keep that,
    ``breast`` by default). Each row records it in ``her2_rules``, ``thresholds.json`` in its thresholds.

    ``scheduler``: the address of a Dask distributed scheduler (``tcp://host:port``): each input is then
    scored on one of its workers (:mod:`her2score.cluster`; they write its cells and overlay into
    ``out_dir``, which they must see at the same path), and this process writes ``results.csv`` as the
    rows come back, in input order at the end.
    """
    from her2score.errors import ConfigError
    from her2score.io import output_lock, record_outputs, remove_recorded_outputs, unique_stems, write_json
    from her2score.quantify.nuclear import NuclearThresholds, check_marker
    from her2score.slide.discover import expand_inputs

    t = load_thresholds(thresholds)
    if rules is not None:
        from dataclasses import replace

        from her2score.rules import check_her2_rules

        t = replace(t, her2_rules=check_her2_rules(rules))
    marker = check_marker(marker)
    nt = nuclear_thresholds or NuclearThresholds()
    if stains not in ("auto", "default"):
        raise ConfigError(f"stain vectors must be auto or default (got {stains!r})")
    out = Path(out_dir)
    source = (
        str(thresholds)
        if isinstance(thresholds, str | Path)
        else "defaults"
        if thresholds is None
        else "given"
    )
    with output_lock(out):
        paths = expand_inputs(inputs)
        stems = unique_stems(paths)
        # an input that lies in the output folder is never removed, even if a run once wrote it
        inputs_here = [p.name for p in paths if p.parent.absolute() == out.absolute()]
        remove_recorded_outputs(out, keep=inputs_here)
        planned = ["results.csv", "thresholds.json"]
        planned += [f"{stem}{suffix}" for stem in stems for suffix in OUTPUT_SUFFIXES]
        record_outputs(out, planned, "quantify")
        saved: dict[str, Any] = {"thresholds": t.to_dict(), "source": source}
        if marker != "her2":
            saved |= {"marker": marker, "nuclear_thresholds": nt.to_dict()}
        thresholds_path = write_json(out / "thresholds.json", saved)
        results = _ResultsFile(out / "results.csv", len(paths), on_row, marker)
        results.flush()  # a results.csv (header only) from the start: never one from an earlier run
        try:
            if scheduler is None:
                _score_all(paths, stems, out, mpp, t, stains, workers, quiet, results.add, marker, nt)
            else:
                _score_on_cluster(scheduler, paths, stems, out, mpp, t, stains, quiet, results, marker, nt)
        except KeyboardInterrupt:
            results.flush()
            raise BatchInterrupted(len(results.rows), len(paths), results.path) from None
        results.flush()
    return BatchResult(results.frame(), results.path, thresholds_path, t)


#: The files written per input, after its stem (regions: only for images scored in tiles).
OUTPUT_SUFFIXES = (".cells.parquet", ".overlay.png", ".regions.csv", ".regions.png")
#: results.csv is rewritten after this many finished images, or this many seconds, whichever first.
FLUSH_EVERY = 10
FLUSH_SECONDS = 5.0


class BatchInterrupted(KeyboardInterrupt):
    """A batch stopped by Ctrl-C or SIGTERM; ``results.csv`` holds the rows of the finished images."""

    def __init__(self, done: int, total: int, results_path: Path) -> None:
        self.done, self.total, self.results_path = done, total, results_path
        super().__init__(
            f"interrupted after {done}/{total} images; {results_path.name} holds the {done} finished"
        )


class _ResultsFile:
    """The rows finished so far, rewritten atomically to ``results.csv`` now and then."""

    def __init__(
        self, path: Path, total: int, on_row: Callable[[dict[str, Any]], None] | None, marker: str = "her2"
    ) -> None:
        self.path, self.total, self.on_row, self.marker = path, total, on_row, marker
        self.rows: list[dict[str, Any]] = []
        self.written, self.last = 0, time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        if len(self.rows) - self.written >= FLUSH_EVERY or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def frame(self) -> Any:
        return results_frame(self.rows, self.marker)

    def flush(self) -> None:
        from her2score.io import write_csv

        write_csv(self.path, self.frame())
        self.written, self.last = len(self.rows), time.monotonic()


def _score_all(
    paths: list[Path],
    stems: list[str],
    out: Path,
    mpp: float | None,
    t: Thresholds,
    stains: str,
    workers: int,
    quiet: bool,
    add: Callable[[dict[str, Any]], None],
    marker: str = "her2",
    nuclear_thresholds: Any = None,
) -> None:
    from her2score.progress import progress_bar

    with progress_bar(quiet) as progress:
        task = progress.add_task("quantify", total=len(paths))
        if workers > 0 and len(paths) > 1:
            # Several files: one file per process (a slide's tiles then run in its process).
            pool = worker_pool(workers)
            futures = [
                pool.submit(score_one, path, stem, out, mpp, t, stains, 0, None, marker, nuclear_thresholds)
                for path, stem in zip(paths, stems, strict=True)
            ]
            try:
                for future in futures:
                    add(future.result())
                    progress.advance(task)
            except BaseException:
                # let the images in progress finish (a killed worker would leave temporary files),
                # start no more
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown()
        else:
            for path, stem in zip(paths, stems, strict=True):
                add(score_one(path, stem, out, mpp, t, stains, workers, progress, marker, nuclear_thresholds))
                progress.advance(task)


def _score_on_cluster(
    scheduler: str,
    paths: list[Path],
    stems: list[str],
    out: Path,
    mpp: float | None,
    t: Thresholds,
    stains: str,
    quiet: bool,
    results: _ResultsFile,
    marker: str,
    nuclear_thresholds: Any,
) -> None:
    """:func:`score_one` per input on the workers of a Dask cluster; rows kept as they finish, then put
    back in input order. A task lost with its worker gives that input a ``failed`` row with the cause."""
    from her2score.cluster import dask_client, map_as_completed
    from her2score.progress import progress_bar

    units = list(zip(paths, stems, strict=True))
    with dask_client(scheduler) as client, progress_bar(quiet) as progress:
        task = progress.add_task(f"quantify on {scheduler}", total=len(paths))
        settings = (out, mpp, t, stains, marker, nuclear_thresholds)
        for position, row, error in map_as_completed(client, _score_unit, units, *settings):
            if error is not None:
                cause = f"task failed on the cluster ({type(error).__name__}: {error})"
                row = {"image": str(paths[position]), "status": "failed", "category": "", "scorable": False,
                       "error": cause, "reason": "failed"}  # fmt: skip
            results.add(row)
            progress.advance(task)
    order = {str(p): i for i, p in enumerate(paths)}
    results.rows.sort(key=lambda r: order.get(str(r.get("image")), len(order)))


def _score_unit(
    unit: tuple[Path, str],
    out: Path,
    mpp: float | None,
    t: Thresholds,
    stains: str,
    marker: str,
    nuclear_thresholds: Any,
) -> dict[str, Any]:
    """One Dask task: an input's results row (its cells and overlay written into ``out``)."""
    path, stem = unit
    return score_one(path, stem, out, mpp, t, stains, 0, None, marker, nuclear_thresholds)


def score_one(
    path: Path,
    stem: str,
    out: Path,
    mpp: float | None,
    t: Thresholds,
    stains: str = "auto",
    workers: int = 0,
    progress: Any = None,
    marker: str = "her2",
    nuclear_thresholds: Any = None,
) -> dict[str, Any]:
    """One input's results row; a failure gives status ``failed`` and the cause instead of raising.

    Every row says whether the input could be scored (``scorable``) and, when not, why (``reason``):
    no tissue, no or too few tumour cells (category ``not scorable``), or a failure.
    """
    from her2score.errors import Her2ScoreError, NoTissueError

    failed = {"status": "failed", "category": "", "scorable": False}
    if marker != "her2":
        failed["marker"] = marker
        nuclear = {"marker": marker, "nuclear_thresholds": nuclear_thresholds}
    else:
        nuclear = {}  # the HER2 call stays exactly as it was
    try:
        result = quantify_file(
            path, out, mpp, t, stains=stains, workers=workers, progress=progress, stem=stem, **nuclear
        )
        return result.row
    except NoTissueError as exc:
        return {"image": str(path), **failed, "error": exc.cause, "reason": "no tissue"}
    except Her2ScoreError as exc:
        return {"image": str(path), **failed, "error": exc.cause, "reason": "failed"}
    except Exception as exc:  # an unexpected bug must not sink the batch; it is reported per image
        return {"image": str(path), **failed, "error": f"{type(exc).__name__}: {exc}", "reason": "failed"}


def results_frame(rows: list[dict[str, Any]], marker: str = "her2") -> Any:
    """Rows as a DataFrame with :data:`RESULT_COLUMNS` first (nuclear markers:
    :data:`~her2score.quantify.nuclear.NUCLEAR_RESULT_COLUMNS`), present even when every input failed."""
    import pandas as pd

    columns, text = RESULT_COLUMNS, _TEXT_COLUMNS
    if marker != "her2":
        from her2score.quantify.nuclear import NUCLEAR_RESULT_COLUMNS

        columns, text = NUCLEAR_RESULT_COLUMNS, ("error", "marker", "category", "reason", "receptor_status")
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = "" if col in text else None
    rest = [c for c in frame.columns if c not in columns]
    return frame[[*columns, *rest]]
