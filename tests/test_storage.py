"""Storage by URL: one contract over every raw store and every output store.

A new store is tested the moment it is registered: add it to ``RAW_STORES`` /
``OUTPUT_STORES`` and give it a factory below (S3 through a moto server, say).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftloop.core.errors import StorageAccessError, StorageError, StorageSchemeError
from driftloop.core.layout import Layout
from driftloop.core.outputs import (
    OUTPUT_STORES,
    Address,
    LocalOutputStore,
    OutputStore,
    output_store,
)
from driftloop.core.rawstore import (
    RAW_STORES,
    LocalRawStore,
    MemoryRawStore,
    RawObject,
    RawStore,
    raw_store,
)
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.core.urls import ObjectUrl
from driftloop.ingest.stage import ingest

from .fixtures.moto import S3Env
from .helpers import write_spec

CONTENT = b"x,y\n1,2\n"


@dataclass
class RawCase:
    """A store, and how a test lands an object in it (as a writer outside driftloop would)."""

    store: RawStore
    land: Callable[[str, bytes], None]
    prefix: str  # under which objects are landed and watched
    base: str = ""  # what a key starts with (an object store's keys are URLs)
    notifies: bool = True  # False: watch raises (the loop then polls), as S3's does for now

    def key(self, name: str) -> str:
        """The store's key (or pattern) for a name relative to the project."""
        return self.base + name


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> RawCase:
    def land(key: str, data: bytes) -> None:
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.rename(path)  # complete when it appears, as a careful writer does

    (tmp_path / "data" / "raw").mkdir(parents=True)
    return RawCase(LocalRawStore(tmp_path), land, "data/raw")


def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> RawCase:
    store = MemoryRawStore()

    def land(key: str, data: bytes) -> None:
        store.put(key, data)

    return RawCase(store, land, "data/raw")


def _s3(tmp_path: Path, request: pytest.FixtureRequest) -> RawCase:
    """A bucket of the test's own on the session's moto server, through the real boto3."""
    from driftloop.core.s3store import S3RawStore

    s3: S3Env = request.getfixturevalue("s3_env")

    def land(key: str, data: bytes) -> None:
        s3.put(key.removeprefix(s3.url()), data)  # a put is atomic: complete when visible

    return RawCase(S3RawStore(tmp_path), land, s3.url("data/raw"), s3.url(), notifies=False)


RAW_CASES: dict[str, Callable[[Path, pytest.FixtureRequest], RawCase]] = {
    "file": _local,
    "memory": _memory,
    "s3": _s3,
}


def test_every_registered_raw_store_has_a_contract_case() -> None:
    assert set(RAW_STORES) <= set(RAW_CASES)


@pytest.fixture(params=sorted(RAW_CASES))
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> RawCase:
    case = RAW_CASES[request.param](tmp_path, request)
    assert isinstance(case.store, RawStore)
    return case


def test_list_gives_each_object_with_its_identity_sorted_by_key(raw: RawCase) -> None:
    raw.land(raw.key("data/raw/s/b.csv"), CONTENT)
    raw.land(raw.key("data/raw/s/a.csv"), CONTENT + b"3,4\n")
    raw.land(raw.key("data/raw/s/deeper/c.csv"), CONTENT)
    raw.land(raw.key("data/raw/t/other.csv"), CONTENT)
    flat = raw.store.list(raw.key("data/raw/s/*.csv"))
    assert [o.key for o in flat] == [raw.key("data/raw/s/a.csv"), raw.key("data/raw/s/b.csv")]
    assert [o.size for o in flat] == [len(CONTENT) + 4, len(CONTENT)]
    assert all(o.mtime_ns > 0 for o in flat)
    deep = raw.store.list(raw.key("data/raw/s/**/*.csv"))
    assert [o.key for o in deep] == [
        raw.key("data/raw/s/a.csv"),
        raw.key("data/raw/s/b.csv"),
        raw.key("data/raw/s/deeper/c.csv"),
    ]
    assert raw.store.list(raw.key("data/raw/nothing/*.csv")) == []


def test_keys_are_the_listed_keys(raw: RawCase) -> None:
    for key in (
        "data/raw/s/b.csv",
        "data/raw/s/a.txt",
        "data/raw/s/deeper/c.csv",
        "data/raw/t.csv",
    ):
        raw.land(raw.key(key), CONTENT)
    for pattern in ("data/raw/s/*", "data/raw/s/*.csv", "data/raw/s/**/*", "data/raw/*/*.csv"):
        assert raw.store.keys(raw.key(pattern)) == [
            o.key for o in raw.store.list(raw.key(pattern))
        ], pattern
    assert raw.store.keys(raw.key("data/raw/s/*")) == [
        raw.key("data/raw/s/a.txt"),
        raw.key("data/raw/s/b.csv"),
    ]
    assert raw.store.keys(raw.key("data/raw/nothing/*")) == []


