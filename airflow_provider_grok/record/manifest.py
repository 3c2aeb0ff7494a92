"""
The manifest: one ``manifest.json`` per task instance, written when a try starts and when it ends. This
module is the only one that knows its layout: :func:`document` builds it from the record, :func:`encode`
turns it into bytes, and :class:`Manifest` reads it back (refusing another version) for the fold of the
next try, the Images tab, the galleries, the XCom and the asset events.

Its keys, version :data:`MANIFEST_VERSION`: ``manifest_version``, ``generator``, ``status``
(``in_progress``, ``complete``, ``partial``, ``failed``), ``updated_at``, the owner (``dag_id``,
``task_id``, ``run_id``, ``map_index``), ``try_number``, ``bucket``, ``prefix``, ``request`` (the
generation parameters as the user set them), ``summary``, ``cost_usd``, ``cost`` (``record/cost.py``),
``usage``, ``prompts`` (one :class:`PromptRecord` each) and ``requests`` (one :class:`RequestRecord` per
request of every try; its ``request_ids`` are the gateway's ids).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from airflow_provider_grok.protocol import sum_usage
from airflow_provider_grok.record.cost import cost_summary
from airflow_provider_grok.record.records import GENERATOR, PromptRecord, RequestRecord, StoredImage

if TYPE_CHECKING:
    from airflow_provider_grok.record.task import TaskRecord

MANIFEST_VERSION = 2


class JsonItems(Sequence[dict[str, Any]]):
    """
    A manifest's list of prompts or requests, each turned into its JSON dict only when read: the encoder
    takes one at a time, so a 10,000-prompt manifest never exists as 20,000 dicts at once (about 40 MB).
    """

    def __init__(self, records: Sequence[Any], to_json: Callable[[Any], dict[str, Any]]) -> None:
        self._records, self._to_json = records, to_json

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self._to_json(r) for r in self._records[index]]
        return self._to_json(self._records[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._to_json(r) for r in self._records)


# --- writing ---


def document(record: TaskRecord, status: str, parameters: dict[str, Any], updated_at: str) -> dict[str, Any]:
    """
    The manifest of ``record``: every prompt with its images, every request of every try, and the cost.

    :param status: ``in_progress`` (written at the start of a try), or what :meth:`TaskRecord.decide` said.
    :param parameters: the generation parameters as the user set them (the manifest's ``request``).
    :param updated_at: an ISO 8601 time, from the driver's clock.
    """
    prompts = record.prompts
    requests = sorted(record.requests.values(), key=lambda r: (r.try_number, r.id))
    stored = record.images_stored
    cost = cost_summary(requests, record.identity.try_number, stored)
    usages = [r.usage for r in requests if r.usage]
    return {
        "manifest_version": MANIFEST_VERSION,
        "generator": GENERATOR,
        "status": status,
        "updated_at": updated_at,
        **record.identity.owner(),
        "try_number": record.identity.try_number,
        "bucket": record.bucket,
        "prefix": record.prefix,
        "request": parameters,
        "summary": {
            "prompts": len(prompts),
            "images_requested": sum(r.requested for r in prompts),
            "images_stored": stored,
            "images_reused": record.reused,
            "images_filtered": sum(r.filtered for r in prompts),
            "prompts_failed": [r.prompt_index for r in prompts if r.status == "failed"],
        },
        "cost_usd": cost["usd"],
        "cost": cost,
        "usage": sum_usage(usages) if usages else None,
        "prompts": JsonItems(prompts, PromptRecord.to_json),
        "requests": JsonItems(requests, RequestRecord.to_json),
    }


def encode(manifest: Mapping[str, Any]) -> bytes:
    """
    The manifest as JSON with one prompt or request per line: readable and greppable. Each item is encoded
    by json's C encoder and written to one buffer as it comes (``indent`` would switch to the pure-Python
    encoder, whose millions of small chunks cost 100 MB and seconds at 10,000 prompts; joining strings
    would hold the document three times over).
    """
    out = io.BytesIO()

    def dump(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    out.write(b"{")
    for position, (name, value) in enumerate(manifest.items()):
        out.write(b",\n  " if position else b"\n  ")
        out.write(dump(name) + b": ")
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            for index, item in enumerate(value):
                out.write(b",\n    " if index else b"[\n    ")
                out.write(dump(item))
            out.write(b"\n  ]" if len(value) else b"[]")
        else:
            out.write(dump(value))
    out.write(b"\n}\n")
    return out.getvalue()  # the buffer itself, not a copy


# --- reading ---


@dataclass(frozen=True)
class Manifest:
    """A stored manifest of this release's version, read once; :meth:`read` says None to anything else."""

    raw: Mapping[str, Any]
    prompts: list[PromptRecord]

    @classmethod
    def read(cls, stored: Any) -> Manifest | None:
        """A manifest as stored (parsed JSON): None for a missing one, another version, or a malformed one."""
        if not isinstance(stored, Mapping) or stored.get("manifest_version") != MANIFEST_VERSION:
            return None
        try:
            prompts = [PromptRecord.from_json(p) for p in stored.get("prompts") or []]
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return cls(stored, prompts)

    @property
    def status(self) -> str:
        return str(self.raw.get("status", "unknown"))

    @property
    def prefix(self) -> str:
        return str(self.raw.get("prefix") or "").rstrip("/")

    @property
    def run_id(self) -> str | None:
        return self.raw.get("run_id")

    @property
    def summary(self) -> Mapping[str, Any]:
        return self.raw.get("summary") or {}

    @property
    def cost(self) -> Mapping[str, Any]:
        """``record/cost.py``'s summary: ``usd`` (None when unknown), ``requests``, ``this_try``..."""
        return self.raw.get("cost") or {}

    @property
    def cost_usd(self) -> float | None:
        return self.raw.get("cost_usd")

    def requests(self) -> Iterator[Mapping[str, Any]]:
        """The requests of every try as stored (folded into :class:`RequestRecord` by the record)."""
        return iter(self.raw.get("requests") or [])

    def images(self) -> list[StoredImage]:
        """Every stored image, in prompt then image order."""
        images = [image for prompt in self.prompts for image in prompt.images]
        return sorted(images, key=lambda i: (i.prompt_index, i.image_index))


def decode(data: bytes) -> Manifest | None:
    """A manifest from its bytes (:func:`encode`'s); None when it is not one this release reads."""
    try:
        return Manifest.read(json.loads(data))
    except ValueError:
        return None
