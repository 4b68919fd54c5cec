"""``her2score serve``: a FastAPI service that scores IHC images and slides.

Endpoints: ``GET /health``; ``POST /api/score`` (multipart ``file``: an image or slide, recognised by its
content) returns the training-free quantifier's ASCO/CAP figures and, with a model, the class
probabilities; ``GET /api/slides`` lists the slides of ``data_dir``; ``GET /api/slides/{name}/score``
scores one of them. OpenAPI docs at ``/docs``.

Safety: no path outside ``data_dir`` can be read (a name is one path segment; ``..``, absolute paths,
encoded traversal and symbolic links that leave the folder are refused with 4xx); uploads are capped
(``max_upload_mb``) and sniffed by content, never trusted by extension; an optional token guards every
``/api`` route (``Authorization: Bearer TOKEN``). Handlers are synchronous and run in the server's
thread pool, so a slow slide does not block other requests; each request works in its own temporary
folder, removed when it ends.
"""

import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile

from her2score.errors import Her2ScoreError

#: Figures of the quantifier's row returned by the API (the rest stays in its CSV).
QUANTIFIER_KEYS = (
    "category", "scorable", "reason", "her2_0_subtype", "group_3way", "h_score", "her2_index",
    "n_tumour_cells", "mpp", "mode",
)  # fmt: skip


def create_app(
    model: str | Path | None = None,
    data_dir: str | Path | None = None,
    token: str | None = None,
    max_upload_mb: float = 200.0,
    device: str = "auto",
) -> FastAPI:
    """The FastAPI application (see the module docstring)."""
    from her2score import __version__

    app = FastAPI(title="her2score", version=__version__, description=__doc__)
    root = Path(data_dir).resolve() if data_dir is not None else None
    limit = int(max_upload_mb * 1024 * 1024)
    scorer = _Scorer(model, device)

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN)")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "model": scorer.describe(), "data_dir": bool(root)}

    @app.post("/api/score", dependencies=[Depends(authorised)])
    def score_upload(file: UploadFile = File(...), mpp: float | None = None) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="her2score-serve-") as tmp:
            name = Path(file.filename or "upload").name or "upload"
            path = Path(tmp) / f"upload_{name}"
            size = 0
            with path.open("wb") as fh:
                while chunk := file.file.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"upload larger than {max_upload_mb:g} MB")
                    fh.write(chunk)
            _check_content(path, name)
            return scorer.score(path, Path(tmp), name, mpp)

    @app.get("/api/slides", dependencies=[Depends(authorised)])
    def list_slides() -> dict[str, Any]:
        if root is None:
            raise HTTPException(404, "no --data-dir was given to this server")
        from her2score.slide.discover import is_slide_file

        names = sorted(p.name for p in root.iterdir() if is_slide_file(p) and _inside(p, root))
        return {"slides": names}

    @app.get("/api/slides/{name}/score", dependencies=[Depends(authorised)])
    def score_slide(name: str, mpp: float | None = None) -> dict[str, Any]:
        if root is None:
            raise HTTPException(404, "no --data-dir was given to this server")
        path = _resolve(root, name)
        with tempfile.TemporaryDirectory(prefix="her2score-serve-") as tmp:
            return scorer.score(path, Path(tmp), name, mpp)

    return app


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

    def score(self, path: Path, work: Path, name: str, mpp: float | None) -> dict[str, Any]:
        from her2score.io import to_json_safe
        from her2score.quantify.pipeline import quantify_file

        out: dict[str, Any] = {"file": name}
        try:
            row = quantify_file(path, work / "quantify", mpp=mpp).row
        except Her2ScoreError as exc:
            raise HTTPException(422, f"{name}: {exc.cause}") from None
        out["quantifier"] = {k: row.get(k) for k in QUANTIFIER_KEYS if k in row}
        out["category"] = row.get("category")
        if self.predictor is not None:
            out.update(self._predict(path, work, mpp))
        shutil.rmtree(work / "quantify", ignore_errors=True)
        return to_json_safe(out)

    def _predict(self, path: Path, work: Path, mpp: float | None) -> dict[str, Any]:
        rows = [{"slide": str(path), "mpp": mpp}]
        prepared = self.predictor.kind.prepare(rows, work / "cache", 0, True)
        if prepared.failures:
            raise HTTPException(422, prepared.failures[0].cause)
        with self.lock:  # one forward at a time: the model's buffers are shared
            probs = self.predictor.predict(prepared)[0]
        classes = self.meta["classes"]
        return {
            "predicted": classes[int(probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "model": self.meta["model"],
        }
