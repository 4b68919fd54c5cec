"""``her2score info`` (what a slide holds: size, pyramid levels in µm/px, vendor, tissue) and
``her2score doctor`` (is this machine ready: OpenSlide, torch/CUDA, threads, cache)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from her2score.cli.options import EXIT_CODES, Mpp

#: Resolution of the coarse mask behind the reported tissue fraction (finer for small images).
INFO_MASK_MPP = 8.0


def register(app: typer.Typer) -> None:
    """Add ``info`` and ``doctor`` to the CLI."""
    app.command("info", epilog=EXIT_CODES)(info)
    app.command("doctor", epilog="Exit status: 0 every check passed; 1 a check failed (marked FAIL).")(doctor)


def info(
    slide: Annotated[
        Path, typer.Argument(help="Slide or image file (any OpenSlide format, TIFF, PNG, JPEG).")
    ],
    mpp: Mpp = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    tissue: Annotated[
        bool, typer.Option("--tissue/--no-tissue", help="Detect tissue and report its fraction of the slide.")
    ] = True,
) -> None:
    """Describe a slide: dimensions, pyramid levels with µm/px each, resolution, vendor, tissue fraction.

    A slide on which no tissue is found is described, then reported as an error (exit status 2).
    """
    report = slide_report(slide, mpp=mpp, tissue=tissue)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if report["tissue_fraction"] == 0.0:
        from her2score.errors import NoTissueError

        raise NoTissueError(
            f"no tissue found (mask at {report['tissue_mask_mpp']:g} µm/px is empty); "
            "is this a blank slide or the wrong file?",
            slide,
        )


def slide_report(path: Path, mpp: float | None = None, tissue: bool = True) -> dict[str, Any]:
    """Everything ``her2score info`` shows, as a JSON-ready dict."""
    from her2score.slide import open_slide

    with open_slide(path, mpp=mpp) as slide:
        meta = slide.info()
        report: dict[str, Any] = {
            "path": str(path),
            "format": meta.format,
            "vendor": meta.vendor,
            "width": meta.width,
            "height": meta.height,
            "mpp": meta.mpp,
            # given (--mpp), metadata (which entry: mpp_metadata) or missing (mpp_ignored says what was
            # found but not trusted, e.g. a TIFF written with the default 72 dpi)
            "mpp_source": "given" if mpp is not None else ("metadata" if meta.mpp is not None else "missing"),
            "mpp_metadata": meta.mpp_source if mpp is None else None,
            "mpp_ignored": meta.mpp_ignored,
            "objective_power": meta.objective_power,
            "levels": [
                {"width": lv.width, "height": lv.height, "downsample": round(lv.downsample, 4), "mpp": lv.mpp}
                for lv in meta.levels
            ],
            "size_mm": (
                None
                if meta.mpp is None
                else [round(meta.width * meta.mpp / 1000, 3), round(meta.height * meta.mpp / 1000, 3)]
            ),
            "tissue_fraction": None,
            "tissue_mask_mpp": None,
        }
        if tissue and slide.mpp is not None:
            from her2score.slide.tissue import slide_tissue_mask

            # Coarse enough to be quick on a whole slide, fine enough to see a small image's tissue.
            long_side_um = max(slide.width, slide.height) * slide.mpp
            mask_mpp = max(slide.mpp, min(INFO_MASK_MPP, long_side_um / 1024))
            mask, mask_mpp = slide_tissue_mask(slide, mpp=mask_mpp)
            report["tissue_fraction"] = round(float(mask.mean()), 4) if mask.size else 0.0
            report["tissue_mask_mpp"] = round(mask_mpp, 4)
    return report


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from her2score.cli.checks import make_console

    console = make_console(stderr=False)  # the description is the result: on stdout
    console.print(report["path"], style="bold")
    rows = [
        ("format", f"{report['format']} ({report['vendor']})"),
        ("dimensions", f"{report['width']} x {report['height']} px"),
        ("resolution", _resolution_text(report)),
    ]
    if report["mpp_ignored"]:
        rows.append(("ignored", report["mpp_ignored"]))
    if report["size_mm"]:
        rows.append(("size", f"{report['size_mm'][0]:.2f} x {report['size_mm'][1]:.2f} mm"))
    if report["objective_power"]:
        rows.append(("objective", f"{report['objective_power']:g}x"))
    if report["tissue_fraction"] is not None:
        rows.append(
            (
                "tissue",
                f"{100 * report['tissue_fraction']:.1f}% of the slide "
                f"(mask at {report['tissue_mask_mpp']:g} µm/px)",
            )
        )
    for key, value in rows:
        console.print(f"  {key:<11} {value}")
    table = Table(title="pyramid levels", title_justify="left", show_edge=False)
    for col in ("level", "width", "height", "downsample", "µm/px"):
        table.add_column(col, justify="right")
    for i, lv in enumerate(report["levels"]):
        table.add_row(
            str(i),
            str(lv["width"]),
            str(lv["height"]),
            f"{lv['downsample']:g}",
            "-" if lv["mpp"] is None else f"{lv['mpp']:.4f}",
        )
    console.print(table)


def _resolution_text(report: dict[str, Any]) -> str:
    mpp = report["mpp"]
    if mpp is None:
        return "unknown (pass --mpp)"
    source = report["mpp_source"]
    if report.get("mpp_metadata"):
        source = f"{source}: {report['mpp_metadata']}"
    return f"{mpp:.4f} µm/px ({source})"


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a list.")] = False,
) -> None:
    """Check this machine: OpenSlide found and its version, torch and CUDA, CPU threads, a writable cache."""
    checks = environment_checks()
    if as_json:
        typer.echo(json.dumps(checks, indent=2))
    else:
        from rich.text import Text

        from her2score.cli.checks import make_console

        console = make_console(stderr=False)  # the checks are the result: on stdout
        for name, check in checks.items():
            mark = ("ok", "green") if check["ok"] else ("FAIL", "red")
            console.print(Text.assemble((f"{mark[0]:>4}", mark[1]), f"  {name:<10} {check['detail']}"))
    if not all(c["ok"] for c in checks.values()):
        raise typer.Exit(1)


def environment_checks() -> dict[str, dict[str, Any]]:
    """Run each readiness check; each gives ``ok`` and a one-line ``detail``."""
    checks: dict[str, dict[str, Any]] = {}
    checks["python"] = {"ok": sys.version_info >= (3, 11), "detail": sys.version.split()[0]}
    try:
        import openslide

        checks["openslide"] = {
            "ok": True,
            "detail": f"library {openslide.__library_version__}, openslide-python {openslide.__version__}",
        }
    except Exception as exc:  # the shared library may be missing even when the module imports
        checks["openslide"] = {"ok": False, "detail": f"not usable ({type(exc).__name__}: {exc})"}
    try:
        import torch

        cuda = torch.cuda.is_available()
        gpu = f", {torch.cuda.get_device_name(0)}" if cuda else ""
        checks["torch"] = {
            "ok": True,
            "detail": f"{torch.__version__}, CUDA {'available' if cuda else 'not available'}{gpu}, "
            f"{torch.get_num_threads()} threads",
        }
    except Exception as exc:
        checks["torch"] = {"ok": False, "detail": f"not usable ({type(exc).__name__}: {exc})"}
    cpus = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    checks["threads"] = {"ok": True, "detail": f"{affinity} usable of {cpus} CPU cores"}
    from her2score.paths import cache_root

    cache = cache_root()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".doctor-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
        checks["cache"] = {"ok": True, "detail": f"{cache} is writable"}
    except OSError as exc:
        checks["cache"] = {"ok": False, "detail": f"{cache} is not writable ({exc.strerror or exc})"}
    return checks
