"""
The record of one task instance's work: what it asked for, what it paid for, what it stored.

Rules only, no I/O (``storage.py`` moves the bytes). The record lives in S3 beside the images, in three
kinds of object under the task instance's prefix:

- a **request receipt** per generation request, ``{prefix}/_grok/requests/{id}.json``. It is written
  ``sent`` before the request goes out, ``answered`` as soon as the answer arrives (request ids and
  usage: what was billed), then ``stored`` once the answer's images are in S3 (or ``filtered`` /
  ``failed``). A receipt still ``sent`` after a crash is a request that may have been billed without
  a stored result, and the manifest says so.
- every **image object** carries its own record in its metadata (task instance, prompt fingerprint,
  SHA-256), so an image stored just before a crash is adopted by the retry instead of paid for again.
- the **manifest**, ``{prefix}/manifest.json``, folds the receipts of every try: written at the start of
  each try (which also proves the bucket is writable before money is spent) and when the try ends.
  Folded receipts are then deleted, so each receipt is read O(1) times and an image costs O(1) writes.
- a deferred batch's **plan**, ``{prefix}/_grok/plans/{execution}.json``: the requests its trigger is to
  send, so the trigger's kwargs in the metadata DB stay one key long whatever the batch size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from airflow_provider_grok import __version__

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2
RECEIPT_VERSION = 1
GENERATOR = f"airflow-provider-grok/{__version__}"  # in object metadata and manifests
RECEIPTS_DIR = "_grok/requests"
PLANS_DIR = "_grok/plans"  # what a deferred batch's trigger is to send (its kwargs name the key)
USD_TICKS = 10**10  # xAI reports usage.cost_in_usd_ticks; 10^10 ticks are one US dollar.

# Receipt states. ``sent``: the request may be in flight or may have been billed without an answer seen.
SENT, ANSWERED, STORED, FILTERED, FAILED = "sent", "answered", "stored", "filtered", "failed"
_STATE_ORDER = {SENT: 0, ANSWERED: 1, STORED: 2, FILTERED: 2, FAILED: 2}
BILLED_STATES = frozenset({ANSWERED, STORED, FILTERED})

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9!_.*'()=-]+")
_IMAGE_NAME = re.compile(r"^(?P<prompt>\d+)-(?P<image>\d+)\.(?P<ext>jpg|png|webp)$")


# --- keys ---


def safe_key_part(text: str) -> str:
    """Make a run id or task id safe as one S3 key segment (``:`` and ``+`` of run ids become ``_``)."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "_"


def default_prefix(dag_id: str, run_id: str, task_id: str) -> str:
    """The per-task-instance prefix, stable across tries so a retry resumes instead of duplicating."""
    return "/".join(["grok", *(safe_key_part(part) for part in (dag_id, run_id, task_id))])


def image_key(prefix: str, prompt_index: int, image_index: int, extension: str) -> str:
    return f"{prefix}/{prompt_index}-{image_index}.{extension}"


def parse_image_key(prefix: str, key: str) -> tuple[int, int] | None:
    """(prompt_index, image_index) of an image key directly under ``prefix``, else None."""
    if not key.startswith(prefix + "/"):
        return None
    match = _IMAGE_NAME.match(key[len(prefix) + 1 :])
    return (int(match["prompt"]), int(match["image"])) if match else None


def receipt_key(prefix: str, request_id: str) -> str:
    return f"{prefix}/{RECEIPTS_DIR}/{request_id}.json"


def is_receipt_key(prefix: str, key: str) -> bool:
    return key.startswith(f"{prefix}/{RECEIPTS_DIR}/") and key.endswith(".json")


def plan_key(prefix: str, execution: str) -> str:
    return f"{prefix}/{PLANS_DIR}/{execution}.json"


def is_bookkeeping_key(prefix: str, key: str) -> bool:
    """Receipts and plans: folded into the manifest, then deleted."""
    return key.startswith(f"{prefix}/_grok/")


