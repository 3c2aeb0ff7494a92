"""
The deferrable variant: generation is awaited in the triggerer, not in a worker slot.

A 2k image takes 60-80 s; with ``deferrable=True`` a mapped task over hundreds of prompts holds no
worker slot while it waits. The worker runs twice, briefly: to validate and defer, then to write the
manifest. The trigger stores each answer's images in S3 as it arrives and records every request, so a
triggerer restart (an upgrade, a crash) sends again only the requests that were in flight at that moment,
and no temporary URL can expire while the task waits.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-demo")

with DAG(
    dag_id="example_grok_deferrable",
    description="Grok Imagine generation awaited in the triggerer",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "grok"],
) as dag:
    GrokGenerateImagesOperator.partial(
        task_id="generate",
        s3_bucket=BUCKET,
        n=2,
        resolution="2k",
        deferrable=True,
    ).expand(prompt=["An isometric city at night, neon", "A tide pool at low tide, macro photography"])
