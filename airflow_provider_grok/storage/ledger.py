"""
The durable writes of each request, in the order ``record/lifecycle.py`` gives (and whose transitions it
makes), shared by the worker's threads and the trigger (through ``asyncio.to_thread``): receipts to
storage, answers' images fetched and uploaded with their own record in their metadata.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_grok.exceptions import GrokImageDownloadError, GrokStorageError
from airflow_provider_grok.protocol import GeneratedImage, ImageBytes, ImageGenerationResult
from airflow_provider_grok.record import CostCap, RequestRecord, TaskIdentity, lifecycle, plan
from airflow_provider_grok.record.keys import image_key, plan_key, receipt_key
from airflow_provider_grok.record.lifecycle import ObjectFacts
from airflow_provider_grok.record.plan import Job, Params
from airflow_provider_grok.record.records import image_metadata
from airflow_provider_grok.storage.s3 import S3ImageStore


class RequestLedger:
    """
    :param fetch_image: turns a returned image into verified bytes that know their type (``GrokHook.fetch_image``).
    """

    def __init__(
        self,
        store: S3ImageStore,
        identity: TaskIdentity,
        fetch_image: Callable[[GeneratedImage], ImageBytes],
        log: logging.Logger | Any,
    ) -> None:
        self.store = store
        self.identity = identity
        self.fetch_image = fetch_image
        self.log = log

    def _write(self, request: RequestRecord) -> None:
        self.store.put_json(receipt_key(self.store.prefix, request.id), request.receipt(self.identity))

    def write_outcome(self, request: RequestRecord) -> None:
        """
        Write a receipt after the request was paid (its outcome, from ``lifecycle.conclude``). If storage
        refuses it, go on: the images carry their own record, and the ``sent`` receipt says "may be billed".
        """
        try:
            self._write(request)
        except GrokStorageError as err:
            self.log.warning(
                "Prompt %d: the receipt of request %s (%s) could not be written: %s",
                request.prompt_index,
                request.id,
                request.state,
                err.message,
            )

    def write_sent(self, request: RequestRecord) -> None:
        """
        Record the intent before the request goes out (a crash after this may have been billed). If storage
        refuses the receipt, the GrokStorageError is raised and the request must not be sent.
        """
        self._write(request)

    def store_answer(self, request: RequestRecord, result: ImageGenerationResult, prompt: str) -> None:
        """
        Write the ``answered`` receipt (what was billed) before any image is fetched; fetch, verify and upload
        each image (one in memory at a time); then write the ``stored`` receipt. Run off the request's slot,
        so the next request need not wait for S3: until the ``answered`` receipt lands, the ``sent`` one
        already counts the request as possibly billed.
        """
        self.write_outcome(request)
        images = lifecycle.images_to_store(request, result)
        if len(result.images) > len(images):
            self.log.warning(
                "Prompt %d: the gateway returned %d images for n=%d; the extra %d are billed but not stored.",
                request.prompt_index,
                len(result.images),
                request.count,
                len(result.images) - len(images),
            )
        for index, image in images:
            try:
                lifecycle.add_stored(request, self._store_image(request, image, index, prompt))
            except (GrokImageDownloadError, GrokStorageError) as err:
                self.log.error(
                    "Prompt %d: image %d was generated (paid) but not stored%s: %s",
                    request.prompt_index,
                    index,
                    f"; its temporary URL, while it lasts: {image.url}" if image.url else "",
                    err.message,
                )
                lifecycle.add_not_stored(request, index, image.url, err)
        lifecycle.finish_storing(request)
        self.write_outcome(request)

    def _store_image(self, request: RequestRecord, image: GeneratedImage, index: int, prompt: str) -> Any:
        data = self.fetch_image(image)
        kind = data.image_type  # read from the magic numbers when the bytes were fetched
        digest = hashlib.sha256(data)
        key = image_key(self.store.prefix, request.prompt_index, index, kind.extension)
        facts = ObjectFacts(self.store.uri(key), self.store.bucket, key, kind.mime_type, len(data), digest.hexdigest())
        stored = lifecycle.stored_image(request, index, image.revised_prompt, prompt, facts)
        metadata = image_metadata(self.identity, stored, request.fingerprint, request.id)
        self.store.put_image(key, data, kind.mime_type, metadata, digest=digest)
        return stored


def write_plan(store: S3ImageStore, execution: str, jobs: Iterable[tuple[Job, Params]], cap: CostCap | None) -> str:
    """
    Store what a trigger is to send (``plan.plan_document``) and return the object's key. The trigger's
    kwargs (kept in the metadata DB) then name one key, whatever the batch size, and a restarted trigger
    reads the same plan.
    """
    key = plan_key(store.prefix, execution)
    store.put_json(key, plan.plan_document(jobs, cap))
    return key


def read_plan(store: S3ImageStore, key: str) -> tuple[list[tuple[Job, Params]], CostCap]:
    """The plan :func:`write_plan` stored; a missing plan is a :class:`GrokStorageError`."""
    document = store.read_json(key)
    if document is None:
        raise GrokStorageError(f"The trigger's plan {store.uri(key)} is missing: was the prefix deleted?")
    return plan.read_plan_document(document)
