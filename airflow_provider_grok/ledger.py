"""
The durable sequence of one generation request, shared by the worker (sync path) and the trigger:

1. write the request's receipt as ``sent`` (a crash now leaves a request that *may* have been billed);
2. send it; write the receipt as ``answered`` with its request ids and usage (what was billed);
3. store each image, its object metadata being its own record (a crash now loses no stored image);
4. write the receipt as ``stored`` (or ``filtered`` / ``failed``).

What the records mean lives in ``manifest.py``; the bytes move through ``storage.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from airflow_provider_grok.exceptions import (
    GrokContentFilteredError,
    GrokError,
    GrokImageDownloadError,
    GrokStorageError,
    GrokTransportError,
)
from airflow_provider_grok.manifest import (
    ANSWERED,
    FAILED,
    FILTERED,
    STORED,
    RequestRecord,
    StoredImage,
    TaskIdentity,
    image_key,
    image_metadata,
    plan_key,
    receipt_key,
)
from airflow_provider_grok.protocol import (
    EditParams,
    GeneratedImage,
    GenerationParams,
    ImageBytes,
    ImageGenerationResult,
)
from airflow_provider_grok.record import CostCap
from airflow_provider_grok.storage import S3ImageStore


@dataclass(frozen=True)
class Job:
    """One generation request: ``count`` (<= 10) images of one prompt, numbered from ``first_image_index``."""

    id: str
    prompt_index: int
    first_image_index: int
    count: int
    fingerprint: str

    def record(self, try_number: int) -> RequestRecord:
        return RequestRecord(
            id=self.id,
            try_number=try_number,
            prompt_index=self.prompt_index,
            first_image_index=self.first_image_index,
            count=self.count,
            fingerprint=self.fingerprint,
        )


class RequestLedger:
    """
    Writes request receipts and stores an answer's images: the one durable sequence, used by the worker's
    threads and by the trigger (through ``asyncio.to_thread``) alike.

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

    def _note(self, request: RequestRecord) -> None:
        """A receipt written after the request was paid: if S3 refuses it, go on (the images carry a record)."""
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

    def answered(self, request: RequestRecord, result: ImageGenerationResult, default_model: str | None) -> None:
        """Record what the answer billed, before its images are fetched and stored."""
        request.state = ANSWERED
        request.returned = len(result.images)
        request.filtered = result.filtered_count
        request.model = result.model or default_model
        request.usage = result.usage
        request.request_ids = list(result.request_ids)
        request.unanswered_attempts = result.unanswered_attempts
        request.revised_prompts = [image.revised_prompt for image in result.images[: request.count]]
        self._note(request)

    def store_answer(self, request: RequestRecord, result: ImageGenerationResult, prompt: str) -> None:
        """Fetch, verify and upload each image (one in memory at a time), then record the request as stored."""
        images = result.images
        if len(images) > request.count:
            # Keys are numbered per request: an extra image would overwrite the next request's first image.
            self.log.warning(
                "Prompt %d: the gateway returned %d images for n=%d; the extra %d are billed but not stored.",
                request.prompt_index,
                len(images),
                request.count,
                len(images) - request.count,
            )
            images = images[: request.count]
        for position, image in enumerate(images):
            index = request.first_image_index + position
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
                request.not_stored.append(
                    {"image_index": index, "url": image.url, "error": err.message, "status": err.status}
                )
        request.state = STORED
        self._note(request)

    def _store_image(self, request: RequestRecord, image: GeneratedImage, index: int, prompt: str) -> StoredImage:
        data = self.fetch_image(image)
        kind = data.image_type  # read from the magic numbers when the bytes were fetched
        digest = hashlib.sha256(data)
        key = image_key(self.store.prefix, request.prompt_index, index, kind.extension)
        stored = StoredImage(
            s3_uri=self.store.uri(key),
            bucket=self.store.bucket,
            key=key,
            content_type=kind.mime_type,
            size_bytes=len(data),
            sha256=digest.hexdigest(),
            prompt=prompt,
            revised_prompt=image.revised_prompt,
            model=request.model,
            prompt_index=request.prompt_index,
            image_index=index,
        )
        metadata = image_metadata(self.identity, stored, request.fingerprint, request.id)
        self.store.put_image(key, data, kind.mime_type, metadata, digest=digest)
        return stored

    def filtered(self, request: RequestRecord, err: GrokContentFilteredError) -> None:
        """Moderation refused every image: billed, nothing to store."""
        request.state = FILTERED
        request.returned = 0
        request.filtered = request.count
        request.request_ids = [err.request_id] if err.request_id else []
        request.error = err.message
        self._note(request)

    def failed(self, request: RequestRecord, err: GrokError) -> None:
        """The request failed after its retries. Without an HTTP answer it may still have been billed."""
        request.state = FAILED
        request.error = f"{type(err).__name__}: {err.message}"
        request.maybe_billed = isinstance(err, GrokTransportError)
        request.unanswered_attempts = err.unanswered_attempts
        request.request_ids = [err.request_id] if err.request_id else []
        self._note(request)


def job_from_json(data: Mapping[str, Any]) -> tuple[Job, GenerationParams | EditParams]:
    """Rebuild a job and its parameters (a generation's, or an edit's: those have sources) from a stored plan."""
    job = Job(
        str(data["id"]),
        int(data["prompt_index"]),
        int(data["first_image_index"]),
        int(data["count"]),
        str(data["fingerprint"]),
    )
    stored = dict(data["params"])
    if "sources" in stored:
        stored["sources"] = tuple(stored["sources"])
        return job, replace(EditParams(**stored), n=job.count)
    return job, replace(GenerationParams(**stored), n=job.count)


def write_plan(
    store: S3ImageStore,
    execution: str,
    jobs: Iterable[tuple[Job, GenerationParams | EditParams]],
    cap: CostCap | None = None,
) -> str:
    """
    Store the requests a trigger is to send, and the money cap as the worker folded it, and return the
    object's key. The trigger's kwargs (kept in the metadata DB) then name one key, whatever the batch size,
    and a restarted trigger reads the same plan.
    """
    key = plan_key(store.prefix, execution)
    plan = {
        "jobs": [{**asdict(job), "params": asdict(params)} for job, params in jobs],
        "cap": (cap or CostCap(None)).to_json(),
    }
    store.put_json(key, plan)
    return key


def read_plan(store: S3ImageStore, key: str) -> tuple[list[tuple[Job, GenerationParams | EditParams]], CostCap]:
    """The plan :func:`write_plan` stored; a missing plan is a :class:`GrokStorageError`."""
    plan = store.read_json(key)
    if plan is None:
        raise GrokStorageError(f"The trigger's plan {store.uri(key)} is missing: was the prefix deleted?")
    return [job_from_json(data) for data in plan["jobs"]], CostCap.from_json(plan.get("cap"))
