"""``her2score features``: tile features of every slide of a manifest, cached per slide, and a bag
manifest (``OUT/manifest.csv``) that trains multiple-instance models (``her2score train --model abmil``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import EXIT_CODES_BATCH, Device, Mpp, Out, Quiet


def register(app: typer.Typer) -> None:
    """Add ``features`` to the CLI."""
    app.command("features", epilog=EXIT_CODES_BATCH)(features)


def features(
    out: Out,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest CSV whose 'slide' column names slides.")
    ] = None,
    patches: Annotated[
        Path | None,
        typer.Option(
            "--patches",
            help="Instead of --manifest: a folder of patches in class folders (class_0/ ... class_3+/, "
            "optionally under train/ val/ test/); OUT/patches.csv becomes the manifest. Pass --mpp.",
        ),
    ] = None,
    patient_pattern: Annotated[
        str | None,
        typer.Option(
            "--patient-pattern",
            help="With --patches: a regex whose first group, found in a file name, is its slide/patient "
            "(patches of one slide then stay on one side of a split); default: each patch its own.",
        ),
    ] = None,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder", help="stain (OD statistics, 29 numbers) or timm:ARCH (e.g. timm:resnet18)."
        ),
    ] = "stain",
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Local weights for a timm encoder (never downloaded).")
    ] = None,
    tile_mpp: Annotated[
        float, typer.Option("--tile-mpp", min=0.05, help="µm/px the tiles are read at.")
    ] = 1.0,
    tile: Annotated[
        int, typer.Option("--tile", min=16, help="Tile size in pixels (224 or 256 usually).")
    ] = 224,
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", min=0.0, max=1.0, help="Least tissue fraction of a kept tile.")
    ] = 0.25,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per encoder call.")] = 32,
    mpp: Mpp = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Tile every slide over tissue, encode the tiles and write one feature file per slide.

    Writes OUT/<slide>.<key>.safetensors (features, coords), OUT/features.csv (one row per slide with its
    status), OUT/manifest.csv (the manifest's rows, 'slide' pointing at feature files) and
    OUT/bag_config.json (the feature size, in_dim, for 'her2score train --config'). Files already
    there for the same slide content, encoder and tiling are reused, so a killed run resumes.

    Exit status 1 when any slide could not be read (it is listed and left out of manifest.csv).
    """

    from her2score.cli.checks import check_input_file, check_output_dir, make_console
    from her2score.data.manifest import read_manifest_table
    from her2score.errors import CheckpointError, ManifestError
    from her2score.features.encoders import make_encoder
    from her2score.features.extract import extract_features, slide_path_in, write_bag_manifest
    from her2score.io import write_csv, write_json

    if (manifest is None) == (patches is None):
        raise ManifestError("give one of --manifest (a manifest of slides) or --patches (class folders)")
    check_input_file(manifest, "manifest", ManifestError)
    check_input_file(weights, "weights", CheckpointError)
    check_output_dir(out)
    if patches is not None:
        from her2score.data.patch_folders import patch_folder_manifest

        found = patch_folder_manifest(patches, out / "patches.csv", mpp=mpp, patient_pattern=patient_pattern)
        counts = found["her2"].value_counts().sort_index().to_dict()
        make_console().print(f"{len(found)} patches in class folders {counts} -> {out / 'patches.csv'}")
        manifest = out / "patches.csv"
    raw = read_manifest_table(manifest, required=("slide",))
    slides = [slide_path_in(manifest, s.strip()) for s in raw["slide"]]
    console = make_console()
    tile_encoder = make_encoder(encoder, weights=weights, device=device)
    console.print(
        f"encoder {tile_encoder.name} ({tile_encoder.dim} features), {tile} px tiles at {tile_mpp:g} µm/px"
    )
    result = extract_features(
        slides, out, tile_encoder, mpp=tile_mpp, tile_size=tile, min_tissue=min_tissue,
        batch_size=batch_size, slide_mpp=mpp, quiet=quiet,
    )  # fmt: skip
    write_csv(out / "features.csv", result)
    frame = write_bag_manifest(manifest, result, out / "manifest.csv")
    # the aggregators' feature size (their in_dim), for 'her2score train --config'
    write_json(out / "bag_config.json", {"model_args": {"in_dim": tile_encoder.dim}})
    counts = result["status"].value_counts().to_dict()
    console.print(
        f"{counts.get('extracted', 0)} extracted, {counts.get('cached', 0)} reused, "
        f"{int(result['n_tiles'].sum())} tiles -> {out / 'manifest.csv'} ({len(frame)} rows)\n"
        f"train with: her2score train --manifest {out / 'manifest.csv'} --model "
        f"{'patch-classifier' if patches is not None else 'abmil'} "
        f"--config {out / 'bag_config.json'} --out RUN"
    )
    failed = result[result["status"] == "failed"]
    if len(failed):
        console.print(f"{len(failed)} slide(s) skipped:", style="yellow")
        for row in failed.itertuples():
            console.print(f"  {row.slide}: {row.cause}")
        raise typer.Exit(1)