def test_stat_is_the_listed_identity_and_changes_with_the_content(raw: RawCase) -> None:
    raw.land(raw.key("data/raw/s/a.csv"), CONTENT)
    (listed,) = raw.store.list(raw.key("data/raw/s/*.csv"))
    assert raw.store.stat(raw.key("data/raw/s/a.csv")) == listed
    raw.land(raw.key("data/raw/s/a.csv"), CONTENT + b"3,4\n")  # same key, new content
    assert raw.store.stat(raw.key("data/raw/s/a.csv")) != listed
    with pytest.raises(FileNotFoundError):
        raw.store.stat(raw.key("data/raw/s/gone.csv"))


def test_content_and_its_sha256(raw: RawCase) -> None:
    import hashlib

    raw.land(raw.key("data/raw/s/a.csv"), CONTENT)
    with raw.store.open(raw.key("data/raw/s/a.csv")) as fh:
        assert fh.read() == CONTENT
    assert raw.store.sha256(raw.key("data/raw/s/a.csv")) == hashlib.sha256(CONTENT).hexdigest()
    path = raw.store.local_path(raw.key("data/raw/s/a.csv"))
    assert path is None or path.read_bytes() == CONTENT  # a local path, where there is one


def test_an_arrival_is_notified_with_the_complete_object(raw: RawCase) -> None:
    arrived: list[RawObject] = []
    landed = threading.Event()

    def on_change(obj: RawObject | None) -> None:
        if obj is not None and obj.key == raw.key("data/raw/s/a.csv"):
            arrived.append(obj)
            landed.set()

    # The source's folder exists first: OS notifications watch a folder created after the
    # subscription only once the notifier has seen it appear, and a file written into it at
    # once can come before that (the loop's periodic pass takes such a file).
    raw.land(raw.key("data/raw/s/first.csv"), CONTENT)
    if not raw.notifies:  # the backend cannot notify (yet): it says so, and the loop polls
        with pytest.raises(StorageError, match="not consumed yet"):
            raw.store.watch(raw.prefix, on_change)
        return
    subscription = raw.store.watch(raw.prefix, on_change)
    try:
        raw.land(raw.key("data/raw/s/a.csv"), CONTENT)
        assert landed.wait(300), "no notification for an object that landed"  # a hang guard
    finally:
        subscription.stop()
    assert arrived[-1] == raw.store.stat(raw.key("data/raw/s/a.csv"))


def test_local_keys_are_what_the_ledger_has_always_recorded(tmp_path: Path) -> None:
    """Relative to the project inside it; absolute outside it (file:// URLs too)."""
    project, elsewhere = tmp_path / "p", tmp_path / "elsewhere"
    (project / "data" / "raw").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "data" / "raw" / "a.csv").write_bytes(CONTENT)
    (elsewhere / "b.csv").write_bytes(CONTENT)
    (project / "data" / "raw" / "folder.csv").mkdir()  # a folder is not an object
    store = LocalRawStore(project)
    assert [o.key for o in store.list("data/raw/*.csv")] == ["data/raw/a.csv"]
    assert [o.key for o in store.list(f"{elsewhere}/*.csv")] == [str(elsewhere / "b.csv")]
    assert [o.key for o in store.list(f"file://{elsewhere}/*.csv")] == [str(elsewhere / "b.csv")]


def test_raw_store_is_chosen_by_the_url_scheme(tmp_path: Path) -> None:
    for url in ("data/raw/s/*.csv", "/abs/*.csv", "file:///abs/*.csv", "FILE:///abs/*.csv"):
        assert isinstance(raw_store(url, tmp_path), LocalRawStore)
    from driftloop.core.s3store import S3RawStore

    for url in ("s3://bucket/raw/*.csv", "S3://bucket/raw/a.csv"):
        assert isinstance(raw_store(url, tmp_path), S3RawStore)


