"""Deep-zoom tiles of the viewer over loopback: every tile of a synthetic whole slide, cold then warm.

Writes a synthetic pyramidal TIFF (``--size-mm``, 0.5 µm/px), starts ``her2score serve``'s app on
127.0.0.1 (a free port) in this process, and fetches every tile of every deep-zoom level from
``--clients`` threads twice: once cold (each tile read from the file by µm/px and encoded) and once warm
(from the bounded tile cache where it still holds them). Prints tiles/s, latency, the cache's bytes
and the process memory before and after. Nothing leaves this machine.

    .venv/bin/python benchmarks/bench_viewer.py [--size-mm 3.5 2.5] [--clients 8]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mm", type=float, nargs=2, default=(3.5, 2.5))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tile-cache-mb", type=float, default=64.0)
    args = parser.parse_args()

    import httpx
    import uvicorn

    from her2score.data.synth import Case
    from her2score.data.synth.slides import SlideSpec, write_slide
    from her2score.serve.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    folder = tmp / "slides"
    folder.mkdir()
    t = time.perf_counter()
    spec = SlideSpec(Case(her2="2+", marker="her2", grade=0.5), size_mm=tuple(args.size_mm))
    write_slide(folder / "slide.tiff", spec)
    written = time.perf_counter() - t

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(data_dir=folder, tile_cache_mb=args.tile_cache_mb)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}/api/slides/slide.tiff"
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    info = httpx.get(f"{base}/info", timeout=60).json()
    urls = []
    for level in info["levels"]:
        w, h = level["size"]
        cols, rows = -(-w // info["tile_size"]), -(-h // info["tile_size"])
        folder_url = f"{base}/slide_files/{level['level']}"
        urls += [f"{folder_url}/{c}_{r}.jpeg" for c in range(cols) for r in range(rows)]
    urls.reverse()  # finest level first: the coarse levels then come from the file's small pyramid levels
    before = _rss_mb()
    local = threading.local()

    def one(url: str) -> tuple[int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=120)
        t = time.perf_counter()
        reply = local.client.get(url)
        return reply.status_code, time.perf_counter() - t

    passes = {}
    for name in ("cold", "warm"):
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, urls))
        passes[name] = (results, time.perf_counter() - start, _rss_mb())
    cached = app.state.tiles.cached_bytes() / 1024 / 1024
    server.should_exit = True
    thread.join(timeout=10)

    print(
        f"{info['width']}x{info['height']} px synthetic slide at {info['mpp']:g} µm/px "
        f"({len(info['levels'])} deep-zoom levels, {len(urls)} tiles; written in {written:.1f} s), "
        f"{args.clients} clients on loopback"
    )
    for name, (results, wall, rss) in passes.items():
        ok = sum(code == 200 for code, _ in results)
        lat = sorted(t for _, t in results)
        print(
            f"  {name}: {ok}/{len(results)} answered 200, {len(results) / wall:.0f} tiles/s, latency median "
            f"{1000 * statistics.median(lat):.0f} ms, p95 {1000 * lat[int(0.95 * len(lat))]:.0f} ms; "
            f"memory after {rss:.0f} MB"
        )
    print(f"  memory before {before:.0f} MB; tile cache {cached:.1f} MB of {args.tile_cache_mb:g} MB")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
