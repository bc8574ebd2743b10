"""A sequential keep-alive client: p50 of /predict against /health on the same server.

    .venv/bin/python benchmarks/keepalive.py PROJECT [--requests 500]

Serves PROJECT's champion with ``driftloop serve`` (its defaults) and sends, over one
keep-alive connection (httpx), one request at a time: /health and a single-record /predict
in turns (records drawn from PROJECT's newest processed batch), so a burst of load hits both
alike. Prints the median and 90th percentile of each, their ratio, and the load average. The
issue's target: /predict p50 at most 1 ms, about twice /health.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.serving.client import background_server
from driftloop.serving.records import request_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    spec, layout = load_spec(args.project), Layout(args.project)
    batch = sorted(p for p in layout.processed.iterdir() if (p / "_SUCCESS").is_file())[-1]
    frame = pl.read_parquet(batch / "data.parquet").head(200)
    bodies = request_records(frame, spec)
    work = Path(tempfile.mkdtemp(prefix="driftloop-keepalive-"))
    log = work / "serve.log"
    env = {"OMP_NUM_THREADS": "1"}
    with background_server(args.project, log=log, env=env) as server, httpx.Client() as client:
        times: dict[str, list[float]] = {"health": [], "predict": []}
        for i in range(args.requests + 50):
            began = time.perf_counter()
            assert client.get(f"{server.url}/health").status_code == 200
            health = time.perf_counter() - began
            began = time.perf_counter()
            answer = client.post(f"{server.url}/predict", json=bodies[i % len(bodies)])
            predict = time.perf_counter() - began
            assert answer.status_code == 200, answer.text
            if i >= 50:  # after a warm-up
                times["health"].append(health)
                times["predict"].append(predict)
        model = client.get(f"{server.url}/model").json()
    shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    p50 = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] * 1e3 for k, v in times.items()}
    print(f"cpus {os.cpu_count()}, load {load:.1f}; {args.requests} requests each, in turns")
    print(f"row path: {model.get('inference', {}).get('row_path')}")
    for k in ("health", "predict"):
        print(f"  /{k:<8} p50 {p50[k]:.3f} ms  p90 {p90[k]:.3f} ms")
    ratio = p50["predict"] / p50["health"]
    print(f"/predict p50 is {ratio:.2f}x /health's")
    print(f"target /predict p50 <= 1 ms: {'met' if p50['predict'] <= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
