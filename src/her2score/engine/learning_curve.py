"""Learning curve: held-out macro AUC against the number of training slides, through ``train_run``.

One patient-grouped, stratified test set is held out once; nested, stratified, patient-grouped subsets
of the remaining slides of each size are trained on with the full recipe (inner cross-validation and all,
as ``her2score train`` would on a cohort of that size) and scored on the same test slides, beside the
stain-statistics model alone fitted on the same subset. ``learning_curve.csv``, ``.json`` and ``.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.data.manifest import Cohort, holdout_split
from her2score.engine.config import TrainConfig
from her2score.errors import ConfigError


def nested_subsets(cohort: Cohort, pool: np.ndarray, sizes: list[int], seed: int) -> dict[int, np.ndarray]:
    """Nested subsets of ``pool`` (positions of ``cohort``) of about each size, stratified by class and
    grouped by patient: one patient order per class, each subset takes its share of every class's front."""
    rng = np.random.default_rng([int(seed), 0x1C])
    sub = cohort.subset(pool)
    by_class: dict[int, list[np.ndarray]] = {}
    for c in np.unique(sub.y):
        patients = sorted(set(sub.groups[sub.y == c]))
        order = rng.permutation(len(patients))
        by_class[int(c)] = [pool[sub.groups == patients[i]] for i in order]
    out = {}
    for n in sizes:
        if n > len(pool):
            raise ConfigError(f"learning-curve size {n} is larger than the {len(pool)} non-test slides")
        chosen: list[np.ndarray] = []
        for groups in by_class.values():
            total = sum(len(g) for g in groups)
            want, taken = max(1, round(n * total / len(pool))), 0
            for g in groups:
                if taken >= want:
                    break
                chosen.append(g)
                taken += len(g)
        out[n] = np.unique(np.concatenate(chosen))
    return out


def learning_curve(
    cohort: Cohort,
    cfg: TrainConfig,
    sizes: list[int],
    out: str | Path,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train on each subset size and score one held-out test set; returns and writes the table."""
    from her2score.engine.innercv import use_inner_cv
    from her2score.engine.train import Split, _carve_val, train_run
    from her2score.io import write_csv, write_json

    out = Path(out)
    test = holdout_split(cohort, cfg.test_fraction, cfg.seed)[1]
    pool = np.setdiff1d(np.arange(len(cohort)), test)
    subsets = nested_subsets(cohort, pool, sorted(set(sizes)), cfg.seed)
    names = cohort.frame["slide"].astype(str).to_numpy()
    rows: list[dict[str, Any]] = []
    for subset in subsets.values():
        train_names, test_names = set(names[subset]), set(names[test])

        def rule(readable: Cohort, train_names: set = train_names, test_names: set = test_names) -> list:
            slides = readable.frame["slide"].astype(str).to_numpy()
            tr = np.flatnonzero(np.isin(slides, list(train_names)))
            te = np.flatnonzero(np.isin(slides, list(test_names)))
            va = np.array([], dtype=np.int64)
            if not use_inner_cv(cfg, len(tr)):
                tr, va = _carve_val(readable, tr, cfg.val_fraction, cfg.seed + 1)
            return [Split("main", tr, va, te)]

        log(f"learning curve: {len(subset)} training slides, {len(test)} test slides")
        result = train_run(
            cohort, cfg, out / f"n{len(subset):04d}", quiet=quiet, log=log, heatmaps=0,
            overwrite=overwrite, splits=rule,
        )  # fmt: skip
        m = result.metrics or {}
        base = m.get("baselines", {})
        rows.append(
            {
                "n_train": len(subset), "n_test": m.get("n"), "auc_macro": m.get("auc_macro"),
                "f1_macro": m.get("f1_macro"),
                "stain_auc_macro": base.get("stain statistics alone", {}).get("auc_macro"),
                "prior_auc_macro": base.get("class prior", {}).get("auc_macro"),
                "warnings": len(result.warnings),
            }
        )  # fmt: skip
    frame = pd.DataFrame(rows)
    write_csv(out / "learning_curve.csv", frame)
    write_json(out / "learning_curve.json", {"task": cohort.task.name, "model": cfg.model, "rows": rows})
    plot_learning_curve(frame, out / "learning_curve.png", f"{cfg.model} · {cohort.task.name}")
    return frame


def plot_learning_curve(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Held-out macro AUC against training slides: the model and the stain-statistics model alone."""
    from her2score.io import save_figure
    from her2score.report.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(frame["n_train"], frame["auc_macro"], "o-", label="model")
    if frame["stain_auc_macro"].notna().any():
        ax.plot(frame["n_train"], frame["stain_auc_macro"], "s--", label="stain statistics alone")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("training slides")
    ax.set_ylabel("held-out macro AUC")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(path, fig)