def test_an_s3_source_without_credentials_names_the_source_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a crash and not a silent empty listing: what, where, and how to go on."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance to ask
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    write_spec(
        tmp_path,
        """
name: tiny
task: regression
target: y
sources:
  - name: orders
    path: s3://shop-landing/orders/*.csv
contract:
  columns:
    x: {dtype: float}
    y: {dtype: float}
model: {enabled: false}
""",
    )
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    with StateDB(layout.state_db) as db, pytest.raises(StorageAccessError) as raised:
        ingest(spec, layout, db)
    message = str(raised.value)
    assert message.startswith("source 'orders' (path 's3://shop-landing/orders/*.csv'): ")
    assert "s3://shop-landing: no AWS credentials were found" in message
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def test_an_unknown_scheme_says_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(
        StorageSchemeError, match=r"unknown storage scheme 's4'; did you mean s3://"
    ):
        raw_store("s4://bucket/x.csv", tmp_path, what="source 's'")
    with pytest.raises(StorageSchemeError, match=r"unknown storage scheme 's4'"):
        output_store("s4://bucket/data/processed/b1")


# --- outputs: the commit protocol ------------------------------------------------------


@dataclass
class OutputCase:
    store: OutputStore
    base: Address  # the address outputs go under
    leftovers: Callable[[], list[str]]  # everything stored under base, committed or not
    committed: Callable[[str, list[str]], list[str]]  # what leftovers lists for one output
    crash_hook: str  # code that makes a process die between its upload and its commit


def _local_outputs(request: pytest.FixtureRequest, tmp_path: Path) -> OutputCase:
    base = tmp_path / "data" / "processed"
    return OutputCase(
        OUTPUT_STORES["file"](),
        base,
        lambda: sorted(p.relative_to(base).as_posix() for p in base.rglob("*")),
        lambda name, files: sorted([name, f"{name}/_SUCCESS", *(f"{name}/{f}" for f in files)]),
        "import os, pathlib\npathlib.Path.rename = lambda *a: os._exit(9)\n",
    )


def _s3_outputs(request: pytest.FixtureRequest, tmp_path: Path) -> OutputCase:
    s3: S3Env = request.getfixturevalue("s3_env")
    base = ObjectUrl(s3.url("project/data/processed"))
    client = s3.client()

    def leftovers() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=s3.bucket, Prefix=f"{base.key}/"
        )
        return sorted(o["Key"][len(base.key) + 1 :] for p in pages for o in p.get("Contents", []))

    def committed(name: str, files: list[str]) -> list[str]:
        marker = json.loads(
            client.get_object(Bucket=s3.bucket, Key=f"{base.key}/{name}/_SUCCESS")["Body"].read()
        )
        run = f"{name}/_attempts/{marker['attempt']}"
        assert marker["prefix"] == f"{base.key}/{run}/"
        return sorted([f"{name}/_SUCCESS", *(f"{run}/{f}" for f in files)])

    hook = (  # the marker's put never happens: the files are uploaded, then the process dies
        "import os\n"
        "from botocore.client import BaseClient\n"
        "call = BaseClient._make_api_call\n"
        "def dying(self, op, params):\n"
        "    if op == 'PutObject' and params['Key'].endswith('/_SUCCESS'):\n"
        "        os._exit(9)\n"
        "    return call(self, op, params)\n"
        "BaseClient._make_api_call = dying\n"
    )
    return OutputCase(OUTPUT_STORES["s3"](), base, leftovers, committed, hook)


OUTPUT_CASES: dict[str, Callable[[pytest.FixtureRequest, Path], OutputCase]] = {
    "file": _local_outputs,
    "s3": _s3_outputs,
}


def test_every_registered_output_store_has_a_contract_case() -> None:
    assert set(OUTPUT_STORES) <= set(OUTPUT_CASES)


@pytest.fixture(params=sorted(OUTPUT_CASES))
def out(request: pytest.FixtureRequest, tmp_path: Path) -> OutputCase:
    return OUTPUT_CASES[request.param](request, tmp_path)


def _write(store: OutputStore, output: Address, text: str, *, seal: bool = True) -> None:
    with store.attempt(output) as attempt:
        (attempt / "data.txt").write_text(text)
        if seal:
            store.seal(attempt, {"text": text})


def _text(out: OutputCase, output: Address) -> str:
    return out.store.read_bytes(output, "data.txt").decode()


def test_a_sealed_attempt_is_committed_with_its_data_and_manifest(out: OutputCase) -> None:
    output = out.base / "b1"
    _write(out.store, output, "one")
    assert out.store.is_committed(output)
    assert out.store.read_manifest(output) == {"text": "one"}
    assert _text(out, output) == "one"
    assert out.leftovers() == out.committed("b1", ["data.txt", "manifest.json"])


