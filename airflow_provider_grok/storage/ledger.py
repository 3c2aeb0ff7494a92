"""
The writes of each request's durable sequence (``record/sequence.py`` says what they mean and in which
order), shared by the worker's threads and the trigger (through ``asyncio.to_thread``): receipts to S3,
answers' images fetched and uploaded with their own record in their metadata.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_grok.exceptions import GrokImageDownloadError, GrokStorageError
from airflow_provider_grok.protocol import GeneratedImage, ImageBytes, ImageGenerationResult
from airflow_provider_grok.record import CostCap, RequestRecord, TaskIdentity, sequence
from airflow_provider_grok.record.keys import image_key, plan_key, receipt_key
from airflow_provider_grok.record.records import image_metadata
from airflow_provider_grok.record.sequence import Job, Params
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

    def note(self, request: RequestRecord) -> None:
        """
        Write a receipt after the request was paid (its outcome, from ``sequence.conclude``). If S3 refuses
        it, go on: the images carry their own record, and the ``sent`` receipt already says "may be billed".
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

    def sent(self, job: Job) -> RequestRecord:
        """
        Record the intent before the request goes out (a crash after this may have been billed). If S3 refuses
        the receipt, the GrokStorageError is raised and the request must not be sent.
        """
        request = job.record(self.identity.try_number)
        self._write(request)
        return request

    def store_answer(self, request: RequestRecord, result: ImageGenerationResult, prompt: str) -> None:
        """
        Write the ``answered`` receipt (what was billed) before any image is fetched; fetch, verify and upload
        each image (one in memory at a time); then write the ``stored`` receipt. Run off the request's slot,
        so the next request need not wait for S3: until the ``answered`` receipt lands, the ``sent`` one
        already counts the request as possibly billed.
        """
        self.note(request)
        images = sequence.images_to_store(request, result)
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
                request.images.append(self._store_image(request, image, index, prompt))
            except (GrokImageDownloadError, GrokStorageError) as err:
                self.log.error(
                    "Prompt %d: image %d was generated (paid) but not stored%s: %s",
                    request.prompt_index,
                    index,
                    f"; its temporary URL, while it lasts: {image.url}" if image.url else "",
                    err.message,
                )
                sequence.not_stored(request, index, image.url, err)
        sequence.conclude_storing(request)
        self.note(request)

    def _store_image(self, request: RequestRecord, image: GeneratedImage, index: int, prompt: str) -> Any:
        data = self.fetch_image(image)
        kind = data.image_type  # read from the magic numbers when the bytes were fetched
        digest = hashlib.sha256(data)
        key = image_key(self.store.prefix, request.prompt_index, index, kind.extension)
        stored = sequence.stored_image(
            request, index, image.revised_prompt, prompt, bucket=self.store.bucket, key=key,
            content_type=kind.mime_type, size_bytes=len(data), sha256=digest.hexdigest(),
        )  # fmt: skip
        metadata = image_metadata(self.identity, stored, request.fingerprint, request.id)
        self.store.put_image(key, data, kind.mime_type, metadata, digest=digest)
        return stored


def write_plan(store: S3ImageStore, execution: str, jobs: Iterable[tuple[Job, Params]], cap: CostCap | None) -> str:
    """
    Store what a trigger is to send (``sequence.plan_document``) and return the object's key. The trigger's
    kwargs (kept in the metadata DB) then name one key, whatever the batch size, and a restarted trigger
    reads the same plan.
    """
    key = plan_key(store.prefix, execution)
    store.put_json(key, sequence.plan_document(jobs, cap))
    return key


def read_plan(store: S3ImageStore, key: str) -> tuple[list[tuple[Job, Params]], CostCap]:
    """The plan :func:`write_plan` stored; a missing plan is a :class:`GrokStorageError`."""
    plan = store.read_json(key)
    if plan is None:
        raise GrokStorageError(f"The trigger's plan {store.uri(key)} is missing: was the prefix deleted?")
    return sequence.read_plan_document(plan)
