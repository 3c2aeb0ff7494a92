"""Test-wide setup: a private AIRFLOW_HOME (set before Airflow is imported) and simulator fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="grok-tests-airflow-home-")
DAGS_FOLDER = Path(_AIRFLOW_HOME) / "dags"
DAGS_FOLDER.mkdir()
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# Tests never reach real AWS: credentials exist only so botocore signs requests for moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from airflow_provider_grok.testing import GrokSimulator  # noqa: E402
from tests.support import DagRunner, MotoS3, RedisServer  # noqa: E402

pytest_plugins = ["airflow_provider_grok.testing.pytest_plugin"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3]:
    """One moto S3 server on loopback for the session, reached over real HTTP by boto3."""
    with MotoS3() as server:
        yield server


@pytest.fixture
def s3(moto_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """A fresh bucket, with AIRFLOW_CONN_AWS_DEFAULT pointing at the moto server."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.connection_json())
    moto_server.new_bucket()
    return moto_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server on loopback for the session (with a password, as production ones have)."""
    with RedisServer(password="redis-secret-6f2a") as server:
        yield server


@pytest.fixture
def redis_conn(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow ``redis`` connection to that server (env form), its budget keys flushed; returns its id."""
    import redis

    redis.Redis(port=redis_server.port, password=redis_server.password).flushall()
    monkeypatch.setenv("AIRFLOW_CONN_GROK_REDIS", redis_server.connection_json())
    return "grok_redis"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """`airflow db migrate` once per session on the private AIRFLOW_HOME (SQLite)."""
    DagRunner.migrate()


@pytest.fixture
def dag_runner(airflow_db: None) -> Iterator[DagRunner]:
    runner = DagRunner(DAGS_FOLDER)
    yield runner
    runner.cleanup()


@pytest.fixture(params=["xai", "openai"])
def dialect(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sim(dialect: str) -> Iterator[GrokSimulator]:
    with GrokSimulator(dialect=dialect) as simulator:  # type: ignore[arg-type]
        yield simulator


@pytest.fixture
def xai_sim() -> Iterator[GrokSimulator]:
    with GrokSimulator(dialect="xai") as simulator:
        yield simulator


@pytest.fixture
def make_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Register a grok connection for a simulator under a fresh id (env form, as users do); return the id."""
    counter = iter(range(10_000))

    def make(sim: GrokSimulator, *, base_suffix: str = "", api_key: str | None = None, **extra: Any) -> str:
        conn_id = f"grok_test_{next(counter)}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}", sim.connection_json(base_suffix=base_suffix, api_key=api_key, **extra)
        )
        return conn_id

    return make
