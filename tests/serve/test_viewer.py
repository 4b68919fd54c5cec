"""The viewer's API: deep-zoom geometry and tiles read by µm/px, overlay layers aligned to the slide,
the upload store, bounded caches, a slow or broken slide not holding up others, and the page itself."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from her2score.serve import app as app_module
from her2score.serve.app import create_app
from her2score.serve.store import ResultCache, UploadStore
from her2score.serve.tiles import DeepZoom, TileServer


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from her2score.data.synth import render_pair

    root = tmp_path_factory.mktemp("viewed")
    folder = root / "slides"
    folder.mkdir()
    _, ihc, _ = render_pair("3+", size=(384, 384), seed=2)
    Image.fromarray(ihc).save(folder / "case.png")
    # tissue in one corner of a white field: the model's square must land on it
    field = np.full((600, 900, 3), 255, np.uint8)
    field[300:556, 500:756] = ihc[:256, :256]
    Image.fromarray(field).save(folder / "corner.png")
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 60)  # a TIFF header and nothing else
    (root / "secret.png").write_bytes((folder / "case.png").read_bytes())
    (folder / "escape.png").symlink_to(root / "secret.png")
    return folder


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_deep_zoom_levels_map_to_resolutions() -> None:
    zoom = DeepZoom(1000, 600, 0.25, True)
    assert zoom.max_level == 10  # 2**10 = 1024 >= 1000
    assert zoom.level_mpp(10) == 0.25
    assert zoom.level_mpp(8) == 1.0
    assert zoom.level_mpp(0) == 256.0
    assert zoom.level_size(10) == (1000, 600)
    assert zoom.level_size(9) == (500, 300)
    assert zoom.tile_region(10, 3, 2) == ((768, 512), (232, 88))  # the last, partial tile
    assert zoom.tile_region(9, 1, 1) == ((512, 512), (244, 44))  # level-0 origin, output size
    for outside in [(10, 4, 0), (10, 0, 3), (11, 0, 0), (-1, 0, 0), (10, -1, 0)]:
        assert zoom.tile_region(*outside) is None
    size = ET.fromstring(zoom.descriptor()).find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert size is not None
    assert size.attrib == {"Width": "1000", "Height": "600"}
    levels = zoom.describe()["levels"]
    assert [lv["mpp"] for lv in levels[-3:]] == [1.0, 0.5, 0.25]
    assert DeepZoom(1000, 600, 1.0, False).describe()["levels"][-1]["mpp"] is None  # unknown: not invented


def test_tiles_show_the_slide_at_each_level(folder: Path) -> None:
    client = TestClient(create_app(data_dir=folder))
    slide = np.asarray(Image.open(folder / "case.png").convert("RGB")).astype(float)
    info = client.get("/api/slides/case.png/info").json()
    assert (info["width"], info["height"], info["mpp"]) == (384, 384, None)
    top = info["levels"][-1]["level"]
    assert top == 9
    full = _image(client.get(f"/api/slides/case.png/slide_files/{top}/1_0.jpeg").content)
    assert full.shape == (256, 128, 3)
    assert np.abs(full - slide[:256, 256:]).mean() < 6  # JPEG noise only
    half = _image(client.get(f"/api/slides/case.png/slide_files/{top - 1}/0_0.jpeg").content)
    assert half.shape == (192, 192, 3)
    shrunk = np.asarray(Image.fromarray(slide.astype(np.uint8)).resize((192, 192), Image.Resampling.BOX))
    assert np.abs(half - shrunk.astype(float)).mean() < 6
    dzi = client.get("/api/slides/case.png/slide.dzi")
    assert dzi.headers["content-type"].startswith("application/xml")
    assert 'Width="384"' in dzi.text
    for url in [
        f"{top}/2_0.jpeg",
        f"{top + 1}/0_0.jpeg",
        f"{top}/0_0.png",
        f"{top}/..%2F0_0.jpeg",
        "x/0_0.jpeg",
    ]:
        assert 400 <= client.get(f"/api/slides/case.png/slide_files/{url}").status_code < 500, url
    for name in ["..%2Fsecret.png", "escape.png", "%2Fetc%2Fpasswd", "..%5Csecret.png", "nothere.png"]:
        for what in ["info", "slide.dzi", "slide_files/0/0_0.jpeg", "layers/cells.png"]:
            reply = client.get(f"/api/slides/{name}/{what}")
            assert 400 <= reply.status_code < 500, (name, what, reply.status_code)
    assert client.get("/api/uploads/..%2Fslides%2Fcase.png/info").status_code == 404
    assert client.get(f"/api/uploads/{'0' * 64}/info").status_code == 404  # never uploaded
    assert client.get("/api/elsewhere/case.png/info").status_code == 422  # not a collection
    assert client.get("/static/../app.py").status_code == 404


def test_a_broken_slide_is_a_clear_4xx_and_others_still_answer(folder: Path) -> None:
    client = TestClient(create_app(data_dir=folder))
    reply = client.get("/api/slides/broken.tif/info")
    assert reply.status_code == 422
    assert "broken.tif" in reply.json()["detail"]
    assert client.get("/api/slides/broken.tif/slide_files/0/0_0.jpeg").status_code == 422
    assert client.get("/api/slides/case.png/slide_files/9/0_0.jpeg").status_code == 200


def test_a_slow_slide_does_not_hold_up_another(folder: Path) -> None:
    tiles = TileServer(max_open=1)
    slow = folder / "case.png"
    entry = tiles._get(slow)[1]
    real = entry.slide.read_region

    def crawl(*args: object, **kwargs: object) -> np.ndarray:
        time.sleep(1.5)
        return real(*args, **kwargs)

    entry.slide.read_region = crawl
    start = time.perf_counter()
    workers = [threading.Thread(target=tiles.tile, args=(slow, 9, col, 0)) for col in (0, 1)]
    for worker in workers:
        worker.start()
    time.sleep(0.1)
    quick = time.perf_counter()
    # another slide: answered at once, and it evicts the slow one (max_open=1) without waiting for it
    assert tiles.tile(folder / "corner.png", 10, 0, 0) is not None
    assert time.perf_counter() - quick < 1.0, "another slide's tile waited for the slow one"
    assert entry.closed
    for worker in workers:
        worker.join()
    assert time.perf_counter() - start < 2.8, "two reads of one slide ran one after the other"
    assert tiles.cached_bytes() > 0
    assert entry.read((0, 0), (4, 4), 1.0) is None  # closed once its reads had ended
    tiles.close()


def test_tile_and_result_caches_stay_within_their_budget(folder: Path, tmp_path: Path) -> None:
    tiles = TileServer(max_open=1, cache_mb=0.01)  # ~10 kB: a handful of tiles
    for level in range(5, 11):
        zoom = tiles.zoom(folder / "corner.png")
        cols, rows = (-(-s // zoom.tile_size) for s in zoom.level_size(level))
        for col in range(cols):
            for row in range(rows):
                assert tiles.tile(folder / "corner.png", level, col, row) is not None
                assert tiles.cached_bytes() <= 0.01 * 1024 * 1024
        tiles.tile(folder / "case.png", 9, 0, 0)  # a second slide evicts the first (max_open=1)
    assert len(tiles._open) == 1
    tiles.close()
    cache = ResultCache(100)
    for i in range(10):
        cache.put((i,), {"i": i}, {"cells": b"x" * 40})
    assert cache.get((0,)) is None
    assert cache.get((9,)) == ({"i": 9}, {"cells": b"x" * 40})


def test_the_upload_store_keys_by_content_and_keeps_to_its_budget(tmp_path: Path) -> None:
    store = UploadStore(250, tmp_path / "store")
    digests = []
    for i in range(4):
        f = tmp_path / f"up{i}"
        f.write_bytes(bytes([i]) * 100)
        digests.append(store.add(f))
        assert not f.exists()  # moved in, not copied
    assert digests[0] == hashlib.sha256(bytes([0]) * 100).hexdigest()
    assert store.total_bytes() <= 250
    assert store.path(digests[0]) is None
    assert store.path(digests[3]) == tmp_path / "store" / digests[3]
    again = tmp_path / "again"
    again.write_bytes(bytes([3]) * 100)
    assert store.add(again) == digests[3]
    assert store.total_bytes() == 200
    big = tmp_path / "big"
    big.write_bytes(b"y" * 300)
    assert store.add(big) is None  # larger than the whole store
    for bad in ["../x", digests[3].upper(), digests[3][:-1], ""]:
        assert store.path(bad) is None


def test_an_upload_is_scored_then_viewable_with_its_cell_layer(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(create_app())
    data = (folder / "case.png").read_bytes()
    mpp = "0.50000001"  # more digits than %g keeps: the layer's URL must still name this very score
    body = client.post(f"/api/score?mpp={mpp}", files={"file": ("case.png", data, "image/png")}).json()
    digest = hashlib.sha256(data).hexdigest()
    assert body["upload"] == digest
    assert body["file"] == "case.png"
    assert body["source"] == f"/api/uploads/{digest}"
    assert body["category"] in {"0", "1+", "2+", "3+"}
    q = body["quantifier"]
    assert body["category"] == "3+"  # the synthetic case was drawn as 3+
    assert q["her2_3way"] == "high"
    pct = sum(
        q[f"pct_{c}"]
        for c in ["none", "faint_incomplete", "faint_complete", "moderate_complete", "intense_complete"]
    )
    assert abs(pct - 100) < 1e-6
    assert client.get(f"/api/uploads/{digest}/info").json()["width"] == 384
    assert client.get(f"/api/uploads/{digest}/slide_files/9/0_0.jpeg").status_code == 200
    cells = body["layers"]["cells"]
    assert (cells["x"], cells["y"], cells["width"], cells["height"]) == (0, 0, 384, 384)
    assert cells["url"] == f"/api/uploads/{digest}/layers/cells.png?mpp={mpp}"

    def never(*args: object) -> None:
        raise AssertionError("scored again: the layer was not taken from the result cache")

    monkeypatch.setattr(app_module._Scorer, "score", never)
    rgba = _image(client.get(cells["url"]).content)
    assert rgba.shape == (384, 384, 4)
    opaque = rgba[..., 3] > 0
    assert 0.01 < opaque.mean() < 0.5  # dots, not a filled square
    colours = {tuple(c) for c in rgba[opaque][:, :3]}
    assert colours <= {tuple(v) for v in cells["legend"].values()}
    assert "heatmap" not in body["layers"]
    assert "--model" in body["layers_missing"]["heatmap"]
    missing = client.get(f"/api/uploads/{digest}/layers/heatmap.png?mpp={mpp}")
    assert missing.status_code == 404
    assert "--model" in missing.json()["detail"]


def test_the_heatmap_lies_on_the_tissue_the_model_read(folder: Path, tiny_model: Path) -> None:
    from her2score.data.lowres import LowResParams, lowres_image
    from her2score.serve.layers import model_square
    from her2score.slide import open_slide

    client = TestClient(create_app(model=tiny_model, data_dir=folder, device="cpu"))
    body = client.get("/api/slides/corner.png/score?mpp=0.5").json()
    rect = body["layers"]["heatmap"]
    # the tissue (level-0 x 500-756, y 300-556) is inside the square, the square is square
    assert rect["x"] <= 500
    assert rect["y"] <= 300
    assert rect["width"] == rect["height"]
    assert rect["x"] + rect["width"] >= 756
    assert rect["y"] + rect["height"] >= 556
    assert rect["width"] < 400  # not the whole field
    heat = _image(client.get(rect["url"]).content)
    assert heat.shape == (32, 32, 4)
    assert heat[..., 3].any()
    assert not heat[..., 3].all()
    # what the model read is what lies under the rectangle
    params = LowResParams(mpp=4.0, size=64)
    picture = lowres_image(folder / "corner.png", params, 0.5).astype(float)
    square = model_square(folder / "corner.png", params, 0.5)
    assert square is not None
    with open_slide(folder / "corner.png", mpp=0.5) as slide:
        under = slide.read_bounds(
            (round(square["x"]), round(square["y"]), round(square["x"] + square["width"]),
             round(square["y"] + square["height"])), 0.5 * square["width"] / 64,
        ).astype(float)  # fmt: skip
    assert under.shape[:2] == (64, 64)
    assert np.abs(under - picture).mean() < 12, np.abs(under - picture).mean()
    shifted = np.roll(under, 6, axis=1)
    assert np.abs(shifted - picture).mean() > np.abs(under - picture).mean() + 3  # the test can fail


def test_the_page_and_its_message_when_openseadragon_is_not_built(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = TestClient(create_app(data_dir=folder))
    monkeypatch.setattr(app_module, "VENDOR_SCRIPT", tmp_path / "absent.js")
    page = client.get("/")
    assert page.status_code == 200
    assert "make viewer" in page.text
    assert 'id="vendor-missing"' in page.text
    assert client.get("/health").json()["viewer"] is False
    built = tmp_path / "openseadragon.min.js"  # as `make viewer` leaves it, whether or not it ran here
    built.write_text("// vendored")
    monkeypatch.setattr(app_module, "VENDOR_SCRIPT", built)
    page = client.get("/").text
    assert 'id="vendor-missing"' not in page
    assert "/static/vendor/openseadragon/openseadragon.min.js" in page
    assert "//cdn" not in page
    assert "https://" not in page
    assert client.get("/static/viewer.js").status_code == 200


REAL_SVS = Path(__file__).parents[2] / ".." / "shared" / "data" / "real" / "slides" / "CMU-1-Small-Region.svs"


@pytest.mark.realdata
def test_tiles_of_a_real_aperio_slide(tmp_path: Path) -> None:
    if not REAL_SVS.is_file():
        pytest.skip("../shared/data/real is absent")
    (tmp_path / "cmu.svs").symlink_to(REAL_SVS.resolve())
    client = TestClient(create_app(data_dir=tmp_path.resolve()))
    # the link leads out of the data folder: refused like any other way out
    assert client.get("/api/slides/cmu.svs/info").status_code == 400
    (tmp_path / "cmu.svs").unlink()
    (tmp_path / "cmu.svs").write_bytes(REAL_SVS.read_bytes())
    info = client.get("/api/slides/cmu.svs/info").json()
    assert (info["width"], info["height"]) == (2220, 2967)
    assert info["mpp"] == pytest.approx(0.499, abs=0.001)  # from the Aperio metadata
    top = info["levels"][-1]
    assert top["mpp"] == info["mpp"]
    assert top["size"] == [2220, 2967]
    tile = _image(client.get(f"/api/slides/cmu.svs/slide_files/{top['level']}/4_5.jpeg").content)
    assert tile.shape == (256, 256, 3)
    assert tile.std() > 10  # tissue, not a blank tile
    corner = _image(client.get(f"/api/slides/cmu.svs/slide_files/{top['level']}/8_11.jpeg").content)
    assert corner.shape == (2967 - 11 * 256, 2220 - 8 * 256, 3)  # the partial last tile
