"""
GrokHook in a TaskFlow task: generate candidates, fetch them, decide, keep one.

For logic the operator does not cover: here, generate three candidates for a product shot, keep the
one with the most detail (largest JPEG, a cheap proxy), and store only that one in S3. The hook gives
validated parameters, retries and errors; the API key never leaves the hook.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-demo")

with DAG(
    dag_id="example_grok_hook_taskflow",
    description="Pick the best of several Grok candidates with GrokHook in a TaskFlow task",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "grok"],
) as dag:

    @task
    def best_of_three(run_id: str) -> dict:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_grok.hooks.grok import GrokHook
        from airflow_provider_grok.protocol import sniff_image_type
        from airflow_provider_grok.record.keys import safe_key_part

        hook = GrokHook(grok_conn_id="grok_default")
        result = hook.generate_images(
            "Studio product shot of a ceramic teapot on linen, soft daylight", n=3, response_format="b64_json"
        )
        candidates = [(hook.fetch_image(image), image) for image in result.images]
        data, chosen = max(candidates, key=lambda candidate: len(candidate[0]))
        kind = sniff_image_type(data)
        assert kind is not None  # fetch_image verified it is an image
        key = f"taskflow/{safe_key_part(run_id)}/best.{kind.extension}"  # one object per run, never shared
        S3Hook(aws_conn_id="aws_default").load_bytes(data, key, bucket_name=BUCKET, replace=True)
        return {
            "s3_uri": f"s3://{BUCKET}/{key}",
            "candidates": len(candidates),
            "chosen_index": chosen.index,
            "cost_usd": result.cost_usd,
            "request_ids": result.request_ids,
        }

    best_of_three()
