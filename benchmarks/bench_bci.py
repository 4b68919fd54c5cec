"""LGD-Net against H&E-only across synthetic paired cohorts: ``her2score benchmark bci`` with its defaults.

For each seed, a cohort of ``--n`` paired 512 px patches in the BCI layout is made (the generator's look
varies with the seed: ``seed + 1`` staining sites, so other stain vectors, gains and JPEG qualities),
``benchmark bci`` runs on it with its defaults (or ``--models``), and one line per seed says macro F1 of
``lgd-net`` and ``he-only``, the gain, and the wall and CPU minutes of the whole benchmark.

    python benchmarks/bench_bci.py --seeds 1,2,3 --n 160 --out /tmp/bench_bci
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def _cpu_seconds() -> float:
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--n", type=int, default=160, help="pairs per cohort")
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--models", default=None, help="benchmark models (default: its defaults)")
    parser.add_argument("--out", type=Path, default=Path("bench_bci_out"))
    args = parser.parse_args()

    from her2score.cli.benchmark import run_bci_benchmark
    from her2score.data.synth import make_cohort

    lines = []
    for seed in (int(s) for s in args.seeds.split(",")):
        root = args.out / f"cohort-{seed}"
        if not (root / "manifest.csv").is_file():
            make_cohort(root, args.n, seed=seed, kind="pairs", n_sites=seed + 1, patch_size=args.patch_size)
        start, cpu = time.perf_counter(), _cpu_seconds()
        models = args.models.split(",") if args.models else None
        frame = run_bci_benchmark(
            root, args.out / f"run-{seed}", models=models, quiet=True, log=lambda _: None
        )
        f1 = dict(zip(frame["model"], frame["f1_macro"], strict=True))
        wall, used = (time.perf_counter() - start) / 60, (_cpu_seconds() - cpu) / 60
        gain = 100 * (f1.get("lgd-net", float("nan")) - f1.get("he-only", float("nan")))
        scores = " | ".join(
            f"{f1.get(m, float('nan')):.3f}" for m in ("lgd-net", "he-only", "ihc-only", "virtual-stain")
        )
        lines.append(f"| {seed} | {seed + 1} | {scores} | {gain:+.1f} | {wall:.1f} | {used:.1f} |")
        print(lines[-1], flush=True)
    print(
        "\n| seed | sites | LGD-Net F1 | H&E-only F1 | IHC-only F1 | virtual-stain F1 | gain (points) "
        "| wall min | CPU min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\npython benchmarks/bench_bci.py --seeds {args.seeds} --n {args.n} --out {args.out}")


if __name__ == "__main__":
    main()
