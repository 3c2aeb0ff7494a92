"""
What a task instance's record says to the world: the manifest document, and the errors that end a try
(incomplete prompts, the money cap, S3 refusing the manifest) naming what was and was not stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from airflow_provider_grok.exceptions import (
    GrokBudgetExceededError,
    GrokError,
    GrokIncompleteError,
    GrokStorageError,
)
from airflow_provider_grok.protocol import sum_usage
from airflow_provider_grok.record.cost import cost_summary
from airflow_provider_grok.record.keys import manifest_key
from airflow_provider_grok.record.records import GENERATOR, MANIFEST_VERSION, PromptRecord, RequestRecord
from airflow_provider_grok.record.task import TaskRecord


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


def manifest_uri(record: TaskRecord) -> str:
    return f"s3://{record.bucket}/{manifest_key(record.prefix)}"


def manifest_document(record: TaskRecord, status: str, request: dict[str, Any], updated_at: str) -> dict[str, Any]:
    """
    The manifest: every prompt with its images, every request of every try, and the cost.

    :param status: ``in_progress`` (written at the start of a try), or what :meth:`TaskRecord.settle` said.
    :param request: the generation parameters as the user set them.
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
        "request": request,
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


def outcome_error(record: TaskRecord) -> GrokError | None:
    """After :meth:`TaskRecord.settle`: the error that fails the try, or None when every prompt is settled."""
    failed = [r for r in record.prompts if r.status == "failed"]
    if not failed:
        return None
    if record.cap.stopped:
        return budget_exceeded(record)
    lines = [
        f"prompt {r.prompt_index} ({r.prompt[:60]!r}): {len(r.images)}/{r.requested} stored; {r.error}" for r in failed
    ]
    return GrokIncompleteError(
        f"{len(failed)} of {len(record.prompts)} prompts are incomplete; the {record.images_stored} images that "
        f"were stored stay in S3 and in {manifest_uri(record)}, and a retry generates only what is missing.\n  "
        + "\n  ".join(lines)
    )


def budget_exceeded(record: TaskRecord) -> GrokBudgetExceededError:
    """The error that ends a task the money cap stopped: the cap, the spend, what was not generated."""
    cap = record.cap
    missing = [r for r in record.prompts if r.missing]
    names = ", ".join(f"{r.prompt_index} ({r.prompt[:40]!r}, {r.missing} images)" for r in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    reason = cap.unenforceable or "the next request could have passed it"
    return GrokBudgetExceededError(
        f"max_cost_usd stopped this task: {cap.describe()}; {reason}. Not generated: prompts {names}{more}. "
        f"The {record.images_stored} images stored stay in S3 and in {manifest_uri(record)}; raise max_cost_usd "
        "and retry (or clear) the task to generate only what is missing.",
        cap_usd=cap.max_cost_usd,
        spent_usd=cap.spent_usd(),
        not_generated=[r.prompt_index for r in missing],
    )


def unrecorded(record: TaskRecord, err: GrokStorageError) -> GrokStorageError:
    """
    The error when S3 would not take the final manifest: every image paid for but not stored (with its
    temporary URL, while it lasts), what was stored, and how to recover.
    """
    lost = [
        f"prompt {r.prompt_index} image {n['image_index']}" + (f" ({n['url']})" if n.get("url") else "")
        for r in record.prompts
        for n in r.not_stored
    ]
    missing = [r.prompt_index for r in record.prompts if r.missing]
    return GrokStorageError(
        f"S3 refused writes and the manifest {manifest_uri(record)} could not be written: {err.message} "
        f"{record.images_stored} images are stored (each carries its own record in its metadata). "
        + (f"Paid for but not stored: {'; '.join(lost[:50])}. " if lost else "")
        + (f"Prompts still missing images: {missing[:50]}. " if missing else "")
        + "To recover: restore write access to the bucket (credentials, bucket policy, endpoint) and retry the "
        "task: it adopts every stored image from its metadata and generates only what is missing.",
        status=err.status,
    )
