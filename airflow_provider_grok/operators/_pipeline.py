"""
The worker's side of one task instance: read what storage holds, run the batch driver's loop
(``record/driver.py``) on ``max_concurrency`` threads, store the answers, write the manifest. Every
decision is the record's (``record/``); this module performs the I/O and holds the lock that serialises
the threads' calls into the record.

Imported by the operator at run time only (it pulls in requests and boto3).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from typing import Any

from airflow_provider_grok.exceptions import GrokError, GrokStorageError
from airflow_provider_grok.hooks.grok import GrokHook, log_label
from airflow_provider_grok.operators._params import PromptParams
from airflow_provider_grok.operators._storing import StorePool
from airflow_provider_grok.protocol import EditParams, GenerationParams, ImageGenerationResult
from airflow_provider_grok.record import (
    WAIT_SECONDS,
    After,
    BatchDriver,
    CostCap,
    Finished,
    Job,
    Manifest,
    RequestRecord,
    Send,
    TaskIdentity,
    TaskRecord,
    describe_cost,
    keys,
    manifest,
    report,
)
from airflow_provider_grok.storage import RequestLedger, S3ImageStore, write_plan


class GenerationPipeline:
    """
    Turn prompts into stored images for one task instance, reusing what earlier tries stored.

    :param prompts: the validated parameters of each prompt or edit (``n`` is the images wanted for it), and
        the parameters as the user set them, for the manifest and fingerprints.
    :param max_cost_usd: what this task instance may be billed, all tries together (None: no cap).
    """

    def __init__(
        self,
        *,
        prompts: PromptParams,
        hook: GrokHook,
        store: S3ImageStore,
        identity: TaskIdentity,
        max_concurrency: int,
        allow_partial: bool,
        log: logging.Logger | Any,
        max_cost_usd: float | None = None,
    ) -> None:
        self.params = list(prompts.params)
        self.parameters = prompts.parameters
        self.hook = hook
        self.store = store
        self.identity = identity
        self.max_concurrency = max_concurrency
        self.log = log
        self.ledger = RequestLedger(store, identity, hook.fetch_image, log)
        prints = prompts.fingerprints or [keys.fingerprint(p.prompt, prompts.parameters) for p in self.params]
        self.record = TaskRecord(
            identity,
            [(p.prompt, prints[i], p.n) for i, p in enumerate(self.params)],
            (store.bucket, store.prefix),
            uuid.uuid4().hex[:6],  # request ids stay unique when a cleared task runs its try number again
            allow_partial=allow_partial,
            cap=CostCap(max_cost_usd),
        )
        for prompt, sources in zip(self.record.prompts, prompts.sources or [], strict=False):
            prompt.sources = sources
        self.cap = self.record.cap
        self._lock = threading.Lock()  # serialises the request and store threads' calls into the record
        self._driver: BatchDriver | None = None
        self._halted: str | None = None  # on_kill came: no batch sends anything from now on
        self._stores = StorePool(max_concurrency)  # answers waiting for storage: as many as requests in flight

    # --- reading what earlier tries (or the trigger) left ---

    def load_previous(self, manifest: Manifest | None, *, reuse_images: bool) -> None:
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
            document = manifest.document(self.record, status, self.parameters, datetime.now(UTC).isoformat())
            folded, self.record.folded_keys = sorted(self.record.folded_keys), set()
            try:
                self.store.write_manifest(document)
            except BaseException:
                self.record.folded_keys.update(folded)  # not folded after all: keep them
                raise
        self.store.delete(folded)
        return document

    # --- planning ---

    def pending_jobs(self, sender: keys.Sender = keys.WORKER) -> list[Job]:
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
        driver = BatchDriver(
            [(job, self.job_params(job)) for job in jobs], self.cap, self.identity.try_number, self.log
        )
        with self._lock:
            self._driver = driver
            if self._halted:
                driver.halt(self._halted)
        slots = max(min(self.max_concurrency, len(jobs)), 1)
        with self._stores.open(), ThreadPoolExecutor(slots, thread_name_prefix="grok-request") as pool:
            for future in as_completed([pool.submit(self._slot, driver) for _ in range(slots)]):
                future.result()
        with self._lock:
            self.record.end_batch(driver.stop)

    def stop(self) -> None:
        """Start no further requests (on_kill) and close the hook's idle connections."""
        with self._lock:
            self._halted = "the task was stopped (on_kill)"
            if self._driver is not None:
                self._driver.halt(self._halted)
        self.hook.close()

    def _slot(self, driver: BatchDriver) -> None:
        """One request slot: perform what the driver says until it says Finished."""
        while True:
            with self._lock:
                action = driver.next()
            if action is Finished:
                return
            if not isinstance(action, Send):  # Wait: a request in flight will release cap room
                time.sleep(WAIT_SECONDS)
                continue
            request = action.request
            try:  # no receipt, no request
                self.ledger.write_sent(request)
            except GrokStorageError as err:
                with self._lock:
                    driver.receipt_refused(request, err)
                continue
            with self._lock:
                driver.sent(request)
                self.record.track(request)
            outcome: ImageGenerationResult | GrokError
            try:
                with log_label(f"Prompt {request.prompt_index}"):
                    outcome = self.hook.generate(action.params)
            except GrokError as err:
                outcome = err
            with self._lock:
                after = driver.answered(request, outcome, action.params.model)
            if after is After.STORE:
                assert isinstance(outcome, ImageGenerationResult)
                self._store_later(driver, request, outcome)  # this slot goes on while the answer is stored
                continue
            self.ledger.write_outcome(request)
            self._finished(driver, request)

    def _store_later(self, driver: BatchDriver, request: RequestRecord, result: ImageGenerationResult) -> None:
        """Hand an answer to the store threads (blocks while ``max_concurrency`` answers already wait)."""

        def store() -> None:
            self.ledger.store_answer(request, result, self.record.prompts[request.prompt_index].prompt)
            self._finished(driver, request)
            self._log_progress(driver)

        self._stores.submit(store)

    def _finished(self, driver: BatchDriver, request: RequestRecord) -> None:
        with self._lock:
            driver.finished(request)
            self.record.apply(request)

    def _log_progress(self, driver: BatchDriver) -> None:
        with self._lock:
            stored = self.record.images_stored
            wanted = sum(r.requested for r in self.record.prompts)
            in_flight = driver.in_flight
        self.log.info("%d/%d images stored, %d requests in flight.", stored, wanted, in_flight)

    # --- the end of a try ---

    def finalize(self) -> tuple[list[dict[str, Any]], Manifest]:
        """Decide each prompt, write the final manifest and drop folded receipts; return (XCom list, manifest)."""
        status = self.record.decide()
        try:
            written = Manifest(self.write_manifest(status), self.record.prompts)
        except GrokStorageError as err:
            raise report.unrecorded(self.record, err) from None
        images = self.record.stored_images()
        cost = written.cost
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
        return [i.to_xcom() for i in images], written

    def finish(self) -> tuple[list[dict[str, Any]], Manifest]:
        """:meth:`finalize`, then raise the error of an incomplete try (a prompt failed, the cap stopped it)."""
        xcom, written = self.finalize()
        if (err := report.outcome_error(self.record)) is not None:
            raise err
        return xcom, written

    # --- the deferred path ---

    def trigger_plan(self, jobs: Sequence[Job]) -> str:
        """Store what the trigger is to send (see :func:`~airflow_provider_grok.storage.write_plan`); its key."""
        key = write_plan(self.store, self.record.execution, [(job, self.job_params(job)) for job in jobs], self.cap)
        with self._lock:
            self.record.folded_keys.add(key)
        return key
