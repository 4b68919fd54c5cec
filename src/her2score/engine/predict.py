"""Predict slides with a saved model: class probabilities per slide, optional heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from her2score.data.lowres import Failure


def predict_slides(
    model_path: str | Path,
    slides: list[str | Path],
    out_csv: str | Path,
    heatmap_dir: str | Path | None = None,
    device: str = "auto",
    mpp: float | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = False,
    backend: str = "torch",
    scheduler: str | None = None,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``out_csv``: ``slide, predicted, prob_<class>..., status``; unreadable slides get their cause.

    ``backend``: ``torch`` for a ``model.safetensors``, ``onnxruntime`` for an ONNX file written by
    :func:`her2score.export.onnx.export_onnx`.

    Folders among ``slides`` are expanded to the slide and image files in them, by content. Two runs
    writing the same ``out_csv`` do not overlap: the second is refused (:func:`her2score.io.output_lock`).

    ``scheduler``: the address of a Dask distributed scheduler (``tcp://host:port``); the slides are then
    predicted on its workers, :data:`DASK_CHUNK` per task, and this process journals the rows as they
    come back (:mod:`her2score.cluster`): the same journal, CSV and failures as a local run.
    """
    from her2score.io import output_lock

    out_csv = Path(out_csv)
    with output_lock(out_csv.parent, name=f".{out_csv.name}.lock"):  # two runs writing one CSV
        return _predict_locked(
            model_path,
            slides,
            out_csv,
            heatmap_dir,
            device,
            mpp,
            cache_dir,
            workers,
            quiet,
            backend,
            scheduler,
        )


#: Slides prepared and predicted per step; the journal grows by this much at a time.
CHUNK = 32
#: Slides per task on a Dask cluster: small, so that the workers share the load and a lost task costs little.
DASK_CHUNK = 4


def _predict_locked(
    model_path: str | Path,
    slides: list[str | Path],
    out_csv: Path,
    heatmap_dir: str | Path | None,
    device: str,
    mpp: float | None,
    cache_dir: str | Path | None,
    workers: int,
    quiet: bool,
    backend: str,
    scheduler: str | None = None,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Predict in chunks, journalling each slide's row (keyed by the slide's content and the model's)
    in ``<out>.jsonl`` as it is done, so that a killed or repeated run does only what is left."""
    from her2score.data.lowres import content_hash
    from her2score.engine.predictor import Predictor
    from her2score.io import write_csv
    from her2score.slide.discover import expand_inputs

    predictor, meta = Predictor.from_checkpoint(model_path, device, backend)
    model_key = f"{content_hash(model_path)}:{backend}"
    files = expand_inputs(slides)
    journal_path = out_csv.with_suffix(".jsonl")
    done = _read_journal(journal_path, model_key)
    keys = {str(f): _slide_key(f, mpp) for f in files}
    todo = [f for f in files if done.get(str(f), {}).get("key") != keys[str(f)] or keys[str(f)] is None]
    kept = {str(f): done[str(f)] for f in files if str(f) in done and f not in todo}
    with _Journal(journal_path, list(kept.values())) as journal:
        if scheduler is None:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                for record in score_chunk(
                    predictor, meta, chunk, mpp, cache_dir, workers, quiet, heatmap_dir
                ):
                    journal.add({**record, "key": keys[record["slide"]], "model_key": model_key})
        elif todo:  # nothing left to do needs no cluster
            settings = (str(model_path), device, backend, mpp, cache_dir, heatmap_dir)
            _predict_on_cluster(scheduler, todo, settings, journal, keys, model_key, quiet)
        records = journal.records
    order = {str(f): i for i, f in enumerate(files)}
    by_slide = {r["slide"]: r for r in records if r["slide"] in order}
    frame = pd.DataFrame([by_slide[str(f)] for f in files if str(f) in by_slide])
    if frame.empty:
        frame = pd.DataFrame(
            columns=["slide", "predicted", *[f"prob_{c}" for c in meta["classes"]], "status"]
        )
    frame = frame.drop(columns=[c for c in ("key", "model_key") if c in frame.columns])
    columns = ["slide", "predicted", *[f"prob_{c}" for c in meta["classes"]], "status"]
    frame = frame.reindex(columns=columns)
    write_csv(out_csv, frame, float_format="%.6f")
    failures = [
        Failure(r["slide"], str(r["status"])[len("skipped: ") :])
        for r in frame.to_dict("records")
        if str(r["status"]).startswith("skipped")
    ]
    failures_csv = out_csv.with_name(f"{out_csv.stem}.failures.csv")
    if failures:
        write_csv(failures_csv, pd.DataFrame([f.__dict__ for f in failures]))
    elif failures_csv.exists():
        failures_csv.unlink()  # an earlier run's failures, all fixed now
    return frame, failures


def score_chunk(
    predictor: Any,
    meta: dict[str, Any],
    chunk: list[Path],
    mpp: float | None,
    cache_dir: str | Path | None,
    workers: int = 0,
    quiet: bool = True,
    heatmap_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Read and predict ``chunk``: a row per slide (``slide, predicted, prob_<class>..., status``), an
    unreadable slide's row with status ``skipped: <cause>``; Grad-CAM overlays into ``heatmap_dir``."""
    from her2score.engine.predictor import prediction_frame
    from her2score.paths import cache_dir as default_cache

    rows = [{"slide": str(f), "mpp": mpp} for f in chunk]
    prepared = predictor.kind.prepare(rows, cache_dir or default_cache("lowres"), workers, quiet)
    names = [str(chunk[i]) for i in prepared.positions]
    frame = prediction_frame(names, predictor.predict(prepared), meta["classes"])
    expected = meta.get("input_stain", "ihc")
    frame["status"] = [stain_status(predictor.kind.picture(prepared, i), expected) for i in range(len(names))]
    records = frame.to_dict("records")
    records += [{"slide": f.slide, "status": f"skipped: {f.cause}"} for f in prepared.failures]
    if heatmap_dir is not None and names:
        predictor.heatmaps(prepared, names, heatmap_dir, classes=meta["classes"])
    return records


def _predict_on_cluster(
    scheduler: str,
    todo: list[Path],
    settings: tuple[Any, ...],
    journal: _Journal,
    keys: dict[str, str | None],
    model_key: str,
    quiet: bool,
) -> None:
    """:func:`score_chunk` on the workers of a Dask cluster, :data:`DASK_CHUNK` slides a task; each
    finished task's rows are journalled here as they arrive. A task that fails as a whole (its worker
    died, or an unexpected error) lists its slides as skipped with the cause, unkeyed: a re-run retries
    them."""
    from her2score.cluster import dask_client, map_as_completed
    from her2score.progress import progress_bar

    chunks = [todo[i : i + DASK_CHUNK] for i in range(0, len(todo), DASK_CHUNK)]
    with dask_client(scheduler) as client, progress_bar(quiet) as bar:
        task = bar.add_task(f"predict on {scheduler}", total=len(todo))
        for position, records, error in map_as_completed(client, _score_on_worker, chunks, *settings):
            if error is not None:
                cause = f"skipped: task failed on the cluster ({type(error).__name__}: {error})"
                records = [{"slide": str(f), "status": cause, "no_key": True} for f in chunks[position]]
            for record in records:
                key = None if record.pop("no_key", False) else keys[record["slide"]]
                journal.add({**record, "key": key, "model_key": model_key})
            bar.advance(task, len(chunks[position]))


#: Models a Dask worker process has loaded, by (path, device, backend): loaded once, used for every task.
_WORKER_MODELS: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}


