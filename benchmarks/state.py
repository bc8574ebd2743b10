"""The state store's cost per call: SQLite (the embedded default) and, given a URL, PostgreSQL.

    .venv/bin/python benchmarks/state.py [--url postgresql://user@host:5432/db] [--n 500]

For each backend: opening and closing a ``StateDB`` with one read (what the server does
per poll), the two reads ingest makes for every file of every pass (``known_sighting``,
``raw_file``), a sighting recorded, an event appended, and a claim taken and released.
Prints the median wall time and the CPU time per call. The SQLite file is made in a
temporary folder; a PostgreSQL database must exist and be empty of driftloop tables or
hold only benchmark leftovers (the rows this writes are keyed by a fresh run id).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from driftloop.core.state import StateDB


def measure(label: str, n: int, call: Callable[[int], object]) -> None:
    call(-1)  # warm: compiled statements, a pooled connection
    walls = []
    cpu = time.process_time()
    for i in range(n):
        t = time.perf_counter()
        call(i)
        walls.append(time.perf_counter() - t)
    cpu_ms = (time.process_time() - cpu) / n * 1000
    print(f"  {label:<28} {statistics.median(walls) * 1000:8.3f} ms wall {cpu_ms:8.3f} ms CPU")


def run(where: str, path: Path, url: str | None, n: int) -> None:
    print(f"{where}:")
    run_id = uuid.uuid4().hex[:8]
    with StateDB(path, url=url):
        pass

    def open_read(_: int) -> None:
        with StateDB(path, url=url) as db:
            db.last_event_id(("ChampionMoved",))

    measure("open + one read + close", max(n // 10, 20), open_read)
    with StateDB(path, url=url) as db:
        measure("known_sighting", n, lambda i: db.known_sighting(f"{run_id}/{i}", i, i))
        measure("raw_file", n, lambda i: db.raw_file(f"{run_id}-{i}"))
        measure(
            "record_sighting",
            n,
            lambda i: db.record_sighting(f"{run_id}/{i}", i, i, "0" * 64),
        )
        measure("record_event", n, lambda i: db.record_event("Benchmark", {"i": i}))

        def claim_release(i: int) -> None:
            unit = f"bench:{run_id}:{i}"
            db.claim(unit, "w", seconds=60, now=time.time())
            db.release(unit, "w")

        measure("claim + release", n, claim_release)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL database to measure as well")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run("SQLite (.driftloop/state.db)", Path(folder) / "state.db", None, args.n)
    if args.url:
        run("PostgreSQL", Path("unused.db"), args.url, args.n)


if __name__ == "__main__":
    main()
