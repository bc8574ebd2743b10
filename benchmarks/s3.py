"""S3 (a moto server on 127.0.0.1) against the local disk: prep throughput and
event-to-deploy latency.

    .venv/bin/python benchmarks/s3.py [--rows 1000000] [--runs 3] [--latency-rows 100000]
                                      [--only prep|latency]

Starts a moto server (tests/fixtures/moto.py's ``start_moto``) and points nothing at it
through ``AWS_ENDPOINT_URL``: the S3 projects name it in their spec's ``storage:`` section,
so the benchmark also checks that sources and outputs follow the spec.

1. Prep. The prep benchmark's input (benchmarks/prep.py generates it, cached in
   benchmarks/.data/) is put in a bucket. Each in a fresh process:
   - ``driftloop run`` with the CSV on the local disk and outputs in ``data/`` (the anchor);
   - ``driftloop run`` with the source ``s3://.../raw/events/*.csv`` and ``outputs: s3://...``;
   - pandas' prep (benchmarks/prep.py's) reading the local file, and reading the same object
     through s3fs (``pd.read_csv("s3://...")``; outputs local).
   Prints wall and CPU time, and the S3/local ratios.

2. Event-to-deploy latency. ``driftloop up`` on benchmarks/latency.py's project (a
   classification spec whose concept turns with each file), once with a local raw folder
   and once with the source in a bucket whose notifications go to SQS (``ingest.events``)
   and outputs on S3. Both loops run side by side for the whole benchmark and take turns
   (local then S3, then S3 then local, ...), so each pair of runs sees about the same load
   on a shared machine. Run after run a file lands (renamed into the folder; PUT to the
   bucket) and /predict is polled until it answers with the model trained on it. Each run
   is split into notification delay (S3 only: PUT done -> the message visible on a second
   queue subscribed to the same SNS topic the bucket notifies), compute (the stages' own
   time from the state database, plus the server's load of the model) and orchestration
   overhead (the rest). Target: the S3 overhead at most 1 s above the local figure (the
   median of the run-by-run differences).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from tests.fixtures.moto import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, start_moto  # noqa: E402

import latency  # noqa: E402  (benchmarks/latency.py: its project, data and probes)
import prep  # noqa: E402  (benchmarks/prep.py: its input, spec and pandas prep)

BUCKET = "bench"
KEY = "raw/events/events.csv"
AWS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}


# -- 1. prep ---------------------------------------------------------------------------


def s3_spec(endpoint: str, prefix: str) -> str:
    """The prep benchmark's spec with its source and outputs in the bucket."""
    spec = prep.SPEC.replace("path: data/raw/events/*.csv", f"path: s3://{BUCKET}/raw/events/*.csv")
    return spec + f"outputs: s3://{BUCKET}/{prefix}\nstorage:\n  endpoint_url: {endpoint}\n"


def child(engine: str, out: Path, csv_path: Path, endpoint: str) -> dict[str, Any]:
    """One engine's run, in this (child) process."""
    if engine == "driftloop-local":
        return prep.run_driftloop(csv_path, out)
    if engine == "driftloop-s3":
        from driftloop.pipeline import run

        (out / "driftloop.yaml").write_text(s3_spec(endpoint, f"out-{uuid.uuid4().hex[:8]}"))
        result = run(out)
        if result.failed:
            raise SystemExit(f"driftloop failed: {[r.error for r in result.failed]}")
        [done] = [r for r in result.reports if r.stage == "prep"]
        m = done.manifest
        return {"ok": m["rows_ok"], "quarantined": m["rows_quarantined"]}
    if engine == "pandas-local":
        return prep.run_pandas(csv_path, out)
    if engine == "pandas-s3":  # s3fs reads the object; AWS_ENDPOINT_URL points it at moto
        return prep.run_pandas(f"s3://{BUCKET}/{KEY}", out)  # type: ignore[arg-type]
    raise SystemExit(f"unknown engine {engine}")


