"""
The records: whose work it is, each request's receipt and its states, each stored image, each prompt.

A request's receipt moves forward only, by the transitions of ``lifecycle.py``, and is written at each
step. Each image object carries its own record in its S3 metadata: :func:`image_metadata` writes it and
:func:`image_from_metadata` reads it back, side by side, so the schema is spelled once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from airflow_provider_grok import __version__
from airflow_provider_grok.record.lifecycle import BILLED_STATES, FAILED, PROGRESS, SENT, RequestState

RECEIPT_VERSION = 1
GENERATOR = f"airflow-provider-grok/{__version__}"  # in object metadata and manifests

OWNER_FIELDS = ("dag_id", "task_id", "run_id", "map_index")


@dataclass(frozen=True)
class TaskIdentity:
    """A task instance: its tries share one prefix and one record; no other run's record is ever adopted."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    @classmethod
    def of(cls, ti: Any) -> TaskIdentity:
        """A running task instance's identity (anything with Airflow's ``TaskInstance`` attributes)."""
        map_index = -1 if ti.map_index is None else ti.map_index
        return cls(ti.dag_id, ti.task_id, ti.run_id, map_index, ti.try_number)

    def owner(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id, "map_index": self.map_index}

    def foreign_owner(self, record: Mapping[str, Any]) -> str | None:
        """How ``record`` (a manifest or receipt) names a different task instance, or None if it is ours."""
        theirs = {name: record.get(name) for name in OWNER_FIELDS}
        if theirs == self.owner():
            return None
        return ", ".join(f"{name} {value!r}" for name, value in theirs.items())


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


# --- an image object's own record: written and read here only ---


def image_metadata(identity: TaskIdentity, image: StoredImage, fingerprint: str, request_id: str) -> dict[str, Any]:
    """The object metadata that makes an image its own record (ASCII; the prompt lives in the manifest)."""
    return {
        "generator": GENERATOR,
        "dag-id": identity.dag_id,
        "task-id": identity.task_id,
        "run-id": identity.run_id,
        "map-index": identity.map_index,
        "try-number": identity.try_number,
        "request": request_id,
        "fingerprint": fingerprint,
        "prompt-index": image.prompt_index,
        "image-index": image.image_index,
        "model": image.model or "",
        "sha256": image.sha256,
    }


@dataclass(frozen=True)
class ImageObject:
    """What an image object's metadata says of it (:func:`image_from_metadata`)."""

    owner: dict[str, Any]
    try_number: int | None
    request_id: str
    fingerprint: str
    prompt_index: int
    image_index: int
    model: str | None
    sha256: str


def image_from_metadata(metadata: Mapping[str, str]) -> ImageObject | None:
    """Read back what :func:`image_metadata` wrote (S3 returns strings); None if this provider did not write it."""
    try:
        map_index, prompt_index, image_index = (
            int(metadata[name]) for name in ("map-index", "prompt-index", "image-index")
        )
    except (KeyError, ValueError):
        return None
    if not metadata.get("sha256"):
        return None
    try_number = metadata.get("try-number", "")
    return ImageObject(
        owner={
            "dag_id": metadata.get("dag-id"),
            "task_id": metadata.get("task-id"),
            "run_id": metadata.get("run-id"),
            "map_index": map_index,
        },
        try_number=int(try_number) if try_number.isdigit() else None,
        request_id=metadata.get("request", ""),
        fingerprint=metadata.get("fingerprint", ""),
        prompt_index=prompt_index,
        image_index=image_index,
        model=metadata.get("model") or None,
        sha256=metadata["sha256"],
    )


@dataclass
class RequestRecord:
    """
    One generation request (at most 10 images of one prompt): its receipt in S3 and its line in the manifest.

    :param id: unique within the task instance (``keys.request_id``).
    :param state: where it is in its lifecycle (``lifecycle.RequestState``); only ``lifecycle`` moves it.
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
    state: RequestState = SENT
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

    def revised_prompt(self, image_index: int) -> str | None:
        position = image_index - self.first_image_index
        return self.revised_prompts[position] if 0 <= position < len(self.revised_prompts) else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["images"] = [StoredImage.from_json(i) for i in data.get("images") or []]
        values["state"] = RequestState.read(data.get("state"))
        return cls(**values)

    def receipt(self, identity: TaskIdentity) -> dict[str, Any]:
        """The receipt object's JSON: the record plus whose it is."""
        return {"receipt_version": RECEIPT_VERSION, **identity.owner(), **self.to_json()}


def newer(a: RequestRecord, b: RequestRecord) -> RequestRecord:
    """The later of two versions of one request's record (a receipt only ever moves forward)."""
    return b if PROGRESS[b.state] >= PROGRESS[a.state] else a


@dataclass
class PromptRecord:
    """
    What happened to one prompt (or one edit), across tries.

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

    def decide_status(self, *, allow_partial: bool) -> None:
        """Set the status (and, for a failure, the reason) once generation has run."""
        if self.missing:
            self.status = "failed"
            if self.error is None:
                if self.not_stored:
                    last = self.not_stored[-1]["error"]
                    self.error = f"{len(self.not_stored)} generated images were not stored (last: {last})"
                else:
                    self.error = f"{self.missing} images were not generated"
        elif not self.images:
            self.status = "filtered" if allow_partial else "failed"
            if not allow_partial:
                self.error = self.error or "content moderation returned no images (allow_partial=False)"
        else:
            self.status = "partial" if self.filtered else "complete"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["images"] = sorted(data["images"], key=lambda i: i["image_index"])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PromptRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["images"] = [StoredImage.from_json(i) for i in data.get("images") or []]
        return cls(**values)
