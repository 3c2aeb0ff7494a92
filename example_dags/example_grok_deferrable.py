"""
The deferrable variant: generation is awaited in the triggerer, not in a worker slot.

A 2k image takes 60-80 s; with ``deferrable=True`` a mapped task over hundreds of prompts holds no
worker slot while it waits. The worker runs twice, briefly: to validate and defer, then to fetch and
store the images (the trigger asks for URLs so its event stays small). If the URLs expired before the
worker resumed, it regenerates those images (billed again) and says so in the log.

Trade-off: if the triggerer restarts mid-request, the trigger runs again and may repeat a POST that the
gateway already billed. Use the sync mode when that matters more than worker slots.
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
        s3_key_prefix="deferred/{{ ds }}",
        n=2,
        resolution="2k",
        deferrable=True,
    ).expand(prompt=["An isometric city at night, neon", "A tide pool at low tide, macro photography"])
