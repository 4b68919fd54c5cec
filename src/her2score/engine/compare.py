"""The low- vs high-resolution comparison: the low-res model, the stain-statistics baseline and
patch-based (tile features + MIL aggregator) models trained on identical patient-grouped splits, with
accuracy (95 % CIs) and the cost of each per slide, in one table, a plot and a report.

The splits are made once from the manifest (:func:`~her2score.engine.train.make_splits`, the config's
seed) and handed to every :func:`~her2score.engine.train.train_run` as a rule keyed by the original
slide, so each method trains, stops early and is tested on the same slides (a slide one method cannot
read is left out of that method alone, and listed).

Costs are measured on this machine, per slide, as the work a new slide needs to get a prediction (what a
cache saves on a second visit is not a per-slide cost, so neither side counts cache keys or writes, and
neither side is timed from a cache):

* ``prep_s_per_slide``: low-res: open the slide, read the whole slide at the low-res µm/px from the
  pyramid level closest to it (never finer than needed), find the tissue, crop and resize to the model's
  input; patch-based: open the slide, the tissue mask, read every tissue tile at the patch µm/px and
  encode it with the tile encoder. A cached slide keeps the time of its first preparation
  (``features.csv``'s ``seconds`` / ``lowres_seconds.csv``), so a rerun reports the same cost. On both
  sides the first slide is prepared once untimed before the timed pass (the first read and the first
  network call import and allocate: a one-off cost of the process, not of a slide).
* ``infer_s_per_slide``: the model's forward over the prepared inputs of the test slides, timed through
  the saved checkpoint (low-res: the CNN on the overview; patch-based: the aggregator or the tile
  classifier on the tile features). Test-time augmentation is off for the low-res model unless asked
  for (``CompareOptions.lowres_tta``): the patch methods have none, and the accuracy columns are those
  of the same predictions, so cost and accuracy always describe one pipeline.
* ``cache_mb_per_slide``: the low-res cache entry or the feature file.
* ``peak_rss_mb``: the process's peak resident memory while that method prepared, trained and predicted.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.engine.config import SHARED_MODEL_KEYS, TrainConfig
from her2score.engine.train import Split, SplitRule, make_splits
from her2score.errors import ConfigError

LOWRES_MODEL = "lowres-resnet"
LOWRES = "lowres"
STAIN = "stain"
PATCH_CLASSIFIER = "patch-classifier"
#: The patch classifier's rules from tile to slide, chosen as ``--methods patch-classifier:RULE``.
PATCH_FUSIONS = ("mean", "majority", "top-percentile")  # those of models.nets.patch_classifier
DEFAULT_METHODS = (LOWRES, STAIN, "abmil", "clam-sb", "transmil", "patch-classifier")
SWEEP_LOWRES_MPP = (4.0, 8.0, 16.0)
SWEEP_PATCH_MPP = (0.5, 1.0, 2.0)
METRICS = ("auc_macro", "f1_macro", "accuracy", "kappa_qw")
COST_COLUMNS = ("prep_s_per_slide", "infer_s_per_slide", "cache_mb_per_slide", "peak_rss_mb")
COLUMNS = (
    "method", "mpp",
    *[c for m in METRICS for c in (m, f"{m}_low", f"{m}_high")],
    *COST_COLUMNS,
    "n_test", "input", "run",
)  # fmt: skip


@dataclass
class CompareOptions:
    """What ``compare`` runs: methods (``lowres``, ``stain`` and registered bag models), resolutions,
    the tile encoder and tiling, and how many test slides get heatmaps."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    lowres_mpps: tuple[float, ...] = (8.0,)
    patch_mpps: tuple[float, ...] = (1.0,)
    encoder: str = "timm:resnet50"  # CLAM's usual tile encoder (random init unless weights)
    encoder_weights: str | None = None
    tile_size: int = 224
    min_tissue: float = 0.25
    tile_batch: int = 32
    heatmaps: int = 3
    lowres_tta: bool = False  # the low-res model's 8 flips/rotations when testing (counted in its cost)


@dataclass
class CompareResult:
    """The comparison table, where it was written, and what to tell the user."""

    table: pd.DataFrame
    csv: Path
    report: Path
    headline: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    test_slides: dict[str, list[str]] = field(default_factory=dict)  # method@mpp -> original slides


