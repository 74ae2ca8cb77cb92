"""Load test of ``cgcnn-lab serve`` on this machine: N client threads each send R ``POST /predict`` requests of one
10-atom structure (a 2x1x1 SrTiO3 supercell, generated: no data needed) to a server started with the command line,
and the latencies and errors are reported.

    .venv/bin/python bench/serve_load.py                        # 8 clients x 200 requests, mp-perovskite-e-form
    .venv/bin/python bench/serve_load.py --clients 2 --requests 20

Traffic goes to 127.0.0.1 only; the loop is bounded (clients x requests, each with a timeout) and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def structure_cif() -> bytes:
    from pymatgen.core import Lattice, Structure

    cell = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0]]) * (2, 1, 1)
    assert len(cell) == 10
    return cell.to(fmt="cif").encode()


def start_server(model: str, port: int) -> subprocess.Popen:
    """``cgcnn-lab serve MODEL`` in its own process, as a user starts it; returns once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "cgcnn_lab.cli", "serve", model, "--port", str(port),
                               "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read().decode()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/models", timeout=5)
            return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not start in 180 s")


def client(url: str, model: str, cif: bytes, requests: int, errors: list[str]) -> list[float]:
    """One client: ``requests`` predictions one after the other; each latency in seconds."""
    latencies = []
    with httpx.Client(timeout=60) as http:
        for _ in range(requests):
            start = time.perf_counter()
            try:
                answer = http.post(f"{url}/predict", data={"model": model}, files=[("files", ("SrTiO3x2.cif", cif))])
                if answer.status_code != 200 or len(answer.json()["rows"]) != 1:
                    errors.append(f"{answer.status_code}: {answer.text[:200]}")
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
            latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--model", default="mp-perovskite-e-form")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    cif = structure_cif()
    server = start_server(args.model, args.port)
    url = f"http://127.0.0.1:{args.port}"
    errors: list[str] = []
    try:
        client(url, args.model, cif, 3, errors)  # warm-up: the first requests import and load
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            runs = list(pool.map(lambda _: client(url, args.model, cif, args.requests, errors), range(args.clients)))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
    latencies = np.concatenate(runs) * 1000
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"{args.clients} clients x {args.requests} requests of a 10-atom CIF, model {args.model}, "
          f"{os.cpu_count()} CPUs: {len(latencies)} requests in {wall:.1f} s ({len(latencies) / wall:.1f}/s), "
          f"{len(errors)} errors")
    print(f"latency ms: p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max {latencies.max():.0f}")
    for line in errors[:5]:
        print(f"  error: {line}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
