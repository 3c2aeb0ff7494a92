"""DAGs the Celery deployment runs: a fleet on one API key, a worker whose machine dies, money caps."""

from __future__ import annotations

import datetime
import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-e2e")
ARGS = {"start_date": pendulum.datetime(2026, 1, 1, tz="UTC"), "schedule": None, "catchup": False, "tags": ["e2e"]}
TASKS_PER_MODE, PROMPTS_PER_TASK = 3, 4

with DAG(dag_id="e2e_grok_fleet", params={"grok_conn": "grok_fleet_shared"}, **ARGS):
    # 6 mapped task instances on one API key, 3 on the workers and 3 deferred to the triggerer, each
    # allowed requests_per_second=2 by its connection: with redis_conn_id that is 2/s for all of them.
    for mode, deferrable in (("sync", False), ("deferred", True)):
        GrokGenerateImagesOperator.partial(
            task_id=mode,
            s3_bucket=BUCKET,
            grok_conn_id="{{ params.grok_conn }}",
            deferrable=deferrable,
            max_concurrency=4,
            # A retry is free (it reuses what is stored) and rides out Airflow's deferral race (see the
            # deferrable example); the test checks that no request was paid twice.
            retries=2,
            retry_delay=datetime.timedelta(seconds=1),
        ).expand(prompt=[[f"fleet {mode} {t} {i}" for i in range(PROMPTS_PER_TASK)] for t in range(TASKS_PER_MODE)])

with DAG(dag_id="e2e_grok_kill_celery_worker", **ARGS):
    # The whole Celery worker running it dies mid-batch (as with its machine); another worker retries it.
    GrokGenerateImagesOperator(
        task_id="generate",
        prompt=[f"kill-celery prompt {i}" for i in range(8)],
        s3_bucket=BUCKET,
        max_concurrency=2,
        retries=2,
        retry_delay=datetime.timedelta(seconds=1),
    )

with DAG(dag_id="e2e_grok_cost_cap", **ARGS):
    # $0.02 an image on the simulator: each task may store 5 of its 8 images, then must stop.
    for mode, deferrable in (("sync", False), ("deferred", True)):
        GrokGenerateImagesOperator(
            task_id=mode,
            prompt=[f"cap-{mode} prompt {i}" for i in range(8)],
            s3_bucket=BUCKET,
            max_concurrency=4,
            max_cost_usd=0.10,
            deferrable=deferrable,
        )
