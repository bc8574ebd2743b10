"""Files as they come (issue 11, section 2): a CSV without a header row.

``init --from`` says when the first row looks like data; ``--no-header`` with ``--names``
(or generated names) writes ``has_header: false`` and ``names`` into the spec, and prep,
``monitor --current``'s reader and the request contract use those names for later files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import driftloop
from driftloop.core.errors import InitError, SpecError
from driftloop.core.layout import Layout, read_manifest
from driftloop.core.spec import load_spec, parse_spec, read_yaml

BIN = Path(sys.executable).parent / "driftloop"
NAMES = "age,workclass,fnlwgt,education,income"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def headerless(path: Path, rows: int, start: int = 0) -> Path:
    """Census-style records with no header row (the way such files are often published)."""
    lines = []
    for i in range(start, start + rows):
        work = ("Private", "State-gov", "Self-emp")[i % 3]
        edu = ("HS-grad", "Bachelors")[i % 2]
        lines.append(
            f"{20 + i % 50},{work},{100_000 + 37 * i},{edu},{'>50K' if i % 4 else '<=50K'}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_init_says_the_first_row_looks_like_data(tmp_path: Path) -> None:
    sample = headerless(tmp_path / "adult.data", 60)
    out = cli("init", "-p", "p", "--from", str(sample), "--target", "income", cwd=tmp_path)
    assert out.returncode == 2
    assert "the first row looks like data, not a header" in out.stderr
    assert "2 of its 5 fields are numbers where a header would have names: '20', '100000'" in (
        out.stderr
    )
    assert "pass --no-header, with --names a,b,c" in out.stderr
    assert not (tmp_path / "p" / "driftloop.yaml").exists()


def test_no_header_with_names_is_written_into_the_spec_and_used_for_later_files(
    tmp_path: Path,
) -> None:
    sample = headerless(tmp_path / "adult.data", 60)
    project = tmp_path / "p"
    out = cli(
        "init", "-p", "p", "--from", str(sample), "--no-header", "--names", NAMES,
        "--target", "income", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    spec = load_spec(project)
    assert spec.primary.csv.has_header is False
    assert spec.primary.csv.names == tuple(NAMES.split(","))
    assert list(spec.contract.columns) == NAMES.split(",")
    with (project / "driftloop.yaml").open("a") as fh:
        fh.write("model: {enabled: false}\ningest: {settle_seconds: 0}\n")
    driftloop.run(project)
    headerless(project / "data/raw/adult/later.data", 40, start=60)  # the next delivery
    result = driftloop.run(project)
    assert not result.failed, [r.error for r in result.failed]
    manifests = [read_manifest(p.parent) for p in (project / "data/processed").glob("*/_SUCCESS")]
    assert sorted(m["rows_ok"] for m in manifests) == [40, 60]  # no row lost as a header
    assert all(m["rows_quarantined"] == 0 for m in manifests)
    assert all(set(NAMES.split(",")) <= set(m["schema"]) for m in manifests)

    # monitor --current reads a raw file with the same names
    from driftloop.monitoring.run import read_current_batch

    current, _ = read_current_batch(
        load_spec(project), Layout(project), project / "data/raw/adult/later.data"
    )
    data = [c for c in current.columns if not c.startswith("__")]  # prep's, then lineage
    assert data == NAMES.split(",") and current.height == 40
    # and /predict's records are named by them
    from driftloop.serving.records import RequestContract

    contract = RequestContract.from_spec(load_spec(project))
    record = {"age": 30, "workclass": "Private", "fnlwgt": 100, "education": "HS-grad"}
    assert contract.check(contract.records(record)).problems == {}


def test_no_header_without_names_generates_them(tmp_path: Path) -> None:
    sample = headerless(tmp_path / "adult.data", 60)
    driftloop.init_from_file(tmp_path / "p", sample, "column_5", header=False)
    spec = load_spec(tmp_path / "p")
    assert spec.primary.csv.has_header is False and spec.primary.csv.names is None
    assert list(spec.contract.columns) == [f"column_{i}" for i in range(1, 6)]
    assert spec.target == "column_5"


def test_names_must_fit_the_file(tmp_path: Path) -> None:
    sample = headerless(tmp_path / "adult.data", 60)
    with pytest.raises(InitError, match=r"the first row has 5 field\(s\) but csv.names lists 2"):
        driftloop.init_from_file(tmp_path / "p", sample, "b", header=False, names=["a", "b"])
    with pytest.raises(InitError, match="add --no-header"):
        driftloop.init_from_file(tmp_path / "q", sample, "b", names=["a", "b"])
    with pytest.raises(InitError, match="repeats"):
        driftloop.init_from_file(tmp_path / "r", sample, "a", header=False, names=["a"] * 5)
    # --header reads the first row as names, as asked
    driftloop.init_from_file(tmp_path / "s", sample, "<=50K", header=True)
    assert list(load_spec(tmp_path / "s").contract.columns)[:2] == ["20", "Private"]


def test_spec_names_need_has_header_false() -> None:
    base = """
name: x
task: regression
target: y
sources: [{name: s, path: data/raw/s/*.csv, csv: {names: [x, y]}}]
contract: {columns: {x: {dtype: float}, y: {dtype: float}}}
"""
    with pytest.raises(SpecError, match="names apply to files without a header row"):
        parse_spec(read_yaml(base))
    spec = parse_spec(
        read_yaml(base.replace("{names: [x, y]}", "{has_header: false, names: [x, y]}"))
    )
    assert spec.primary.csv.names == ("x", "y")


@pytest.mark.shared_data
def test_shared_files_without_their_header_are_recognised(datasets: Path, tmp_path: Path) -> None:
    from driftloop.init import headerless_reason, sniff_csv

    for relpath in (
        "elec2/electricity.csv",
        "bike_sharing/hour.csv",
        "bank_marketing/bank-additional-full.csv",
    ):
        original = datasets / relpath
        assert headerless_reason(original, sniff_csv(original)) is None, relpath
        cut = tmp_path / original.name
        cut.write_bytes(b"".join(original.read_bytes().splitlines(True)[1:2001]))
        assert headerless_reason(cut, sniff_csv(cut)) is not None, relpath


def test_replay_reads_a_headerless_history_with_the_specs_names(tmp_path: Path) -> None:
    from driftloop.orchestration.replay import _read_raw, policy_spec

    sample = headerless(tmp_path / "adult.data", 60)
    driftloop.init_from_file(tmp_path / "p", sample, "income", header=False, names=NAMES.split(","))
    text = (tmp_path / "p" / "driftloop.yaml").read_text()
    history = _read_raw(sample, parse_spec(read_yaml(text)))
    assert history.columns == NAMES.split(",") and history.height == 60
    # the batches replay lands carry a header: the policy's spec says so
    landed = parse_spec(read_yaml(policy_spec(text, tmp_path / "policy", {})))
    assert landed.primary.csv.has_header and landed.primary.csv.names is None
