"""
Scheduled on the ``GROK_CONTENT`` asset: runs whenever ``example_grok_scheduled_content`` stored images.

The producer's gallery task emits one event per run, once every image and the gallery are stored. Its
``extra`` holds ``images``, ``prompts``, ``manifests``, ``gallery_uri``, ``cost_usd`` (None when a gateway
reported no usage: unknown, never 0) and ``requests_unanswered``. This DAG reads them and reports what
arrived, which is where a publishing, moderation-review or dataset-indexing step would start.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, task

# The same URI as in example_grok_scheduled_content: an asset is identified by its URI.
GROK_CONTENT = Asset(f"s3://{os.environ.get('GROK_DEMO_BUCKET', 'grok-demo')}/grok/example_grok_scheduled_content")

with DAG(
    dag_id="example_grok_asset_consumer",
    description="Reacts to new Grok images in S3 through the asset's event extra",
    schedule=[GROK_CONTENT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "grok"],
) as dag:

    @task
    def summarise(triggering_asset_events: dict) -> dict:
        """Sum the images of every event that triggered this run and list their manifests."""
        events = [event for asset_events in triggering_asset_events.values() for event in asset_events]
        manifests = [uri for event in events for uri in event.extra.get("manifests", [])]
        costs = [event.extra.get("cost_usd") for event in events]
        summary = {
            "events": len(events),
            "images": sum(int(event.extra.get("images", 0)) for event in events),
            "cost_usd": None if None in costs else round(sum(costs), 4),
            "galleries": [event.extra["gallery_uri"] for event in events if "gallery_uri" in event.extra],
            "manifests": manifests,
        }
        print(f"New Grok content: {summary['images']} images in {len(manifests)} manifests: {manifests}")
        return summary

    summarise()
