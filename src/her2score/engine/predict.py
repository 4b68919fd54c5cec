"""Predict slides with a saved model: class probabilities per slide, optional heatmaps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from her2score.data.lowres import Failure


def predict_slides(
    model_path: str | Path | Sequence[str | Path],
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
    quantify: bool = False,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``out_csv``: ``slide, predicted, prob_<class>..., status``; unreadable slides get their cause.

    ``backend``: ``torch`` for a ``model.safetensors``, ``onnxruntime`` for an ONNX file written by
    :func:`her2score.export.onnx.export_onnx`.

    Several models (a list for ``model_path``) give one row per slide with each model's columns prefixed
    by its label (:func:`model_labels`: ``<label>_predicted``, ``<label>_prob_<class>``,
    ``<label>_status``) after ``slide`` and an overall ``status``; models that read the same input
    (kind and settings) share one reading of each slide. ``quantify`` adds the ASCO/CAP membrane
    quantifier's figures (``quantify_category``, ``quantify_h_score``, ...; cells and overlays in
    ``<out stem>.quantify/``).

    Folders among ``slides`` are expanded to the slide and image files in them, by content. Two runs
    writing the same ``out_csv`` do not overlap: the second is refused (:func:`her2score.io.output_lock`).
    Each slide's row is journalled in ``<out>.jsonl`` as it is done, keyed by the slide's content and
    the models', so that a killed or repeated run does only what is left.

    ``scheduler``: the address of a Dask distributed scheduler (``tcp://host:port``); the slides are then
    predicted on its workers, :data:`DASK_CHUNK` per task, and this process journals the rows as they
    come back (:mod:`her2score.cluster`): the same journal, CSV and failures as a local run.
    """
    from her2score.io import output_lock

    out_csv = Path(out_csv)
    paths = [Path(model_path)] if isinstance(model_path, str | Path) else [Path(p) for p in model_path]
    settings = _Settings(tuple(str(p) for p in paths), device, backend, mpp, cache_dir, heatmap_dir, None)
    if quantify:
        settings.quantify_dir = str(out_csv.with_name(f"{out_csv.stem}.quantify"))
    with output_lock(out_csv.parent, name=f".{out_csv.name}.lock"):  # two runs writing one CSV
        return _predict_locked(settings, slides, out_csv, workers, quiet, scheduler)


#: Slides prepared and predicted per step; the journal grows by this much at a time.
CHUNK = 32
#: Slides per task on a Dask cluster: small, so that the workers share the load and a lost task costs little.
DASK_CHUNK = 4


@dataclass
class _Settings:
    """What scoring a chunk needs besides the slides (plain values: sent to Dask workers as they are)."""

    model_paths: tuple[str, ...]
    device: str
    backend: str
    mpp: float | None
    cache_dir: str | Path | None
    heatmap_dir: str | Path | None
    quantify_dir: str | None
    model_key: str = ""  #: the models' content: a long-lived Dask worker reloads a model whose file changed


@dataclass
class _Model:
    label: str  #: column prefix; empty for a single model (columns as they always were)
    predictor: Any
    meta: dict[str, Any]


def model_labels(paths: Sequence[str | Path]) -> list[str]:
    """Column prefixes for several models: the file's stem, or its run folder's name for a
    ``model.safetensors``; made unique with ``_2``, ``_3``..."""
    labels: list[str] = []
    for p in map(Path, paths):
        base = p.parent.name if p.stem == "model" and p.parent.name else p.stem
        label, n = base, 2
        while label in labels or label == "quantify":
            label, n = f"{base}_{n}", n + 1
        labels.append(label)
    return labels


def _load_models(settings: _Settings) -> list[_Model]:
    from her2score.engine.predictor import Predictor

    paths = settings.model_paths
    labels = model_labels(paths) if len(paths) > 1 else [""]
    return [
        _Model(label, *Predictor.from_checkpoint(p, settings.device, settings.backend))
        for label, p in zip(labels, paths, strict=True)
    ]


def _columns(models: list[_Model], quantify: bool) -> list[str]:
    """The CSV's columns in order."""
    if len(models) == 1 and not quantify:
        m = models[0]
        return ["slide", "predicted", *[f"prob_{c}" for c in m.meta["classes"]], "status"]
    columns = ["slide", "status"]
    for m in models:
        prefix = f"{m.label}_" if m.label else ""
        columns += [f"{prefix}predicted", *[f"{prefix}prob_{c}" for c in m.meta["classes"]]]
        columns += [f"{prefix}status"] if prefix else []  # one model: its status is the slide's
    return columns + ([f"quantify_{c}" for c in QUANTIFY_COLUMNS] if quantify else [])


