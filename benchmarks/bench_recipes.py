"""Training recipes against their baselines on several fresh synthetic cohorts (held-out slides).

For each cohort (seed, number of slides, slide size, task) and each recipe, ``her2score train``'s engine
trains on a patient-grouped split and scores the held-out slides; the stain-statistics model alone and
the class prior are scored on the same slides. Prints one row per cohort x recipe and the command.

    .venv/bin/python benchmarks/bench_recipes.py [--cohorts 48:101:her2-4way,80:102:her2-3way]
        [--recipes small-cohort,legacy] [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cohorts", default="48:101:her2-4way,80:102:her2-3way,120:103:her2-3way",
        help="comma-separated N:SEED:TASK (synthetic slides, cohort seed, task)",
    )  # fmt: skip
    parser.add_argument("--recipes", default="small-cohort,legacy")
    parser.add_argument("--size-mm", default="2.0x1.5", help="synthetic slide size WIDTHxHEIGHT in mm")
    parser.add_argument("--slide-mpp", type=float, default=1.0, help="synthetic slides' level-0 µm/px")
    parser.add_argument("--test-fraction", type=float, default=1 / 3)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    parser.add_argument("--out", type=Path, default=None, help="folder for cohorts and runs (default: temp)")
    args = parser.parse_args()

    from her2score.data.manifest import load_manifest
    from her2score.data.synth import make_cohort
    from her2score.engine.config import load_config
    from her2score.engine.train import train_run

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    size = tuple(float(v) for v in args.size_mm.lower().split("x"))
    rows = []
    for spec in args.cohorts.split(","):
        n, seed, task = spec.split(":")
        folder = root / f"cohort_{n}_{seed}"
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            make_cohort(folder, n=int(n), seed=int(seed), kind="slides", size_mm=size, mpp=args.slide_mpp)
        for recipe in args.recipes.split(","):
            cfg = load_config(
                None, recipe=recipe, task=task, seed=int(seed), test_fraction=args.test_fraction, n_boot=200,
                epochs=args.epochs, cache_dir=str(root / "cache"), device="cpu",
            )  # fmt: skip
            cohort = load_manifest(manifest, cfg.task, cfg.equivocal)
            start = time.perf_counter()
            run = root / f"run_{n}_{seed}_{recipe}"
            result = train_run(cohort, cfg, run, quiet=True, log=lambda s: None, heatmaps=0, overwrite=True)
            seconds = time.perf_counter() - start
            m = result.metrics
            base = m.get("baselines", {})
            rows.append(
                {
                    "cohort": f"{n} slides, seed {seed}, {task}", "recipe": recipe, "model": cfg.model,
                    "n_test": m["n"], "auc": m["auc_macro"], "f1": m["f1_macro"],
                    "stain_auc": base.get("stain statistics alone", {}).get("auc_macro"),
                    "stain_f1": base.get("stain statistics alone", {}).get("f1_macro"),
                    "prior_auc": base.get("class prior", {}).get("auc_macro"),
                    "warnings": len(m.get("warnings", [])), "seconds": round(seconds),
                }
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"{'cohort':34} {'recipe':13} {'n':>3} {'AUC':>6} {'F1':>6} {'stain AUC':>9} {'stain F1':>8} "
        f"{'warn':>4} {'s':>5}"
    )
    for r in rows:
        fmt = lambda v: "  –  " if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"{r['cohort']:34} {r['recipe']:13} {r['n_test']:>3} {fmt(r['auc']):>6} {fmt(r['f1']):>6} "
            f"{fmt(r['stain_auc']):>9} {fmt(r['stain_f1']):>8} {r['warnings']:>4} {r['seconds']:>5}"
        )
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
