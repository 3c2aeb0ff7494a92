"""
Daily content generation: prompts from DAG Params, one mapped Grok task per prompt, then a gallery.

Every day at 06:00 this DAG takes the prompt templates in the ``prompts`` Param, fills in the logical
date (``{date:%B %d}``, ``{season}``), generates ``images_per_prompt`` images for each with
:class:`~airflow_provider_grok.operators.grok.GrokGenerateImagesOperator` (mapped: one task instance per
prompt, each with its own ``map-N`` folder and manifest), and finally builds ``index.html``, a contact
sheet with every image, its prompt, revised prompt, size and S3 URI, stored next to the images::

    s3://$GROK_DEMO_BUCKET/content/2026-11-21/map-0/0-0.jpg
    s3://$GROK_DEMO_BUCKET/content/2026-11-21/map-0/manifest.json
    s3://$GROK_DEMO_BUCKET/content/2026-11-21/index.html

The generation task updates the ``GROK_CONTENT`` asset; ``example_grok_asset_consumer`` is scheduled on it.
Connections: ``grok_default`` (the gateway) and ``aws_default`` (S3). Bucket: ``GROK_DEMO_BUCKET``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-demo")
GROK_CONTENT = Asset(f"s3://{BUCKET}/content", extra={"producer": "example_grok_scheduled_content"})
SEASONS = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
           6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}  # fmt: skip

with DAG(
    dag_id="example_grok_scheduled_content",
    description="Daily Grok Imagine content from prompt Params, stored in S3 with a gallery",
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "grok"],
    params={
        "prompts": Param(
            [
                "A lighthouse on a cliff at dawn in {season}, oil painting",
                "A koi fish swimming through a nebula, {date:%B %d} edition",
                "A cosy bookshop window display in {season}, watercolour",
            ],
            type="array",
            items={"type": "string", "minLength": 1},
            minItems=1,
            description="Prompt templates; {date} is the logical date, {season} its season.",
        ),
        "images_per_prompt": Param(2, type="integer", minimum=1, maximum=10),
        "aspect_ratio": Param("16:9", type="string"),
    },
) as dag:

    @task
    def daily_prompts(params: dict, logical_date: pendulum.DateTime) -> list[str]:
        """Fill each prompt template with the logical date, so every day's images differ."""
        season = SEASONS[logical_date.month]
        return [template.format(date=logical_date, season=season) for template in params["prompts"]]

    generated = GrokGenerateImagesOperator.partial(
        task_id="generate",
        s3_bucket=BUCKET,
        s3_key_prefix="content/{{ ds }}",
        n="{{ params.images_per_prompt }}",
        aspect_ratio="{{ params.aspect_ratio }}",
        outlets=[GROK_CONTENT],
        max_concurrency=2,
    ).expand(prompt=daily_prompts())

    @task
    def build_gallery(stored: list[list[dict]], ds: str) -> str:
        """Read every mapped task's manifest and write index.html next to the images."""
        import json

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_grok.gallery import render_gallery

        s3 = S3Hook(aws_conn_id="aws_default")
        base = f"content/{ds}"
        manifests = sorted({image["key"].rsplit("/", 1)[0] + "/manifest.json" for images in stored for image in images})
        documents = [json.loads(s3.read_key(key, bucket_name=BUCKET)) for key in manifests]
        page = render_gallery(documents, base_prefix=base, title=f"Grok content for {ds}")
        s3.get_conn().put_object(
            Bucket=BUCKET, Key=f"{base}/index.html", Body=page.encode(), ContentType="text/html; charset=utf-8"
        )
        return f"s3://{BUCKET}/{base}/index.html"

    build_gallery(generated.output)
