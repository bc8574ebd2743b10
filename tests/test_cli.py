"""The real CLI, end to end: init --from on every shared dataset, then run with no edits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "driftloop"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


CASES = [
    ("elec2/electricity.csv", "class", []),
    ("bike_sharing/hour.csv", "cnt", []),
    ("bike_sharing/day.csv", "cnt", []),
    ("bank_marketing/bank-additional-full.csv", "y", []),
    (
        "nyc_taxi_yellow_sample/yellow_tripdata_sample_2020-04.csv",
        "payment_type",
        ["--time-column", "pickup_datetime"],
    ),
    ("telco_churn/Telco-Customer-Churn.csv", "Churn", []),
    ("telco_churn/split/billing.csv", "Churn", []),
]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize(
    ("relpath", "target", "extra"),
    CASES,
    ids=[c[0].split("/")[0] + "-" + Path(c[0]).stem for c in CASES],
)
def test_init_then_run_works_with_no_edits(
    datasets: Path, tmp_path: Path, relpath: str, target: str, extra: list[str]
) -> None:
    sample = datasets / relpath
    init = cli("init", "--from", str(sample), "--target", target, *extra, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "driftloop.yaml").read_text().startswith("# driftloop project spec")
    run = cli("run", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "prep " in run.stdout and "features " in run.stdout
    [manifest_path] = list((tmp_path / "data" / "processed").glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["rows_ok"] > 0.9 * manifest["rows_in"]
    assert manifest["rows_in"] == (
        manifest["rows_ok"] + manifest["rows_quarantined"] + manifest["rows_duplicate"]
    )
    again = cli("run", cwd=tmp_path)
    assert again.returncode == 0
    assert "nothing to do" in again.stdout


@pytest.mark.shared_data
def test_init_infers_types_separator_and_time(datasets: Path, tmp_path: Path) -> None:
    from driftloop.core.spec import load_spec
    from driftloop.init import init_from_file

    init_from_file(tmp_path, datasets / "bank_marketing/bank-additional-full.csv", "y")
    spec = load_spec(tmp_path)
    assert spec.primary.csv.separator == ";"
    cols = spec.contract.columns
    # a bound a sample suggests is a warning (reported), not a rule (quarantined)
    assert cols["age"].dtype == "int" and cols["age"].min is None
    assert cols["age"].plausible is not None and cols["age"].plausible.min == 0
    assert cols["euribor3m"].dtype == "float"
    assert cols["y"].allowed == ("no", "yes") and not cols["y"].nullable
    assert spec.task == "classification"
    bike = tmp_path / "bike"
    init_from_file(bike, datasets / "bike_sharing/hour.csv", "cnt")
    spec = load_spec(bike)
    assert spec.task == "regression"
    assert spec.time_column == "dteday"
    assert spec.contract.columns["dteday"].dtype == "date"
    assert not spec.contract.columns["dteday"].nullable  # the time column is required
    assert spec.id_column is None or spec.id_column == "instant"


def test_init_wrong_target_says_did_you_mean(tmp_path: Path) -> None:
    sample = tmp_path / "s.csv"
    sample.write_text("amount,label\n1,a\n2,b\n")
    out = cli("init", "--from", str(sample), "--target", "lable", cwd=tmp_path / ".")
    assert out.returncode == 2
    assert "did you mean 'label'" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_without_spec_and_with_bad_spec_fail_with_one_line(tmp_path: Path) -> None:
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "driftloop init" in out.stderr
    (tmp_path / "driftloop.yaml").write_text("name: x\ntargte: y\n")
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 2
    assert "did you mean 'target'" in out.stderr
    assert "Traceback" not in out.stderr


def test_s3_source_and_sample_fail_with_one_line_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage by URL: an S3 endpoint that does not answer is one line naming the source
    (or the sample) and the fix, exit 5 (run again later): not a crash, not an empty glob."""
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "driftloop.yaml").write_text(
        "name: t\ntask: regression\ntarget: y\n"
        "sources: [{name: orders, path: 's3://landing/orders/*.csv'}]\n"
        "contract: {columns: {y: {dtype: float}}}\n"
    )
    for args in (("run",), ("status",), ("init", "--from", "s3://landing/a.csv", "--target", "y")):
        out = cli(*args, "--force", cwd=tmp_path) if args[0] == "init" else cli(*args, cwd=tmp_path)
        assert out.returncode == 5, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert f"the S3 endpoint {dead} did not answer" in out.stderr
        assert "example-secret" not in out.stderr
        assert ("source 'orders' (path 's3://landing/orders/*.csv')" in out.stderr) == (
            args[0] != "init"
        )
        assert ("s3://landing/a.csv" in out.stderr) == (args[0] == "init")


def test_failing_stage_exits_1_and_names_the_batch(tmp_path: Path) -> None:
    (tmp_path / "driftloop.yaml").write_text(
        "name: t\ntask: regression\ntarget: y\nsources: [{name: s, path: data/raw/s/*.csv}]\n"
        "contract: {columns: {y: {dtype: float, min: 0}}}\ningest: {settle_seconds: 0}\n"
    )
    (tmp_path / "data/raw/s").mkdir(parents=True)
    (tmp_path / "data/raw/s/a.csv").write_text("y\n-1\n-2\n3\n")
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 1
    assert "FAILED prep" in out.stdout and "max_bad_share" in out.stdout
    # The bad rows are kept in quarantine even though the batch failed.
    assert list((tmp_path / "data/quarantine").glob("*/rows.parquet"))


def test_run_output_escapes_raw_file_names(tmp_path: Path) -> None:
    """A raw file's name is shown, never obeyed: a newline in it cannot forge a line of
    output, and a terminal escape code in it is printed escaped."""
    (tmp_path / "driftloop.yaml").write_text(
        "name: t\ntask: regression\ntarget: y\nsources: [{name: s, path: data/raw/s/*.csv}]\n"
        "contract: {columns: {y: {dtype: float, min: 0}}}\ningest: {settle_seconds: 0}\n"
        "model: {enabled: false}\n"
    )
    raw = tmp_path / "data/raw/s"
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text("y\n1\n2\n3\n")
    # The same content again (a skipped re-upload) and a file that is not CSV (quarantined).
    (raw / "b\nPROMOTED: forged v9\x1b[2J.csv").write_text("y\n1\n2\n3\n")
    (raw / "c\nPROMOTED: forged v8\x1b[31m[red].csv").write_bytes(b"\x00\x01\x02\x03" * 64)
    out = cli("run", cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    printed = out.stdout + out.stderr
    assert not [line for line in printed.splitlines() if line.startswith("PROMOTED")]
    assert "\x1b" not in printed
    skipped = "skipped data/raw/s/b\\nPROMOTED: forged v9\\x1b[2J.csv: same content as"
    assert f"{skipped} data/raw/s/a.csv" in out.stdout, out.stdout
    assert "quarantined file data/raw/s/c\\nPROMOTED: forged v8\\x1b[31m[red].csv" in out.stdout


def test_help_keeps_heavy_imports_lazy() -> None:
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, check=True)
    assert "init" in out.stdout and "run" in out.stdout
    # Not a timing assertion on noisy machines: a guard that heavy libraries stay lazy.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, driftloop.cli; "
            "print(sorted(m for m in ('polars', 'pandera', 'pyarrow') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
