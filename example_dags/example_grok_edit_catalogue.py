"""
Catalogue restyling: generate product shots, restyle each into two styles with image edits, and publish a
before/after gallery.

``shots`` generates one studio shot per product with
:class:`~airflow_provider_grok.operators.grok.GrokGenerateImagesOperator`. ``restyle`` is a
:class:`~airflow_provider_grok.operators.grok.GrokEditImagesOperator` mapped over the styles: each mapped
instance applies one style prompt to every shot (``source_images=shots.output``: the edits read the shots
from S3 and send them inline), with its own ``map-N`` folder and manifest recording each edit's source.
``before_after`` writes ``index.html`` with each shot beside its restyled versions. Every prefix is the
operator's run-scoped default, so runs never share images.

Connections: ``grok_default`` (the gateway: xAI, whose JSON edits this uses) and ``aws_default`` (S3).
Bucket: ``GROK_DEMO_BUCKET``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_grok.operators.grok import GrokEditImagesOperator, GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-demo")
PRODUCTS = ["a ceramic teapot", "a leather satchel", "a brass desk lamp"]
STYLES = [
    "The same product photographed on a sunlit wooden table, warm natural light",
    "The same product as a clean line drawing on white, catalogue style",
]

with DAG(
    dag_id="example_grok_edit_catalogue",
    description="Generate product shots, restyle each into two styles with image edits, before/after gallery",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "grok"],
) as dag:
    shots = GrokGenerateImagesOperator(
        task_id="shots",
        prompt=[f"Studio product shot of {product}, plain grey background" for product in PRODUCTS],
        s3_bucket=BUCKET,
    )

    restyled = GrokEditImagesOperator.partial(
        task_id="restyle", source_images=shots.output, s3_bucket=BUCKET, max_concurrency=2
    ).expand(prompt=STYLES)

    @task
    def before_after(edits: list[list[dict]]) -> str:
        """Read every restyle manifest and write index.html: each shot beside its restyled versions."""
        import json

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_grok.gallery import render_before_after

        s3 = S3Hook(aws_conn_id="aws_default")
        folders = sorted({image["key"].rsplit("/", 1)[0] for images in edits for image in images})
        base = folders[0].rsplit("/map-", 1)[0]
        manifests = [json.loads(s3.read_key(f"{folder}/manifest.json", bucket_name=BUCKET)) for folder in folders]
        page = render_before_after(manifests, base_prefix=base, title="Catalogue restyling: before and after")
        s3.get_conn().put_object(
            Bucket=BUCKET, Key=f"{base}/index.html", Body=page.encode(), ContentType="text/html; charset=utf-8"
        )
        return f"s3://{BUCKET}/{base}/index.html"

    before_after(restyled.output)
