"""A closed-loop HTTP load generator for `benchmarks/serve.py` when wrk is not installed.

    python benchmarks/httpload.py URL BODIES.json CONNECTIONS SECONDS

``CONNECTIONS`` keep-alive connections on one asyncio loop (uvloop), each sending the next
POST as soon as its answer arrived, cycling through the JSON bodies in BODIES.json. Prints
one line, ``RESULT {json}``, in the shape of serve.py's wrk script: requests, seconds, p50
and p99 latency in ms, transport errors and non-2xx answers. Requests are written and
answers read as raw HTTP/1.1 (Content-Length framing), so the client costs little CPU;
it still shares the machine's cores with the server, as wrk does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


async def connection(
    host: str, port: int, path: str, bodies: list[bytes], until: float, out: dict[str, list]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    i = 0
    try:
        while time.perf_counter() < until:
            began = time.perf_counter()
            writer.write(heads[i % len(heads)])
            i += 1
            status_line = await reader.readuntil(b"\r\n")
            length = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out["latency"].append(time.perf_counter() - began)
            if not status_line.split(b" ", 2)[1].startswith(b"2"):
                out["non2xx"].append(1)
    except (OSError, asyncio.IncompleteReadError):
        out["errors"].append(1)
    finally:
        writer.close()


async def run(url: str, bodies: list[bytes], connections: int, seconds: float) -> dict:
    parts = urlsplit(url)
    out: dict[str, list] = {"latency": [], "errors": [], "non2xx": []}
    began = time.perf_counter()
    until = began + seconds
    await asyncio.gather(
        *(
            connection(
                parts.hostname or "127.0.0.1", parts.port or 80, parts.path, bodies, until, out
            )
            for _ in range(connections)
        )
    )
    took = time.perf_counter() - began
    latency = sorted(out["latency"])

    def pct(q: float) -> float:
        return latency[min(len(latency) - 1, int(q * len(latency)))] * 1e3 if latency else 0.0

    return {
        "requests": len(latency),
        "seconds": took,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(out["errors"]),
        "non2xx": len(out["non2xx"]),
    }


def main() -> None:
    url, bodies_file, connections, seconds = sys.argv[1:5]
    bodies = [json.dumps(b).encode() for b in json.loads(Path(bodies_file).read_bytes())]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(url, bodies, int(connections), float(seconds)))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