def measure(engine: str, csv_path: Path, endpoint: str) -> dict[str, Any]:
    env = {**os.environ, **AWS, "OMP_NUM_THREADS": "2"}
    env.pop("AWS_ENDPOINT_URL", None)
    if engine == "pandas-s3":
        env["AWS_ENDPOINT_URL"] = endpoint  # s3fs has no driftloop spec to read
    with tempfile.TemporaryDirectory(prefix=f"bench-s3-{engine}-") as tmp:
        cmd = [sys.executable, __file__, "--child", engine, "--csv", str(csv_path)]
        cmd += ["--out", tmp, "--endpoint", endpoint]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        assert proc.stdout is not None
        output = proc.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{engine} failed")
    result = json.loads(output.strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return {"engine": engine, "wall_s": wall, "cpu_s": cpu, "load": load, **result}


def bench_prep(server: MotoServer, rows: int) -> None:
    prep.DATA.mkdir(exist_ok=True)
    csv_path = prep.DATA / f"prep-{rows}.csv"
    if not csv_path.exists():
        print(f"generating {csv_path} ...", flush=True)
        prep.generate(rows, csv_path)
    size = csv_path.stat().st_size
    s3 = server.client("s3")
    s3.upload_file(str(csv_path), BUCKET, KEY)
    print(f"\n== prep: {rows:,} rows x 20 columns, {size / 2**20:.0f} MiB, local vs moto S3")
    results = {}
    for engine in ("driftloop-local", "driftloop-s3", "pandas-local", "pandas-s3"):
        r = measure(engine, csv_path, server.endpoint)
        results[engine] = r
        print(
            f"{engine:<16} {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s cpu  "
            f"kept {r['ok']:,} quarantined {r['quarantined']:,}  load {r['load']:.1f}",
            flush=True,
        )
    d_ratio = results["driftloop-s3"]["wall_s"] / results["driftloop-local"]["wall_s"]
    p_ratio = results["pandas-s3"]["wall_s"] / results["pandas-local"]["wall_s"]
    versus = results["pandas-s3"]["wall_s"] / results["driftloop-s3"]["wall_s"]
    print(f"driftloop S3/local: {d_ratio:.2f}x   pandas+s3fs S3/local: {p_ratio:.2f}x")
    print(f"on S3, pandas+s3fs / driftloop: {versus:.2f}x (above 1: driftloop is faster)")
    if results["driftloop-s3"]["ok"] != results["driftloop-local"]["ok"]:
        raise SystemExit("driftloop kept different rows on S3 and locally")


# -- 2. event-to-deploy latency ---------------------------------------------------------


def notifications(server: MotoServer) -> tuple[str, str]:
    """The bucket notifies an SNS topic; two queues subscribe with raw delivery: driftloop's
    and the benchmark's probe. Their names."""
    sns, sqs = server.client("sns"), server.client("sqs")
    topic = sns.create_topic(Name="bench-raw")["TopicArn"]
    names = []
    for name in ("bench-driftloop", "bench-probe"):
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true"},
        )
        names.append(name)
    server.client("s3").put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return names[0], names[1]


class Probe:
    """Long-polls the probe queue; the moment each key's message became visible to it."""

    def __init__(self, server: MotoServer, queue: str) -> None:
        self.sqs = server.client("sqs")
        self.url = self.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            answer = self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            now = time.time()
            for message in answer.get("Messages", []):
                with contextlib.suppress(ValueError, KeyError, TypeError):  # a test event
                    for record in json.loads(message["Body"]).get("Records", []):
                        key = unquote_plus(record["s3"]["object"]["key"])  # URL-encoded
                        self.seen.setdefault(key, now)
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def wait(self, key: str, timeout: float = 60) -> float:
        deadline = time.time() + timeout
        while key not in self.seen and time.time() < deadline:
            time.sleep(0.005)
        if key not in self.seen:
            raise SystemExit(f"no notification for {key} within {timeout:.0f}s")
        return self.seen[key]


def arrived_at(project: Path, version: str) -> float:
    """When the batch that made ``version`` was recorded as arrived (the ledger took it)."""
    from datetime import datetime

    from driftloop.core.layout import Layout
    from driftloop.core.state import StateDB

    batch_id = latency.parts_batch(project, version)
    with StateDB(Layout(project).state_db) as db:
        events = db.events(10_000)
    [event] = [e for e in events if e["type"] == "DataArrived" and e["batch_id"] == batch_id]
    return datetime.fromisoformat(event["ts"]).timestamp()


