"""
The worker's side of one task instance: read what S3 holds, send the requests the record asks for on a
pool of threads, store the answers, write the manifest. Every decision is the record's (``record/``); this
module does the I/O, holds the locks and logs.

Imported by the operator at run time only (it pulls in requests and boto3).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from typing import Any

from airflow_provider_grok.exceptions import GrokError, GrokStorageError
from airflow_provider_grok.hooks.grok import GrokHook, log_label
from airflow_provider_grok.operators._params import RequestPlan
from airflow_provider_grok.operators._storing import StorePool
from airflow_provider_grok.protocol import EditParams, GenerationParams, ImageGenerationResult
from airflow_provider_grok.record import (
    FAILED,
    STORED,
    Admission,
    CostCap,
    Job,
    Next,
    RequestRecord,
    TaskIdentity,
    TaskRecord,
    describe_cost,
    keys,
    report,
    sequence,
)
from airflow_provider_grok.record.cap import WAIT_SECONDS
from airflow_provider_grok.storage import RequestLedger, S3ImageStore, write_plan


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
        self.log = log
        self.ledger = RequestLedger(store, identity, hook.fetch_image, log)
        prints = plan.fingerprints or [keys.fingerprint(p.prompt, plan.request) for p in self.params]
        self.record = TaskRecord(
            identity,
            [(p.prompt, prints[i], p.n) for i, p in enumerate(self.params)],
            (store.bucket, store.prefix),
            uuid.uuid4().hex[:6],  # request ids stay unique when a cleared task runs its try number again
            allow_partial=allow_partial,
            cap=CostCap(max_cost_usd),
        )
        for prompt, sources in zip(self.record.prompts, plan.sources or [], strict=False):
            prompt.sources = sources
        self.cap = self.record.cap
        self._lock = threading.Lock()  # guards the record: the job and store threads all report to it
        self._stop = threading.Event()
        self._storage_refused: GrokStorageError | None = None  # S3 refused a receipt: nothing more is sent
        self._in_flight: dict[int, int] = {}
        self._stores = StorePool(max_concurrency)  # answers waiting for storage: as many as requests in flight

    # --- reading what earlier tries (or the trigger) left ---

    def load_previous(self, manifest: Mapping[str, Any] | None, *, reuse_images: bool) -> None:
        """Fold the manifest, the receipts and the image objects under the prefix (see ``record/task.py``)."""
        listing = self.store.list_prefix()
        receipts = self.store.read_json_each(key for key in listing if keys.is_receipt_key(self.store.prefix, key))
        self.record.fold(manifest, receipts, listing)  # one receipt at a time: 10,000 are never held at once
        if reuse_images:
            orphans = self.store.head_metadata(self.record.orphan_keys(manifest, listing))
            self.record.fold_images(manifest, listing, orphans)
        if self.record.reused:
            self.log.info(
                "Found %d images stored by an earlier try in %s.",
                self.record.reused,
                self.store.uri(self.store.prefix),
            )

    def write_manifest(self, status: str = "in_progress") -> dict[str, Any]:
        """
        Write the manifest of everything folded so far, then delete the receipts and plans it holds. The
        lock is held while it is written: its prompts and requests are read from the live record as they are
        encoded. A manifest is written when a try starts and when it ends, with no request thread running,
        so holding it costs nothing.
        """
        with self._lock:
            manifest = report.manifest_document(self.record, status, self.request, datetime.now(UTC).isoformat())
            folded, self.record.folded_keys = sorted(self.record.folded_keys), set()
            try:
                self.store.write_manifest(manifest)
            except BaseException:
                self.record.folded_keys.update(folded)  # not folded after all: keep them
                raise
        self.store.delete(folded)
        return manifest

    # --- planning ---

    def pending_jobs(self, sender: str = keys.WORKER) -> list[Job]:
        return self.record.pending_jobs(sender)

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
        with self._stores.open(), ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="grok-job") as pool:
            for future in as_completed([pool.submit(self._run_job, job) for job in jobs]):
                future.result()

    def stop(self) -> None:
        """Start no further requests (on_kill) and close the hook's idle connections."""
        self._stop.set()
        self.hook.close()

    def _run_job(self, job: Job) -> None:
        if self._storage_refused is not None:
            return self._not_sent(job, f"not generated: S3 refused writes ({self._storage_refused.message})")
        if self._stop.is_set():
            return self._not_sent(job, "not attempted: the task was stopped or an earlier error made it pointless")
        if not self._admitted(job):
            return self._not_sent(job, f"not generated: max_cost_usd reached ({self.cap.describe()})")
        with self._lock:
            self._in_flight[job.prompt_index] = self._in_flight.get(job.prompt_index, 0) + 1
        try:
            try:  # if the intent cannot be recorded, nothing is sent: S3 refusing writes stops every request
                request = self.ledger.sent(job)
            except GrokStorageError as err:
                self._refuse_further_requests(err)
                return self._not_sent(job, f"not generated: S3 refused its receipt ({err.message})")
            with self._lock:
                self.record.track(request)
            params = self.job_params(job)
            outcome: ImageGenerationResult | GrokError
            try:
                with log_label(f"Prompt {job.prompt_index}"):
                    outcome = self.hook.generate(params)
            except GrokError as err:
                outcome = err
            step = sequence.conclude(request, outcome, params.model)
            self._settle(request)
            if step is Next.STORE:
                assert isinstance(outcome, ImageGenerationResult)
                self._store_later(request, outcome)  # its receipts are written there: this slot goes on
                return None
            self.ledger.note(request)
            self._apply(request)
            if step is Next.STOP:
                self._stop.set()
        finally:
            with self._lock:
                self._in_flight[job.prompt_index] -= 1
        return None

    def _not_sent(self, job: Job, why: str) -> None:
        with self._lock:
            self.record.prompts[job.prompt_index].error = why

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
        """Hand an answer to the store threads (blocks while ``max_concurrency`` answers already wait)."""

        def store() -> None:
            self.ledger.store_answer(request, result, self.record.prompts[request.prompt_index].prompt)
            self._apply(request)
            self._log_progress()

        self._stores.submit(store)

    def _apply(self, request: RequestRecord) -> None:
        with self._lock:
            self.record.apply(request)
        if request.filtered and request.state == STORED:
            self.log.warning(
                "Prompt %d: content moderation removed %d of %d images.",
                request.prompt_index,
                request.filtered,
                request.count,
            )
        elif request.filtered:
            self.log.warning("Prompt %d: %s", request.prompt_index, request.error)
        if request.state == FAILED:
            self.log.error("Prompt %d (%d images) failed: %s", request.prompt_index, request.count, request.error)

    def _log_progress(self) -> None:
        with self._lock:
            stored = self.record.images_stored
            wanted = sum(r.requested for r in self.record.prompts)
            in_flight = sum(1 for n in self._in_flight.values() if n)
        self.log.info("%d/%d images stored, %d prompts in flight.", stored, wanted, in_flight)

    # --- the end of a try ---

    def finalize(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Settle each prompt, write the final manifest and drop folded receipts; return (XCom list, manifest)."""
        status = self.record.settle()
        try:
            manifest = self.write_manifest(status)
        except GrokStorageError as err:
            raise report.unrecorded(self.record, err) from None
        images = self.record.stored_images()
        cost = manifest["cost"]
        self.log.info(
            "Grok: %d images stored (%d reused), %d requests this try (%d in all tries), cost this try %s, "
            "all tries %s; manifest %s.",
            len(images),
            self.record.reused,
            cost["this_try"]["requests"],
            cost["requests"],
            describe_cost(cost["this_try"]),
            describe_cost(cost),
            self.store.uri(self.store.manifest_key),
        )
        return [i.to_xcom() for i in images], manifest

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """:meth:`finalize`, then raise the error of an incomplete try (a prompt failed, the cap stopped it)."""
        xcom, manifest = self.finalize()
        if (err := report.outcome_error(self.record)) is not None:
            raise err
        return xcom, manifest

    # --- the deferred path ---

    def trigger_plan(self, jobs: Sequence[Job]) -> str:
        """Store what the trigger is to send (see :func:`~airflow_provider_grok.storage.write_plan`); its key."""
        key = write_plan(self.store, self.record.execution, [(job, self.job_params(job)) for job in jobs], self.cap)
        with self._lock:
            self.record.folded_keys.add(key)
        return key
