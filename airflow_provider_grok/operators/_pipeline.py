"""
The work of one GrokGenerateImagesOperator task instance: plan, generate, store, record.

Imported by the operator at run time only (it pulls in requests and boto3). Both the sync path and the
deferred path (the trigger generates, the worker stores) go through :meth:`GenerationPipeline.store_result`,
so an image is fetched, checked, uploaded and recorded the same way whichever path produced it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from airflow_provider_grok import api
from airflow_provider_grok.api import GenerationParams, ImageGenerationResult
from airflow_provider_grok.exceptions import (
    GrokContentFilteredError,
    GrokError,
    GrokImageDownloadError,
    GrokIncompleteError,
    GrokStorageError,
)
from airflow_provider_grok.hooks.grok import EXPIRED_URL_STATUSES, GrokHook
from airflow_provider_grok.storage import (
    GENERATOR,
    MANIFEST_VERSION,
    PromptRecord,
    S3ImageStore,
    StoredImage,
    fingerprint,
    image_key,
    settle_status,
)

CHECKPOINT_SECONDS = 5.0  # how often the manifest is rewritten while work is in progress
STORE_WORKERS = 4  # threads fetching and uploading; uploads are short next to a generation


@dataclass(frozen=True)
class Job:
    """One generation request: ``count`` (<= 10) images of one prompt, numbered from ``first_image_index``."""

    prompt_index: int
    first_image_index: int
    count: int


@dataclass(frozen=True)
class TaskIdentity:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int


def _jobs_for(record: PromptRecord, count: int) -> list[Job]:
    """Requests of at most 10 for ``count`` more images of a prompt, numbered after its stored ones."""
    jobs, start = [], record.next_image_index()
    for chunk in api.split_n(count):
        jobs.append(Job(record.prompt_index, start, chunk))
        start += chunk
    return jobs


class GenerationPipeline:
    """
    Turn prompts into stored images for one task instance, reusing what earlier tries stored.

    :param params: one validated request per prompt (``n`` is the images wanted for that prompt).
    :param request: the request parameters as the user set them, for the manifest and fingerprints.
    """

    def __init__(
        self,
        *,
        params: Sequence[GenerationParams],
        request: dict[str, Any],
        hook: GrokHook,
        store: S3ImageStore,
        identity: TaskIdentity,
        max_concurrency: int,
        allow_partial: bool,
        log: logging.Logger | Any,
    ) -> None:
        self.params = list(params)
        self.request = request
        self.hook = hook
        self.store = store
        self.identity = identity
        self.max_concurrency = max_concurrency
        self.allow_partial = allow_partial
        self.log = log
        self.records = [
            PromptRecord(i, p.prompt, fingerprint(p.prompt, request), p.n) for i, p in enumerate(self.params)
        ]
        self.reused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._in_flight: dict[int, int] = {}
        self._last_checkpoint = 0.0
        self._store_pool: ThreadPoolExecutor | None = None
        self._store_futures: list[Future[None]] = []
        self._store_slots = threading.BoundedSemaphore(max_concurrency)

    # --- planning ---

    def load_previous(self, manifest: dict[str, Any] | None) -> None:
        """Adopt what an earlier try of this task instance stored, if its objects are still in S3."""
        if manifest is None:
            return
        owner = (manifest.get("dag_id"), manifest.get("task_id"), manifest.get("map_index"))
        mine = (self.identity.dag_id, self.identity.task_id, self.identity.map_index)
        if owner != mine:
            raise GrokStorageError(
                f"{self.store.uri(self.store.manifest_key)} belongs to another task (dag {owner[0]!r}, task "
                f"{owner[1]!r}, map index {owner[2]}); give this task its own s3_key_prefix so neither "
                "overwrites the other's images."
            )
        previous = [PromptRecord.from_json(r) for r in manifest.get("prompts", [])]
        sizes = self.store.existing_sizes(i.key for r in previous for i in r.images)
        for old in previous:
            if old.prompt_index >= len(self.records) or old.fingerprint != self.records[old.prompt_index].fingerprint:
                continue  # the prompt or its parameters changed since: generate afresh
            record = self.records[old.prompt_index]
            record.images = [i for i in old.images if sizes.get(i.key) == i.size_bytes]
            record.request_ids = old.request_ids
            record.usage = old.usage
            if old.status in ("complete", "partial") or (old.status == "filtered" and self.allow_partial):
                record.filtered = old.filtered
            self.reused += len(record.images)
        if self.reused:
            self.log.info(
                "Found %d images stored by an earlier try in %s.", self.reused, self.store.uri(self.store.prefix)
            )

    def pending_jobs(self) -> list[Job]:
        """The requests still needed: only the images not already stored (or removed by moderation)."""
        return [job for record in self.records if record.missing for job in _jobs_for(record, record.missing)]

    # --- generating (sync path) ---

    def run(self, jobs: Sequence[Job]) -> None:
        """Generate and store ``jobs`` with at most ``max_concurrency`` requests in flight."""
        self.log.info(
            "Generating %d images for %d prompts in %d requests (at most %d in flight).",
            sum(j.count for j in jobs),
            len({j.prompt_index for j in jobs}),
            len(jobs),
            self.max_concurrency,
        )
        with self.storing(), ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="grok-job") as pool:
            for future in as_completed([pool.submit(self._run_job, job) for job in jobs]):
                future.result()
                self.checkpoint()

    @contextmanager
    def storing(self) -> Iterator[None]:
        """
        A pool that fetches and uploads results while generation goes on: a request slot is free again as
        soon as its answer arrives. At most ``max_concurrency`` answers wait for storage (backpressure keeps
        memory bounded); the block ends when everything handed over is stored.
        """
        with ThreadPoolExecutor(STORE_WORKERS, thread_name_prefix="grok-store") as pool:
            self._store_pool, self._store_futures = pool, []
            try:
                yield
            finally:
                for future in as_completed(list(self._store_futures)):
                    future.result()
                self._store_pool = None

    def store_later(self, job: Job, result: ImageGenerationResult) -> None:
        """Hand a result to the store pool (blocks while ``max_concurrency`` results already wait)."""
        assert self._store_pool is not None, "store_later() needs an open storing() block"
        self._store_slots.acquire()

        def store() -> None:
            try:
                self.store_result(job, result)
            finally:
                self._store_slots.release()
                self._log_progress()

        future = self._store_pool.submit(store)
        with self._lock:
            self._store_futures.append(future)

    def stop(self) -> None:
        """Start no further requests (on_kill) and close the hook's idle connections."""
        self._stop.set()
        self.hook.close()

    def _run_job(self, job: Job) -> None:
        if self._stop.is_set():
            self.record_failure(job, "not attempted: the task was stopped or an earlier error made it pointless")
            return
        with self._lock:
            self._in_flight[job.prompt_index] = self._in_flight.get(job.prompt_index, 0) + 1
        try:
            result = self.hook.generate(self.params[job.prompt_index].with_n(job.count))
        except GrokContentFilteredError as err:
            self.record_filtered(job, err)
        except GrokError as err:
            self.record_failure(job, err.message)
            if isinstance(err, api.BATCH_FATAL_ERRORS):
                self._stop.set()
        else:
            self.store_later(job, result)
        finally:
            with self._lock:
                self._in_flight[job.prompt_index] -= 1

    # --- recording (both paths) ---

    def store_result(self, job: Job, result: ImageGenerationResult) -> None:
        """Fetch, verify, upload and record each image of one request as it comes (one image in memory)."""
        record = self.records[job.prompt_index]
        with self._lock:
            record.request_ids.extend(result.request_ids)
            if result.usage:
                record.usage.append(result.usage)
            record.filtered += result.filtered_count
        if result.filtered_count:
            self.log.warning(
                "Prompt %d: content moderation removed %d of %d images.",
                job.prompt_index,
                result.filtered_count,
                job.count,
            )
        model = result.model or self.params[job.prompt_index].model
        for image in result.images:
            index = job.first_image_index + image.index
            try:
                data = self.hook.fetch_image(image)
                kind = api.verify_image(data, f"Image {index} of prompt {job.prompt_index}")
                key = image_key(self.store.prefix, job.prompt_index, index, kind.extension)
                metadata = {
                    "prompt-index": job.prompt_index,
                    "image-index": index,
                    "model": model,
                    "generator": GENERATOR,
                    "dag-id": self.identity.dag_id,
                    "task-id": self.identity.task_id,
                }
                digest = self.store.put_image(key, data, kind.mime_type, metadata)
            except (GrokImageDownloadError, GrokStorageError) as err:
                self._not_stored(record, index, image.url, err)
                continue
            stored = StoredImage(
                s3_uri=self.store.uri(key),
                bucket=self.store.bucket,
                key=key,
                content_type=kind.mime_type,
                size_bytes=len(data),
                sha256=digest,
                prompt=record.prompt,
                revised_prompt=image.revised_prompt,
                model=model,
                prompt_index=job.prompt_index,
                image_index=index,
            )
            del data
            with self._lock:
                record.images = [i for i in record.images if i.image_index != index] + [stored]

    def record_filtered(self, job: Job, err: GrokContentFilteredError) -> None:
        self.log.warning("Prompt %d: %s", job.prompt_index, err.message)
        with self._lock:
            self.records[job.prompt_index].filtered += job.count
            if err.request_id:
                self.records[job.prompt_index].request_ids.append(err.request_id)

    def record_failure(self, job: Job, message: str) -> None:
        self.log.error("Prompt %d (%d images) failed: %s", job.prompt_index, job.count, message)
        with self._lock:
            self.records[job.prompt_index].error = message

    def _not_stored(self, record: PromptRecord, index: int, url: str | None, err: GrokError) -> None:
        self.log.error(
            "Image %d of prompt %d was generated but not stored: %s", index, record.prompt_index, err.message
        )
        entry = {"image_index": index, "url": url, "error": err.message, "status": err.status}
        with self._lock:
            record.not_stored.append(entry)

    # --- the deferred path ---

    def trigger_jobs(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """The trigger's kwargs for ``jobs``: URLs rather than inline images, so the event stays small."""
        return [
            {
                "prompt_index": job.prompt_index,
                "first_image_index": job.first_image_index,
                "fingerprint": self.records[job.prompt_index].fingerprint,
                "params": asdict(replace(self.params[job.prompt_index], n=job.count, response_format="url")),
            }
            for job in jobs
        ]

    def apply_event(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Store what the trigger generated, exactly as the sync path stores what it generates."""
        with self.storing():
            for entry in results:
                self._apply_event_entry(entry)

    def _apply_event_entry(self, entry: Mapping[str, Any]) -> None:
        job = Job(int(entry["prompt_index"]), int(entry["first_image_index"]), int(entry["count"]))
        if job.prompt_index >= len(self.records) or entry["fingerprint"] != self.records[job.prompt_index].fingerprint:
            self.log.warning(
                "Ignoring a result for prompt %d: the task's prompts changed while it was deferred.", job.prompt_index
            )
        elif entry["outcome"] == "ok":
            self.store_later(job, api.result_from_event(entry["result"]))
        elif entry["outcome"] == "filtered":
            self.record_filtered(job, GrokContentFilteredError(entry["message"], request_id=entry.get("request_id")))
        else:
            self.record_failure(job, f"{entry['error_type']}: {entry['message']}")

    def take_expired_jobs(self) -> list[Job]:
        """Jobs that regenerate images whose temporary URL expired before they could be fetched."""
        jobs = []
        for record in self.records:
            expired = [e for e in record.not_stored if e.get("status") in EXPIRED_URL_STATUSES]
            if expired:
                record.not_stored = [e for e in record.not_stored if e not in expired]
                jobs.extend(_jobs_for(record, len(expired)))
        return jobs

    # --- reporting ---

    def _log_progress(self) -> None:
        with self._lock:
            stored = sum(len(r.images) for r in self.records)
            wanted = sum(r.requested for r in self.records)
            in_flight = sum(1 for n in self._in_flight.values() if n)
        self.log.info("%d/%d images stored, %d prompts in flight.", stored, wanted, in_flight)

    def checkpoint(self, *, force: bool = False) -> None:
        """Rewrite the manifest while work goes on, so a crash loses no record of what was stored."""
        now = time.monotonic()
        if force or now - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self._last_checkpoint = now
            self.store.write_manifest(self.manifest("in_progress"))

    def manifest(self, status: str) -> dict[str, Any]:
        with self._lock:
            records = [r.to_json() for r in self.records]
            usages = [usage for r in self.records for usage in r.usage]
            usage = api.sum_usage(usages) if usages else None
            request_ids = [rid for r in self.records for rid in r.request_ids]
        ticks = (usage or {}).get("cost_in_usd_ticks")
        return {
            "manifest_version": MANIFEST_VERSION,
            "generator": GENERATOR,
            "status": status,
            "updated_at": datetime.now(UTC).isoformat(),
            "dag_id": self.identity.dag_id,
            "task_id": self.identity.task_id,
            "run_id": self.identity.run_id,
            "map_index": self.identity.map_index,
            "try_number": self.identity.try_number,
            "bucket": self.store.bucket,
            "prefix": self.store.prefix,
            "request": self.request,
            "summary": {
                "prompts": len(records),
                "images_requested": sum(r["requested"] for r in records),
                "images_stored": sum(len(r["images"]) for r in records),
                "images_filtered": sum(r["filtered"] for r in records),
                "prompts_failed": [r["prompt_index"] for r in records if r["status"] == "failed"],
            },
            "usage": usage,
            "cost_usd": ticks / api.USD_TICKS if isinstance(ticks, int | float) else None,
            "request_ids": request_ids,
            "prompts": records,
        }

    def finalize(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Settle each prompt and write the final manifest; return (XCom list, manifest)."""
        for record in self.records:
            settle_status(record, allow_partial=self.allow_partial)
        statuses = {r.status for r in self.records}
        status = "failed" if "failed" in statuses else "complete" if statuses == {"complete"} else "partial"
        manifest = self.manifest(status)
        self.store.write_manifest(manifest)
        images = sorted((i for r in self.records for i in r.images), key=lambda i: (i.prompt_index, i.image_index))
        self.log.info(
            "Stored %d images (%d reused from an earlier try); manifest %s.",
            len(images),
            self.reused,
            self.store.uri(self.store.manifest_key),
        )
        return [i.to_xcom() for i in images], manifest

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """:meth:`finalize`, then raise :class:`GrokIncompleteError` if a prompt is incomplete."""
        xcom, manifest = self.finalize()
        failed = [r for r in self.records if r.status == "failed"]
        if failed:
            lines = [
                f"prompt {r.prompt_index} ({r.prompt[:60]!r}): {len(r.images)}/{r.requested} stored; {r.error}"
                for r in failed
            ]
            raise GrokIncompleteError(
                f"{len(failed)} of {len(self.records)} prompts are incomplete; the {len(xcom)} images that were "
                f"stored stay in S3 and in {self.store.uri(self.store.manifest_key)}, and a retry generates only "
                "what is missing.\n  " + "\n  ".join(lines)
            )
        return xcom, manifest
