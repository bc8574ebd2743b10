"""Files as they come (issue 11, section 2): a file in a source's folder that the source's
pattern does not match is reported by ``run``, ``watch`` and ``status`` with the pattern it
missed, never skipped unseen; ``init`` writes a pattern for the format, not the sample's
extension."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import driftloop
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.storage import candidate_files, source_folder, unmatched_files

from .helpers import write_spec

BIN = Path(sys.executable).parent / "driftloop"
SPEC = """
name: census
task: classification
target: y
sources:
  - name: s
    path: data/raw/s/*.data
contract:
  columns:
    x: {dtype: float}
    y: {dtype: str, allowed: ["a", "b"]}
ingest: {settle_seconds: 0}
model: {enabled: false}
"""
ROWS = "x,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=300, check=False
    )


def land(project: Path, *names: str) -> None:
    folder = project / "data/raw/s"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(ROWS, encoding="utf-8")


def test_source_folder_is_the_glob_up_to_its_first_wildcard() -> None:
    assert source_folder("data/raw/s/*.data") == ("data/raw/s", False)
    assert source_folder("data/raw/s/**/*.csv") == ("data/raw/s", True)
    assert source_folder("data/raw/*/x.csv") == ("data/raw", True)
    assert source_folder("*.csv") is None


def test_run_and_status_report_a_file_the_pattern_misses(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "adult.data", "adult.test", "upload.part")  # .part: still being written
    out = cli("run", "-p", str(tmp_path))
    assert out.returncode == 0, out.stderr
    expected = (
        "unmatched: data/raw/s/adult.test is in source s's folder but does not match its "
        "pattern 'data/raw/s/*.data', so it is not read"
    )
    assert expected in out.stdout
    assert "upload.part" not in out.stdout
    assert "prep " in out.stdout  # the matching file went through
    again = cli("run", "-p", str(tmp_path))  # a settled pass still says so
    assert expected in again.stdout and "nothing to do" not in again.stdout
    status = cli("status", "-p", str(tmp_path))
    assert expected in status.stdout
    pending = json.loads(cli("status", "-p", str(tmp_path), "--json").stdout)["pending"]
    assert pending["files_unmatched"] == [
        {"path": "data/raw/s/adult.test", "source": "s", "pattern": "data/raw/s/*.data"}
    ]
    # widening the pattern takes it
    spec = tmp_path / "driftloop.yaml"
    spec.write_text(spec.read_text().replace("data/raw/s/*.data", "data/raw/s/adult.*"))
    layout = Layout(tmp_path)
    listed = candidate_files(load_spec(tmp_path), layout)
    assert unmatched_files(load_spec(tmp_path), layout, listed) == []


def test_watch_reports_an_unmatched_file_once(tmp_path: Path) -> None:
    from driftloop.orchestration.loop import RunResult
    from driftloop.orchestration.watch import Watcher

    write_spec(tmp_path, SPEC)
    land(tmp_path, "adult.data")
    seen: list[RunResult] = []
    reported = threading.Event()

    def on_pass(result: RunResult) -> None:
        seen.append(result)
        if result.unmatched:
            reported.set()

    watcher = Watcher(tmp_path, interval=0.2, on_pass=on_pass)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        land(tmp_path, "adult.test")
        assert reported.wait(60), "no pass reported the unmatched file"
        assert watcher.state.unmatched == ["data/raw/s/adult.test"]
        passes = watcher.state.passes
        watcher.wake()
        while watcher.state.passes < passes + 2 and thread.is_alive():
            watcher.wake()
            reported.wait(0.1)
    finally:
        watcher.stop.set()
        watcher.wake()
        thread.join(30)
    # told once, not on every pass
    assert sum(1 for r in seen if r.unmatched and not r.progressed) == 1


def test_init_writes_a_pattern_for_the_format(tmp_path: Path) -> None:
    sample = tmp_path / "adult.data"
    sample.write_text(ROWS, encoding="utf-8")
    project = tmp_path / "p"
    driftloop.init_from_file(project, sample, "y")
    assert load_spec(project).primary.path == "data/raw/adult/*"
    (project / "data/raw/adult/adult.test").write_text(ROWS + "99,a\n", encoding="utf-8")
    with (project / "driftloop.yaml").open("a") as fh:
        fh.write("model: {enabled: false}\ningest: {settle_seconds: 0}\n")
    result = driftloop.run(project)
    assert sorted(f.path for f in result.ingest.new_files) == [
        "data/raw/adult/adult.data",
        "data/raw/adult/adult.test",
    ]
    assert result.unmatched == []