# ------------------------------------------------------------------------------------------ splits
def split_rule(master: list[Split], keys: list[str], key_of: Callable[[str], str]) -> SplitRule:
    """A rule giving any readable cohort the ``master`` splits (positions into slides ``keys``):
    a row goes where its original slide (``key_of(row's slide)``) went."""
    parts = [
        (s.name, {p: {keys[int(i)] for i in getattr(s, p)} for p in ("train", "val", "test")}) for s in master
    ]

    def rule(readable: Any) -> list[Split]:
        own = [key_of(str(s)) for s in readable.frame["slide"]]
        out = []
        for name, sets in parts:
            where = {
                p: np.array([i for i, k in enumerate(own) if k in sets[p]], dtype=np.int64) for p in sets
            }
            out.append(Split(name, where["train"], where["val"], where["test"]))
        return out

    return rule


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


# ------------------------------------------------------------------------------------------ memory
@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Samples this process's resident memory every 50 ms; ``box["mb"]`` is the peak once done."""
    box = {"mb": _rss_mb()}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            box["mb"] = max(box["mb"], _rss_mb())

    thread = threading.Thread(target=watch, name="peak-rss", daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        box["mb"] = max(box["mb"], _rss_mb())


def _rss_mb() -> float:
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best there is
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ------------------------------------------------------------------------------------------ preparation
def lowres_costs(frame: pd.DataFrame, cfg: TrainConfig, cache_dir: Path) -> pd.DataFrame:
    """Read (or find cached) every slide's low-res input one at a time; per slide ``seconds`` of its
    first read (kept in ``cache_dir/lowres_seconds.csv``), ``cache_bytes`` and ``status``.

    The time is :func:`~her2score.data.lowres.lowres_image` alone (open, read at the low-res µm/px,
    tissue, crop, resize); the cache entry the training then reads is written afterwards, untimed, as
    the patch side's feature file is."""
    from her2score.data.lowres import LowResParams, cache_key, lowres_image
    from her2score.errors import Her2ScoreError
    from her2score.io import write_csv, write_png

    params = LowResParams(cfg.mpp, cfg.input_size, cfg.margin)
    record_path = cache_dir / "lowres_seconds.csv"
    known = _read_seconds(record_path)
    rows = []
    warm = False
    for row in frame.to_dict("records"):
        slide, mpp = row["slide"], _mpp_or_none(row.get("mpp"))
        out = {"slide": slide, "seconds": np.nan, "cache_bytes": 0, "status": "failed"}
        try:
            entry = cache_dir / f"{cache_key(slide, params, mpp)}.png"
            if entry.is_file() and entry.name in known:
                out.update(seconds=known[entry.name], status="cached")
            else:
                entry.unlink(missing_ok=True)  # an entry of unknown cost is read again and timed
                if not warm:  # first reads import and allocate: one-off, not per slide (as for patches)
                    warm = True
                    lowres_image(slide, params, mpp)
                start = time.perf_counter()
                image = lowres_image(slide, params, mpp)
                out.update(seconds=time.perf_counter() - start, status="read")
                write_png(entry, image)
                known[entry.name] = out["seconds"]
            out["cache_bytes"] = entry.stat().st_size
        except (Her2ScoreError, OSError):
            pass  # train_run lists the slide as skipped, with its cause
        rows.append(out)
    write_csv(record_path, pd.DataFrame({"entry": list(known), "seconds": list(known.values())}))
    return pd.DataFrame(rows)


def _read_seconds(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    return dict(zip(frame["entry"].astype(str), frame["seconds"].astype(float), strict=True))


def _mpp_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def patch_features(
    frame: pd.DataFrame, options: CompareOptions, mpp: float, folder: Path, encoder: Any, quiet: bool
) -> pd.DataFrame:
    """Tile features of every slide under ``folder``; a cached slide keeps the ``seconds`` of its first
    extraction (from the ``features.csv`` written there before)."""
    from her2score.features.extract import extract_features
    from her2score.io import write_csv

    table = folder / "features.csv"
    earlier = pd.read_csv(table, keep_default_na=False) if table.is_file() else None
    first = {}
    if earlier is not None:
        done = earlier[earlier["status"] != "failed"]
        first = dict(zip(done["features"].astype(str), done["seconds"].astype(float), strict=True))
    result = extract_features(
        list(frame["slide"]), folder, encoder, mpp=mpp, tile_size=options.tile_size,
        min_tissue=options.min_tissue, batch_size=options.tile_batch, quiet=quiet, warm_up=True,
    )  # fmt: skip
    cached = result["status"] == "cached"
    result.loc[cached, "seconds"] = [
        first.get(f, s)
        for f, s in zip(result.loc[cached, "features"], result.loc[cached, "seconds"], strict=True)
    ]
    write_csv(table, result)
    return result


# ------------------------------------------------------------------------------------------ one method
def _method_config(cfg: TrainConfig, model: str, **changes: Any) -> TrainConfig:
    """``cfg`` for ``model``: the options of the low-res network (backbone, stain head, ...) go back to
    their defaults for a model that does not take them, and ``model_args`` apply to the config's own
    model only."""
    from her2score.models.registry import get_model_spec

    known = get_model_spec(model).options()
    defaults = TrainConfig()
    reset = {k: getattr(defaults, k) for k in SHARED_MODEL_KEYS if k not in known}
    if model != cfg.model:
        reset["model_args"] = {}  # the config's model_args are its own model's
    out = dataclasses.replace(cfg, model=model, **reset, **changes)
    out.augment = dataclasses.replace(cfg.augment)
    if out.augment.crop > out.input_size:
        out.augment.crop = 0
    return out.validate()


def _infer_seconds(run: Any, cohort: Any, cache_dir: Path | None, device: str) -> tuple[float, int]:
    """Seconds of the saved models' forward over their test slides (inputs prepared beforehand)."""
    from her2score.engine.predictor import Predictor

    splits = pd.read_csv(run.run_dir / "splits.csv")
    total, n = 0.0, 0
    for path in run.model_paths:
        fold = "main" if path.parent == run.run_dir else path.parent.name
        test = set(splits[(splits["fold"] == fold) & (splits["part"] == "test")]["slide"].astype(str))
        rows = cohort.frame[cohort.frame["slide"].astype(str).isin(test)]
        if rows.empty:
            continue
        predictor, _ = Predictor.from_checkpoint(path, device)
        prepared = predictor.kind.prepare(rows.to_dict("records"), cache_dir, 0, True)
        if not len(prepared):
            continue
        predictor.predict(prepared, np.arange(min(2, len(prepared))))  # warm-up: first calls allocate
        start = time.perf_counter()
        predictor.predict(prepared)
        total += time.perf_counter() - start
        n += len(prepared)
    return (total / n if n else float("nan")), n


def _metric_columns(metrics: dict[str, Any]) -> dict[str, float]:
    pooled = metrics.get("pooled", metrics)
    out = {}
    for name in METRICS:
        value = pooled.get(name)
        low, high = pooled.get("ci", {}).get(name, [None, None])
        out[name] = np.nan if value is None else float(value)
        out[f"{name}_low"] = np.nan if low is None else float(low)
        out[f"{name}_high"] = np.nan if high is None else float(high)
    return out


def _test_keys(run_dir: Path, key_of: Callable[[str], str]) -> list[str]:
    frame = pd.read_csv(run_dir / "predictions.csv")
    return sorted(key_of(str(s)) for s in frame["slide"])


# ------------------------------------------------------------------------------------------ the command
def compare_methods(
    manifest: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    options: CompareOptions | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> CompareResult:
    """Train and test every method of ``options`` on the same splits of ``manifest``; write
    ``comparison.csv``, ``accuracy_vs_cost.png``, heatmaps and ``report.html`` under ``out_dir``.

    ``cfg`` is the training configuration shared by all methods (task, seed, folds, epochs, device...);
    each method sets its own model (and, for the low-res model, µm/px: the input side scales with it,
    ``input_size * cfg.mpp / mpp``, so a finer resolution shows more detail rather than the same
    picture). Runs go to ``out_dir/runs/<method>-<mpp>``, caches to ``cfg.cache_dir`` or
    ``out_dir/cache``.
    """
    from her2score.data.manifest import load_manifest
    from her2score.io import output_lock, write_csv

    options = options or CompareOptions()
    bag_methods = _check_methods(options.methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        cohort = load_manifest(manifest, cfg.task, cfg.equivocal, check_files=False)
        keys = [_key(s) for s in cohort.frame["slide"]]
        master = make_splits(cohort, cfg)
        _write_splits(out / "splits.csv", master, keys)
        cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
        heat_slides = [keys[int(i)] for i in master[0].test[: options.heatmaps]]
        rows: list[dict[str, Any]] = []
        figures: list[tuple[str, Path]] = []
        notes: list[str] = []
        tests: dict[str, list[str]] = {}
        if LOWRES in options.methods or STAIN in options.methods:
            for mpp in options.lowres_mpps:
                rows += _lowres(
                    cohort,
                    keys,
                    master,
                    cfg,
                    options,
                    mpp,
                    cache,
                    out,
                    quiet,
                    log,
                    tests,
                    figures,
                    heat_slides,
                )
        for mpp in options.patch_mpps if bag_methods else ():
            rows += _patches(
                manifest, cohort, keys, master, cfg, options, bag_methods, mpp, cache, out, quiet, log,
                tests, figures, heat_slides, notes,
            )  # fmt: skip
        table = pd.DataFrame(rows, columns=list(COLUMNS))
        csv = write_csv(out / "comparison.csv", table, index=False)
        headline = headline_lines(table)
        plot = plot_accuracy_vs_cost(
            table, out / "accuracy_vs_cost.png", f"{cfg.task}: accuracy against cost"
        )
        report = _write_report(out, cfg, options, table, headline, notes, [plot, *figures], tests)
    return CompareResult(table, csv, report, headline, notes, tests)


def _check_methods(methods: tuple[str, ...]) -> list[str]:
    from her2score.models.registry import get_model_spec

    if not methods:
        raise ConfigError("--methods names no method")
    bags = []
    for name in methods:
        if name in (LOWRES, STAIN):
            continue
        model, fusion = _model_and_fusion(name)
        if fusion is not None and model != PATCH_CLASSIFIER:
            raise ConfigError(f"method {name!r}: only {PATCH_CLASSIFIER} takes a fusion rule (NAME:RULE)")
        if fusion is not None and fusion not in PATCH_FUSIONS:
            raise ConfigError(f"method {name!r}: the fusion rule is one of {', '.join(PATCH_FUSIONS)}")
        spec = get_model_spec(model)
        if spec.input_kind != "bag":
            raise ConfigError(
                f"method {name!r} is not a patch-based (bag) model; use lowres, stain or one of the "
                "bag models of 'her2score models'"
            )
        bags.append(name)
    return bags


def _model_and_fusion(method: str) -> tuple[str, str | None]:
    """``patch-classifier:majority`` -> (``patch-classifier``, ``majority``); a plain name -> (name, None)."""
    model, _, fusion = method.partition(":")
    return model, (fusion or None)


def _write_splits(path: Path, master: list[Split], keys: list[str]) -> None:
    from her2score.io import write_csv

    rows = [
        {"fold": s.name, "part": p, "slide": keys[int(i)]} for s in master for p in ("train", "val", "test")
        for i in getattr(s, p)
    ]  # fmt: skip
    write_csv(path, pd.DataFrame(rows), index=False)


def _lowres(
    cohort: Any, keys: list[str], master: list[Split], cfg: TrainConfig, options: CompareOptions, mpp: float,
    cache: Path, out: Path, quiet: bool, log: Callable[[str], None], tests: dict[str, list[str]],
    figures: list[tuple[str, Path]], heat_slides: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    from her2score.engine.baselines import STAIN_STATISTICS
    from her2score.engine.train import train_run

    size = round(cfg.input_size * cfg.mpp / mpp)
    run_cfg = _method_config(
        cfg, LOWRES_MODEL, mpp=float(mpp), input_size=min(4096, max(16, size)), tta=options.lowres_tta
    )
    cache_dir = cache / "lowres"
    run_cfg.cache_dir = str(cache_dir)
    views = ", 8 test-time views" if run_cfg.tta else ""
    log(f"compare: {LOWRES_MODEL} at {mpp:g} µm/px ({run_cfg.input_size} px{views})")
    with peak_rss() as memory:
        costs = lowres_costs(cohort.frame, run_cfg, cache_dir)
        run = train_run(
            cohort, run_cfg, out / "runs" / f"lowres-{mpp:g}", quiet=quiet, log=log,
            heatmaps=0, overwrite=True, splits=split_rule(master, keys, _key),
        )  # fmt: skip
        infer, n = _infer_seconds(run, cohort, cache_dir, run_cfg.device)
    if run.metrics is None:
        raise ConfigError(f"the low-res run at {mpp:g} µm/px has no held-out metrics (no test slides)")
    ok = costs[costs["status"] != "failed"]
    shared = {
        "mpp": float(mpp), "prep_s_per_slide": float(ok["seconds"].mean()),
        "cache_mb_per_slide": float(ok["cache_bytes"].mean() / 2**20), "peak_rss_mb": memory["mb"],
        "n_test": n, "input": f"{run_cfg.input_size} px overview{views}",
        "run": str(run.run_dir.relative_to(out)),
    }  # fmt: skip
    tests[f"{LOWRES}@{mpp:g}"] = _test_keys(run.run_dir, _key)
    rows = []
    if LOWRES in options.methods:
        rows.append({"method": LOWRES, **_metric_columns(run.metrics), **shared, "infer_s_per_slide": infer})
    baselines = run.metrics.get("baselines", {})
    if STAIN in options.methods and STAIN_STATISTICS in baselines:
        # its forward (a logistic regression on optical-density quantiles) is not timed apart
        rows.append({"method": STAIN, **_metric_columns(baselines[STAIN_STATISTICS]), **shared,
                     "infer_s_per_slide": np.nan})  # fmt: skip
    if heat_slides and run.model_paths:
        figures += _gradcam(run, cohort, heat_slides, cache_dir, out / "heatmaps", f"lowres-{mpp:g}", run_cfg)
    return rows


def _patches(
    manifest: str | Path, cohort: Any, keys: list[str], master: list[Split], cfg: TrainConfig,
    options: CompareOptions, methods: list[str], mpp: float, cache: Path, out: Path, quiet: bool,
    log: Callable[[str], None], tests: dict[str, list[str]], figures: list[tuple[str, Path]],
    heat_slides: list[str], notes: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    from her2score.data.manifest import load_manifest
    from her2score.engine.train import train_run
    from her2score.features.encoders import make_encoder
    from her2score.features.extract import write_bag_manifest

    encoder = make_encoder(options.encoder, weights=options.encoder_weights, device=cfg.device, seed=cfg.seed)
    folder = (
        cache
        / "features"
        / f"{encoder.key.replace(':', '_').replace('/', '_')}-{mpp:g}mpp-{options.tile_size}px"
    )
    log(f"compare: tile features ({encoder.name}, {options.tile_size} px at {mpp:g} µm/px)")
    with peak_rss() as memory:
        extracted = patch_features(cohort.frame, options, mpp, folder, encoder, quiet)
    ok = extracted[extracted["status"] != "failed"]
    failed = extracted[extracted["status"] == "failed"]
    if len(failed):
        notes.append(
            f"{len(failed)} slide(s) gave no tiles at {mpp:g} µm/px and are left out of the patch runs"
        )
    if len(ok) < 4:
        notes.append(f"patch-based methods at {mpp:g} µm/px skipped: only {len(ok)} slide(s) gave tiles")
        return []
    back = {_key(f): _key(s) for f, s in zip(ok["features"], ok["slide"], strict=True)}
    bag_manifest = folder / "manifest.csv"
    write_bag_manifest(manifest, extracted, bag_manifest)
    bags = load_manifest(bag_manifest, cfg.task, cfg.equivocal, check_files=False)
    key_of = lambda f: back.get(_key(f), _key(f))  # noqa: E731
    shared = {
        "mpp": float(mpp), "prep_s_per_slide": float(ok["seconds"].mean()),
        "cache_mb_per_slide": float(np.mean([Path(f).stat().st_size for f in ok["features"]]) / 2**20),
        "input": f"{ok['n_tiles'].mean():.0f} tiles/slide ({encoder.name})",
    }  # fmt: skip
    rows = []
    for name in methods:
        model, fusion = _model_and_fusion(name)
        tag = f"{name.replace(':', '-')}-{mpp:g}"  # runs/ and heatmaps/ folder
        run_cfg = _method_config(cfg, model)
        if fusion is not None:
            run_cfg.model_args = {**run_cfg.model_args, "fusion": fusion}
        log(f"compare: {name} on {encoder.name} features at {mpp:g} µm/px")
        with peak_rss() as method_memory:
            run = train_run(
                bags, run_cfg, out / "runs" / tag, quiet=quiet, log=log, heatmaps=0,
                overwrite=True, splits=split_rule(master, keys, key_of),
            )  # fmt: skip
            infer, n = _infer_seconds(run, bags, None, run_cfg.device)
        if run.metrics is None:
            notes.append(f"{name} at {mpp:g} µm/px: no held-out metrics")
            continue
        tests[f"{name}@{mpp:g}"] = _test_keys(run.run_dir, key_of)
        rows.append({
            "method": name, **_metric_columns(run.metrics), **shared, "infer_s_per_slide": infer,
            "peak_rss_mb": max(memory["mb"], method_memory["mb"]), "n_test": n,
            "run": str(run.run_dir.relative_to(out)),
        })  # fmt: skip
        if heat_slides and run.model_paths:
            figures += _attention_maps(
                run, bags, key_of, heat_slides, out / "heatmaps", tag, options, mpp, run_cfg
            )
    return rows


# ------------------------------------------------------------------------------------------ heatmaps
def _gradcam(
    run: Any, cohort: Any, slides: list[str], cache_dir: Path, folder: Path, tag: str, cfg: TrainConfig
) -> list[tuple[str, Path]]:
    """The low-res model's Grad-CAM over its input picture, for ``slides`` (of the first split)."""
    from her2score.engine.predictor import Predictor

    rows = cohort.frame[[_key(s) in slides for s in cohort.frame["slide"]]]
    if rows.empty:
        return []
    predictor, meta = Predictor.from_checkpoint(run.model_paths[0], cfg.device)
    prepared = predictor.kind.prepare(rows.to_dict("records"), cache_dir, 0, True)
    names = [str(rows["slide"].iloc[int(i)]) for i in prepared.positions]
    found = predictor.heatmaps(prepared, names, folder / tag, None, meta["classes"])
    return [(f"{tag} Grad-CAM: {caption.removeprefix('Heatmap ')}", path) for caption, path in found]


def _attention_maps(
    run: Any, bags: Any, key_of: Callable[[str], str], slides: list[str], folder: Path, tag: str,
    options: CompareOptions, mpp: float, cfg: TrainConfig,
) -> list[tuple[str, Path]]:  # fmt: skip
    """A bag model's per-tile map (attention, or the patch classifier's tile probability of the predicted
    class) drawn over each slide's overview."""
    from her2score.engine.predictor import Predictor
    from her2score.io import unique_stems
    from her2score.models.registry import get_model_spec
    from her2score.report.heatmap import save_map_overlay, tile_map
    from her2score.slide import open_slide

    rows = bags.frame[[key_of(str(s)) in slides for s in bags.frame["slide"]]]
    if rows.empty:
        return []
    predictor, meta = Predictor.from_checkpoint(run.model_paths[0], cfg.device)
    prepared = predictor.kind.prepare(rows.to_dict("records"), None, 0, True)
    originals = [key_of(str(rows["slide"].iloc[int(i)])) for i in prepared.positions]
    stems = unique_stems(originals)
    what = (get_model_spec(meta["model"]).maps or ("attention",))[0]
    out = []
    for i, original in enumerate(originals):
        explained = predictor.explain(prepared, i)
        if explained is None:
            continue
        weights, target = explained
        coords = prepared.items[i][1].numpy()
        row = rows.iloc[int(prepared.positions[i])]
        with open_slide(original, mpp=_mpp_or_none(row.get("mpp"))) as slide:
            overview, read_mpp = slide.read_overview(max_size=768)
            level0 = slide.require_mpp()
        heat = tile_map(
            coords, weights, options.tile_size * mpp / level0, overview.shape[:2], level0 / read_mpp
        )
        path = save_map_overlay(overview, heat, folder / tag / f"{stems[i]}.{what.replace(' ', '-')}.png")
        out.append((f"{tag} {what}: {Path(original).name}: predicted {meta['classes'][target]}", path))
    return out


# ------------------------------------------------------------------------------------------ outputs
def headline_lines(table: pd.DataFrame) -> list[str]:
    """Per patch-based row: its per-slide cost (preparation + inference) ÷ the low-res model's, and the
    difference in macro F1 and accuracy (low-res minus patch), against the low-res row at 8 µm/px (or
    the first)."""
    low = table[table["method"] == LOWRES]
    if low.empty:
        return []
    at8 = low[np.isclose(low["mpp"], 8.0)]
    ref = (at8 if len(at8) else low).iloc[0]
    ref_cost = ref["prep_s_per_slide"] + np.nan_to_num(ref["infer_s_per_slide"])
    out = []
    for row in table[~table["method"].isin([LOWRES, STAIN])].itertuples():
        cost = row.prep_s_per_slide + np.nan_to_num(row.infer_s_per_slide)
        out.append(
            f"{row.method} at {row.mpp:g} µm/px costs {cost / ref_cost:.1f}x the low-res model at "
            f"{ref['mpp']:g} µm/px per slide ({cost:.2f} s vs {ref_cost:.2f} s); low-res minus patch: "
            f"macro F1 {ref['f1_macro'] - row.f1_macro:+.3f}, accuracy {ref['accuracy'] - row.accuracy:+.3f}"
        )
    return out


def plot_accuracy_vs_cost(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Macro F1 (95 % CI bars) against per-slide cost (preparation + inference, log scale), a point per
    method and resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from her2score.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {LOWRES: "tab:blue", STAIN: "tab:green"}
    for row in table.itertuples():
        cost = row.prep_s_per_slide + np.nan_to_num(row.infer_s_per_slide)
        if not np.isfinite(cost) or cost <= 0:
            continue
        colour = colours.get(row.method, "tab:red")
        low, high = row.f1_macro_low, row.f1_macro_high
        err = None
        if np.isfinite(low) and np.isfinite(high):
            err = [[max(0.0, row.f1_macro - low)], [max(0.0, high - row.f1_macro)]]
        ax.errorbar([cost], [row.f1_macro], yerr=err, fmt="o", color=colour, capsize=3)
        ax.annotate(f"{row.method} {row.mpp:g}", (cost, row.f1_macro), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("seconds per slide (preparation + inference, this machine)")
    ax.set_ylabel("macro F1 (95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return save_figure(path, fig)


def _write_report(
    out: Path, cfg: TrainConfig, options: CompareOptions, table: pd.DataFrame, headline: list[str],
    notes: list[str], figures: list[Any], tests: dict[str, list[str]],
) -> Path:  # fmt: skip
    from her2score.report.document import write_report

    shown = table.copy()
    for m in METRICS:
        shown[m] = [
            "–" if not np.isfinite(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(table[m], table[f"{m}_low"], table[f"{m}_high"], strict=True)
        ]
        shown = shown.drop(columns=[f"{m}_low", f"{m}_high"])
    for c in COST_COLUMNS:
        shown[c] = [f"{v:.3g}" if np.isfinite(v) else "–" for v in table[c]]
    same = len({tuple(v) for v in tests.values()}) <= 1
    split = f"{cfg.folds}-fold patient-grouped CV" if cfg.folds else "one patient-grouped holdout"
    all_notes = [
        *headline,
        f"Every method is trained and tested on the same splits ({split}, seed {cfg.seed}; splits.csv); "
        + ("the test slides are identical across methods." if same else
           "some methods could not read every slide, so their test sets differ (see each run)."),
        "prep: the per-slide work before the model, low-res: open, read at its µm/px from the nearest "
        "pyramid level, tissue crop, resize; patch: open, tissue mask, read and encode every tissue tile "
        "(cache keys and writes are not counted on either side; a cached slide keeps its first time). "
        "infer: the model's forward per test slide"
        + (" (the low-res model with its 8 test-time views)" if options.lowres_tta else
           " (no test-time augmentation on either side)")
        + "; cache: the low-res cache entry or the feature file; "
        "peak RSS: this process while the method ran (patch rows include the feature extraction).",
        "The stain row is the low-res run's stain-statistics baseline on the same test slides "
        "(its forward is not timed apart).",
        f"Tile encoder {options.encoder}, {options.tile_size} px tiles, "
        f"minimum tissue {options.min_tissue:g}.",
        *notes,
    ]  # fmt: skip
    figs = [("Accuracy against cost", figures[0]), *figures[1:]]
    return write_report(
        out, f"Low- vs high-resolution comparison · {cfg.task}", figures=figs,
        tables={"Comparison (95% CIs)": shown}, notes=all_notes,
    )  # fmt: skip
