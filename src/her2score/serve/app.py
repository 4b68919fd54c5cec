"""``her2score serve``: a FastAPI service that scores IHC images and slides, with a slide viewer.

Endpoints: ``GET /health``; ``POST /api/score`` (multipart ``file``: an image or slide, recognised by its
content) returns the training-free quantifier's ASCO/CAP figures and, with a model, the class
probabilities; ``GET /api/slides`` lists the slides of ``data_dir``; ``GET /api/slides/{name}/score``
scores one of them. OpenAPI docs at ``/docs``.

Viewer: ``GET /`` is a web page (OpenSeadragon, vendored by ``make viewer``) that shows a slide of the
data folder or an upload, zoomable, with the score and two overlay layers. A source is
``/api/slides/{name}`` (a file of ``data_dir``) or ``/api/uploads/{sha256}`` (an upload, kept in a
bounded store after ``POST /api/score``), and each has ``/info`` (size, µm/px of every deep-zoom
level), ``/slide.dzi`` and ``/slide_files/{level}/{col}_{row}.jpeg`` (Deep Zoom tiles, each level read
at its µm/px), ``/score`` and ``/layers/{cells,heatmap}.png`` (transparent overlays; the score's
``layers`` entry gives each one's level-0 rectangle).

Safety: no path outside ``data_dir`` can be read (a name is one path segment; ``..``, absolute paths,
encoded traversal and symbolic links that leave the folder are refused with 4xx; an upload is named by
its SHA-256 only); uploads are capped (``max_upload_mb``) and sniffed by content, never trusted by
extension; an optional token guards every ``/api`` route (``Authorization: Bearer TOKEN``). Handlers
are synchronous and run in the server's thread pool, so a slow slide does not block other requests;
scoring works in its own temporary folder, removed when it ends; open slides, tiles, results and
uploads are held in caches of bounded size.
"""

import re
import secrets
import shutil
import tempfile
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from her2score.errors import Her2ScoreError
from her2score.serve.store import ResultCache, UploadStore
from her2score.serve.tiles import TileServer

#: Figures of the quantifier's row returned by the API (the rest stays in its CSV).
QUANTIFIER_KEYS = (
    "category", "scorable", "reason", "her2_0_subtype", "her2_3way", "h_score", "her2_index",
    "n_tumour_cells", "pct_intense_complete", "pct_moderate_complete", "pct_faint_complete",
    "pct_faint_incomplete", "pct_none", "mpp", "mode",
)  # fmt: skip
STATIC = Path(__file__).parent / "static"
#: What ``make viewer`` copies from the npm package; the page says how to build it when missing.
VENDOR_SCRIPT = STATIC / "vendor" / "openseadragon" / "openseadragon.min.js"
TILE_NAME = re.compile(r"(\d{1,6})_(\d{1,6})\.jpeg")


class Collection(StrEnum):
    """Where a viewed file comes from: the data folder, or the upload store."""

    slides = "slides"
    uploads = "uploads"


