"""
The FastAPI app behind the "Images" view, mounted by Airflow's API server under ``/grok``.

Every route is authorised by Airflow's auth manager: read access to the task instances of that DAG
(``requires_access_dag``, which reads ``dag_id`` from the path). A mounted app is anonymous unless it does
this itself; without a token or the UI's cookie the answer is 401/403, never a page or an image.

The browser only ever talks to the API server. The app finds where a task instance stored its images in
the XCom the operator wrote when it started (``grok_images``: bucket, prefix, AWS connection), reads the
manifest with that task's own AWS connection, and streams the images it lists (only keys directly under
that task instance's prefix), so private buckets and endpoints the browser cannot reach work alike.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request

from airflow_provider_grok.plugins.view import (
    LOCATION_XCOM_KEY,
    page_of,
    render_no_manifest,
    render_page,
    servable_image,
)

if TYPE_CHECKING:
    from airflow_provider_grok.record.manifest import Manifest

STREAM_CHUNK = 256 * 1024


def _map_index(raw: str) -> int:
    # The UI leaves {MAP_INDEX} unreplaced for an unmapped task instance: that is -1, not an error.
    try:
        return int(raw)
    except ValueError:
        return -1


def _location(dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any] | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == LOCATION_XCOM_KEY,
            )
            .one_or_none()
        )
        value = None if row is None else XComModel.deserialize_value(row)
    return value if isinstance(value, dict) and value.get("bucket") and value.get("prefix") else None


@functools.lru_cache(maxsize=32)
def _store(aws_conn_id: str | None, bucket: str, prefix: str) -> Any:
    from airflow_provider_grok.storage import S3ImageStore

    return S3ImageStore(aws_conn_id, bucket, prefix, {})


class _ManifestCache:
    """Parsed manifests by S3 ETag: paging a 10,000-image manifest costs one HEAD per page, not a download."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: dict[tuple[str, str], tuple[str, Manifest]] = {}
        self._lock = threading.Lock()

    def read(self, store: Any) -> Manifest | None:
        from botocore.exceptions import ClientError

        try:
            etag = store.client.head_object(Bucket=store.bucket, Key=store.manifest_key)["ETag"]
        except ClientError:
            return None
        where = (store.bucket, store.manifest_key)
        with self._lock:
            cached = self._items.get(where)
        if cached and cached[0] == etag:
            return cached[1]
        manifest = store.read_manifest()  # one of another version is not shown
        if manifest is not None:
            with self._lock:
                if len(self._items) >= self.size:
                    self._items.pop(next(iter(self._items)))
                self._items[where] = (etag, manifest)
        return manifest


_manifests = _ManifestCache()


def create_app() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response, StreamingResponse

    app = FastAPI(title="Grok Imagine images", docs_url=None, redoc_url=None, openapi_url=None)
    readers = [Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))]

    def manifest_of(dag_id: str, run_id: str, task_id: str, map_index: int) -> tuple[Any, Manifest | None]:
        location = _location(dag_id, run_id, task_id, map_index)
        if location is None:
            return None, None
        store = _store(location.get("aws_conn_id"), location["bucket"], location["prefix"])
        return store, _manifests.read(store)

    @app.get("/images/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=readers, response_class=HTMLResponse)
    def images_page(dag_id: str, run_id: str, task_id: str, map_index: str, page: int = 1) -> HTMLResponse:
        index = _map_index(map_index)
        title = f"{task_id}" + (f" [{index}]" if index >= 0 else "") + f" · {run_id}"
        store, manifest = manifest_of(dag_id, run_id, task_id, index)
        if manifest is None:
            reason = (
                "No Grok images are recorded for this task instance: it has not run yet, or it is not a Grok task."
                if store is None
                else f"This task instance has no manifest at {store.uri(store.manifest_key)} yet."
            )
            return HTMLResponse(render_no_manifest(title, reason))
        # Relative to the page's folder: the same whatever the API server's base URL or mount point.
        base = f"./{quote(map_index, safe='')}"
        return HTMLResponse(render_page(manifest, page_of(manifest, page), title=title, base_url=base))

    @app.get("/images/{dag_id}/{run_id}/{task_id}/{map_index}/file/{key:path}", dependencies=readers)
    def image_file(  # noqa: PLR0917 - FastAPI passes path parameters by name
        dag_id: str, run_id: str, task_id: str, map_index: str, key: str, request: Request
    ) -> Response:
        store, manifest = manifest_of(dag_id, run_id, task_id, _map_index(map_index))
        image = None if manifest is None else servable_image(manifest, key)
        if store is None or image is None:
            raise HTTPException(404, "No such image of this task instance.")
        etag = f'"{image["sha256"]}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(STREAM_CHUNK)
            finally:
                body.close()

        headers["Content-Length"] = str(image["size_bytes"])
        return StreamingResponse(chunks(), media_type=image["content_type"], headers=headers)

    return app
