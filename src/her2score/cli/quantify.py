"""``her2score quantify`` (ASCO/CAP membrane scoring of HER2 IHC images and slides, cell by cell) and
``her2score calibrate`` (intensity thresholds from a control of known category)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from her2score.cli.options import Mpp, Out, OutFile, Quiet, Workers

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


def register(app: typer.Typer) -> None:
    """Add ``quantify`` and ``calibrate`` to the CLI."""
    app.command("quantify")(quantify)
    app.command("calibrate")(calibrate)


def _load_thresholds(path: Path | None) -> Any:
    from her2score.stain.quantify import Thresholds

    return Thresholds() if path is None else Thresholds.from_json(path)


def quantify(
    images: Annotated[list[Path], typer.Argument(help="HER2 IHC images (PNG, JPEG, TIFF) or whole slides.")],
    out: Out,
    mpp: Mpp = None,
    workers: Workers = 0,
    thresholds: Annotated[
        Path | None,
        typer.Option("--thresholds", help="JSON with intensity thresholds (e.g. from calibrate)."),
    ] = None,
    stain_vectors: Annotated[
        str,
        typer.Option("--stain-vectors", help="auto (estimate per image, fall back to defaults) or default."),
    ] = "auto",
    quiet: Quiet = False,
) -> None:
    """Score HER2 membrane staining cell by cell (ASCO/CAP 2018): category 0/1+/2+/3+, H-score, overlay.

    Writes results.csv (one row per image), <stem>.cells.parquet, <stem>.overlay.png, thresholds.json.

    A broken image is reported and the batch goes on; the exit status is 1 when any image failed.
    """
    from her2score.io import write_csv, write_json

    t = _load_thresholds(thresholds)
    if stain_vectors not in ("auto", "default"):
        from her2score.errors import ConfigError

        raise ConfigError(f"--stain-vectors must be auto or default (got {stain_vectors!r})")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "thresholds.json", {"thresholds": t.to_dict(), "source": str(thresholds or "defaults")})
    rows = run_batch(images, out, mpp, t, stain_vectors, workers, quiet)
    frame = _results_frame(rows)
    write_csv(out / "results.csv", frame)
    failed = frame[frame["status"] != "ok"]
    _print_summary(frame, out, quiet)
    if len(failed):
        raise typer.Exit(1)


def run_batch(
    images: list[Path], out: Path, mpp: float | None, t: Any, stains: str, workers: int, quiet: bool
) -> list[dict[str, Any]]:
    """Score each image; one row per image, failures included (status ``failed`` and the cause)."""
    import concurrent.futures as cf

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    rows: list[dict[str, Any]] = []
    stems = unique_stems(images)
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task("quantify", total=len(images))
        if workers > 0 and len(images) > 1:
            # Several files: one file per process (a slide's tiles then run in its process).
            with cf.ProcessPoolExecutor(workers) as pool:
                futures = [
                    pool.submit(_one, path, stem, out, mpp, t, stains, 0, None)
                    for path, stem in zip(images, stems, strict=True)
                ]
                for future in futures:
                    rows.append(future.result())
                    progress.advance(task)
        else:
            for path, stem in zip(images, stems, strict=True):
                rows.append(_one(path, stem, out, mpp, t, stains, workers, progress))
                progress.advance(task)
    return rows


def unique_stems(images: list[Path]) -> list[str]:
    """Output names: the file stem, prefixed by its folder(s) when two inputs share a stem."""
    stems = [p.stem for p in images]
    for depth in range(1, 4):
        dupes = {s for s in stems if stems.count(s) > 1}
        if not dupes:
            break
        stems = [
            "_".join([*Path(p).parent.parts[-depth:], p.stem]) if p.stem in dupes or s in dupes else s
            for p, s in zip(images, stems, strict=True)
        ]
    return stems


def _one(
    path: Path, stem: str, out: Path, mpp: float | None, t: Any, stains: str, workers: int, progress: Any
) -> dict:
    from her2score.errors import Her2ScoreError
    from her2score.stain.quantify import quantify_file

    try:
        result = quantify_file(
            path, out, mpp, t, stains=stains, workers=workers, progress=progress, stem=stem
        )
        return result.row
    except Her2ScoreError as exc:
        return {"image": str(path), "status": "failed", "error": exc.cause}
    except Exception as exc:  # an unexpected bug must not sink the batch; it is reported per image
        return {"image": str(path), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _results_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in frame:
            frame[col] = "" if col in ("error", "category", "her2_0_subtype", "her2_3way") else None
    rest = [c for c in frame.columns if c not in RESULT_COLUMNS]
    return frame[[*RESULT_COLUMNS, *rest]]


def _print_summary(frame: Any, out: Path, quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    ok = frame[frame["status"] == "ok"]
    if not quiet and len(ok):
        table = Table(
            "image", "HER2", "group", "H-score", "index", "tumour cells", title="HER2 membrane score"
        )
        for _, r in ok.iterrows():
            cat = r["category"] + (f" ({r['her2_0_subtype']})" if r.get("her2_0_subtype") else "")
            table.add_row(
                Path(r["image"]).name,
                cat,
                r["her2_3way"],
                f"{r['h_score']:.0f}",
                f"{r['her2_index']:.1f}",
                str(int(r["n_tumour_cells"])),
            )
        console.print(table)
    failed = frame[frame["status"] != "ok"]
    for _, r in failed.iterrows():
        console.print(f"[bold red]failed:[/] {r['image']}: {r['error']}", highlight=False)
    console.print(
        f"{len(ok)} scored, {len(failed)} failed; results in {out / 'results.csv'}", highlight=False
    )


def calibrate(
    control: Annotated[Path, typer.Argument(help="Control image or slide whose HER2 category is known.")],
    category: Annotated[
        str, typer.Option("--category", help="Known category of the control: 0, 1+, 2+ or 3+.")
    ],
    out: OutFile,
    mpp: Mpp = None,
    thresholds: Annotated[
        Path | None, typer.Option("--thresholds", help="Start from these thresholds instead of the defaults.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Derive intensity thresholds from a control of known category and write them as JSON."""
    import tempfile

    import pandas as pd

    from her2score.errors import StainError
    from her2score.io import write_json
    from her2score.stain.quantify import calibrate_thresholds, quantify_file

    base = _load_thresholds(thresholds)
    with tempfile.TemporaryDirectory() as tmp:
        result = quantify_file(control, Path(tmp), mpp, base)
        cells = pd.read_parquet(result.cells_path)
    try:
        new, evidence = calibrate_thresholds(cells, category, base)
    except StainError as exc:
        raise StainError(exc.cause, control) from None
    evidence["control"] = str(control)
    write_json(out, {"thresholds": new.to_dict(), "calibration": evidence})
    if not quiet:
        typer.echo(
            f"faint {new.faint:.3f}  moderate {new.moderate:.3f}  intense {new.intense:.3f} "
            f"(x{evidence['factor']:.2f} from {evidence['n_tumour_cells']} tumour cells) -> {out}"
        )
    if not 0.5 <= evidence["factor"] <= 2.0:  # said even with --quiet: the thresholds may be wrong
        typer.echo(
            f"warning: {control.name} stains {evidence['factor']:.2f}x what a {category} control is expected "
            "to; check that it is that category and mostly tumour before scoring with these thresholds",
            err=True,
        )
