"""``her2score benchmark bci``: the BCI protocol in one command.

Reads a folder in the BCI layout (:mod:`her2score.data.bci`), writes the manifests with the official
split, trains LGD-Net, its H&E-only, IHC-only and virtual-staining baselines (and, when asked, its
ablations) through the one training engine (``train_run``), and writes ``OUT/results.csv`` (one row per
model: held-out metrics with 95 % bootstrap CIs, CPU milliseconds and GFLOPs per full 1024² patch and
at the trained size, PSNR/SSIM of the virtual IHC) and ``OUT/report.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from her2score.cli.options import Device, Quiet, Seed


@dataclass(frozen=True)
class BenchmarkModel:
    """One row of the benchmark: which manifest, which registered model, with which options."""

    name: str
    manifest: str  # pairs, he or ihc
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    stain_head: bool = True  # the engine's default; off for the CNN baselines (a CNN against a CNN)
    what: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # training settings of this row (e.g. lr)
    default: bool = True  # run without --models
    ihc_teacher: bool = False  # LGD-Net with the ihc-only classifier as its frozen teacher


BENCHMARK_MODELS = (
    BenchmarkModel(
        "lgd-net",
        "pairs",
        "lgd-net",
        what="LGD-Net (joint IHC teacher, all losses; a fitted nuclear-statistics head mixed with the fused "
        "classifier by a validation-chosen weight), predicts from H&E",
    ),
    BenchmarkModel("he-only", "he", "lowres-resnet", stain_head=False, what="ResNet-18 on H&E alone"),
    BenchmarkModel(
        "ihc-only", "ihc", "lowres-resnet", stain_head=False, what="ResNet-18 on IHC (upper bound)"
    ),
    BenchmarkModel(
        "virtual-stain",
        "pairs",
        "virtual-stain",
        what="pix2pix U-Net H&E → IHC (L1 + PatchGAN), scored by the ihc-only classifier",
    ),
    BenchmarkModel(
        "lgd-net-no-align", "pairs", "lgd-net", {"align_weight": 0.0}, what="without alignment", default=False
    ),
    BenchmarkModel(
        "lgd-net-no-aux",
        "pairs",
        "lgd-net",
        {"nuclei_weight": 0.0, "membrane_weight": 0.0},
        what="without auxiliary tasks",
        default=False,
    ),
    BenchmarkModel(
        "lgd-net-nuclei-only",
        "pairs",
        "lgd-net",
        {"membrane_weight": 0.0},
        what="nuclei task alone",
        default=False,
    ),
    BenchmarkModel(
        "lgd-net-no-knowledge",
        "pairs",
        "lgd-net",
        {"knowledge": False},
        what="without the H&E nuclear-statistics head",
        default=False,
    ),
    BenchmarkModel(
        "lgd-net-knowledge-sum",
        "pairs",
        "lgd-net",
        {"knowledge_fit": False},
        what="the nuclear-statistics head trained with the network, its logits added (the previous default)",
        default=False,
    ),
    BenchmarkModel(
        "lgd-net-ihc-teacher",
        "pairs",
        "lgd-net",
        what="the ihc-only classifier as frozen teacher, with distillation of its predictions",
        default=False,
        ihc_teacher=True,
    ),
    BenchmarkModel(
        "lgd-net-ihc-teacher-no-kd",
        "pairs",
        "lgd-net",
        {"kd_weight": 0.0},
        what="the ihc-only classifier as frozen teacher, without distillation",
        default=False,
        ihc_teacher=True,
    ),
    BenchmarkModel(
        "lgd-net-membrane-only",
        "pairs",
        "lgd-net",
        {"nuclei_weight": 0.0},
        what="membrane task alone",
        default=False,
    ),
)
METRICS = ("accuracy", "f1_macro", "auc_macro", "kappa_qw")
#: The side (px) at which inference cost is measured: one full BCI patch (1024² at ~0.5 µm/px).
COST_SIDE = 1024
TASK = "her2-4way"


def register(app: typer.Typer) -> None:
    """Add ``benchmark bci`` to the CLI."""
    group = typer.Typer(help="Benchmark protocols (train and evaluate several models the same way).")
    group.command("bci")(bci)
    app.add_typer(group, name="benchmark")


def bci(
    root: Annotated[
        Path, typer.Option("--root", help="BCI folder: HE/ and IHC/ (optionally train/, test/).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (results.csv, report.md, runs/).")],
    size: Annotated[
        int, typer.Option("--size", help="Model input side in px (images read to fill it).")
    ] = 128,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per model.")] = 12,
    device: Device = "cpu",
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated subset of: " + ", ".join(m.name for m in BENCHMARK_MODELS) + "; 'all' for "
            "every one. Default: " + ", ".join(m.name for m in BENCHMARK_MODELS if m.default) + " (the "
            "ablations are opt-in: each costs another LGD-Net training)",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per training step.")] = 8,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Train and evaluate LGD-Net, its baselines (H&E-only, IHC-only, virtual staining) and ablations on
    the official BCI split; write OUT/results.csv and OUT/report.md."""
    from her2score.cli.checks import make_console

    console = make_console()
    chosen = [m.strip() for m in models.split(",")] if models else None
    frame = run_bci_benchmark(
        root, out, size=size, epochs=epochs, device=device, models=chosen, batch_size=batch_size,
        seed=seed, quiet=quiet, log=console.print,
    )  # fmt: skip
    console.print(frame.to_string(index=False))
    console.print(f"results: {out / 'results.csv'} · report: {out / 'report.md'}")