def create_app(
    model: str | Path | None = None,
    data_dir: str | Path | None = None,
    token: str | None = None,
    max_upload_mb: float = 200.0,
    device: str = "auto",
    upload_store_mb: float = 1024.0,
    tile_cache_mb: float = 64.0,
    result_cache_mb: float = 64.0,
) -> FastAPI:
    """The FastAPI application (see the module docstring)."""
    from her2score import __version__

    app = FastAPI(title="her2score", version=__version__, description=__doc__)
    root = Path(data_dir).resolve() if data_dir is not None else None
    limit = int(max_upload_mb * 1024 * 1024)
    scorer = _Scorer(model, device)
    tiles = TileServer(cache_mb=tile_cache_mb)
    uploads = UploadStore(int(upload_store_mb * 1024 * 1024))
    results = ResultCache(int(result_cache_mb * 1024 * 1024))
    app.state.tiles, app.state.uploads, app.state.results = tiles, uploads, results
    app.router.add_event_handler("shutdown", tiles.close)
    app.router.add_event_handler("shutdown", uploads.close)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN)")

    def source(collection: Collection, name: str) -> Path:
        if collection is Collection.uploads:
            path = uploads.path(name)
            if path is None:
                raise HTTPException(
                    404, "no such upload (uploads are named by their SHA-256; old ones expire)"
                )
            return path
        if root is None:
            raise HTTPException(404, "no --data-dir was given to this server")
        return _resolve(root, name)

    def score(collection: Collection, name: str, path: Path, mpp: float | None) -> dict[str, Any]:
        key = (collection.value, *TileServer.key(path), mpp)
        cached = results.get(key)
        if cached is None:
            with tempfile.TemporaryDirectory(prefix="her2score-serve-") as tmp:
                body, images = scorer.score(path, Path(tmp), name, mpp, _zoom(tiles, path, name))
            base = f"/api/{collection.value}/{name}"
            query = "" if mpp is None else f"?mpp={mpp!r}"  # repr: the layer's request finds this entry
            for layer in body["layers"].values():
                layer["url"] = f"{base}/layers/{layer['name']}.png{query}"
            body["source"] = base
            results.put(key, body, images)
            cached = body, images
        return cached[0]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def viewer_page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        if not VENDOR_SCRIPT.is_file():
            html = html.replace("<!--vendor-missing-->", _VENDOR_MISSING)
        return HTMLResponse(html)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok", "version": __version__, "model": scorer.describe(), "data_dir": bool(root),
            "viewer": VENDOR_SCRIPT.is_file(),
        }  # fmt: skip

    @app.post("/api/score", dependencies=[Depends(authorised)])
    def score_upload(file: UploadFile = File(...), mpp: float | None = None) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="her2score-serve-") as tmp:
            name = Path(file.filename or "upload").name or "upload"
            path = Path(tmp) / "upload"
            size = 0
            with path.open("wb") as fh:
                while chunk := file.file.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"upload larger than {max_upload_mb:g} MB")
                    fh.write(chunk)
            _check_content(path, name)
            digest = uploads.add(path)
            if digest is None:  # larger than the whole store: scored, not kept for the viewer
                body, _ = scorer.score(path, Path(tmp), name, mpp, _zoom(tiles, path, name))
                return body
        body = dict(score(Collection.uploads, digest, uploads.path(digest) or path, mpp))
        return body | {"file": name, "upload": digest}

    @app.get("/api/slides", dependencies=[Depends(authorised)])
    def list_slides() -> dict[str, Any]:
        if root is None:
            raise HTTPException(404, "no --data-dir was given to this server")
        from her2score.slide.discover import is_slide_file

        names = sorted(p.name for p in root.iterdir() if is_slide_file(p) and _inside(p, root))
        return {"slides": names}

    @app.get("/api/{collection}/{name}/score", dependencies=[Depends(authorised)])
    def score_source(collection: Collection, name: str, mpp: float | None = None) -> dict[str, Any]:
        return score(collection, name, source(collection, name), mpp)

    @app.get("/api/{collection}/{name}/info", dependencies=[Depends(authorised)])
    def info(collection: Collection, name: str) -> dict[str, Any]:
        path = source(collection, name)
        return {"name": name, **_zoom(tiles, path, name).describe()}

    @app.get("/api/{collection}/{name}/slide.dzi", dependencies=[Depends(authorised)])
    def dzi(collection: Collection, name: str) -> Response:
        path = source(collection, name)
        return Response(_zoom(tiles, path, name).descriptor(), media_type="application/xml")

    @app.get("/api/{collection}/{name}/slide_files/{level}/{tile}", dependencies=[Depends(authorised)])
    def tile(collection: Collection, name: str, level: int, tile: str) -> Response:
        match = TILE_NAME.fullmatch(tile)
        if match is None:
            raise HTTPException(404, "a tile is named COLUMN_ROW.jpeg")
        path = source(collection, name)
        try:
            data = tiles.tile(path, level, int(match[1]), int(match[2]))
        except Her2ScoreError as exc:
            raise HTTPException(422, f"{name}: {exc.cause}") from None
        if data is None:
            raise HTTPException(404, f"no tile {level}/{tile} in {name}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/{collection}/{name}/layers/{layer}.png", dependencies=[Depends(authorised)])
    def layer(collection: Collection, name: str, layer: str, mpp: float | None = None) -> Response:
        path = source(collection, name)
        body = score(collection, name, path, mpp)
        cached = results.get((collection.value, *TileServer.key(path), mpp))
        images = cached[1] if cached is not None else {}
        if layer not in body["layers"] or layer not in images:
            missing = body.get("layers_missing", {}).get(layer, "no such layer (cells, heatmap)")
            raise HTTPException(404, f"{name}: {missing}")
        return Response(images[layer], media_type="image/png")

    return app


_VENDOR_MISSING = (
    '<div id="vendor-missing" class="error">The viewer\'s OpenSeadragon files are not built. '
    "Run <code>make viewer</code> (it runs <code>npm ci</code> in <code>web/</code> and copies "
    "OpenSeadragon into <code>src/her2score/serve/static/vendor/</code>), then reload this page. "
    'The API (<a href="/docs">/docs</a>) works without them.</div>'
)


