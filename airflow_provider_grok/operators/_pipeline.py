"""
The work of one GrokGenerateImagesOperator task instance: fold what earlier tries left, plan, generate,
store, record.

Imported by the operator at run time only (it pulls in requests and boto3). Every request follows the
durable sequence of ``ledger.py`` whoever sends it (this worker's threads, or the trigger), and a retry
folds the receipts, the image objects and the manifest (``manifest.py``) so it pays only for what is not
stored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_grok import protocol
from airflow_provider_grok.exceptions import (
    GrokBudgetExceededError,
    GrokContentFilteredError,
    GrokError,
    GrokIncompleteError,
    GrokPrefixInUseError,
    GrokStorageError,
)
from airflow_provider_grok.hooks.grok import GrokHook, log_label
from airflow_provider_grok.ledger import Job, RequestLedger, write_plan
from airflow_provider_grok.manifest import (
    FAILED,
    FILTERED,
    GENERATOR,
    MANIFEST_VERSION,
    STORED,
    PromptRecord,
    RequestRecord,
    StoredImage,
    TaskIdentity,
    cost_summary,
    describe_cost,
    fingerprint,
    is_bookkeeping_key,
    is_receipt_key,
    newer,
    parse_image_key,
    receipt_key,
    settle_status,
)
from airflow_provider_grok.protocol import EditParams, GenerationParams, ImageGenerationResult
from airflow_provider_grok.record import Admission, CostCap
from airflow_provider_grok.record.cap import WAIT_SECONDS
from airflow_provider_grok.storage import S3ImageStore

STORE_WORKERS = 4  # threads fetching and uploading; uploads are short next to a generation


@dataclass
class RequestPlan:
    """
    What a task instance asks for, validated: one request per record (a prompt, or an edit), the parameters
    as the user set them (for the manifest), and for edits each record's fingerprint and sources.
    """

    params: Sequence[GenerationParams | EditParams]
    request: dict[str, Any]
    fingerprints: Sequence[str] | None = None
    sources: Sequence[list[dict[str, Any]]] | None = None


class GenerationPipeline:
    """
    Turn prompts into stored images for one task instance, reusing what earlier tries stored.

    :param plan: one validated request per prompt or edit (``n`` is the images wanted for it), and the
        request parameters as the user set them, for the manifest and fingerprints.
    :param max_cost_usd: what this task instance may be billed, all tries together (None: no cap).
    """

    def __init__(
        self,
        *,
        plan: RequestPlan,
        hook: GrokHook,
        store: S3ImageStore,
        identity: TaskIdentity,
        max_concurrency: int,
        allow_partial: bool,
        log: logging.Logger | Any,
        max_cost_usd: float | None = None,
    ) -> None:
        self.params = list(plan.params)
        self.request = plan.request
        self.hook = hook
        self.store = store
        self.identity = identity
        self.max_concurrency = max_concurrency
        self.allow_partial = allow_partial
        self.log = log
        self.ledger = RequestLedger(store, identity, hook.fetch_image, log)
        prints = plan.fingerprints or [fingerprint(p.prompt, plan.request) for p in self.params]
        self.records = [PromptRecord(i, p.prompt, prints[i], p.n) for i, p in enumerate(self.params)]
        for record, sources in zip(self.records, plan.sources or [], strict=False):
            record.sources = sources
        self.requests: dict[str, RequestRecord] = {}
        self.cap = CostCap(max_cost_usd)
        self.reused = 0
        self._receipts: set[str] = set()  # receipts and plans folded into the manifest, deleted once it is written
        self._job_counter = 0
        # Request ids must be unique across executions too: a cleared task may run its try number again.
        self._execution = uuid.uuid4().hex[:6]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._storage_refused: GrokStorageError | None = None  # S3 refused a receipt: nothing more is sent
        self._in_flight: dict[int, int] = {}
        self._store_pool: ThreadPoolExecutor | None = None
        self._store_futures: list[Future[None]] = []
        self._store_slots = threading.BoundedSemaphore(max_concurrency)

    # --- folding what earlier tries (or the trigger) left ---

    def load_previous(self, manifest: dict[str, Any] | None, *, reuse_images: bool) -> None:
        """
        Fold the manifest, the receipts and the image objects under the prefix into this try's records,
        refusing before any request if they belong to another task instance (another run above all).
        """
        self._check_owner(manifest, "its manifest")
        listing = self.store.list_prefix()
        receipts = self.store.read_json_many(key for key in listing if is_receipt_key(self.store.prefix, key))
        for receipt in receipts:
            self._check_owner(receipt, "a request receipt")
        self._receipts.update(key for key in listing if is_bookkeeping_key(self.store.prefix, key))
        for data in [*(manifest or {}).get("requests", []), *receipts]:
            request = RequestRecord.from_json(data)
            known = self.requests.get(request.id)
            self.requests[request.id] = request if known is None else newer(known, request)
        self._fold_attempts()
        self.cap.fold(self.requests.values())
        if reuse_images:
            self._fold_images(manifest, listing)
        if self.reused:
            self.log.info(
                "Found %d images stored by an earlier try in %s.", self.reused, self.store.uri(self.store.prefix)
            )

    def _check_owner(self, record: Mapping[str, Any] | None, what: str) -> None:
        if record is None:
            return
        foreign = self.identity.foreign_owner(record)
        if foreign is not None:
            raise GrokPrefixInUseError(
                f"{self.store.uri(self.store.prefix)}/ already holds the work of another task instance ({what} "
                f"names {foreign}); this one is dag_id {self.identity.dag_id!r}, task_id "
                f"{self.identity.task_id!r}, run_id {self.identity.run_id!r}, map_index {self.identity.map_index}. "
                "Nothing was generated. Give each run its own s3_key_prefix (leave it unset for "
                "grok/<dag>/<run>/<task>, or include {{ run_id }}), or delete that prefix to start over."
            )

    def _fold_attempts(self) -> None:
        """Errors, unstored images and moderation of this try's requests (the trigger's, on resume)."""
        for request in self.requests.values():
            if request.prompt_index >= len(self.records):
                continue
            record = self.records[request.prompt_index]
            if request.fingerprint != record.fingerprint or request.try_number != self.identity.try_number:
                continue
            if request.state == FAILED:
                record.error = request.error
            record.not_stored.extend(request.not_stored)

    def _fold_images(self, manifest: Mapping[str, Any] | None, listing: Mapping[str, int]) -> None:
        """Adopt every image still in S3 whose record says it is this task instance's, for this prompt."""
        # key -> (prompt fingerprint, image, made by an earlier try)
        candidates: dict[str, tuple[str, StoredImage, bool]] = {}
        for prompt in (manifest or {}).get("prompts", []):
            for image in prompt.get("images", []):
                candidates[image["key"]] = (prompt.get("fingerprint"), StoredImage.from_json(image), True)
        for request in self.requests.values():
            earlier = request.try_number != self.identity.try_number
            for image in request.images:
                candidates[image.key] = (request.fingerprint, image, earlier)
        orphans = [
            key for key in listing if key not in candidates and parse_image_key(self.store.prefix, key) is not None
        ]
        for key, (size, content_type, metadata) in self.store.head_metadata(orphans).items():
            adopted = self._adopt_orphan(key, size, content_type, metadata)
            if adopted is not None:
                candidates[key] = adopted
        for key, (fingerprint_, image, earlier) in candidates.items():
            if image.prompt_index >= len(self.records) or listing.get(key) != image.size_bytes:
                continue  # gone, replaced, or beyond today's prompts
            record = self.records[image.prompt_index]
            if fingerprint_ == record.fingerprint:
                record.add_image(image)
                self.reused += earlier
        for record in self.records:
            filtered = sum(
                r.filtered
                for r in self.requests.values()
                if r.prompt_index == record.prompt_index
                and r.fingerprint == record.fingerprint
                and r.state in (STORED, FILTERED)
            )
            if record.images or self.allow_partial:
                record.filtered = min(filtered, record.requested - len(record.images))

    def _adopt_orphan(
        self, key: str, size: int, content_type: str, metadata: Mapping[str, str]
    ) -> tuple[str, StoredImage, bool] | None:
        """An image stored just before a crash, before its receipt said so: its metadata is its record."""
        try:
            map_index, prompt_index, image_index = (
                int(metadata[name]) for name in ("map-index", "prompt-index", "image-index")
            )
        except (KeyError, ValueError):
            return None  # not written by this provider's ledger: leave it alone
        owner = {
            "dag_id": metadata.get("dag-id"),
            "task_id": metadata.get("task-id"),
            "run_id": metadata.get("run-id"),
            "map_index": map_index,
        }
        if self.identity.foreign_owner(owner) is not None or not metadata.get("sha256"):
            return None
        if prompt_index >= len(self.records):
            return None
        request = self.requests.get(metadata.get("request", ""))
        revised = None
        if request is not None and 0 <= image_index - request.first_image_index < len(request.revised_prompts):
            revised = request.revised_prompts[image_index - request.first_image_index]
        image = StoredImage(
            s3_uri=self.store.uri(key),
            bucket=self.store.bucket,
            key=key,
            content_type=content_type,
            size_bytes=size,
            sha256=metadata["sha256"],
            prompt=self.records[prompt_index].prompt,
            revised_prompt=revised,
            model=metadata.get("model") or None,
            prompt_index=prompt_index,
            image_index=image_index,
        )
        earlier = metadata.get("try-number") != str(self.identity.try_number)
        return metadata.get("fingerprint", ""), image, earlier

    def compact(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Write ``manifest`` (by default: in progress, with everything folded so far), then delete the receipts
        and plans it now holds. Returns what was written.
        """
        manifest = manifest or self.manifest("in_progress")
        self.store.write_manifest(manifest)
        with self._lock:
            folded, self._receipts = sorted(self._receipts), set()
        self.store.delete(folded)
        return manifest

    # --- planning ---

    def pending_jobs(self, kind: str = "s") -> list[Job]:
        """
        The requests still needed: only the images not already stored (or removed by moderation).

        ``kind`` tells who sends them (``s`` this worker, ``d`` the trigger): ids read ``t1-3f9a2c-d00007``.
        Under a money cap whose price is not known yet, the first request asks for one image only.
        """
        jobs: list[Job] = []
        for record in self.records:
            start = record.next_image_index()
            chunks = protocol.split_n(record.missing) if record.missing else []
            if chunks and chunks[0] > 1 and not jobs and self.cap.needs_probe:
                chunks = [1, chunks[0] - 1, *chunks[1:]]
            for chunk in chunks:
                self._job_counter += 1
                job_id = f"t{self.identity.try_number}-{self._execution}-{kind}{self._job_counter:05d}"
                jobs.append(Job(job_id, record.prompt_index, start, chunk, record.fingerprint))
                start += chunk
        return jobs

    def job_params(self, job: Job) -> GenerationParams | EditParams:
        return self.params[job.prompt_index].with_n(job.count)

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

    def stop(self) -> None:
        """Start no further requests (on_kill) and close the hook's idle connections."""
        self._stop.set()
        self.hook.close()

    def _run_job(self, job: Job) -> None:
        record = self.records[job.prompt_index]
        if self._storage_refused is not None:
            self._record_error(record, f"not generated: S3 refused writes ({self._storage_refused.message})")
            return
        if self._stop.is_set():
            self._record_error(record, "not attempted: the task was stopped or an earlier error made it pointless")
            return
        if not self._admitted(job):
            self._record_error(record, f"not generated: max_cost_usd reached ({self.cap.describe()})")
            return
        with self._lock:
            self._in_flight[job.prompt_index] = self._in_flight.get(job.prompt_index, 0) + 1
        try:
            # If the intent cannot be recorded, nothing is sent: S3 refusing writes stops every request.
            try:
                request = self.ledger.sent(job)
            except GrokStorageError as err:
                self._refuse_further_requests(err)
                self._record_error(record, f"not generated: S3 refused its receipt ({err.message})")
                return
            self._track(request)
            params = self.job_params(job)
            try:
                with log_label(f"Prompt {job.prompt_index}"):
                    result = self.hook.generate(params)
            except GrokContentFilteredError as err:
                self.log.warning("Prompt %d: %s", job.prompt_index, err.message)
                self.ledger.filtered(request, err)
                self._settle(request)
                self._apply(request)
                return
            except GrokError as err:
                self.ledger.failed(request, err)
                self._settle(request)
                self._apply(request)
                if isinstance(err, protocol.BATCH_FATAL_ERRORS):
                    self._stop.set()
                return
            self.ledger.answered(request, result, params.model)
            self._settle(request)
            self._store_later(request, result)
        finally:
            with self._lock:
                self._in_flight[job.prompt_index] -= 1

    def _refuse_further_requests(self, err: GrokStorageError) -> None:
        with self._lock:
            first, self._storage_refused = self._storage_refused is None, self._storage_refused or err
        if first:
            self.log.error(
                "S3 refuses writes (%s): no further generation request is sent, since its receipt cannot be "
                "written. Answers already paid for are still stored while S3 allows it.",
                err.message,
            )

    def _admitted(self, job: Job) -> bool:
        """Wait until the money cap admits ``job`` (True) or stops sending (False)."""
        while (decision := self.cap.admit(job.count)) is Admission.WAIT:
            if self._stop.is_set():
                return False
            time.sleep(WAIT_SECONDS)
        if decision is Admission.STOP:
            self.log.warning(
                "Prompt %d: not sending %d images: max_cost_usd reached (%s).",
                job.prompt_index,
                job.count,
                self.cap.describe(),
            )
        return decision is Admission.SEND

    def _settle(self, request: RequestRecord) -> None:
        if why := self.cap.settle(request):
            self.log.error("max_cost_usd: %s", why)

    def _store_later(self, request: RequestRecord, result: ImageGenerationResult) -> None:
        """Hand an answer to the store pool (blocks while ``max_concurrency`` answers already wait)."""
        assert self._store_pool is not None, "_store_later() needs an open storing() block"
        self._store_slots.acquire()

        def store() -> None:
            try:
                self.ledger.store_answer(request, result, self.records[request.prompt_index].prompt)
                self._apply(request)
            finally:
                self._store_slots.release()
                self._log_progress()

        future = self._store_pool.submit(store)
        with self._lock:
            self._store_futures.append(future)

    def _track(self, request: RequestRecord) -> None:
        with self._lock:
            self.requests[request.id] = request
            self._receipts.add(receipt_key(self.store.prefix, request.id))

    def _apply(self, request: RequestRecord) -> None:
        """Bring a finished request's outcome into its prompt's record."""
        record = self.records[request.prompt_index]
        with self._lock:
            for image in request.images:
                record.add_image(image)
            record.not_stored.extend(request.not_stored)
            record.filtered += request.filtered
            if request.filtered and request.state == STORED:
                self.log.warning(
                    "Prompt %d: content moderation removed %d of %d images.",
                    request.prompt_index,
                    request.filtered,
                    request.count,
                )
            if request.state == FAILED:
                record.error = request.error
                self.log.error("Prompt %d (%d images) failed: %s", request.prompt_index, request.count, request.error)

    def _record_error(self, record: PromptRecord, message: str) -> None:
        with self._lock:
            record.error = message

    def record_batch_failure(self, err: GrokError) -> None:
        """A failure of the whole batch (e.g. the trigger's): every prompt still missing images says why."""
        for record in self.records:
            if record.missing and record.error is None:
                record.error = f"{type(err).__name__}: {err.message}"

    # --- reporting ---

    def _log_progress(self) -> None:
        with self._lock:
            stored = sum(len(r.images) for r in self.records)
            wanted = sum(r.requested for r in self.records)
            in_flight = sum(1 for n in self._in_flight.values() if n)
        self.log.info("%d/%d images stored, %d prompts in flight.", stored, wanted, in_flight)

    def manifest(self, status: str) -> dict[str, Any]:
        with self._lock:
            records = [r.to_json() for r in self.records]
            requests = sorted(self.requests.values(), key=lambda r: (r.try_number, r.id))
            request_json = [r.to_json() for r in requests]
        stored = sum(len(r["images"]) for r in records)
        cost = cost_summary(requests, self.identity.try_number, stored)
        usages = [r.usage for r in requests if r.usage]
        return {
            "manifest_version": MANIFEST_VERSION,
            "generator": GENERATOR,
            "status": status,
            "updated_at": datetime.now(UTC).isoformat(),
            **self.identity.owner(),
            "try_number": self.identity.try_number,
            "bucket": self.store.bucket,
            "prefix": self.store.prefix,
            "request": self.request,
            "summary": {
                "prompts": len(records),
                "images_requested": sum(r["requested"] for r in records),
                "images_stored": stored,
                "images_reused": self.reused,
                "images_filtered": sum(r["filtered"] for r in records),
                "prompts_failed": [r["prompt_index"] for r in records if r["status"] == "failed"],
            },
            "cost_usd": cost["usd"],
            "cost": cost,
            "usage": protocol.sum_usage(usages) if usages else None,
            "prompts": records,
            "requests": request_json,
        }

    def finalize(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Settle each prompt, write the final manifest and drop folded receipts; return (XCom list, manifest)."""
        for record in self.records:
            settle_status(record, allow_partial=self.allow_partial)
        statuses = {r.status for r in self.records}
        status = "failed" if "failed" in statuses else "complete" if statuses == {"complete"} else "partial"
        try:
            manifest = self.compact(self.manifest(status))
        except GrokStorageError as err:
            raise self.unrecorded(err) from None
        images = sorted((i for r in self.records for i in r.images), key=lambda i: (i.prompt_index, i.image_index))
        cost = manifest["cost"]
        self.log.info(
            "Grok: %d images stored (%d reused), %d requests this try (%d in all tries), cost this try %s, "
            "all tries %s; manifest %s.",
            len(images),
            self.reused,
            cost["this_try"]["requests"],
            cost["requests"],
            describe_cost(cost["this_try"]),
            describe_cost(cost),
            self.store.uri(self.store.manifest_key),
        )
        return [i.to_xcom() for i in images], manifest

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """:meth:`finalize`, then raise :class:`GrokIncompleteError` if a prompt is incomplete."""
        xcom, manifest = self.finalize()
        failed = [r for r in self.records if r.status == "failed"]
        if failed and self.cap.stopped:
            raise self.budget_exceeded(len(xcom))
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

    def unrecorded(self, err: GrokStorageError) -> GrokStorageError:
        """
        The error when S3 would not take the final manifest: every image paid for but not stored (with its
        temporary URL, while it lasts), what was stored, and how to recover.
        """
        lost = [
            f"prompt {r.prompt_index} image {n['image_index']}" + (f" ({n['url']})" if n.get("url") else "")
            for r in self.records
            for n in r.not_stored
        ]
        stored = sum(len(r.images) for r in self.records)
        missing = [r.prompt_index for r in self.records if r.missing]
        return GrokStorageError(
            f"S3 refused writes and the manifest {self.store.uri(self.store.manifest_key)} could not be written: "
            f"{err.message} {stored} images are stored (each carries its own record in its metadata). "
            + (f"Paid for but not stored: {'; '.join(lost[:50])}. " if lost else "")
            + (f"Prompts still missing images: {missing[:50]}. " if missing else "")
            + "To recover: restore write access to the bucket (credentials, bucket policy, endpoint) and retry "
            "the task: it adopts every stored image from its metadata and generates only what is missing.",
            status=err.status,
        )

    def budget_exceeded(self, stored: int) -> GrokBudgetExceededError:
        """The error that ends a task the money cap stopped: the cap, the spend, what was not generated."""
        missing = [r for r in self.records if r.missing]
        names = ", ".join(f"{r.prompt_index} ({r.prompt[:40]!r}, {r.missing} images)" for r in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        reason = self.cap.unenforceable or "the next request could have passed it"
        return GrokBudgetExceededError(
            f"max_cost_usd stopped this task: {self.cap.describe()}; {reason}. Not generated: prompts {names}{more}. "
            f"The {stored} images stored stay in S3 and in {self.store.uri(self.store.manifest_key)}; raise "
            "max_cost_usd and retry (or clear) the task to generate only what is missing.",
            cap_usd=self.cap.max_cost_usd,
            spent_usd=self.cap.spent_usd(),
            not_generated=[r.prompt_index for r in missing],
        )

    # --- the deferred path ---

    def trigger_plan(self, jobs: Sequence[Job]) -> str:
        """Store what the trigger is to send (see :func:`~airflow_provider_grok.ledger.write_plan`); its key."""
        key = write_plan(self.store, self._execution, [(job, self.job_params(job)) for job in jobs], self.cap)
        with self._lock:
            self._receipts.add(key)
        return key
