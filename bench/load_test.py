"""Load test of `transferkit serve` on loopback, beside offline `Predictor.predict` in the same run.

Starts the server in a subprocess on a free 127.0.0.1 port, then N asyncio clients post one
image each per request for T seconds; a share of the uploads is malformed (random bytes,
empty, truncated, HTML). Prints throughput, p50/p99 latency, 4xx/5xx counts, connection
errors, and whether the server still answers; then offline images/s of `Predictor.predict`
on the same images, and the ratio.

    python bench/load_test.py RUN_DIR IMAGE_FOLDER [--clients 32] [--seconds 60] [--bad 0.1]

Bounded: T seconds of load (plus a 60 s timeout per request), loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def malformed(kind: int, good: bytes) -> tuple[str, bytes]:
    return [("noise.jpg", os.urandom(2000)), ("empty.jpg", b""), ("cut.jpg", good[: len(good) // 3]),
            ("page.jpg", b"<html><body>not found</body></html>")][kind % 4]


async def client(http, url, images, bad_share, until, stats, rng):
    while time.monotonic() < until:
        name, content = images[rng.randrange(len(images))]
        bad = rng.random() < bad_share
        if bad:
            name, content = malformed(rng.randrange(4), content)
        started = time.perf_counter()
        try:
            response = await http.post(url, files=[("files", (name, content, "image/jpeg"))])
        except httpx.HTTPError:
            stats["connection_errors"] += 1
            continue
        latency = time.perf_counter() - started
        status = response.status_code
        if status == 200:
            stats["ok"] += 1
            stats["images"] += len(response.json()["predictions"])
            stats["latencies"].append(latency)
        elif 400 <= status < 500:
            stats["4xx"] += 1
            stats["4xx_expected"] += bad
        else:
            stats["5xx"] += 1


async def load(base: str, images, clients: int, seconds: float, bad_share: float) -> dict:
    stats = {"ok": 0, "images": 0, "4xx": 0, "4xx_expected": 0, "5xx": 0, "connection_errors": 0, "latencies": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(client(http, f"{base}/v1/predict", images, bad_share, until, stats, random.Random(i))
                               for i in range(clients)))
        elapsed = time.monotonic() - started
        alive = (await http.get(f"{base}/healthz")).status_code == 200
    latencies = np.array(stats.pop("latencies")) * 1000
    return {**stats, "seconds": elapsed, "images_per_second": stats["images"] / elapsed,
            "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None, "alive_after": alive}


def offline(run_dir: str, paths: list[str], repeats: int) -> float:
    """Predictor.predict images/s over the same images (after one warm-up call)."""
    from transferkit.deploy.predictor import Predictor

    predictor = Predictor(run_dir)
    predictor.predict(paths[:8])
    started = time.perf_counter()
    done = sum(len(predictor.predict(paths)) for _ in range(repeats))
    return done / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("images", help="folder of images to upload (searched recursively)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--bad", type=float, default=0.10, help="share of malformed uploads")
    parser.add_argument("--max-images", type=int, default=200, help="distinct images to use, at most")
    args = parser.parse_args()

    from transferkit import data

    paths = data.expand_image_paths([args.images])[: args.max_images]
    images = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", args.run_dir, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited: {server.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                sys.exit("the server did not start in 180 s")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"server up on {base}; {args.clients} clients for {args.seconds:g} s, {args.bad:.0%} malformed, "
              f"{len(images)} distinct images", flush=True)
        result = asyncio.run(load(base, images, args.clients, args.seconds, args.bad))
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"served:  {result['images_per_second']:.1f} images/s ({result['images']} images in {result['seconds']:.1f} s), "
          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms")
    print(f"         4xx {result['4xx']} (of them for malformed uploads: {result['4xx_expected']}), 5xx {result['5xx']}, "
          f"connection errors {result['connection_errors']}, answers afterwards: {result['alive_after']}")
    rate = offline(args.run_dir, paths, repeats=max(1, 400 // len(paths)))
    print(f"offline: {rate:.1f} images/s (Predictor.predict on the same {len(paths)} images)")
    print(f"ratio served / offline: {result['images_per_second'] / rate:.2f}")


if __name__ == "__main__":
    main()
