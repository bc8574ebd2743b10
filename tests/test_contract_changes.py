"""A contract that survives the next delivery (issue 11, section 1).

An ``allowed`` list ``init`` guessed from one sample is open: a value it does not name is
kept, scored and reported with a proposed change (prep manifest, a ``ContractChangeProposed``
event, ``driftloop status``), casing and whitespace variants as such; a list closed on
purpose still quarantines. A target label never seen stops the batch. Nullability is
inferred from the sample, and plausible ranges report outliers without quarantining them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import driftloop
from driftloop.core import events
from driftloop.core.errors import SpecError
from driftloop.core.layout import read_manifest
from driftloop.core.spec import load_spec, parse_spec, read_yaml
from driftloop.core.state import StateDB

from .helpers import write_spec

SPEC = """
name: weather
task: regression
target: y
sources:
  - name: s
    path: data/raw/s/*.csv
contract:
  columns:
    sky: {dtype: str, nullable: false, allowed: [Clear, Light Snow, Mist], new_values: report}
    kind: {dtype: str, nullable: false, allowed: [a, b]}
    temp: {dtype: float, nullable: false, plausible: {min: 200, max: 330}}
    y: {dtype: float, nullable: false}
ingest: {settle_seconds: 0}
model: {enabled: false}
"""

CLASSES = """
name: labels
task: classification
target: label
sources:
  - name: s
    path: data/raw/s/*.csv
contract:
  columns:
    x: {dtype: float, nullable: false}
    label: {dtype: str, nullable: false, allowed: ["no", "yes"]}
ingest: {settle_seconds: 0}
model: {enabled: false}
"""


def land(project: Path, name: str, header: str, rows: list[str]) -> None:
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def prep_manifest(project: Path) -> dict[str, Any]:
    [folder] = [p for p in (project / "data" / "processed").iterdir() if p.name[0] != "."]
    return read_manifest(folder)


def test_new_values_of_an_open_list_are_kept_and_reported_with_a_proposal(
    tmp_path: Path,
) -> None:
    write_spec(tmp_path, SPEC)
    rows = [
        "Clear,a,280.0,1",
        "Heavy Rain,a,281.0,2",  # new
        "Heavy Rain,b,282.0,3",
        "clear,a,283.0,4",  # a casing variant of Clear
        "Light  Snow,b,284.0,5",  # a whitespace variant of Light Snow
        "Mist,c,285.0,6",  # kind is closed on purpose: quarantined
    ]
    land(tmp_path, "a.csv", "sky,kind,temp,y", rows)
    result = driftloop.run(tmp_path)
    assert not result.failed, [r.error for r in result.reports]
    m = prep_manifest(tmp_path)
    assert (m["rows_ok"], m["rows_quarantined"]) == (5, 1)
    assert [r["reason"] for r in m["quarantine_reasons"]] == [
        "column 'kind' breaks isin(['a', 'b'])"
    ]
    [sky] = m["new_values"]
    assert sky["column"] == "sky" and sky["rows"] == 4
    by_value = {v["value"]: v for v in sky["values"]}
    assert by_value["Heavy Rain"] == {"value": "Heavy Rain", "rows": 2, "variant_of": None}
    assert by_value["clear"]["variant_of"] == "Clear"
    assert by_value["Light  Snow"]["variant_of"] == "Light Snow"
    # the proposal adds what is new; variants are named, not added
    assert sky["proposed"] == {
        "key": "contract.columns.sky.allowed",
        "allowed": ["Clear", "Heavy Rain", "Light Snow", "Mist"],
    }
    processed = pl.read_parquet(next((tmp_path / "data/processed").glob("*/data.parquet")))
    assert "Heavy Rain" in processed.get_column("sky").to_list()

    # a typed event, and driftloop status lists the change until the spec takes it
    with StateDB(tmp_path / ".driftloop/state.db") as db:
        [event] = db.events_after(0, types=("ContractChangeProposed",))
    parsed = events.parse(event)
    assert parsed.type == "ContractChangeProposed" and parsed.changes[0]["column"] == "sky"
    status = cli("status", "-p", str(tmp_path))
    assert status.returncode == 0, status.stderr
    assert "contract changes proposed" in status.stdout
    assert "'Heavy Rain' (2 row(s))" in status.stdout
    assert "'clear' (1 row(s), variant of 'Clear')" in status.stdout
    spec_path = tmp_path / "driftloop.yaml"
    spec_path.write_text(
        spec_path.read_text().replace(
            "[Clear, Light Snow, Mist]", "[Clear, Heavy Rain, Light Snow, Mist]"
        )
    )
    changes = json.loads(cli("status", "-p", str(tmp_path), "--json").stdout)["contract_changes"]
    assert [v["value"] for v in changes[0]["values"]] == ["Light  Snow", "clear"]