def fingerprint(prompt: str, request: Mapping[str, Any]) -> str:
    """What makes two generations interchangeable: the prompt and the parameters that shape the image."""
    shaping = {k: v for k, v in request.items() if k not in ("response_format",)}
    canonical = json.dumps({"prompt": prompt, **shaping}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- identity ---


@dataclass(frozen=True)
class TaskIdentity:
    """A task instance: its tries share one prefix and one record; no other run's record is ever adopted."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    def owner(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id, "map_index": self.map_index}

    def foreign_owner(self, record: Mapping[str, Any]) -> str | None:
        """How ``record`` (a manifest or receipt) names a different task instance, or None if it is ours."""
        theirs = {name: record.get(name) for name in ("dag_id", "task_id", "run_id", "map_index")}
        if theirs == self.owner():
            return None
        return ", ".join(f"{name} {value!r}" for name, value in theirs.items())


# --- records ---


@dataclass(frozen=True)
class StoredImage:
    """One image in S3. ``to_xcom()`` is the small dict the operator returns (never the bytes)."""

    s3_uri: str
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    prompt: str
    revised_prompt: str | None
    model: str | None
    prompt_index: int
    image_index: int

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredImage:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**values)


def image_metadata(identity: TaskIdentity, image: StoredImage, fingerprint_: str, request_id: str) -> dict[str, Any]:
    """The object metadata that makes an image its own record (ASCII; the prompt lives in the manifest)."""
    return {
        "generator": GENERATOR,
        "dag-id": identity.dag_id,
        "task-id": identity.task_id,
        "run-id": identity.run_id,
        "map-index": identity.map_index,
        "try-number": identity.try_number,
        "request": request_id,
        "fingerprint": fingerprint_,
        "prompt-index": image.prompt_index,
        "image-index": image.image_index,
        "model": image.model or "",
        "sha256": image.sha256,
    }


@dataclass
class RequestRecord:
    """
    One generation request (at most 10 images of one prompt): its receipt in S3 and its line in the manifest.

    :param id: unique within the task instance: ``t{try}-{execution}-{s|d}{sequence}`` (sent by the worker
        or by the trigger).
    :param state: ``sent``, ``answered``, ``stored``, ``filtered`` or ``failed`` (see the module doc).
    :param maybe_billed: for ``failed``: the request may still have been billed (no HTTP answer, e.g. a timeout).
    :param unanswered_attempts: the hook's earlier attempts of this request whose answer never arrived (a
        timeout after sending, a connection dropped mid-answer): each may have been billed too.
    """

    id: str
    try_number: int
    prompt_index: int
    first_image_index: int
    count: int
    fingerprint: str
    state: str = SENT
    returned: int | None = None
    filtered: int = 0
    model: str | None = None
    usage: dict[str, Any] | None = None
    request_ids: list[str] = field(default_factory=list)
    revised_prompts: list[str | None] = field(default_factory=list)
    images: list[StoredImage] = field(default_factory=list)
    not_stored: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    maybe_billed: bool = False
    unanswered_attempts: int = 0

    @property
    def billed(self) -> bool | None:
        """True: billed; False: not billed; None: unknown (sent without an answer seen)."""
        if self.state in BILLED_STATES:
            return True
        if self.state == SENT or (self.state == FAILED and self.maybe_billed):
            return None
        return False

    @property
    def cost_ticks(self) -> int | None:
        ticks = (self.usage or {}).get("cost_in_usd_ticks")
        return int(ticks) if isinstance(ticks, int | float) and not isinstance(ticks, bool) else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["images"] = [StoredImage.from_json(i) for i in data.get("images") or []]
        return cls(**values)

    def receipt(self, identity: TaskIdentity) -> dict[str, Any]:
        """The receipt object's JSON: the record plus whose it is."""
        return {"receipt_version": RECEIPT_VERSION, **identity.owner(), **self.to_json()}


def newer(a: RequestRecord, b: RequestRecord) -> RequestRecord:
    """The later of two versions of one request's record (a receipt only ever moves forward)."""
    return b if _STATE_ORDER.get(b.state, 0) >= _STATE_ORDER.get(a.state, 0) else a