def _score_on_worker(
    chunk: list[Path],
    model_path: str,
    device: str,
    backend: str,
    mpp: float | None,
    cache_dir: str | Path | None,
    heatmap_dir: str | Path | None,
) -> list[dict[str, Any]]:
    """One Dask task: :func:`score_chunk` with the worker's copy of the model (rows only; writes no rows)."""
    from her2score.engine.predictor import Predictor

    loaded = _WORKER_MODELS.get((model_path, device, backend))
    if loaded is None:
        loaded = _WORKER_MODELS[(model_path, device, backend)] = Predictor.from_checkpoint(
            model_path, device, backend
        )
    predictor, meta = loaded
    return score_chunk(predictor, meta, chunk, mpp, cache_dir, heatmap_dir=heatmap_dir)


def _slide_key(path: Path, mpp: float | None) -> str | None:
    """The slide's content (size, modification time, sampled bytes) and the µm/px it was read with."""
    from her2score.data.lowres import content_hash

    try:
        st = path.stat()
        if not path.is_file():
            return None
        return f"{content_hash(path)}:{st.st_size}:{st.st_mtime_ns}:{mpp}"
    except OSError:
        return None  # missing or unreadable: never taken from the journal, always tried (and reported)


def _read_journal(path: Path, model_key: str) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run with the same model, by slide; a torn last line (a kill) is ignored."""
    import json

    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("model_key") == model_key and "slide" in row:
            out[row["slide"]] = row
    return out


class _Journal:
    """Append-only JSON lines, flushed to disk per chunk; rewritten whole (atomically) at the start with
    the rows kept from an earlier run, so rows of another model or of slides no longer asked for go."""

    def __init__(self, path: Path, kept: list[dict[str, Any]]) -> None:
        self.path, self.records = path, list(kept)

    def __enter__(self) -> _Journal:
        from her2score.io import write_text

        write_text(self.path, "".join(_json_line(r) for r in self.records))
        self.fh = self.path.open("a", encoding="utf-8")
        return self

    def add(self, record: dict[str, Any]) -> None:
        import os

        self.records.append(record)
        self.fh.write(_json_line(record))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _json_line(record: dict[str, Any]) -> str:
    import json

    from her2score.io import to_json_safe

    return json.dumps(to_json_safe(record), allow_nan=False) + "\n"


def stain_status(picture: Any, expected: str = "ihc") -> str:
    """``ok``, or a warning when an input picture (H, W, 3 uint8) does not carry the stain the model
    reads (``ihc`` or ``he``): its answer would be void. Inputs without a picture (feature bags): ``ok``."""
    if picture is None:
        return "ok"
    from her2score.slide.tissue import tissue_mask
    from her2score.stain.detect import looks_like_he

    mask = tissue_mask(picture)
    if not mask.any():
        return "ok"
    he = looks_like_he(picture, mask)
    if expected == "ihc" and he:
        return "warning: looks like H&E, not IHC; this prediction is meaningless"
    if expected == "he" and not he:
        return "warning: does not look like H&E (an IHC image?); this model reads H&E"
    return "ok"
