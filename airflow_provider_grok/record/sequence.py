"""
The durable sequence of one generation request, the same whoever sends it (the worker's threads or the
trigger); the drivers (``storage/ledger.py`` writing, the pipeline and the trigger sending) do the I/O:

1. the receipt is written ``sent`` before the request goes out (:meth:`Job.record`): a crash from now on
   leaves a request that *may* have been billed, and the manifest says so;
2. the answer is recorded (:func:`conclude`) and the receipt written ``answered`` with its request ids and
   usage (what was billed) before any image is fetched, or ``filtered`` / ``failed`` when there is nothing
   to store. The worker writes it off the request's slot, so the next request need not wait for S3: until
   it lands, the ``sent`` receipt already counts the request as possibly billed;
3. each image is stored (:func:`images_to_store`, :func:`stored_image`), its object metadata being its own
   record: a crash now loses no stored image, a retry adopts it;
4. the receipt is written ``stored`` (:func:`conclude_storing`).

A deferred batch's requests are written down first as a plan (:func:`plan_document`), and a restarted
trigger sends only what :func:`still_to_send` says.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from airflow_provider_grok.exceptions import GrokContentFilteredError, GrokError, GrokTransportError
from airflow_provider_grok.protocol import (
    BATCH_FATAL_ERRORS,
    EditParams,
    GeneratedImage,
    GenerationParams,
    ImageGenerationResult,
)
from airflow_provider_grok.record.cap import CostCap
from airflow_provider_grok.record.keys import planned_id, resent_id
from airflow_provider_grok.record.records import (
    ANSWERED,
    FAILED,
    FILTERED,
    SENT,
    STORED,
    RequestRecord,
    StoredImage,
)

Params = GenerationParams | EditParams


@dataclass(frozen=True)
class Job:
    """One generation request to send: ``count`` (<= 10) images of one prompt, from ``first_image_index``."""

    id: str
    prompt_index: int
    first_image_index: int
    count: int
    fingerprint: str

    def record(self, try_number: int) -> RequestRecord:
        """Its record as the ``sent`` receipt, written before the request goes out."""
        return RequestRecord(
            id=self.id,
            try_number=try_number,
            prompt_index=self.prompt_index,
            first_image_index=self.first_image_index,
            count=self.count,
            fingerprint=self.fingerprint,
        )


class Next(enum.Enum):
    """What a driver does once a request's outcome is recorded."""

    STORE = "store"  # answered: fetch and store its images, then conclude_storing()
    DONE = "done"  # filtered or failed on its own: nothing to store
    STOP = "stop"  # failed in a way no further request of the batch can escape (a rejected key...)


def conclude(request: RequestRecord, outcome: ImageGenerationResult | GrokError, default_model: str | None) -> Next:
    """Record a request's answer, or its error after the hook's retries, in its record."""
    if isinstance(outcome, GrokContentFilteredError):  # moderation refused every image: billed, nothing stored
        request.state = FILTERED
        request.returned = 0
        request.filtered = request.count
        request.request_ids = [outcome.request_id] if outcome.request_id else []
        request.error = outcome.message
        return Next.DONE
    if isinstance(outcome, GrokError):
        request.state = FAILED
        request.error = f"{type(outcome).__name__}: {outcome.message}"
        request.maybe_billed = isinstance(outcome, GrokTransportError)  # no HTTP answer: it may have been billed
        request.unanswered_attempts = outcome.unanswered_attempts
        request.request_ids = [outcome.request_id] if outcome.request_id else []
        return Next.STOP if isinstance(outcome, BATCH_FATAL_ERRORS) else Next.DONE
    request.state = ANSWERED
    request.returned = len(outcome.images)
    request.filtered = outcome.filtered_count
    request.model = outcome.model or default_model
    request.usage = outcome.usage
    request.request_ids = list(outcome.request_ids)
    request.unanswered_attempts = outcome.unanswered_attempts
    request.revised_prompts = [image.revised_prompt for image in outcome.images[: request.count]]
    return Next.STORE


