"""DAGs the end-to-end suite kills processes under (copied into the deployment's DAGs folder)."""

from __future__ import annotations

import datetime
import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-e2e")
ARGS = {"start_date": pendulum.datetime(2026, 1, 1, tz="UTC"), "schedule": None, "catchup": False, "tags": ["e2e"]}

with DAG(dag_id="e2e_grok_kill_worker", **ARGS):
    # Its task process is SIGKILLed mid-batch; the retry must pay only for what was not stored.
    GrokGenerateImagesOperator(
        task_id="generate",
        prompt=[f"kill-worker prompt {i}" for i in range(8)],
        s3_bucket=BUCKET,
        max_concurrency=2,
        retries=2,
        retry_delay=datetime.timedelta(seconds=1),
    )

with DAG(dag_id="e2e_grok_kill_triggerer", **ARGS):
    # The triggerer is SIGKILLed mid-batch and a new one started: it must repeat only requests in flight.
    GrokGenerateImagesOperator(
        task_id="generate",
        prompt=[f"kill-triggerer prompt {i}" for i in range(6)],
        s3_bucket=BUCKET,
        max_concurrency=2,
        deferrable=True,
        retries=1,
        retry_delay=datetime.timedelta(seconds=1),
    )

with DAG(dag_id="e2e_grok_shared_prefix", **ARGS):
    # A fixed prefix: the second run must be refused before any call, not adopt the first run's images.
    GrokGenerateImagesOperator(
        task_id="generate",
        prompt="shared-prefix prompt",
        s3_bucket=BUCKET,
        s3_key_prefix="e2e/shared",
        retries=2,
        retry_delay=datetime.timedelta(seconds=1),
    )
