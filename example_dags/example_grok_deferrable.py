"""
The deferrable variant: generation is awaited in the triggerer, not in a worker slot.

A 2k image takes 60-80 s; with ``deferrable=True`` a mapped task over hundreds of prompts holds no
worker slot while it waits. The worker runs twice, briefly: to validate and defer, then to write the
manifest. The trigger stores each answer's images in S3 as it arrives and records every request, so a
triggerer restart (an upgrade, a crash) sends again only the requests that were in flight at that moment,
and no temporary URL can expire while the task waits.

Give deferrable tasks retries: a retry pays only for images not yet stored (nothing, once all are). Besides
the usual faults, Airflow up to 3.3 can fail a deferred task whose trigger fires before the scheduler has
seen the worker leave for the triggerer ("reported that the task instance ... finished with state
success, but the task instance's state attribute is running"; apache/airflow#72716): the retry finds
every image stored and succeeds without a request.
"""

from __future__ import annotations

import datetime
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
        retries=2,
        retry_delay=datetime.timedelta(seconds=10),
    ).expand(prompt=["An isometric city at night, neon", "A tide pool at low tide, macro photography"])