def _zoom(tiles: TileServer, path: Path, name: str) -> Any:
    try:
        return tiles.zoom(path)
    except Her2ScoreError as exc:
        raise HTTPException(422, f"{name}: {exc.cause}") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def _resolve(root: Path, name: str) -> Path:
    """``root/name`` when ``name`` is one plain path segment naming a file inside ``root`` (links
    followed and checked); 400 for anything that tries to leave, 404 for what is not there."""
    bad = ("/", chr(92), chr(0))  # a slash, a backslash, a NUL byte
    if not name or name in (".", "..") or any(c in name for c in bad) or name.startswith("~"):
        raise HTTPException(400, "a slide is named by its file name in the data folder, nothing else")
    path = root / name
    if not _inside(path, root):
        raise HTTPException(400, "that name leads outside the data folder")
    if not path.is_file():
        raise HTTPException(404, f"no slide {name!r} in the data folder")
    return path


def _check_content(path: Path, name: str) -> None:
    from her2score.slide.reader import sniff_format

    try:
        sniff_format(path)
    except Her2ScoreError as exc:
        raise HTTPException(415, f"{name}: {exc.cause}") from None


class _Scorer:
    """The quantifier, and the model when one is given (loaded once, shared by the request threads)."""

    def __init__(self, model: "str | Path | None", device: str) -> None:
        self.predictor, self.meta = None, None
        self.lock = threading.Lock()
        if model is not None:
            from her2score.engine.predictor import Predictor

            self.predictor, self.meta = Predictor.from_checkpoint(model, device)

    def describe(self) -> str | None:
        if self.meta is None:
            return None
        from her2score.engine.evaluate import describe

        return describe(self.meta)

    def score(
        self, path: Path, work: Path, name: str, mpp: float | None, zoom: Any
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The score of one file (JSON-safe) and its overlay layers as PNG bytes by name."""
        import pandas as pd

        from her2score.io import to_json_safe
        from her2score.quantify.overlay import CLASS_COLOURS
        from her2score.quantify.pipeline import quantify_file
        from her2score.rules import MEMBRANE_CLASSES
        from her2score.serve.layers import cell_layer

        out: dict[str, Any] = {"file": name}
        try:
            result = quantify_file(path, work / "quantify", mpp=mpp, stem="slide")
        except Her2ScoreError as exc:
            raise HTTPException(422, f"{name}: {exc.cause}") from None
        row = result.row
        out["quantifier"] = {k: row.get(k) for k in QUANTIFIER_KEYS if k in row}
        out["category"] = row.get("category")
        cells = pd.read_parquet(result.cells_path, columns=["x", "y", "membrane_class", "is_tumour"])
        png, rect = cell_layer(cells, zoom.width, zoom.height, float(row["mpp"]))
        images = {"cells": png}
        legend = {c: list(CLASS_COLOURS[c]) for c in MEMBRANE_CLASSES}
        out["layers"] = {"cells": {"name": "cells", "legend": legend, **rect}}
        missing = {"heatmap": "no model was given to this server (--model)"}
        if self.predictor is not None:
            out.update(self._predict(path, work, mpp, out["layers"], images, missing))
        out["layers_missing"] = {k: v for k, v in missing.items() if k not in images}
        shutil.rmtree(work / "quantify", ignore_errors=True)
        return to_json_safe(out), images

    def _predict(
        self,
        path: Path,
        work: Path,
        mpp: float | None,
        layers: dict[str, Any],
        images: dict[str, bytes],
        missing: dict[str, str],
    ) -> dict[str, Any]:
        rows = [{"slide": str(path), "mpp": mpp}]
        kind = self.predictor.kind
        prepared = kind.prepare(rows, work / "cache", 0, True)
        if prepared.failures:
            raise HTTPException(422, prepared.failures[0].cause)
        with self.lock:  # one forward at a time: the model's buffers are shared
            probs = self.predictor.predict(prepared)[0]
            explained = self.predictor.explain(prepared, 0)
        classes = self.meta["classes"]
        self._heatmap(path, mpp, prepared, explained, classes, layers, images, missing)
        return {
            "predicted": classes[int(probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "model": self.meta["model"],
        }

    def _heatmap(
        self,
        path: Path,
        mpp: float | None,
        prepared: Any,
        explained: Any,
        classes: list[str],
        layers: dict[str, Any],
        images: dict[str, bytes],
        missing: dict[str, str],
    ) -> None:
        from her2score.serve.layers import heat_layer, model_square

        kind = self.predictor.kind
        picture = kind.picture(prepared, 0)
        if explained is None or picture is None or kind.name != "lowres":
            missing["heatmap"] = f"the model ({self.meta['model']}) gives no map placed on the slide"
            return
        rect = model_square(path, kind.params, mpp)
        if rect is None:
            missing["heatmap"] = "no tissue found at the model's resolution"
            return
        heat, target = explained
        images["heatmap"] = heat_layer(picture, heat)
        layers["heatmap"] = {"name": "heatmap", "explains": classes[int(target)], **rect}
