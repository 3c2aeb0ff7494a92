"""
What a task instance tells Airflow once its try ends: the link to its images in the UI, its asset events,
its XCom and its lineage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_grok.record.manifest import Manifest
    from airflow_provider_grok.storage import S3ImageStore


class GrokManifestLink(BaseOperatorLink):
    """
    Link from the task in the Airflow UI to its images: the "Images" view of the ``grok`` UI plugin, served by
    the API server (so it works for private buckets and endpoints the browser cannot reach).

    The operator stores the URL in XCom under :attr:`xcom_key`. After ``execute`` the task runner calls
    :meth:`get_link` and stores its answer under that same key, which is where the API server reads it.
    """

    name = "Grok images"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


def push_images_location(ti: Any, bucket: str, prefix: str, aws_conn_id: str | None) -> None:
    """Where the Images view finds this task instance's manifest, and how to read it."""
    from airflow_provider_grok.plugins.view import LOCATION_XCOM_KEY

    ti.xcom_push(key=LOCATION_XCOM_KEY, value={"bucket": bucket, "prefix": prefix, "aws_conn_id": aws_conn_id})


def push_images_link(ti: Any) -> None:
    """Store the URL of this task instance's Images view where :class:`GrokManifestLink` reads it."""
    from urllib.parse import urlsplit

    from airflow.sdk.configuration import conf

    from airflow_provider_grok.plugins.view import view_path

    map_index = -1 if ti.map_index is None else ti.map_index
    # Under the API server's own path when it is served below one (https://host/airflow).
    root = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    ti.xcom_push(key=GrokManifestLink().xcom_key, value=root + view_path(ti.dag_id, ti.run_id, ti.task_id, map_index))


def emit_asset_events(outlets: Any, outlet_events: Any, store: S3ImageStore, manifest: Manifest) -> None:
    """The task's outlets get the run's images and spend: an alias gets one asset per task instance prefix."""
    from airflow.sdk import Asset, AssetAlias

    cost = manifest.cost
    extra = {
        "images": manifest.summary["images_stored"],
        "prompts": manifest.summary["prompts"],
        "status": manifest.status,
        "manifest_uri": store.uri(store.manifest_key),
        "prefix_uri": store.uri(store.prefix + "/"),
        "run_id": manifest.run_id,
        # This run's spend: every try of this task instance (None: a billed request reported no usage).
        "cost_usd": cost["usd"],
        "requests": cost["requests"],
        "requests_unanswered": cost["requests_unanswered"],
        "attempts_unanswered": cost["attempts_unanswered"],
    }
    for outlet in outlets or []:
        if isinstance(outlet, AssetAlias):
            outlet_events[outlet].add(Asset(store.uri(store.prefix)), extra=extra)
        elif isinstance(outlet, Asset):
            outlet_events[outlet].extra = extra


def xcom_value(images: list[dict[str, Any]], store: S3ImageStore, max_images: int, log: Any) -> Any:
    """One small dict per stored image, or above ``max_images`` a summary (the manifest lists every image)."""
    if len(images) <= max_images:
        return images
    log.info(
        "%d images stored: returning a summary instead of one XCom entry per image (max_xcom_images=%d); "
        "the manifest lists every image.",
        len(images),
        max_images,
    )
    return {
        "manifest_uri": store.uri(store.manifest_key),
        "bucket": store.bucket,
        "prefix": store.prefix,
        "images": len(images),
    }


def lineage(stored_prefix: tuple[str, str] | None) -> Any:
    """The stored images as one OpenLineage output dataset (namespace ``s3://bucket``, name the prefix)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    if stored_prefix is None:
        return OperatorLineage()
    bucket, prefix = stored_prefix
    return OperatorLineage(outputs=[Dataset(namespace=f"s3://{bucket}", name=prefix)])
