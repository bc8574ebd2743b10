"""The ``mlflow server`` fixture: the real server on PostgreSQL and moto's S3, its database
password kept off its command line, and nothing of it left running after it is stopped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.mlflow_server import mlflow_command, start_mlflow_server
from tests.fixtures.moto import SECRET_KEY, MotoServer
from tests.fixtures.postgres import PASSWORD, PostgresServer


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_answers_keeps_secrets_off_its_command_line_and_stops_whole(
    postgres_server: PostgresServer, moto_server: MotoServer
) -> None:
    if mlflow_command() is None:
        pytest.skip("mlflow server is not installed (only mlflow-skinny is)")
    server = start_mlflow_server(postgres_server, moto_server)
    try:
        import httpx

        answer = httpx.get(f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=5")
        assert answer.status_code == 200, answer.text  # the backend store answers
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        assert "--serve-artifacts" in cmdline and f"s3://{server.bucket}" in cmdline
        assert PASSWORD not in cmdline and SECRET_KEY not in cmdline  # ps shows a cmdline
        assert server.database in postgres_server.psql("SELECT datname FROM pg_database")
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    assert server.process.poll() is not None
    assert not _group_alive(server.process.pid)  # its workers went with it
