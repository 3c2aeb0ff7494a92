"""
The lifecycle of one paid request: its states, the transitions allowed between them, and what a crash
between any two durable writes leaves behind. Everything that moves a request's state lives here; an
illegal move raises :class:`IllegalTransitionError`. The executors (the worker's threads, the trigger's
coroutines, through ``storage/ledger.py``) perform the writes in this order and nothing else.

The states and their order::

    (none) ──► SENT ──► ANSWERED ──► STORED
                 │
                 ├────► FILTERED     moderation refused every image: billed, nothing to store
                 └────► FAILED       an error after the hook's retries (billed only if it never got an answer)

The durable writes of one request, in order (:data:`DURABLE_WRITES`), and what a crash right after each
leaves; "the next try" is an Airflow retry, a cleared task, or a restarted trigger:

======================  =====================================================  ==================================
crash right after       what storage holds                                     what the next try does
======================  =====================================================  ==================================
(before anything)       nothing of this request                                sends it (nothing was paid)
``sent`` receipt        the intent: the request may have been billed           sends it again under a new id; the
                                                                               first stays "unanswered, may have
                                                                               been billed" in the cost
``answered`` receipt    what was billed (usage, the gateway's ids)             pays for the images again (none is
                                                                               stored), counts the first bill
each image              the image, its object metadata is its own record       adopts it from its metadata (an
                                                                               *orphan*); pays only for the rest
``stored`` receipt      the whole outcome                                      adopts every image; sends nothing
the manifest            the outcome folded into ``manifest.json``              reads the manifest; sends nothing
receipts deleted        the manifest alone                                     reads the manifest; sends nothing
======================  =====================================================  ==================================

So a crash repeats at most the requests in flight, and never a stored image. A try that finds a manifest
or receipt of another task instance under its prefix is refused before anything is sent (``task.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_grok.exceptions import GrokContentFilteredError, GrokError, GrokTransportError
from airflow_provider_grok.protocol import BATCH_FATAL_ERRORS, GeneratedImage, ImageGenerationResult

if TYPE_CHECKING:
    from airflow_provider_grok.record.records import RequestRecord, StoredImage


class RequestState(enum.StrEnum):
    """A request's state; a ``str`` so that receipts and manifests hold the plain word."""

    SENT = "sent"  # the receipt is written and the request may be in flight, or billed without an answer seen
    ANSWERED = "answered"  # the gateway answered with images: billed; not all stored yet
    STORED = "stored"  # every returned image was stored (or named as not stored)
    FILTERED = "filtered"  # moderation refused every image: billed, nothing to store
    FAILED = "failed"  # an error after the hook's retries

    @classmethod
    def read(cls, value: object) -> RequestState:
        """A state read from storage; an unknown word is read as ``sent`` (the worst case: may be billed)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.SENT


SENT, ANSWERED, STORED, FILTERED, FAILED = (
    RequestState.SENT,
    RequestState.ANSWERED,
    RequestState.STORED,
    RequestState.FILTERED,
    RequestState.FAILED,
)

# The transition table: from a state (None: not yet on record) to the states it may move to.
TRANSITIONS: Mapping[RequestState | None, frozenset[RequestState]] = {
    None: frozenset({SENT}),
    SENT: frozenset({ANSWERED, FILTERED, FAILED}),
    ANSWERED: frozenset({STORED}),
    STORED: frozenset(),
    FILTERED: frozenset(),
    FAILED: frozenset(),
}
BILLED_STATES = frozenset({ANSWERED, STORED, FILTERED})
# How far along a state is: of two receipts of one request, the later one wins (a receipt never goes back).
PROGRESS = {SENT: 0, ANSWERED: 1, STORED: 2, FILTERED: 2, FAILED: 2}

# The durable writes of one request, in the order the executors make them (the table above).
DURABLE_WRITES = ("sent receipt", "answered receipt", "image", "stored receipt")


class IllegalTransitionError(RuntimeError):
    """A request was asked to move where the table does not allow: a bug in an executor, never a user's."""


def advance(request: RequestRecord, to: RequestState) -> None:
    """Move ``request`` to ``to``, or raise :class:`IllegalTransitionError`."""
    if to not in TRANSITIONS[request.state]:
        raise IllegalTransitionError(
            f"request {request.id}: {request.state} -> {to} is not a transition of the request lifecycle "
            f"(from {request.state} only {sorted(TRANSITIONS[request.state]) or 'nothing'})"
        )
    request.state = to


