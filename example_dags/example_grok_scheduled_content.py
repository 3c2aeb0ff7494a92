"""
Daily content generation: prompts from DAG Params, one mapped Grok task per prompt, then a gallery.

Every day at 06:00 this DAG takes the prompt templates in the ``prompts`` Param, fills in the run's date
(``{date:%B %d}``, ``{season}``), generates ``images_per_prompt`` images for each with
:class:`~airflow_provider_grok.operators.grok.GrokGenerateImagesOperator` (mapped: one task instance per
prompt, each with its own ``map-N`` folder and manifest), and finally builds ``index.html``, a contact
sheet with every image, its prompt, revised prompt, size and S3 URI, stored next to the images. Each run
has its own prefix (the operator's default, ``grok/<dag>/<run>/<task>``), so a manual run on the same
day never touches the scheduled run's images::

    s3://$GROK_DEMO_BUCKET/grok/example_grok_scheduled_content/scheduled__2026-11-21T06_00_00_00_00/generate/map-0/0-0.jpg
    s3://$GROK_DEMO_BUCKET/grok/example_grok_scheduled_content/scheduled__2026-11-21T06_00_00_00_00/generate/map-0/manifest.json
    s3://$GROK_DEMO_BUCKET/grok/example_grok_scheduled_content/scheduled__2026-11-21T06_00_00_00_00/generate/index.html

It runs the same when triggered by hand with no logical date (the Airflow 3 default): the date is the
run's ``run_after``. The gallery task updates the ``GROK_CONTENT`` asset once per run, after every image
and the gallery are stored; ``example_grok_asset_consumer`` is scheduled on it.
Connections: ``grok_default`` (the gateway) and ``aws_default`` (S3). Bucket: ``GROK_DEMO_BUCKET``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, Param, task
from airflow.sdk.types import DagRunProtocol, OutletEventAccessorsProtocol

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

BUCKET = os.environ.get("GROK_DEMO_BUCKET", "grok-demo")
GROK_CONTENT = Asset(
    f"s3://{BUCKET}/grok/example_grok_scheduled_content", extra={"producer": "example_grok_scheduled_content"}
)
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
            description="Prompt templates; {date} is the run's date, {season} its season.",
        ),
        "images_per_prompt": Param(2, type="integer", minimum=1, maximum=10),
        "aspect_ratio": Param("16:9", type="string"),
    },
) as dag:

    @task
    def daily_prompts(params: dict, dag_run: DagRunProtocol) -> list[str]:
        """Fill each prompt template with the run's date, so every day's images differ."""
        # A manual run has no logical date in Airflow 3 unless one is given; run_after always exists.
        day = dag_run.logical_date or dag_run.run_after
        season = SEASONS[day.month]
        return [template.format(date=day, season=season) for template in params["prompts"]]

    generated = GrokGenerateImagesOperator.partial(
        task_id="generate",
        s3_bucket=BUCKET,
        n="{{ params.images_per_prompt }}",
        aspect_ratio="{{ params.aspect_ratio }}",
        max_concurrency=2,
    ).expand(prompt=daily_prompts())

    @task(outlets=[GROK_CONTENT])
    def build_gallery(stored: list[list[dict]], outlet_events: OutletEventAccessorsProtocol) -> str:
        """Read every mapped task's manifest, write index.html beside them, then announce the run's content."""
        import json

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_grok.gallery import render_gallery

        s3 = S3Hook(aws_conn_id="aws_default")
        folders = sorted({image["key"].rsplit("/", 1)[0] for images in stored for image in images})
        # The mapped tasks' folders are <prefix>/map-N; the gallery sits in <prefix>.
        base = folders[0].rsplit("/map-", 1)[0] if folders else "grok/empty"
        documents = [json.loads(s3.read_key(f"{folder}/manifest.json", bucket_name=BUCKET)) for folder in folders]
        page = render_gallery(documents, base_prefix=base, title=f"Grok content: {len(documents)} prompts")
        s3.get_conn().put_object(
            Bucket=BUCKET, Key=f"{base}/index.html", Body=page.encode(), ContentType="text/html; charset=utf-8"
        )
        costs = [d["cost_usd"] for d in documents]
        outlet_events[GROK_CONTENT].extra = {
            "images": sum(d["summary"]["images_stored"] for d in documents),
            "prompts": len(documents),
            "manifests": [f"s3://{BUCKET}/{folder}/manifest.json" for folder in folders],
            "gallery_uri": f"s3://{BUCKET}/{base}/index.html",
            # None when a gateway reported no usage for some request: unknown, never 0.
            "cost_usd": None if None in costs else round(sum(costs), 6),
            "requests_unanswered": sum(d["cost"]["requests_unanswered"] for d in documents),
        }
        return f"s3://{BUCKET}/{base}/index.html"

    build_gallery(generated.output)
