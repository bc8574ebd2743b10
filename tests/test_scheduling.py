"""How ``make test`` hands tests to its two workers (tests/conftest.py): an ``xdist_group``
stays on one worker, and the slow tests are taken first. A small suite of its own, run by
pytest with xdist in a subprocess exactly as ``make test`` runs the real one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# as make test runs the suite
PYTEST = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup"]
# plugins the small suite does not use: each worker would import them
QUICK = [f"-pno:{name}" for name in ("cacheprovider", "hypothesispytest", "anyio", "typeguard")]
HANG_GUARD = 300.0  # seconds: a stuck run fails, a slow one does not

RECORD = """
import os
from pathlib import Path


def record(name: str) -> None:
    with Path(os.environ["ORDER_LOG"]).open("a", encoding="utf-8") as out:
        out.write(f"{os.environ['PYTEST_XDIST_WORKER']} {name}\\n")
"""

SUITE = {
    "pytest.ini": "[pytest]\nmarkers =\n    slow: slow\n",
    # the repository's hook, as the real suite's conftest has it
    "conftest.py": "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n",
    "record.py": RECORD,
    "test_free.py": "from record import record\n\n"
    + "".join(f"def test_free_{i}():\n    record('free_{i}')\n\n" for i in range(4))
    + "import pytest\n\n@pytest.mark.slow\ndef test_long():\n    record('long')\n",
    "test_grouped.py": "import pytest\nfrom record import record\n\n"
    "pytestmark = pytest.mark.xdist_group('shared')\n\n"
    + "".join(f"def test_grouped_{i}():\n    record('grouped_{i}')\n\n" for i in range(4)),
}


def test_a_group_stays_on_one_worker_and_slow_tests_go_first(tmp_path: Path) -> None:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    log = tmp_path / "order.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"ORDER_LOG": str(log), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*PYTEST, *QUICK, "-v", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_grouped.py::test_grouped_0@shared" in done.stdout  # the group xdist sees
    ran = [line.split() for line in log.read_text(encoding="utf-8").splitlines()]
    assert sorted(name for _, name in ran) == sorted(
        [*(f"free_{i}" for i in range(4)), *(f"grouped_{i}" for i in range(4)), "long"]
    )
    by_worker: dict[str, list[str]] = {}
    for worker, name in ran:
        by_worker.setdefault(worker, []).append(name)
    [group_worker] = {w for w, name in ran if name.startswith("grouped_")}
    assert by_worker[group_worker][:4] == [f"grouped_{i}" for i in range(4)]  # whole, in order
    # the group is the first unit handed out; the slow test, collected last, the second
    [other] = set(by_worker) - {group_worker}
    assert by_worker[other][0] == "long", by_worker