@dataclass
class PromptRecord:
    """
    What happened to one prompt, across tries.

    ``status``: ``complete`` (all images stored), ``partial`` (moderation returned fewer), ``filtered``
    (moderation returned none), ``failed`` (an error; see ``error``), ``pending`` (not attempted yet).
    """

    prompt_index: int
    prompt: str
    fingerprint: str
    requested: int
    status: str = "pending"
    images: list[StoredImage] = field(default_factory=list)
    filtered: int = 0
    error: str | None = None
    not_stored: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # an edit's sources: uri, sha256, size

    @property
    def missing(self) -> int:
        """Images still owed: asked for, neither stored nor removed by moderation."""
        return max(self.requested - len(self.images) - self.filtered, 0)

    def next_image_index(self) -> int:
        return max((i.image_index for i in self.images), default=-1) + 1

    def add_image(self, image: StoredImage) -> None:
        self.images = [i for i in self.images if i.image_index != image.image_index] + [image]
        if image.model and image.model not in self.models:
            self.models.append(image.model)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["images"] = sorted(data["images"], key=lambda i: i["image_index"])
        return data


def settle_status(record: PromptRecord, *, allow_partial: bool) -> None:
    """Set a record's status (and, for a failure, its reason) once its generation has run."""
    if record.missing:
        record.status = "failed"
        if record.error is None:
            if record.not_stored:
                last = record.not_stored[-1]["error"]
                record.error = f"{len(record.not_stored)} generated images were not stored (last: {last})"
            else:
                record.error = f"{record.missing} images were not generated"
    elif not record.images:
        record.status = "filtered" if allow_partial else "failed"
        if not allow_partial:
            record.error = record.error or "content moderation returned no images (allow_partial=False)"
    else:
        record.status = "partial" if record.filtered else "complete"


# --- cost ---


def _usd(ticks: int) -> float:
    return round(ticks / USD_TICKS, 6)


def cost_summary(requests: Iterable[RequestRecord], try_number: int, images_stored: int) -> dict[str, Any]:
    """
    What the task instance paid, all tries together and this try alone.

    ``usd`` is None ("unknown") when a billed request reported no usage; requests that were sent but whose
    answer was never seen (in flight at a crash) are counted in ``requests_unanswered``, and the hook's
    retried attempts whose answer never arrived in ``attempts_unanswered``: they may have been billed, and
    their cost is not in ``usd``. So what the gateway billed is at most ``usd`` plus the worst case of those.
    """

    def tally(items: Sequence[RequestRecord]) -> dict[str, Any]:
        billed = [r for r in items if r.billed]
        ticks = [r.cost_ticks for r in billed]
        return {
            "requests": len(items),
            "requests_billed": len(billed),
            "requests_unanswered": sum(1 for r in items if r.billed is None),
            "attempts_unanswered": sum(r.unanswered_attempts for r in items),
            "requests_without_usage": sum(1 for t in ticks if t is None),
            "images_returned": sum(r.returned or 0 for r in billed),
            "usd": None if any(t is None for t in ticks) else _usd(sum(t for t in ticks if t is not None)),
        }

    everything = sorted(requests, key=lambda r: (r.try_number, r.id))
    total = tally(everything)
    tries = sorted({r.try_number for r in everything})
    by_try = {str(t): tally([r for r in everything if r.try_number == t]) for t in tries}
    this_try = by_try.get(str(try_number)) or tally([])
    return {
        **total,
        "images_stored": images_stored,
        # Paid for but not in S3 now: moderated, lost in a crash, overwritten or regenerated.
        "images_paid_not_stored": max(total["images_returned"] - images_stored, 0),
        "this_try": this_try,
        "by_try": by_try,
    }


def describe_cost(cost: Mapping[str, Any]) -> str:
    """``$0.1200`` or ``unknown``, plus the requests whose cost cannot be known."""
    text = "unknown" if cost["usd"] is None else f"${cost['usd']:.4f}"
    if cost["requests_unanswered"]:
        text += f" + {cost['requests_unanswered']} unanswered requests (may have been billed)"
    if cost.get("attempts_unanswered"):
        text += f" + {cost['attempts_unanswered']} retried attempts that got no answer (may have been billed)"
    return text