def images_to_store(request: RequestRecord, result: ImageGenerationResult) -> list[tuple[int, GeneratedImage]]:
    """
    (image index, image) of each returned image to store. Keys are numbered per request, so images beyond
    ``count`` (billed, but more than asked) are not stored: they would overwrite the next request's images.
    """
    return [(request.first_image_index + n, image) for n, image in enumerate(result.images[: request.count])]


def stored_image(
    request: RequestRecord, image_index: int, revised_prompt: str | None, prompt: str, *, bucket: str, key: str,
    content_type: str, size_bytes: int, sha256: str,
) -> StoredImage:  # fmt: skip
    return StoredImage(
        s3_uri=f"s3://{bucket}/{key}",
        bucket=bucket,
        key=key,
        content_type=content_type,
        size_bytes=size_bytes,
        sha256=sha256,
        prompt=prompt,
        revised_prompt=revised_prompt,
        model=request.model,
        prompt_index=request.prompt_index,
        image_index=image_index,
    )


def not_stored(request: RequestRecord, image_index: int, url: str | None, err: GrokError) -> None:
    """A paid image that could not be stored: the record names it, with its temporary URL while it lasts."""
    request.not_stored.append({"image_index": image_index, "url": url, "error": err.message, "status": err.status})


def conclude_storing(request: RequestRecord) -> None:
    request.state = STORED


# --- a deferred batch: its plan, and what a restarted trigger still sends ---


def plan_document(jobs: Iterable[tuple[Job, Params]], cap: CostCap | None = None) -> dict[str, Any]:
    """The requests a trigger is to send and the money cap as the worker folded it."""
    return {
        "jobs": [{**asdict(job), "params": asdict(params)} for job, params in jobs],
        "cap": (cap or CostCap(None)).to_json(),
    }


def read_plan_document(plan: Mapping[str, Any]) -> tuple[list[tuple[Job, Params]], CostCap]:
    return [_job_from_json(data) for data in plan["jobs"]], CostCap.from_json(plan.get("cap"))


def _job_from_json(data: Mapping[str, Any]) -> tuple[Job, Params]:
    """A job and its parameters (a generation's, or an edit's: those have sources)."""
    job = Job(
        str(data["id"]), int(data["prompt_index"]), int(data["first_image_index"]), int(data["count"]),
        str(data["fingerprint"]),
    )  # fmt: skip
    stored = dict(data["params"])
    if "sources" in stored:
        stored["sources"] = tuple(stored["sources"])
        return job, replace(EditParams(**stored), n=job.count)
    return job, replace(GenerationParams(**stored), n=job.count)


def receipts_of_plan(plan: Sequence[tuple[Job, Params]], receipts: Iterable[Mapping[str, Any]]) -> list[RequestRecord]:
    """The receipts a previous run of this plan's trigger left (a restart), re-sent requests included."""
    ours = {job.id for job, _ in plan}
    return [RequestRecord.from_json(r) for r in receipts if planned_id(str(r.get("id"))) in ours]


def still_to_send(
    plan: Sequence[tuple[Job, Params]], receipts: Iterable[Mapping[str, Any]]
) -> list[tuple[Job, Params]]:
    """
    The jobs a (restarted) trigger still sends. A job with a receipt past ``sent`` is done. A job whose
    receipts all say ``sent`` was in flight when the triggerer stopped: it is sent again under a new id
    (``-r1``...), so the first request stays on record as unanswered and may-have-been-billed.
    """
    states: dict[str, list[str]] = {}
    for receipt in receipts:
        states.setdefault(planned_id(str(receipt.get("id"))), []).append(str(receipt.get("state")))
    todo = []
    for job, params in plan:
        seen = states.get(job.id, [])
        if any(state != SENT for state in seen):
            continue
        todo.append((replace(job, id=resent_id(job.id, len(seen))) if seen else job, params))
    return todo