#: The quantifier's figures added per slide with ``quantify`` (as ``quantify_<name>``).
QUANTIFY_COLUMNS = ("status", "category", "her2_3way", "h_score", "her2_index", "scorable", "reason", "error")


def _predict_locked(
    settings: _Settings,
    slides: list[str | Path],
    out_csv: Path,
    workers: int,
    quiet: bool,
    scheduler: str | None = None,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Score in chunks, locally or on a Dask cluster, journalling each slide's row as it is done."""
    from her2score.data.lowres import content_hash
    from her2score.io import unique_stems, write_csv
    from her2score.progress import progress_bar
    from her2score.slide.discover import expand_inputs

    models = _load_models(settings)
    model_key = "|".join(f"{content_hash(p)}:{settings.backend}" for p in settings.model_paths)
    model_key += ":quantify" if settings.quantify_dir else ""
    settings.model_key = model_key
    files = expand_inputs(slides)
    journal_path = out_csv.with_suffix(".jsonl")
    done = _read_journal(journal_path, model_key)
    keys = {str(f): _slide_key(f, settings.mpp) for f in files}
    todo = [f for f in files if done.get(str(f), {}).get("key") != keys[str(f)] or keys[str(f)] is None]
    kept = {str(f): done[str(f)] for f in files if str(f) in done and f not in todo}
    stems = dict(zip(map(str, files), unique_stems(files), strict=True)) if settings.quantify_dir else {}
    with _Journal(journal_path, list(kept.values())) as journal:
        if scheduler is None:
            with progress_bar(quiet) as bar:  # one bar (count, elapsed, ETA) for the whole run
                task = bar.add_task("predict", total=len(todo))
                for chunk, shared in _read_ahead(models, settings, todo, workers):
                    for record in score_chunk(models, settings, chunk, workers, True, stems, shared):
                        journal.add({**record, "key": keys[record["slide"]], "model_key": model_key})
                    bar.advance(task, len(chunk))
        elif todo:  # nothing left to do needs no cluster
            _predict_on_cluster(scheduler, todo, settings, journal, keys, model_key, quiet, stems)
        records = journal.records
    order = {str(f): i for i, f in enumerate(files)}
    by_slide = {r["slide"]: r for r in records if r["slide"] in order}
    columns = _columns(models, bool(settings.quantify_dir))
    frame = pd.DataFrame([by_slide[str(f)] for f in files if str(f) in by_slide])
    frame = frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=columns)
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
    models: list[_Model],
    settings: _Settings,
    chunk: list[Path],
    workers: int = 0,
    quiet: bool = True,
    stems: dict[str, str] | None = None,
    shared: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read and predict ``chunk``: a row per slide (``slide, predicted, prob_<class>..., status``, each
    model's columns prefixed by its label when there are several), an unreadable slide's status
    ``skipped: <cause>``. Models that read the same input share one preparation of the chunk;
    ``shared``: that preparation made beforehand (:func:`prepare_chunk`), else it is made here."""
    from her2score.engine.predictor import prediction_frame

    if shared is None:
        shared = prepare_chunk(models, settings, chunk, workers, quiet)
    out = {str(f): {"slide": str(f)} for f in chunk}
    statuses: dict[str, list[str]] = {str(f): [] for f in chunk}
    for m in models:
        kind = m.predictor.kind
        prepared = shared[_input_key(m)]
        names = [str(chunk[i]) for i in prepared.positions]
        frame = prediction_frame(names, m.predictor.predict(prepared), m.meta["classes"])
        expected = m.meta.get("input_stain", "ihc")
        frame["status"] = [stain_status(kind.picture(prepared, i), expected) for i in range(len(names))]
        prefix = f"{m.label}_" if m.label else ""
        for record in frame.to_dict("records"):
            out[record["slide"]].update({f"{prefix}{k}": v for k, v in record.items() if k != "slide"})
            statuses[record["slide"]].append(record["status"])
        for f in prepared.failures:
            out[f.slide][f"{prefix}status"] = f"skipped: {f.cause}"
            statuses[f.slide].append(f"skipped: {f.cause}")
        if settings.heatmap_dir is not None and names:
            folder = Path(settings.heatmap_dir) / m.label if m.label else settings.heatmap_dir
            m.predictor.heatmaps(prepared, names, folder, classes=m.meta["classes"])
    if settings.quantify_dir:
        for f in chunk:
            row = _quantify_row(f, (stems or {}).get(str(f), f.stem), settings)
            # the quantifier's own failures (no tissue, too few cells) stay in its columns
            out[str(f)].update({f"quantify_{c}": row.get(c) for c in QUANTIFY_COLUMNS})
    if len(models) > 1 or settings.quantify_dir:  # the slide's own status: the first failure, else warning
        for slide, said in statuses.items():
            bad = [s for s in said if s.startswith("skipped")] or [s for s in said if s != "ok"]
            out[slide]["status"] = bad[0] if bad else "ok"
    return list(out.values())


def _input_key(m: _Model) -> str:
    """Models with the same input kind and data config read a slide the same way."""
    import json

    return json.dumps([m.meta.get("input_kind"), m.meta.get("data")], sort_keys=True, default=str)


def prepare_chunk(
    models: list[_Model], settings: _Settings, chunk: list[Path], workers: int = 0, quiet: bool = True
) -> dict[str, Any]:
    """Read ``chunk`` once per distinct model input (:func:`_input_key`): the slow, I/O-bound half."""
    from her2score.paths import cache_dir as default_cache

    rows = [{"slide": str(f), "mpp": settings.mpp} for f in chunk]
    shared: dict[str, Any] = {}
    for m in models:
        key = _input_key(m)
        if key not in shared:
            shared[key] = m.predictor.kind.prepare(
                rows, settings.cache_dir or default_cache("lowres"), workers, quiet
            )
    return shared


def _read_ahead(
    models: list[_Model], settings: _Settings, todo: list[Path], workers: int
) -> Iterator[tuple[list[Path], dict[str, Any]]]:
    """Yield each chunk of ``todo`` with its preparation, reading the next chunk in a background thread
    while the caller scores this one, so that slide reading overlaps model compute (one chunk ahead:
    memory stays bounded)."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="her2score-read") as reader:
        ahead = reader.submit(prepare_chunk, models, settings, chunks[0], workers)
        for i, chunk in enumerate(chunks):
            shared = ahead.result()
            if i + 1 < len(chunks):
                ahead = reader.submit(prepare_chunk, models, settings, chunks[i + 1], workers)
            yield chunk, shared


def _quantify_row(path: Path, stem: str, settings: _Settings) -> dict[str, Any]:
    """The membrane quantifier's row for one slide (its cells and overlay in ``quantify_dir``)."""
    from her2score.quantify.batch import score_one
    from her2score.quantify.thresholds import Thresholds

    out = Path(settings.quantify_dir or ".")
    out.mkdir(parents=True, exist_ok=True)
    return score_one(path, stem, out, settings.mpp, Thresholds())


def _predict_on_cluster(
    scheduler: str,
    todo: list[Path],
    settings: _Settings,
    journal: _Journal,
    keys: dict[str, str | None],
    model_key: str,
    quiet: bool,
    stems: dict[str, str],
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
        for position, records, error in map_as_completed(client, _score_on_worker, chunks, settings, stems):
            if error is not None:
                cause = f"skipped: task failed on the cluster ({type(error).__name__}: {error})"
                records = [{"slide": str(f), "status": cause, "no_key": True} for f in chunks[position]]
            for record in records:
                key = None if record.pop("no_key", False) else keys[record["slide"]]
                journal.add({**record, "key": key, "model_key": model_key})
            bar.advance(task, len(chunks[position]))


#: Models a Dask worker process has loaded, by (paths, content, device, backend): loaded once, not per task.
_WORKER_MODELS: dict[tuple[tuple[str, ...], str, str, str], list[_Model]] = {}


def _score_on_worker(chunk: list[Path], settings: _Settings, stems: dict[str, str]) -> list[dict[str, Any]]:
    """One Dask task: :func:`score_chunk` with the worker's copy of the models (returns rows, writes none)."""
    cached = (settings.model_paths, settings.model_key, settings.device, settings.backend)
    if cached not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # one set of models at a time in a worker's memory
        _WORKER_MODELS[cached] = _load_models(settings)
    return score_chunk(_WORKER_MODELS[cached], settings, chunk, stems=stems)


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
    from her2score.stain.detect import MACENKO_MIN_EOSIN_SHARE, looks_like_he

    mask = tissue_mask(picture)
    if not mask.any():
        return "ok"
    # Where H&E is expected, an ambiguous picture (a pale H&E with little eosin) counts as H&E: no eosin
    # floor on the Macenko cue (it is there so that a DAB-free IHC is not refused as H&E).
    he = looks_like_he(picture, mask, min_eosin_share=0.0 if expected == "he" else MACENKO_MIN_EOSIN_SHARE)
    if expected == "ihc" and he:
        return "warning: looks like H&E, not IHC; this prediction is meaningless"
    if expected == "he" and not he:
        return "warning: does not look like H&E (an IHC image?); this model reads H&E"
    return "ok"