def test_an_uncommitted_output_is_never_visible(out: OutputCase) -> None:
    output = out.base / "b1"
    with out.store.attempt(output) as attempt:
        (attempt / "data.txt").write_text("half")
        (attempt / "manifest.json").write_text("{}")  # data and manifest, no marker yet
        assert not out.store.is_committed(output)
        assert not out.store.is_committed(attempt)
    assert not out.store.is_committed(output)  # never sealed: nothing published
    assert out.leftovers() == []
    with pytest.raises(FileNotFoundError):
        out.store.read_manifest(output)


def test_a_crash_before_success_leaves_nothing_visible_and_is_swept(out: OutputCase) -> None:
    import subprocess
    import sys

    output = out.base / "b1"
    code = out.crash_hook + (  # a process that dies inside the commit: no exit code runs
        "import sys\n"
        "from pathlib import Path\n"
        "from driftloop.core.outputs import output_store\n"
        "output = sys.argv[1] if '://' in sys.argv[1] else Path(sys.argv[1])\n"
        "store = output_store(output)\n"
        "with store.attempt(output) as attempt:\n"
        "    (attempt / 'data.txt').write_text('half')\n"
        "    store.seal(attempt, {'text': 'half'})\n"
        "sys.exit('the commit was not interrupted')\n"
    )
    died = subprocess.run([sys.executable, "-c", code, str(output)], check=False)
    assert died.returncode == 9
    assert not out.store.is_committed(output)
    assert out.leftovers() != []  # the abandoned attempt is still there ...
    out.store.sweep(out.base)  # ... until the next pass sweeps it
    assert out.leftovers() == []
    assert not out.store.is_committed(output)


def test_a_rerun_replaces_a_stale_output_only_once_complete(out: OutputCase) -> None:
    output = out.base / "b1"
    _write(out.store, output, "old")
    with out.store.attempt(output) as attempt:
        (attempt / "data.txt").write_text("new")
        # while the new attempt writes, readers still see the old, complete output
        assert out.store.is_committed(output)
        assert out.store.read_manifest(output) == {"text": "old"}
        assert _text(out, output) == "old"
        out.store.seal(attempt, {"text": "new"})
    assert out.store.read_manifest(output) == {"text": "new"}
    assert _text(out, output) == "new"
    assert out.leftovers() == out.committed("b1", ["data.txt", "manifest.json"])


def test_a_rerun_that_publishes_nothing_withdraws_the_stale_output(out: OutputCase) -> None:
    output = out.base / "b1"
    _write(out.store, output, "old")
    _write(out.store, output, "new", seal=False)
    assert not out.store.is_committed(output)
    with pytest.raises(RuntimeError), out.store.attempt(output) as attempt:
        out.store.seal(attempt, {"text": "x"})
        raise RuntimeError("the stage failed after sealing")
    assert not out.store.is_committed(output)
    assert out.leftovers() == []


def test_retract_withdraws_a_committed_output_at_once(out: OutputCase) -> None:
    output = out.base / "b1"
    _write(out.store, output, "one")
    out.store.retract(output)
    assert not out.store.is_committed(output)
    assert out.leftovers() == []
    out.store.retract(output)  # withdrawing what is not there is a no-op


def test_a_sweep_keeps_committed_outputs(out: OutputCase) -> None:
    for name in ("b1", "b2"):
        _write(out.store, out.base / name, name)
    out.store.sweep(out.base)
    assert out.leftovers() == sorted(
        out.committed("b1", ["data.txt", "manifest.json"])
        + out.committed("b2", ["data.txt", "manifest.json"])
    )
    assert [_text(out, out.base / n) for n in ("b1", "b2")] == ["b1", "b2"]


def test_a_sweep_leaves_a_live_attempt_alone(tmp_path: Path) -> None:
    """Two workers share the output folders: one's pass must not remove the other's attempt
    in progress (it did: the running prep failed with its folder gone), only a dead one's."""
    import subprocess
    import sys

    store = LocalOutputStore()
    folder = tmp_path / "data/processed"
    with store.attempt(folder / "b1") as mine:
        (mine / "data.parquet").write_bytes(b"x")
        store.sweep(folder)  # as another worker's pass does, meanwhile
        assert mine.is_dir()
        store.seal(mine, {"ok": True})
    assert store.is_committed(folder / "b1")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = folder / f".tmp-b2~{gone.stdout.strip()}~{socket.gethostname()}~0000"
    old_style = folder / ".tmp-b3-1234abcd"
    for leftover in (dead, old_style):
        leftover.mkdir()
    store.sweep(folder)
    assert not dead.exists() and not old_style.exists()
    assert store.is_committed(folder / "b1")
