"""``her2score quantify`` (ASCO/CAP membrane scoring of HER2 IHC images and slides, cell by cell) and
``her2score calibrate`` (intensity thresholds from a control of known category)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from her2score.cli.options import EXIT_CODES, EXIT_CODES_BATCH, Mpp, Out, OutFile, Quiet, Scheduler, Workers


def register(app: typer.Typer) -> None:
    """Add ``quantify`` and ``calibrate`` to the CLI."""
    app.command("quantify", epilog=EXIT_CODES_BATCH)(quantify)
    app.command("calibrate", epilog=EXIT_CODES)(calibrate)


def quantify(
    images: Annotated[
        list[Path],
        typer.Argument(help="IHC images (PNG, JPEG, TIFF), whole slides, or folders of them."),
    ],
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
    marker: Annotated[
        str,
        typer.Option(
            "--marker",
            help="her2 (membranes, ASCO/CAP 2018) or a nuclear marker: er, pr (percent positive, "
            "H-score, Allred, ASCO/CAP 2020 status) or ki67 (Ki-67 index).",
        ),
    ] = "her2",
    nuclear_thresholds: Annotated[
        Path | None,
        typer.Option(
            "--nuclear-thresholds",
            help="JSON with nuclear thresholds (weak, moderate, strong mean nuclear DAB OD; "
            "lymphocyte_max_um2, lymphocyte_max_elongation), or a thresholds.json of an earlier run.",
        ),
    ] = None,
    positive_od: Annotated[
        float | None,
        typer.Option(
            "--positive-od",
            help="Nuclear markers: mean nuclear DAB OD from which a nucleus is positive (default 0.12).",
        ),
    ] = None,
    rules: Annotated[
        str | None,
        typer.Option(
            "--rules",
            help="HER2 rulebook: breast (ASCO/CAP 2018, the default) or gastric (Hofmann 2008 / "
            "ASCO/CAP/ASCP 2016 gastro-oesophageal: basolateral or lateral U-shaped membranes count as "
            "complete, >= 10 % of tumour cells). Replaces her2_rules of --thresholds.",
        ),
    ] = None,
    quiet: Quiet = False,
    scheduler: Scheduler = None,
) -> None:
    """Score HER2 membrane staining cell by cell (ASCO/CAP 2018): category 0/1+/2+/3+, H-score, overlay;
    or, with --marker er|pr|ki67, nuclear DAB nucleus by nucleus.

    Writes results.csv (one row per image), <stem>.cells.parquet, <stem>.overlay.png, thresholds.json.

    A broken image is reported and the batch goes on; the exit status is 1 when any image failed.
    """
    from her2score.cli.checks import check_input_file, check_output_dir
    from her2score.errors import ConfigError
    from her2score.quantify.batch import quantify_batch
    from her2score.quantify.thresholds import load_thresholds

    if stain_vectors not in ("auto", "default"):
        raise ConfigError(f"--stain-vectors must be auto or default (got {stain_vectors!r})")
    check_input_file(thresholds, "thresholds JSON", ConfigError)
    check_input_file(nuclear_thresholds, "nuclear thresholds JSON", ConfigError)
    from her2score.quantify.nuclear import check_marker, load_nuclear_thresholds

    marker = check_marker(marker)
    if rules is not None:
        from her2score.rules import check_her2_rules

        check_her2_rules(rules)
        if marker != "her2":
            raise ConfigError("--rules applies to --marker her2 (membrane scoring)")
    if marker == "her2" and (nuclear_thresholds is not None or positive_od is not None):
        raise ConfigError("--nuclear-thresholds and --positive-od apply to --marker er, pr or ki67")
    nuclear = load_nuclear_thresholds(nuclear_thresholds, {"weak": positive_od})
    check_output_dir(out)
    load_thresholds(thresholds)  # a bad thresholds file is refused before anything is written
    from her2score.quantify.batch import BatchInterrupted

    try:
        on_cluster = {"scheduler": scheduler} if scheduler else {}
        if marker == "her2":
            result = quantify_batch(
                images, out, thresholds, mpp, workers, quiet, stains=stain_vectors, rules=rules, **on_cluster
            )
        else:
            result = quantify_batch(
                images,
                out,
                thresholds,
                mpp,
                workers,
                quiet,
                stains=stain_vectors,
                marker=marker,
                nuclear_thresholds=nuclear,
                **on_cluster,
            )
    except BatchInterrupted as exc:
        typer.echo(str(exc), err=True)  # e.g. interrupted after 7/20 images; results.csv holds the 7 finished
        raise
    if marker == "her2":
        _print_summary(result.frame, out, quiet)
    else:
        _print_nuclear_summary(result.frame, out, quiet, marker)
    if result.failed:
        raise typer.Exit(1)


def _print_summary(frame: Any, out: Path, quiet: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from her2score.cli.checks import make_console

    console = make_console()
    ok = frame[frame["status"] == "ok"]
    if not quiet and len(ok):
        table = Table(
            "image", "HER2", "group", "H-score", "index", "tumour cells", title="HER2 membrane score"
        )
        for _, r in ok.iterrows():
            cat = r["category"] + (f" ({r['her2_0_subtype']})" if r.get("her2_0_subtype") else "")
            cat = cat if r.get("scorable", True) else f"not scorable ({r['reason']})"
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
        console.print(Text.assemble(("failed:", "bold red"), f" {r['image']}: {r['error']}"))
    console.print(f"{len(ok)} scored, {len(failed)} failed; results in {out / 'results.csv'}")


def _print_nuclear_summary(frame: Any, out: Path, quiet: bool, marker: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from her2score.cli.checks import make_console

    console = make_console()
    ok = frame[frame["status"] == "ok"]
    name = "Ki-67" if marker == "ki67" else marker.upper()
    if not quiet and len(ok):
        table = Table(
            "image",
            "% positive",
            "H-score",
            "Allred",
            "status",
            "tumour nuclei",
            title=f"{name} nuclear score",
        )
        for _, r in ok.iterrows():
            if not r.get("scorable", True):
                table.add_row(
                    Path(r["image"]).name,
                    f"not scorable ({r['reason']})",
                    "",
                    "",
                    "",
                    str(int(r["n_nuclei"])),
                )
                continue
            allred = "" if r.get("allred") is None or r["allred"] != r["allred"] else str(int(r["allred"]))
            table.add_row(
                Path(r["image"]).name,
                f"{r['pct_positive']:.1f}",
                f"{r['h_score']:.0f}",
                allred,
                str(r.get("receptor_status") or ""),
                str(int(r["n_nuclei"])),
            )
        console.print(table)
    failed = frame[frame["status"] != "ok"]
    for _, r in failed.iterrows():
        console.print(Text.assemble(("failed:", "bold red"), f" {r['image']}: {r['error']}"))
    console.print(f"{len(ok)} scored, {len(failed)} failed; results in {out / 'results.csv'}")


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
    from her2score import rules
    from her2score.cli.checks import check_input_file, check_output_file
    from her2score.errors import ConfigError
    from her2score.io import write_json
    from her2score.quantify.calibrate import calibrate_file
    from her2score.quantify.thresholds import load_thresholds

    if category not in rules.HER2_CATEGORIES:
        raise ConfigError(f"--category must be one of {', '.join(rules.HER2_CATEGORIES)}, not {category!r}")
    check_input_file(thresholds, "thresholds JSON", ConfigError)
    check_output_file(out)
    new, evidence = calibrate_file(control, category, mpp, load_thresholds(thresholds))
    write_json(out, {"thresholds": new.to_dict(), "calibration": evidence})
    if not quiet:  # a summary: on stderr, so that stdout stays free for results
        typer.echo(
            f"faint {new.faint:.3f}  moderate {new.moderate:.3f}  intense {new.intense:.3f} "
            f"(x{evidence['factor']:.2f} from {evidence['n_tumour_cells']} tumour cells) -> {out}",
            err=True,
        )
    if not 0.5 <= evidence["factor"] <= 2.0:  # said even with --quiet: the thresholds may be wrong
        typer.echo(
            f"warning: {control.name} stains {evidence['factor']:.2f}x what a {category} control is expected "
            "to; check that it is that category and mostly tumour before scoring with these thresholds",
            err=True,
        )
