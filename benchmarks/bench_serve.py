"""A bounded loopback load test of ``her2score serve``, and the traversal attempts it refuses.

Starts the service on 127.0.0.1 (a free port) in this process, sends ``--requests`` scoring requests
from ``--clients`` threads (half uploads, half data-folder slides, plus health checks; each at its own
µm/px, so that every request is scored rather than answered from the result cache), then the
traversal attempts; prints answers, errors, latency and memory before/after. Nothing leaves this machine.

    .venv/bin/python benchmarks/bench_serve.py [--requests 200] [--clients 20]
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TRAVERSALS = (
    "..%2Fsecret.png", "%2E%2E", "escape.png", "%2Fetc%2Fpasswd", "..%5Csecret.png", "~root", "%00",
    "..%252Fsecret.png", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
)  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()

    import httpx
    import uvicorn
    from PIL import Image

    from her2score.data.synth import render_pair
    from her2score.serve.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    folder = tmp / "slides"
    folder.mkdir()
    _, ihc, _ = render_pair("2+", size=(256, 256), seed=3)
    Image.fromarray(ihc).save(folder / "case.png")
    (tmp / "secret.png").write_bytes((folder / "case.png").read_bytes())
    (folder / "escape.png").symlink_to(tmp / "secret.png")
    payload = (folder / "case.png").read_bytes()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(data_dir=folder), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    before = _rss_mb()

    def one(i: int) -> tuple[int, float]:
        t = time.perf_counter()
        with httpx.Client(base_url=base, timeout=120) as client:
            mpp = 0.5 + 1e-4 * i  # a new µm/px each time: the service's result cache must not answer
            if i % 2:
                upload = {"file": ("case.png", payload, "image/png")}
                reply = client.post(f"/api/score?mpp={mpp}", files=upload)
            else:
                reply = client.get(f"/api/slides/case.png/score?mpp={mpp}")
            client.get("/health")
        return reply.status_code, time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:  # two rounds: growth in the second would be a leak
        results = list(pool.map(one, range(args.requests // 2)))
        middle = _rss_mb()
        results += list(pool.map(one, range(args.requests // 2, args.requests)))
    wall = time.perf_counter() - start
    after = _rss_mb()
    refused = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for name in TRAVERSALS:
            refused[name] = client.get(f"/api/slides/{name}/score").status_code
    server.should_exit = True
    thread.join(timeout=10)

    ok = sum(code == 200 for code, _ in results)
    latencies = sorted(t for _, t in results)
    print(f"{args.requests} scoring requests from {args.clients} clients on loopback, 256-px IHC patches")
    print(
        f"  answered 200: {ok}, errors: {len(results) - ok}, wall {wall:.1f} s ({args.requests / wall:.1f}/s)"
    )
    p95 = latencies[int(0.95 * len(latencies))]
    print(f"  latency median {statistics.median(latencies):.2f} s, p95 {p95:.2f} s")
    print(f"  process memory before {before:.0f} MB, after half {middle:.0f} MB, after all {after:.0f} MB")
    print("  traversal attempts: " + ", ".join(f"{k} -> {v}" for k, v in refused.items()))
    print("  all refused (4xx): " + str(all(400 <= v < 500 for v in refused.values())))
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