def read_mpp_for(side: int, size: int, patch_mpp: float) -> float:
    """The µm/px at which a ``side`` px patch at ``patch_mpp`` fills ``size`` px (within 1-64 µm/px)."""
    return float(min(64.0, max(1.0, patch_mpp * side / size)))


def run_bci_benchmark(
    root: str | Path,
    out: str | Path,
    size: int = 128,
    epochs: int = 12,
    device: str = "cpu",
    models: list[str] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    n_boot: int = 1000,
    quiet: bool = True,
    log: Any = print,
    teacher: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """Run the protocol (see the module docstring); returns the results table.

    The ``ihc-only`` classifier trains first: it is virtual-stain's scorer and the frozen IHC teacher of
    ``lgd-net-ihc-teacher`` (trained even when not asked, if a model needs it). ``teacher``: an
    ``ihc-only`` model saved by an earlier run on the same folder, used instead of training one;
    ``overrides``: further model options per benchmark model name (e.g. ``{"lgd-net": {"align_weight":
    0}}``, for benchmark scripts)."""
    import pandas as pd

    from her2score.data.bci import BCI_MPP, LABEL_WARNING, _image_size, find_bci_pairs, write_bci_manifests
    from her2score.data.manifest import load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.train import train_run
    from her2score.errors import ConfigError
    from her2score.io import write_csv

    known = {m.name: m for m in BENCHMARK_MODELS}
    if models == ["all"]:
        models = list(known)
    unknown = sorted(set(models or ()) - set(known))
    if unknown:
        raise ConfigError(f"unknown benchmark model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # in the table's order, whatever the order asked: ihc-only before virtual-stain, which it scores
    chosen = [m for m in BENCHMARK_MODELS if (m.name in models if models else m.default)]
    needs_teacher = any(m.model == "virtual-stain" or m.ihc_teacher for m in chosen)
    if needs_teacher and teacher is None and "ihc-only" not in {m.name for m in chosen}:
        log("ihc-only: trained as the scorer of virtual-stain / the frozen IHC teacher of LGD-Net")
        chosen = [m for m in BENCHMARK_MODELS if m in chosen or m.name == "ihc-only"]
    # the IHC classifier first: the others use it
    order = sorted(chosen, key=lambda m: m.name != "ihc-only")
    out = Path(out)
    pairs = find_bci_pairs(root)
    log(f"WARNING: {LABEL_WARNING}")
    side = max(_image_size(pairs[0].he))
    mpp = read_mpp_for(side, size, BCI_MPP)
    manifests = write_bci_manifests(pairs, out / "manifests", BCI_MPP)
    n_train = sum(p.split == "train" for p in pairs)
    log(
        f"{len(pairs)} pairs ({n_train} train, {len(pairs) - n_train} test) of {side} px, "
        f"read at {mpp:g} µm/px"
    )
    rows, confusions, trained, extra = [], {}, {}, {}
    if teacher is not None:
        trained["ihc-only"] = Path(teacher)
    for spec in order:
        start, cpu_start = time.perf_counter(), time.process_time()
        model_args = {**spec.model_args, **(overrides or {}).get(spec.name, {})}
        if spec.model == "virtual-stain" and "ihc-only" in trained:
            model_args.setdefault("scorer", str(trained["ihc-only"]))  # exactly the IHC-only classifier
        if spec.ihc_teacher and "ihc-only" in trained:
            model_args.setdefault("teacher", str(trained["ihc-only"]))  # the IHC-only classifier, frozen
        cfg = load_config(
            None, model=spec.model, task=TASK, epochs=epochs, batch_size=batch_size, device=device,
            mpp=mpp, input_size=size, seed=seed, n_boot=n_boot, stain_head=spec.stain_head,
            model_args=model_args, cache_dir=str(out / "cache"), **spec.config,
        )  # fmt: skip
        cohort = load_manifest(manifests[spec.manifest], TASK, check_files=False)
        result = train_run(
            cohort, cfg, out / "runs" / spec.name, quiet=quiet, log=log, heatmaps=2, overwrite=True
        )
        trained[spec.name] = result.model_paths[0]
        minutes = (time.perf_counter() - start) / 60
        metrics = result.metrics or {}
        row: dict[str, Any] = {"model": spec.name, "n_test": metrics.get("n", 0)}
        for name in METRICS:
            row[name] = metrics.get(name)
            low, high = (metrics.get("ci") or {}).get(name, [float("nan"), float("nan")])
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        row.update(patch_cost(result.model_paths[0], COST_SIDE))
        row.update({f"{k}_at_{size}px": v for k, v in patch_cost(result.model_paths[0], size).items()})
        row["psnr"] = row["ssim"] = float("nan")
        if spec.model == "virtual-stain":
            test_pairs = [p for p in pairs if p.split == "test"]
            quality = virtual_stain_quality(result.model_paths[0], test_pairs, size, out / "virtual_stain")
            row["psnr"], row["ssim"] = quality["psnr"], quality["ssim"]
            extra["virtual-stain"] = quality
            if "scorer" not in model_args:
                log("virtual-stain: no ihc-only run in this benchmark, so its scorer was trained beside it")
        row["train_minutes"] = round(minutes, 2)
        row["train_cpu_minutes"] = round((time.process_time() - cpu_start) / 60, 2)
        rows.append(row)
        confusions[spec.name] = (metrics.get("confusion"), metrics.get("classes"))
        log(f"{spec.name}: F1 {row['f1_macro']} in {minutes:.1f} min")
    rank = {m.name: i for i, m in enumerate(BENCHMARK_MODELS)}
    frame = pd.DataFrame(sorted(rows, key=lambda r: rank[r["model"]]))
    write_csv(out / "results.csv", frame)
    write_report(
        out / "report.md", frame, confusions, chosen, root, len(pairs), side, mpp, size, epochs, extra
    )
    return frame


def virtual_stain_quality(
    model_path: str | Path, test_pairs: list[Any], size: int, out: Path, n_examples: int = 4
) -> dict[str, Any]:
    """PSNR and SSIM of the virtual IHC against the real IHC of the test pairs (both at the model's
    ``size`` px, the mean over pairs), and a picture of a few examples (H&E | virtual IHC | real IHC)."""
    import numpy as np
    import torch
    from PIL import Image

    from her2score.engine.checkpoint import load_model
    from her2score.io import write_png
    from her2score.models.nets.pix2pix import psnr_ssim

    model, meta = load_model(model_path, "cpu")
    mean = torch.as_tensor(meta["stats"]["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(meta["stats"]["std"], dtype=torch.float32).view(1, 3, 1, 1)

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as img:  # by content: BCI's .png files hold JPEG bytes
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BOX))

    out.mkdir(parents=True, exist_ok=True)
    scores, examples = [], []
    with torch.inference_mode():
        for pair in test_pairs:
            he, ihc = read(pair.he), read(pair.ihc)
            x = (torch.from_numpy(np.array(he)).permute(2, 0, 1)[None].float() / 255 - mean) / std
            fake = (model.stain(x)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            scores.append(psnr_ssim(fake, ihc))
            if len(examples) < n_examples:
                examples.append(np.concatenate([he, fake, ihc], axis=1))
    result: dict[str, Any] = {"psnr": float("nan"), "ssim": float("nan"), "n": len(scores)}
    if scores:
        result["psnr"], result["ssim"] = (round(float(v), 3) for v in np.mean(scores, axis=0))
    if examples:
        result["examples"] = write_png(out / "examples.png", np.concatenate(examples, axis=0))
    return result


def patch_cost(model_path: str | Path, size: int, repeats: int = 5) -> dict[str, float]:
    """CPU milliseconds (median of ``repeats``, one patch, the saved H&E/IHC model alone) and GFLOPs
    per ``size`` px patch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from her2score.engine.checkpoint import load_model

    model, _ = load_model(model_path, "cpu")
    x = torch.rand(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(x)
            if i >= 2:  # the first calls warm the allocator
                times.append(time.perf_counter() - start)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    times.sort()
    return {
        "ms_per_patch": round(1000 * times[len(times) // 2], 2),
        "gflops_per_patch": round(counter.get_total_flops() / 1e9, 3),
    }


def write_report(
    path: Path, frame: Any, confusions: dict[str, Any], chosen: list[BenchmarkModel], root: Any,
    n_pairs: int, side: int, mpp: float, size: int, epochs: int, extra: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """A Markdown report: settings, the results table, the confusion matrices and the caveats."""
    from her2score.data.bci import LABEL_WARNING
    from her2score.io import atomic_path

    def cell(row: Any, name: str) -> str:
        value = row[name]
        if value is None or value != value:
            return "n/a"
        return f"{value:.3f} [{row[name + '_ci_low']:.3f}, {row[name + '_ci_high']:.3f}]"

    lines = [
        "# BCI benchmark",
        "",
        f"{n_pairs} pairs from `{root}` ({side} px, read at {mpp:g} µm/px into {size} px), task {TASK}, "
        f"{epochs} epochs per model, official split (validation carved from train).",
        "",
        f"> {LABEL_WARNING}.",
        "",
        "| model | what | accuracy | F1 macro | AUC macro | kappa (quadratic) "
        f"| ms/patch (CPU, {COST_SIDE}²) | GFLOPs/patch ({COST_SIDE}²) | ms/patch ({size}²) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    what = {m.name: m.what for m in chosen}
    for _, row in frame.iterrows():
        lines.append(
            f"| {row['model']} | {what.get(row['model'], '')} | {cell(row, 'accuracy')} "
            f"| {cell(row, 'f1_macro')} | {cell(row, 'auc_macro')} | {cell(row, 'kappa_qw')} "
            f"| {row['ms_per_patch']} | {row['gflops_per_patch']} | {row[f'ms_per_patch_at_{size}px']} |"
        )
    lines += [
        "",
        f"Cost: one H&E patch of {COST_SIDE}² px through the saved model (the H&E path alone for LGD-Net; "
        "generator and IHC classifier for virtual-stain), CPU, median of 5; GFLOPs counted by "
        "torch's FlopCounterMode (a multiply-add is 2 FLOPs).",
        "",
    ]
    quality = (extra or {}).get("virtual-stain")
    if quality:
        lines += [
            "## virtual-stain: image quality and examples",
            "",
            f"On the {quality['n']} test pairs at {size}² px: PSNR {quality['psnr']} dB, "
            f"SSIM {quality['ssim']} "
            "(mean over pairs; consecutive sections are not pixel-aligned, so neither reaches what an "
            "aligned pair would).",
            "",
        ]
        if quality.get("examples"):
            rel = Path(quality["examples"]).relative_to(path.parent).as_posix()
            lines += [
                f"![H&E, virtual IHC, real IHC]({rel})",
                "",
                "Columns: H&E · virtual IHC · real IHC.",
                "",
            ]
    for name, (confusion, classes) in confusions.items():
        if not confusion:
            continue
        lines += [f"## {name}: confusion matrix (rows: true, columns: predicted)", ""]
        lines += ["| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        lines += [
            f"| {c} | " + " | ".join(str(v) for v in r) + " |"
            for c, r in zip(classes, confusion, strict=True)
        ]
        lines += ["", f"Full report: `runs/{name}/report.md`.", ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