@contextlib.contextmanager
def up(project: Path, port: int, env: dict[str, str]) -> Iterator[None]:
    log = (project.parent / f"up-{project.name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "up", "-p", str(project), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


def latency_project(work: Path, name: str, rows: int, extra: str = "", source: str = "") -> Path:
    project = work / name
    project.mkdir()
    numbers = "\n".join(f"    {n}: {{dtype: float}}" for n in latency.NUMBERS)
    spec = latency.SPEC.format(numbers=numbers, rows=rows)
    if source:
        spec = spec.replace("path: data/raw/events/*.csv", f"path: {source}")
    (project / "driftloop.yaml").write_text(spec + extra)
    return project


def bench_latency(server: MotoServer, rows: int, runs: int) -> None:
    from driftloop.serving.client import free_port

    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-s3-"))
    env = {**os.environ, **AWS, "OMP_NUM_THREADS": "2"}
    env.pop("AWS_ENDPOINT_URL", None)
    queue, probe_queue = notifications(server)
    s3 = server.client("s3")
    # storage.endpoint_url is S3's: the queue is found through the SQS endpoint variable
    env_s3 = {**env, "AWS_ENDPOINT_URL_SQS": server.endpoint}
    events = f"  events: {{queue: 'sqs://{queue}', wait_seconds: 20, listing_seconds: 3600}}\n"
    local = latency_project(work, "local", rows)
    remote = latency_project(
        work,
        "s3",
        rows,
        extra=f"outputs: s3://{BUCKET}/out\nstorage:\n  endpoint_url: {server.endpoint}\n",
        source=f"s3://{BUCKET}/latency/*.csv",
    )
    text = (remote / "driftloop.yaml").read_text()
    (remote / "driftloop.yaml").write_text(
        text.replace("ingest: {settle_seconds: 1.0}", ("ingest:\n  settle_seconds: 1.0\n" + events))
    )
    probe = Probe(server, probe_queue)
    probe_body = latency.batch(1, 0, seed=99).drop("y").to_dicts()[0]
    projects = {"local": local, "s3": remote}
    urls = {where: f"http://127.0.0.1:{free_port()}" for where in projects}

    def land(where: str, k: int, rows_: int) -> tuple[float, float]:
        """File k lands; when it was complete, and the notification's delay (S3 only)."""
        frame = latency.batch(rows_, k, seed=k)
        name = f"part-{k:03d}.csv"
        if where == "local":
            return latency.land(local, frame, name), 0.0
        s3.put_object(Bucket=BUCKET, Key=f"latency/{name}", Body=frame.write_csv().encode())
        landed = time.time()  # the PUT has returned: the object is there
        return landed, max(0.0, probe.wait(f"latency/{name}") - landed)

    results: dict[str, list[tuple[float, float, float, float]]] = {"local": [], "s3": []}
    with contextlib.ExitStack() as stack:
        # both loops run for the whole benchmark and take turns, so run k of each sees
        # about the same load: on a shared machine that is what makes them comparable
        for where, project in projects.items():
            port = int(urls[where].rsplit(":", 1)[1])
            stack.enter_context(up(project, port, env_s3 if where == "s3" else env))
            land(where, 0, rows)
            latency.wait_for_version(urls[where], probe_body, "1", 900)
            time.sleep(3)  # the first model has no check after it to wait for
        print(f"\n== event-to-deploy: {rows:,} rows a file, local and S3 taking turns")
        for k in range(1, runs + 1):
            order = ("local", "s3") if k % 2 else ("s3", "local")  # neither always first
            for where in order:
                project = projects[where]
                load = os.getloadavg()[0]
                landed, notified = land(where, k, rows)
                version = str(k + 1)
                served = latency.wait_for_version(urls[where], probe_body, version, 900)
                total = served - landed
                compute = sum(latency.compute_seconds(project, version).values())
                overhead = total - compute - notified
                results[where].append((total, notified, compute, overhead))
                # the overhead's first part: to the batch's DataArrived (noticing the file,
                # the batch window, hashing it, the ledger); the rest follows it
                ingested = arrived_at(project, version) - landed - notified
                print(
                    f"run {k} {where:<5}: {total:6.2f} s to serve v{version}: notification "
                    f"{notified:.2f} s, compute {compute:6.2f} s, overhead {overhead:.2f} s "
                    f"({ingested:.2f} s of it to DataArrived)  load {load:.1f}",
                    flush=True,
                )
                latency.idle(project, latency.parts_batch(project, version))
    probe.stop.set()
    print("\nmedians:")
    for where, found in results.items():
        total, notified, compute, overhead = (
            statistics.median(r[i] for r in found) for i in range(4)
        )
        print(
            f"{where:<6} {total:6.2f} s total, notification {notified:.2f} s, "
            f"compute {compute:.2f} s, overhead {overhead:.2f} s"
        )
    pairs = [s[3] - lo[3] for s, lo in zip(results["s3"], results["local"], strict=True)]
    above = statistics.median(pairs)
    print(
        "S3 overhead - local overhead, run by run: "
        + ", ".join(f"{d:+.2f} s" for d in pairs)
        + f"\nmedian of the differences: {above:+.2f} s; target <= 1 s: "
        + ("met" if above <= 1 else "NOT met")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the prep input")
    parser.add_argument("--runs", type=int, default=3, help="files landed per latency setup")
    parser.add_argument("--latency-rows", type=int, default=100_000)
    parser.add_argument("--only", choices=["prep", "latency"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.out, args.csv, args.endpoint)))
        return
    print(f"cpus {os.cpu_count()}, python {sys.version.split()[0]}, load {os.getloadavg()}")
    server = start_moto()
    try:
        server.client("s3").create_bucket(Bucket=BUCKET)
        if args.only in (None, "prep"):
            bench_prep(server, args.rows)
        if args.only in (None, "latency"):
            bench_latency(server, args.latency_rows, args.runs)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
