"""The web service: health, scoring an upload and a data-folder slide, limits, token, and every
traversal attempt refused with a 4xx."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from her2score.serve.app import create_app


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from her2score.data.synth import render_pair

    root = tmp_path_factory.mktemp("served")
    folder = root / "slides"
    folder.mkdir()
    _, ihc, _ = render_pair("3+", size=(384, 384), seed=2)
    Image.fromarray(ihc).save(folder / "case.png")
    (folder / "notes.txt").write_text("not a slide")
    (root / "secret.png").write_bytes((folder / "case.png").read_bytes())  # outside the data folder
    (folder / "escape.png").symlink_to(root / "secret.png")
    return folder


def test_health_and_scoring_an_upload(data: Path) -> None:
    client = TestClient(create_app())
    assert client.get("/health").json()["status"] == "ok"
    with (data / "case.png").open("rb") as fh:
        reply = client.post("/api/score?mpp=0.5", files={"file": ("case.png", fh, "image/png")})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["category"] in {"0", "1+", "2+", "3+"}
    assert body["quantifier"]["n_tumour_cells"] > 0


def test_uploads_are_sniffed_and_capped(data: Path) -> None:
    client = TestClient(create_app(max_upload_mb=0.01))
    reply = client.post("/api/score", files={"file": ("x.png", b"just text, not an image", "image/png")})
    assert reply.status_code == 415
    with (data / "case.png").open("rb") as fh:
        assert client.post("/api/score", files={"file": ("case.png", fh)}).status_code == 413


def test_slides_of_the_data_folder_and_traversal_refused(data: Path) -> None:
    client = TestClient(create_app(data_dir=data))
    assert client.get("/api/slides").json() == {"slides": ["case.png"]}  # not the text, not the link out
    assert client.get("/api/slides/case.png/score?mpp=0.5").status_code == 200
    attempts = [
        "/api/slides/..%2Fsecret.png/score", "/api/slides/%2E%2E/score", "/api/slides/escape.png/score",
        "/api/slides/%2Fetc%2Fpasswd/score", "/api/slides/..%5Csecret.png/score", "/api/slides/~root/score",
        "/api/slides/%00/score", "/api/slides/../secret.png/score", "/api/slides/nothere.png/score",
    ]  # fmt: skip
    for url in attempts:
        reply = client.get(url)
        assert 400 <= reply.status_code < 500, (url, reply.status_code)
        assert "quantifier" not in reply.text


def test_token_guards_the_api(data: Path) -> None:
    client = TestClient(create_app(data_dir=data, token="s3cret"))
    assert client.get("/health").status_code == 200
    assert client.get("/api/slides").status_code == 401
    assert client.get("/api/slides", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/slides", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_model_adds_probabilities(data: Path, tmp_path: Path) -> None:
    from her2score.engine.checkpoint import save_model
    from her2score.models.registry import create_model

    model = create_model("lowres-resnet", 3, stain_head=True).eval()
    meta = {
        "task": "her2-3way", "classes": ["0", "low", "high"], "model": "lowres-resnet",
        "model_kwargs": model.build_kwargs(), "input_kind": "lowres",
        "data": {"mpp": 4.0, "input_size": 32, "margin": 0.02},
        "stats": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }  # fmt: skip
    path = save_model(tmp_path / "model.safetensors", model, meta)
    client = TestClient(create_app(model=path, data_dir=data, device="cpu"))
    body = client.get("/api/slides/case.png/score?mpp=0.5").json()
    assert set(body["probabilities"]) == {"0", "low", "high"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["predicted"] in body["probabilities"]
