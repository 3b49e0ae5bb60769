"""Tile serving: `atlas serve` vs Python's http.server on the same files, in the same run.

    python benchmarks/bench_serve.py [--requests 10000] [--clients 8] [--time-limit 90]

Builds a synthetic pyramid (grids 20/40/80, 64 px icons: a few hundred JPEG tiles), then for
each server, started in its own process on a loopback port:

- ``atlas``: :func:`atlas.web.serve.serve` (ThreadingHTTPServer, HTTP/1.1 keep-alive, in-memory
  cache of small files, ETag);
- ``atlas-304``: the same, every request revalidating with ``If-None-Match`` (a browser reload);
- ``http.server``: ``python -m http.server`` (ThreadingHTTPServer + SimpleHTTPRequestHandler,
  HTTP/1.0: one connection per request), serving the tiles folder;
- ``http.server-1.1``: the same with ``--protocol HTTP/1.1`` (keep-alive).

A client of ``clients`` threads (one keep-alive connection each, reconnecting when the server
closes) requests ``requests`` tiles in a seeded random order, bounded by ``time-limit`` seconds.
Reports requests/s, p50/p99 latency and errors. Loopback only; client and server share the cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from atlas.stages.tiles import build_tiles  # noqa: E402
from bench_tiles import write_synthetic  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer {path}")


def load(port: int, paths: list[str], clients: int, time_limit: float, etags: dict[str, str] | None = None) -> dict:
    """Request every path once from ``clients`` threads; latency per request in ms."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    next_index = [0]
    deadline = time.monotonic() + time_limit

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(paths):
                break
            headers = {"If-None-Match": etags[paths[i]]} if etags else {}
            t = time.perf_counter()
            try:
                conn.request("GET", paths[i], headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status in (200, 304)
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            mine.append((time.perf_counter() - t) * 1000)
            bad += not ok
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2], 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))], 2) if n else None,
        "errors": errors[0],
        "timed_out": n < len(paths),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--time-limit", type=float, default=90.0, help="seconds per server at most")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        run = Path(tmp) / "run"
        write_synthetic(run, [20, 40, 80], 64, 0.7, done=1.0)
        build_tiles(run / "cells.h5", run / "icons.h5", run / "tiles", progress=False)
        tiles = sorted(p.relative_to(run / "tiles").as_posix() for p in (run / "tiles").glob("[0-9]*/*/*.jpg"))
        rng = random.Random(args.seed)
        picks = [rng.choice(tiles) for _ in range(args.requests)]
        sizes = [(run / "tiles" / t).stat().st_size for t in tiles]
        print(f"{len(tiles)} tiles, mean {sum(sizes) / len(sizes) / 1024:.1f} KiB; {args.requests} requests, "
              f"{args.clients} client threads; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
              flush=True)

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        servers = {
            "atlas": ([sys.executable, "-c", "import sys; from atlas.web.serve import serve; "
                       "serve(sys.argv[1], port=int(sys.argv[2]))", str(run)], "/data/tiles/"),
            "atlas-304": (None, "/data/tiles/"),
            "http.server": ([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                             str(run / "tiles")], "/"),
            "http.server-1.1": ([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--protocol", "HTTP/1.1",
                                 "--directory", str(run / "tiles")], "/"),
        }
        results = {}
        proc = None
        port = 0
        for name, (cmd, prefix) in servers.items():
            if cmd is not None:
                port = free_port()
                proc = subprocess.Popen([*cmd, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                paths = [prefix + t for t in picks]
                wait_ready(port, prefix + tiles[0])
                etags = None
                if name == "atlas-304":
                    etags = {}
                    for t in tiles:
                        conn = http.client.HTTPConnection("127.0.0.1", port)
                        conn.request("GET", prefix + t)
                        resp = conn.getresponse()
                        resp.read()
                        etags[prefix + t] = resp.getheader("ETag")
                        conn.close()
                load(port, paths[:300], args.clients, 30, etags)  # warm-up (page cache, server cache)
                results[name] = load(port, paths, args.clients, args.time_limit, etags)
                r = results[name]
                print(f"{name:<16} {r['requests_per_s']:8.1f} req/s   p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms"
                      f"   {r['requests']} requests in {r['seconds']} s, {r['errors']} errors", flush=True)
            finally:
                if name != "atlas" and proc is not None:  # atlas-304 reuses the atlas process
                    proc.terminate()
                    proc.wait(10)
                    proc = None
        print(json.dumps({"tiles": len(tiles), "clients": args.clients, "results": results}, indent=1))


if __name__ == "__main__":
    main()