class After(enum.Enum):
    """What an executor does once an answer (or error) is recorded."""

    STORE = "store"  # answered: store its images (the ``answered`` receipt first), then the ``stored`` receipt
    WRITE_RECEIPT = "write_receipt"  # filtered or failed: write the receipt; nothing to store


def conclude(request: RequestRecord, outcome: ImageGenerationResult | GrokError, default_model: str | None) -> After:
    """Record a request's answer, or its error after the hook's retries: ``sent`` → answered/filtered/failed."""
    if isinstance(outcome, GrokContentFilteredError):  # moderation refused every image: billed, nothing stored
        advance(request, FILTERED)
        request.returned = 0
        request.filtered = request.count
        request.request_ids = [outcome.request_id] if outcome.request_id else []
        request.error = f"content moderation refused every image: {outcome.message}"
        return After.WRITE_RECEIPT
    if isinstance(outcome, GrokError):
        advance(request, FAILED)
        request.error = f"{type(outcome).__name__}: {outcome.message}"
        request.maybe_billed = isinstance(outcome, GrokTransportError)  # no HTTP answer: it may have been billed
        request.unanswered_attempts = outcome.unanswered_attempts
        request.request_ids = [outcome.request_id] if outcome.request_id else []
        return After.WRITE_RECEIPT
    advance(request, ANSWERED)
    request.returned = len(outcome.images)
    request.filtered = outcome.filtered_count
    request.model = outcome.model or default_model
    request.usage = outcome.usage
    request.request_ids = list(outcome.request_ids)
    request.unanswered_attempts = outcome.unanswered_attempts
    request.revised_prompts = [image.revised_prompt for image in outcome.images[: request.count]]
    return After.STORE


def stops_the_batch(outcome: ImageGenerationResult | GrokError) -> bool:
    """An error no further request of the batch can escape (a rejected key, an unknown model...)."""
    return isinstance(outcome, BATCH_FATAL_ERRORS)


def images_to_store(request: RequestRecord, result: ImageGenerationResult) -> list[tuple[int, GeneratedImage]]:
    """
    (image index, image) of each returned image to store. Keys are numbered per request, so images beyond
    ``count`` (billed, but more than asked) are not stored: they would overwrite the next request's images.
    """
    return [(request.first_image_index + n, image) for n, image in enumerate(result.images[: request.count])]


@dataclass(frozen=True)
class ObjectFacts:
    """What storage says of an object just written: where it is and what it holds."""

    uri: str
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str


def stored_image(
    request: RequestRecord, image_index: int, revised_prompt: str | None, prompt: str, facts: ObjectFacts
) -> StoredImage:
    """An image of ``request`` now in storage (the executor writes its object with this record as metadata)."""
    from airflow_provider_grok.record.records import StoredImage

    return StoredImage(
        s3_uri=facts.uri,
        bucket=facts.bucket,
        key=facts.key,
        content_type=facts.content_type,
        size_bytes=facts.size_bytes,
        sha256=facts.sha256,
        prompt=prompt,
        revised_prompt=revised_prompt,
        model=request.model,
        prompt_index=request.prompt_index,
        image_index=image_index,
    )


def add_stored(request: RequestRecord, image: StoredImage) -> None:
    """An image of an ``answered`` request is in storage."""
    _expect(request, ANSWERED, "store an image of")
    request.images.append(image)


def add_not_stored(request: RequestRecord, image_index: int, url: str | None, err: GrokError) -> None:
    """A paid image that could not be stored: the record names it, with its temporary URL while it lasts."""
    _expect(request, ANSWERED, "name an unstored image of")
    request.not_stored.append({"image_index": image_index, "url": url, "error": err.message, "status": err.status})


def finish_storing(request: RequestRecord) -> None:
    """``answered`` → ``stored``: every returned image is stored or named as not stored."""
    advance(request, STORED)


def _expect(request: RequestRecord, state: RequestState, what: str) -> None:
    if request.state is not state:
        raise IllegalTransitionError(f"request {request.id}: cannot {what} a request in state {request.state}")
