"""A load generator in its own process: concurrent /predict requests, one JSON line each.

Usage: python tests/load_client.py URL SECONDS CONCURRENCY OUT.jsonl
Each line: {"sent": epoch, "received": epoch, "status": int, "version": str | null}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

BODY = {"t": "2024-01-05 10:00:00", "x1": 0.3, "x2": -1.2, "c": "b"}


async def worker(client: httpx.AsyncClient, url: str, until: float, out: list[dict]) -> None:
    while time.time() < until:
        sent = time.time()
        try:
            response = await client.post(f"{url}/predict", json=BODY)
            status = response.status_code
            version = response.json()["model"]["version"] if status == 200 else None
        except httpx.HTTPError as exc:
            status, version = -1, repr(exc)
        out.append({"sent": sent, "received": time.time(), "status": status, "version": version})


async def main(url: str, seconds: float, concurrency: int, path: str) -> None:
    out: list[dict] = []
    until = time.time() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client, url, until, out) for _ in range(concurrency)))
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in out), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
