"""Training recipes against their baselines on several fresh synthetic cohorts (held-out slides).

For each cohort (slides, cohort seed, task, site variation, look) x recipe x training seed,
``her2score train``'s engine trains on a patient-grouped split and scores the held-out slides; the
stain-statistics model alone and the class prior are scored on the same slides by ``train`` itself.
``--loso`` instead trains on all sites but one and tests on that one (leave-one-site-out), once per
stain-augmentation setting; ``--learning-curve 16,32,64`` runs ``her2score learning-curve`` per cohort.
Prints one JSON line per run, then a Markdown table and the command.

    .venv/bin/python benchmarks/bench_recipes.py [--cohorts 48:101:her2-4way,80:102:her2-3way]
        [--recipes small-cohort,legacy] [--seeds 0,1] [--out DIR] [--epochs N]
    .venv/bin/python benchmarks/bench_recipes.py --cohorts 48:201:her2-4way:wide:foreign
    .venv/bin/python benchmarks/bench_recipes.py --cohorts 90:301:her2-4way:wide --loso
        --augments default,none,strong

A cohort is ``N:SEED:TASK[:VARIATION[:LOOK]]``; VARIATION ``mild`` (default) or ``wide`` (per-site stain
and scanner ranges, ``her2score.data.synth.render.SITE_VARIATION``), LOOK ``default`` or ``foreign``
(another renderer's look, drawn as 4096x3072 slides at 0.5 µm/px like the hidden cohort of issue 15).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Stain-augmentation settings compared leave-one-site-out (keys of AugmentConfig).
AUGMENTS: dict[str, dict[str, float]] = {
    "default": {},
    "none": {"stain_jitter": 0.0, "stain_shift": 0.0, "brightness": 0.0},
    "strong": {"stain_jitter": 0.2, "stain_shift": 0.05, "brightness": 0.08},
}


def make(root: Path, spec: str, size: tuple[float, float], slide_mpp: float) -> tuple[Path, dict[str, Any]]:
    """Generate (once) the cohort named by ``spec``; its manifest and its description."""
    from her2score.data.synth import make_cohort

    parts = spec.split(":")
    n, seed, task = int(parts[0]), int(parts[1]), parts[2]
    variation = parts[3] if len(parts) > 3 else "mild"
    look = parts[4] if len(parts) > 4 else "default"
    if look == "foreign":  # the hidden cohort's format: 4096 x 3072 px at 0.5 µm/px
        size, slide_mpp = (2.048, 1.536), 0.5
    folder = root / f"cohort_{n}_{seed}" if (variation, look) == ("mild", "default") else (
        root / f"{look}_{variation}_{n}_{seed}"
    )  # fmt: skip
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        make_cohort(
            folder, n=n, seed=seed, kind="slides", size_mm=size, mpp=slide_mpp, site_variation=variation,
            look=look, workers=1,
        )  # fmt: skip
    label = f"{n} slides, seed {seed}, {task}" + ("" if variation == "mild" else f", {variation} sites")
    label += "" if look == "default" else f", {look} look"
    return manifest, {"cohort": label, "task": task, "seed": seed, "n": n}


def row(result: Any, **extra: Any) -> dict[str, Any]:
    m = result.metrics or {}
    base = m.get("baselines", {})
    return {
        **extra, "n_test": m.get("n"), "auc": m.get("auc_macro"), "f1": m.get("f1_macro"),
        "stain_auc": base.get("stain statistics alone", {}).get("auc_macro"),
        "stain_f1": base.get("stain statistics alone", {}).get("f1_macro"),
        "prior_auc": base.get("class prior", {}).get("auc_macro"), "warnings": m.get("warnings", []),
    }  # fmt: skip


def stain_heads(cohort: Any, cfg: Any, rule: Any) -> dict[str, float | None]:
    """Held-out macro AUC of the stain-statistics model alone, each feature set, on ``train_run``'s split
    (fitted on the training and validation slides): cheap, no CNN."""
    import numpy as np
    import torch

    from her2score.data.inputs import create_input_kind
    from her2score.engine.innercv import _macro_auc
    from her2score.engine.train import make_splits
    from her2score.models.nets.stain_stats import FEATURE_SETS, StainStatistics
    from her2score.models.registry import get_model_spec

    spec = get_model_spec(cfg.model)
    kind = create_input_kind(spec.input_kind, **{**spec.data, **cfg.data_config()})
    prepared = kind.prepare(cohort.frame.to_dict("records"), cfg.resolved_cache_dir(), 0, True)
    readable = cohort.subset(prepared.positions)
    split = (rule or (lambda c: make_splits(c, cfg)))(readable)[0]
    train = np.sort(np.concatenate([split.train, split.val]))
    stats = kind.statistics(prepared, train, pretrained=False)
    images = kind.images(prepared)
    out = {}
    for features in FEATURE_SETS:
        head = StainStatistics(len(readable.classes), features)
        head.fit(images[train], readable.y[train], stats["mean"], stats["std"])
        batch = kind.batch(prepared, split.test, stats, torch.device("cpu"), inference=True)
        with torch.no_grad():
            probs = torch.softmax(head(batch["image"]), 1).numpy()
        out[features] = _macro_auc(readable.y[split.test], probs, len(readable.classes))
    return out


def as_user(
    manifest: Path,
    cohort: Any,
    task: str,
    model: str | None,
    split_seed: int,
    out: Path,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Exactly what a user (and issue 15's judge) runs: a patient-grouped holdout of the cohort (a third,
    seeded by ``split_seed``) written as ``train.csv`` / ``test.csv``; then, in fresh processes, the CLI
    ``her2score train --manifest train.csv --task TASK [--model MODEL] --out run`` with every other
    setting at its default (its own internal split, recipe, seed 0, device), and
    ``her2score evaluate --model run/model.safetensors --manifest test.csv``. Macro AUC/F1 on test.csv
    from ``evaluate``'s metrics.json, beside its baselines (the checkpoint's stain head alone, the class
    prior), the stain head refitted on every slide of train.csv and a plain logistic regression on colour
    and OD percentiles of the overviews (:func:`plain_lr`), with wall and CPU seconds of the two commands.
    Prepared overviews are cached in ``out``'s parent (``HER2SCORE_CACHE``), as a user's cache would be."""
    import os
    import resource
    import shutil
    import subprocess

    import pandas as pd

    from her2score.data.manifest import holdout_split

    train, test = holdout_split(cohort, 1 / 3, split_seed)
    frame = pd.read_csv(manifest)
    frame["slide"] = [str((manifest.parent / s).resolve()) for s in frame["slide"]]
    out.mkdir(parents=True, exist_ok=True)
    frame.iloc[train].to_csv(out / "train.csv", index=False)
    frame.iloc[test].to_csv(out / "test.csv", index=False)
    env = {**os.environ, "HER2SCORE_CACHE": str(out.parent / "user_cache")}
    cli = [sys.executable, "-m", "her2score"]
    commands = {
        "train": [*cli, "train", "--manifest", "train.csv", "--task", task, "--out", "run", "--quiet",
                  *(["--model", model] if model else []), *(["--recipe", recipe] if recipe else [])],
        "evaluate": [*cli, "evaluate", "--model", "run/model.safetensors", "--manifest", "test.csv",
                     "--out", "eval", "--quiet"],
    }  # fmt: skip
    times = {}
    for name, command in commands.items():
        for folder in ("run", "eval") if name == "train" else ("eval",):  # a fresh run, a fresh evaluation
            shutil.rmtree(out / folder, ignore_errors=True)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        (out / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode not in (0, 1):  # 1: some slide skipped (listed), the run is still there
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        times[name] = (round(time.perf_counter() - start), round(cpu))
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    internal = json.loads((out / "run" / "metrics.json").read_text(encoding="utf-8"))
    base = metrics.get("baselines", {})
    inner_path = out / "run" / "inner_cv.json"
    inner = json.loads(inner_path.read_text(encoding="utf-8")) if inner_path.is_file() else {}
    import yaml

    used = yaml.safe_load((out / "run" / "config.yaml").read_text(encoding="utf-8"))
    from her2score.data.manifest import load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.innercv import _macro_auc

    cfg = load_config(
        None,
        task=task,
        model=model,
        recipe=recipe,
        cache_dir=env["HER2SCORE_CACHE"] + "/lowres",
        device="cpu",
    )
    user = load_manifest(out / "train.csv", task, cfg.equivocal)
    held = load_manifest(out / "test.csv", task, cfg.equivocal)
    k = len(held.classes)
    return {
        "model": used["model"], "recipe": used["recipe"], "n_train": len(train), "n_test": len(test),
        "auc": metrics.get("auc_macro"), "f1": metrics.get("f1_macro"),
        "stain_auc": base.get("stain statistics alone", {}).get("auc_macro"),
        "stain_f1": base.get("stain statistics alone", {}).get("f1_macro"),
        "prior_auc": base.get("class prior", {}).get("auc_macro"),
        "stain_all_train_auc": _macro_auc(held.y, stain_head_fit_predict(user, held, cfg), k),
        "plain_lr_auc": _macro_auc(held.y, plain_lr(user, held, cfg), k),
        "fusion_weight": inner.get("fusion_weight"), "epochs": inner.get("epochs"),
        "fold_epochs": inner.get("fold_epochs"), "oof_auc": inner.get("oof_auc"),
        "model_choice": "inner-cv" if inner else "validation",
        "internal_auc": internal.get("auc_macro"), "internal_n": internal.get("n"),
        "warnings": metrics.get("warnings", []) + internal.get("warnings", []),
        "train_wall_cpu_s": times["train"], "evaluate_wall_cpu_s": times["evaluate"],
    }  # fmt: skip


def _prepare(cohort: Any, cfg: Any) -> tuple[Any, Any]:
    """The input kind of ``cfg.model`` and ``cohort`` prepared by it (the cached overviews)."""
    from her2score.data.inputs import create_input_kind
    from her2score.models.registry import get_model_spec

    spec = get_model_spec(cfg.model)
    kind = create_input_kind(spec.input_kind, **{**spec.data, **cfg.data_config()})
    return kind, kind.prepare(cohort.frame.to_dict("records"), cfg.resolved_cache_dir(), 0, True)


def _overviews(cohort: Any, cfg: Any) -> tuple[Any, Any]:
    """The low-resolution overviews (N, 3, H, W uint8) the model reads, and the readable cohort."""
    kind, prepared = _prepare(cohort, cfg)
    return kind.images(prepared), cohort.subset(prepared.positions)


def plain_lr(train: Any, test: Any, cfg: Any) -> Any:
    """Test probabilities of a plain scikit-learn logistic regression (standardised, C = 1) on the 5th to
    95th percentiles of RGB and of optical density over the non-white pixels of each overview: the few
    lines of scikit-learn that issue 15 held the defaults against, written independently of the stain
    head (no deconvolution, no glass normalisation, no inner CV)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(images: Any) -> Any:
        rows = []
        for image in np.asarray(images):
            rgb = image.reshape(3, -1).astype(np.float64)
            tissue = rgb[:, rgb.mean(0) < 215]
            if tissue.shape[1] < 16:
                tissue = rgb
            od = -np.log10(np.clip(tissue, 1, 255) / 255)
            q = (5, 25, 50, 75, 95)
            rows.append(np.concatenate([np.percentile(tissue, q, axis=1).ravel(),
                                        np.percentile(od, q, axis=1).ravel()]))  # fmt: skip
        return np.array(rows)

    x_train, readable_train = _overviews(train, cfg)
    x_test, _ = _overviews(test, cfg)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(features(x_train), readable_train.y)
    probs = np.zeros((len(x_test), len(train.classes)))
    probs[:, model.classes_] = model.predict_proba(features(x_test))
    return probs


def stain_head_fit_predict(user: Any, test: Any, cfg: Any) -> Any:
    """Probabilities of the default stain head fitted on all of ``user``, for the ``test`` cohort."""
    import numpy as np
    import torch

    from her2score.models.nets.stain_stats import StainStatistics

    kind, prepared = _prepare(user, cfg)
    stats = kind.statistics(prepared, np.arange(len(prepared.positions)), pretrained=False)
    head = StainStatistics(len(user.classes))
    readable = user.subset(prepared.positions)
    head.fit(kind.images(prepared), readable.y, stats["mean"], stats["std"])
    _, prepared_test = _prepare(test, cfg)
    index = np.arange(len(prepared_test.positions))
    batch = kind.batch(prepared_test, index, stats, torch.device("cpu"), inference=True)
    with torch.no_grad():
        return torch.softmax(head(batch["image"]), 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cohorts", default="48:101:her2-4way,80:102:her2-3way,120:103:her2-3way",
        help="comma-separated N:SEED:TASK[:VARIATION[:LOOK]]",
    )  # fmt: skip
    parser.add_argument(
        "--recipes", default=None,
        help="recipes (default small-cohort,legacy; with --as-user 'default': train is given no --recipe)",
    )  # fmt: skip
    parser.add_argument("--seeds", default="", help="training seeds (default: the cohort's seed)")
    parser.add_argument("--size-mm", default="2.0x1.5", help="synthetic slide size WIDTHxHEIGHT in mm")
    parser.add_argument("--slide-mpp", type=float, default=1.0, help="synthetic slides' level-0 µm/px")
    parser.add_argument("--test-fraction", type=float, default=1 / 3)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    parser.add_argument("--set", default="", help="extra config keys, KEY=VALUE;KEY=VALUE (YAML values)")
    parser.add_argument("--loso", action="store_true", help="leave-one-site-out instead of a holdout")
    parser.add_argument(
        "--augments", default="default,none,strong", help="with --loso: " + ",".join(AUGMENTS)
    )
    parser.add_argument("--learning-curve", default="", help="sizes: run the learning curve per cohort")
    parser.add_argument(
        "--as-user", action="store_true", help="train on train.csv, score test.csv (issue 15)"
    )
    parser.add_argument(
        "--model", default=None, help="with --as-user: the --model passed to train (default: none passed)"
    )
    parser.add_argument("--heads-only", action="store_true", help="only the stain heads (no CNN): cheap")
    parser.add_argument("--out", type=Path, default=None, help="folder for cohorts and runs (default: temp)")
    args = parser.parse_args()

    import numpy as np
    import yaml

    from her2score.data.manifest import load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.innercv import use_inner_cv
    from her2score.engine.train import Split, _carve_val, train_run

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    size = tuple(float(v) for v in args.size_mm.lower().split("x"))
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set.split(";") if kv)}
    recipes = (args.recipes or ("default" if args.as_user else "small-cohort,legacy")).split(",")
    rows = []
    quiet = {"quiet": True, "log": lambda s: None}
    for spec in args.cohorts.split(","):
        manifest, info = make(root, spec, size, args.slide_mpp)
        seeds = [int(s) for s in args.seeds.split(",") if s] or [info["seed"]]
        for recipe in recipes:
            for seed in seeds:
                variants = args.augments.split(",") if args.loso else ["default"]
                for aug in variants:
                    cfg = load_config(
                        None, recipe=None if recipe == "default" else recipe, task=info["task"], seed=seed,
                        test_fraction=args.test_fraction, n_boot=200, epochs=args.epochs,
                        cache_dir=str(root / "cache"), device="cpu",
                        augment=AUGMENTS[aug] or None, **extra,
                    )  # fmt: skip
                    cohort = load_manifest(manifest, cfg.task, cfg.equivocal)
                    tag = f"{manifest.parent.name}_{recipe}_{seed}_{aug}"
                    if args.learning_curve:
                        from her2score.engine.learning_curve import learning_curve

                        sizes = [int(v) for v in args.learning_curve.split(",")]
                        start = time.perf_counter()
                        curve = root / f"curve_{tag}"
                        frame = learning_curve(cohort, cfg, sizes, curve, overwrite=True, **quiet)
                        for r in frame.to_dict("records"):
                            rows.append({**info, "recipe": recipe, "train_seed": seed, **r,
                                         "seconds": round(time.perf_counter() - start)})  # fmt: skip
                            print(json.dumps(rows[-1], default=str), flush=True)
                        continue
                    sites = sorted(set(cohort.frame["site"])) if args.loso else [None]
                    for site in sites:
                        rule = None
                        if site is not None:

                            def rule(readable: Any, site: Any = site, cfg: Any = cfg) -> list[Split]:
                                held = (readable.frame["site"] == site).to_numpy()
                                train, val = np.flatnonzero(~held), np.array([], dtype=np.int64)
                                if not use_inner_cv(cfg, len(train)):
                                    train, val = _carve_val(readable, train, cfg.val_fraction, cfg.seed + 1)
                                return [Split("main", train, val, np.flatnonzero(held))]

                        if args.as_user:
                            got = as_user(
                                manifest, cohort, info["task"], args.model, seed, root / f"user_{tag}",
                                None if recipe == "default" else recipe,
                            )  # fmt: skip
                            rows.append({**info, "recipe": recipe, "train_seed": seed, **got})
                            print(json.dumps(rows[-1], default=str), flush=True)
                            continue
                        if args.heads_only:
                            aucs = stain_heads(cohort, cfg, rule)
                            rows.append({**info, "train_seed": seed, "held_out_site": site, **aucs})
                            print(json.dumps(rows[-1], default=str), flush=True)
                            continue
                        start = time.perf_counter()
                        run = root / (f"run_{tag}" + ("" if site is None else f"_site{site}"))
                        result = train_run(
                            cohort, cfg, run, heatmaps=0, overwrite=True, splits=rule, **quiet
                        )  # fmt: skip
                        rows.append(
                            row(
                                result, **info, recipe=recipe, model=cfg.model, train_seed=seed, augment=aug,
                                held_out_site=site, seconds=round(time.perf_counter() - start),
                            )
                        )  # fmt: skip
                        print(json.dumps(rows[-1], default=str), flush=True)
    print()
    fmt = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    if args.as_user:
        print("| cohort | model | split seed | train / test | **AUC on test.csv** | F1 | "
              "stain head (checkpoint) AUC / F1 | stain head (all train.csv) | plain LR | prior | "
              "CNN weight | epochs | warnings | "
              "train wall / CPU s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            w = "–" if r["fusion_weight"] is None else f"{r['fusion_weight']:g}"
            print(f"| {r['cohort']} | {r['model']} | {r['train_seed']} | {r['n_train']} / {r['n_test']} | "
                  f"**{fmt(r['auc'])}** | {fmt(r['f1'])} | {fmt(r['stain_auc'])} / {fmt(r['stain_f1'])} | "
                  f"{fmt(r['stain_all_train_auc'])} | {fmt(r['plain_lr_auc'])} | {fmt(r['prior_auc'])} | "
                  f"{w} | {r['epochs']} | {len(r['warnings'])} | {r['train_wall_cpu_s'][0]} / "
                  f"{r['train_wall_cpu_s'][1]} |")  # fmt: skip
    elif args.heads_only:
        from her2score.models.nets.stain_stats import FEATURE_SETS

        print("| cohort | seed | test site | " + " | ".join(FEATURE_SETS) + " |")
        print("|---|---|---|" + "---|" * len(FEATURE_SETS))
        for r in rows:
            site = "–" if r["held_out_site"] is None else r["held_out_site"]
            aucs = " | ".join(fmt(r[f]) for f in FEATURE_SETS)
            print(f"| {r['cohort']} | {r['train_seed']} | {site} | {aucs} |")
    elif args.learning_curve:
        print("| cohort | recipe | training slides | held-out macro AUC | stain statistics alone |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['cohort']} | {r['recipe']} | {r['n_train']} | {fmt(r['auc_macro'])} | "
                  f"{fmt(r['stain_auc_macro'])} |")  # fmt: skip
    else:
        print("| cohort | recipe | seed | augment | test site | n | macro AUC | F1 | stain AUC / F1 | warn |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['cohort']} | {r['recipe']} | {r['train_seed']} | {r['augment']} | "
                f"{'–' if r['held_out_site'] is None else r['held_out_site']} | {r['n_test']} | "
                f"{fmt(r['auc'])} | "
                f"{fmt(r['f1'])} | {fmt(r['stain_auc'])} / {fmt(r['stain_f1'])} | {len(r['warnings'])} |"
            )
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
