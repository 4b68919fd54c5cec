"""``her2score synth``: write a seeded synthetic cohort (IHC whole slides or paired H&E/IHC patches)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import EXIT_CODES, Out, Quiet, Seed, Workers
from her2score.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the CLI."""
    app.command("synth", epilog=EXIT_CODES)(synth)


def synth(
    out: Out,
    n: Annotated[
        int, typer.Option("--n", "-n", min=1, help="Patients (slides) or patch pairs to make.")
    ] = 20,
    kind: Annotated[
        str, typer.Option("--kind", help="slides: pyramidal IHC TIFFs; pairs: H&E/IHC patches (BCI layout).")
    ] = "slides",
    seed: Seed = 0,
    mpp: Annotated[
        float,
        typer.Option("--mpp", help="Level-0 resolution of the slides and patches in µm/px (0.25 or 0.5)."),
    ] = 0.5,
    markers: Annotated[
        str, typer.Option("--markers", help="Comma-separated stains per patient (slides): her2, er, pr.")
    ] = "her2",
    size_mm: Annotated[
        str, typer.Option("--size-mm", help="Slide size WIDTHxHEIGHT in mm (slides).")
    ] = "3.5x2.5",
    patch_size: Annotated[int, typer.Option("--patch-size", min=64, help="Patch side in px (pairs).")] = 512,
    sites: Annotated[int, typer.Option("--sites", min=1, help="Staining/scanning sites.")] = 3,
    architecture: Annotated[
        str,
        typer.Option(
            "--architecture",
            help="Tumour architecture (slides): solid (nests of round cells) or glandular (tubular glands "
            "of columnar cells round a lumen, as in gastric adenocarcinoma).",
        ),
    ] = "solid",
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Write a synthetic HER2 cohort (seeded, reproducible) and its manifest.csv under --out.

    slides: --n patients, one pyramidal TIFF per marker each, with per-cell truth beside it.
    pairs: --n H&E/HER2-IHC patch pairs in the BCI layout (HE/, IHC/, NNNNN_{train,test}_{0,1+,2+,3+}.png).
    """
    from her2score.cli.checks import check_output_dir
    from her2score.data.synth import make_cohort
    from her2score.data.synth.glands import ARCHITECTURES

    level0 = float(mpp)
    if not 0.1 <= level0 <= 2.0:
        raise ConfigError(f"--mpp {level0} is outside 0.1-2 µm/px for synthetic slides", out)
    try:
        width, height = (float(v) for v in size_mm.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size-mm must look like 3.5x2.5, not {size_mm!r}", out) from None
    if not (0.5 <= width <= 50 and 0.5 <= height <= 50):
        raise ConfigError(f"--size-mm {size_mm} is outside 0.5-50 mm", out)
    if kind not in ("slides", "pairs"):
        raise ConfigError(f"--kind must be 'slides' or 'pairs', not {kind!r}", out)
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"--architecture must be one of {', '.join(ARCHITECTURES)}, not {architecture!r}", out
        )
    if architecture != "solid" and kind != "slides":
        raise ConfigError("--architecture glandular is drawn for --kind slides only", out)
    marker_list = [m.strip().lower() for m in markers.split(",") if m.strip()]
    bad = [m for m in marker_list if m not in ("her2", "er", "pr")]
    if bad or not marker_list:
        raise ConfigError(f"--markers must be some of her2, er, pr (got {markers!r})", out)
    check_output_dir(out)

    what = "slides" if kind == "slides" else "patch pairs"
    kwargs = {
        "markers": marker_list,
        "mpp": level0,
        "size_mm": (width, height),
        "n_sites": sites,
        "patch_size": patch_size,
        "workers": workers,
        "architecture": architecture,
    }
    if quiet:
        manifest = make_cohort(out, n, seed=seed, kind=kind, **kwargs)
    else:
        from her2score.progress import progress_bar

        with progress_bar() as bar:  # on stderr
            task = bar.add_task(f"synth {what}", total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            manifest = make_cohort(out, n, seed=seed, kind=kind, progress=update, **kwargs)
    typer.echo(f"wrote {Path(manifest)}", err=True)