def test_run_prints_new_values_and_outliers(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", "sky,kind,temp,y", ["Fog,a,280.0,1", "Clear,a,0.0,2"])
    out = cli("run", "-p", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kept and reported: column 'sky': new value(s) 'Fog' (1 row(s))" in out.stdout
    assert "proposed: contract.columns.sky.allowed: ['Clear', 'Fog', 'Light Snow', 'Mist']" in (
        out.stdout
    )
    assert "column 'temp' outside in_range(200.0, 330.0): 1 below (lowest 0.0)" in out.stdout


def test_outliers_are_counted_not_quarantined_unless_strict(tmp_path: Path) -> None:
    rows = ["Clear,a,280.0,1", "Clear,a,0.0,2", "Clear,a,1000.0,3", "Clear,a,300.0,4"]
    loose, strict = tmp_path / "loose", tmp_path / "strict"
    write_spec(loose, SPEC)
    write_spec(strict, SPEC.replace("max: 330}", "max: 330, strict: true}"))
    for project in (loose, strict):
        land(project, "a.csv", "sky,kind,temp,y", rows)
        driftloop.run(project)
    m = prep_manifest(loose)
    assert m["rows_quarantined"] == 0
    assert m["outliers"] == [
        {
            "column": "temp",
            "rule": "in_range(200.0, 330.0)",
            "rows": 2,
            "below": 1,
            "above": 1,
            "lowest": 0.0,
            "highest": 1000.0,
        }
    ]
    m = prep_manifest(strict)
    assert m["rows_quarantined"] == 2 and "outliers" not in m
    assert [(r["reason"], r["rows"], r["column"]) for r in m["quarantine_reasons"]] == [
        ("column 'temp' breaks in_range(200.0, 330.0)", 2, "temp")
    ]


def test_a_target_label_never_seen_stops_the_batch_with_an_example(tmp_path: Path) -> None:
    write_spec(tmp_path, CLASSES)
    land(tmp_path, "a.csv", "x,label", ["1,no", "2,yes", "3,maybe", "4,no"])
    out = cli("run", "-p", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED prep" in out.stdout
    assert "1 row(s) have a target label" in out.stdout
    assert "'maybe' (1 row(s))" in out.stdout
    assert "record 3: label='maybe'" in out.stdout
    assert "add it to contract.columns.label.allowed" in out.stdout
    assert not list((tmp_path / "data/processed").glob("*/_SUCCESS"))  # nothing published
    [rows] = list((tmp_path / "data/quarantine").glob("*/rows.parquet"))
    assert pl.read_parquet(rows).get_column("label").to_list() == ["maybe"]
    # a decision: the label is added, and the batch goes through
    spec = tmp_path / "driftloop.yaml"
    spec.write_text(spec.read_text().replace('["no", "yes"]', '["maybe", "no", "yes"]'))
    again = cli("run", "-p", str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert prep_manifest(tmp_path)["rows_ok"] == 4


def test_spec_refuses_open_lists_where_they_do_not_apply(tmp_path: Path) -> None:
    base = read_yaml(CLASSES)
    bad = [
        ({"dtype": "str", "allowed": ["no", "yes"], "new_values": "report"}, "label", "target"),
        ({"dtype": "str", "new_values": "report"}, "x", "'allowed' list"),
        ({"dtype": "str", "plausible": {"min": 0}}, "x", "plausible applies to int and float"),
        ({"dtype": "float", "plausible": {}}, "x", "needs a 'min', a 'max'"),
    ]
    for rule, column, message in bad:
        data = json.loads(json.dumps(base))
        data["contract"]["columns"][column] = rule
        with pytest.raises(SpecError, match=message):
            parse_spec(data)


def test_init_opens_guessed_lists_infers_nullability_and_says_what_it_guessed(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    n = 400
    sample = pl.DataFrame(
        {
            "sky": rng.choice(["Clear", "Mist", "Rain"], n),
            "temp": rng.normal(285.0, 8.0, n).round(2),
            "month": rng.integers(1, 6, n),  # an integer code: no plausible range
            "note": [None if i % 7 == 0 else "x" for i in range(n)],
            "label": rng.choice(["no", "yes"], n),
        }
    )
    path = tmp_path / "sample.csv"
    sample.write_csv(path)
    notes: list[str] = []
    driftloop.init_from_file(tmp_path / "p", path, "label", notes=notes)
    cols = load_spec(tmp_path / "p").contract.columns
    assert cols["sky"].allowed == ("Clear", "Mist", "Rain")
    assert cols["sky"].new_values == "report"
    assert cols["label"].allowed == ("no", "yes") and cols["label"].new_values == "reject"
    # no missing value in the sample: not nullable; a column with gaps stays nullable
    assert not cols["sky"].nullable and not cols["temp"].nullable
    assert cols["note"].nullable
    plausible = cols["temp"].plausible
    assert plausible is not None and not plausible.strict
    assert plausible.min is not None and plausible.max is not None
    assert plausible.min < sample["temp"].min() and plausible.max > sample["temp"].max()  # type: ignore[operator]
    assert plausible.min > 0.0 and plausible.max < 1000.0  # 0 K and 1000 K are outliers
    assert cols["month"].plausible is None
    text = "\n".join(notes)
    assert "guesses from one sample" in text
    assert "allowed values of sky (3), note (1): open (new_values: report)" in text
    assert "not nullable, as no value is missing in the sample: sky, temp, month, label" in text
    assert "plausible ranges" in text and "temp [" in text
    assert "labels ['no', 'yes'] (closed: a new label stops the batch)" in text


def test_the_request_edge_scores_new_values_and_refuses_an_empty_record(tmp_path: Path) -> None:
    from driftloop.serving.records import RequestContract, RequestShapeError, record_schema

    spec = parse_spec(read_yaml(SPEC))
    contract = RequestContract.from_spec(spec)
    good = {"sky": "Heavy Rain", "kind": "a", "temp": 2000.0}
    checked = contract.check(contract.records(good))
    assert checked.problems == {}
    assert checked.flags[0][0].startswith("new value: column 'sky' breaks isin(")
    assert checked.flags[0][1].startswith("outlier: column 'temp' breaks in_range(")
    closed = contract.check(contract.records({**good, "kind": "z"}))
    assert [p.type for p in closed.problems[0]] == ["isin(['a', 'b'])"]
    with pytest.raises(RequestShapeError) as info:
        contract.records({})
    assert {p.loc[-1] for p in info.value.problems} == {"sky", "kind", "temp"}
    schema = record_schema(spec)["properties"]
    assert "enum" not in schema["sky"] and schema["kind"]["enum"] == ["a", "b"]


BIN = Path(sys.executable).parent / "driftloop"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.shared_data
def test_a_multi_year_feed_initialised_from_its_first_slice(datasets: Path, tmp_path: Path) -> None:
    """bank_marketing is ordered by date, May 2008 -> Nov 2010: init from its first 5,000
    rows (all May 2008, one contact channel, no earlier campaign), then deliver a slice of
    2009 and one of 2010. Their new months, channels and outcomes are legitimate: kept,
    reported, proposed; the target's labels are the same, so nothing stops."""
    lines = (datasets / "bank_marketing/bank-additional-full.csv").read_bytes().splitlines(True)
    header, rows = lines[0], lines[1:]
    first = tmp_path / "first.csv"
    first.write_bytes(header + b"".join(rows[:5000]))
    project = tmp_path / "bank"
    init = cli("init", "-p", str(project), "--from", str(first), "--target", "y")
    assert init.returncode == 0, init.stderr
    assert "guesses from one sample" in init.stdout
    spec = project / "driftloop.yaml"
    spec.write_text(spec.read_text() + "model: {enabled: false}\ningest: {settle_seconds: 0}\n")
    assert driftloop.run(project).reports  # the sample itself
    raw = project / "data/raw/first"
    for name, part in (("2009.csv", rows[27_690:31_690]), ("2010.csv", rows[39_130:])):
        (raw / name).write_bytes(header + b"".join(part))
        result = driftloop.run(project)
        assert not result.failed, [r.error for r in result.reports]
    manifests = [read_manifest(p.parent) for p in (project / "data/processed").glob("*/_SUCCESS")]
    later = [m for m in manifests if m["inputs"][0]["path"].endswith(("2009.csv", "2010.csv"))]
    assert len(later) == 2
    for m in later:
        assert m["rows_quarantined"] == 0, m["quarantine_reasons"]
        assert m["rows_ok"] + m["rows_duplicate"] == m["rows_in"]
        reported = {c["column"]: {v["value"] for v in c["values"]} for c in m["new_values"]}
        assert "cellular" in reported["contact"]
        assert reported["month"] - {"may"}
    status = json.loads(cli("status", "-p", str(project), "--json").stdout)
    columns = {c["column"] for c in status["contract_changes"]}
    assert {"contact", "month", "poutcome"} <= columns


def test_predict_scores_a_new_value_and_refuses_an_empty_record(tmp_path: Path) -> None:
    """/predict, served by a real process: a value an open list does not name is scored
    (200, with a flag saying so); an empty record is refused (422), since no field is
    nullable."""
    from .serving_helpers import SERVING, record, serving
    from .test_lifecycle import SPEC as SYNTH
    from .test_lifecycle import land as land_synth

    spec = SYNTH.replace("x1: {dtype: float}", "x1: {dtype: float, nullable: false}")
    spec = spec.replace("x2: {dtype: float}", "x2: {dtype: float, nullable: false}")
    spec = spec.replace(
        "c: {dtype: str}",
        "c: {dtype: str, nullable: false, allowed: [a, b, c], new_values: report}",
    )
    write_spec(tmp_path, spec + SERVING)
    land_synth(tmp_path, "part-0.csv", 600, seed=1)
    result = driftloop.run(tmp_path)
    assert not result.failed, [(r.stage, r.error) for r in result.failed]
    with serving(tmp_path) as running, running.client() as client:
        new = client.post("/predict", json=record(c="d"))
        assert new.status_code == 200, new.text
        [pred] = new.json()["predictions"]
        assert pred["prediction"] in ("no", "yes")
        assert pred["flags"] == ["new value: column 'c' breaks isin(['a', 'b', 'c']): got 'd'"]
        empty = client.post("/predict", json={})
        assert empty.status_code == 422, empty.text
        missing = {d["loc"][-1] for d in empty.json()["detail"]}
        assert missing == {"t", "x1", "x2", "c"}
