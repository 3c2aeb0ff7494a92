"""
The errors that end a try, from the record alone (so a sync and a deferred try end alike): incomplete
prompts, the batch's stop (a fatal error, storage refusing receipts, the money cap, a kill), storage
refusing the final manifest; each names what was and was not stored.
"""

from __future__ import annotations

from airflow_provider_grok.exceptions import (
    GrokCostCapExceededError,
    GrokError,
    GrokIncompleteError,
    GrokStorageError,
    error_class,
)
from airflow_provider_grok.record.driver import StopReason
from airflow_provider_grok.record.keys import manifest_key
from airflow_provider_grok.record.task import TaskRecord


def manifest_uri(record: TaskRecord) -> str:
    return f"s3://{record.bucket}/{manifest_key(record.prefix)}"


def outcome_error(record: TaskRecord) -> GrokError | None:
    """
    After :meth:`TaskRecord.decide`: the error that fails the try, or None when no prompt failed. A batch
    the money cap stopped ends with :class:`GrokCostCapExceededError`; one a fault stopped, with that fault's
    type (e.g. :class:`GrokAuthError`) and the list of incomplete prompts; otherwise
    :class:`GrokIncompleteError`.
    """
    failed = [r for r in record.prompts if r.status == "failed"]
    if not failed:
        return None
    stop = record.stop
    if stop is not None and stop.reason is StopReason.COST_CAP:
        return cost_cap_exceeded(record)
    lines = [
        f"prompt {r.prompt_index} ({r.prompt[:60]!r}): {len(r.images)}/{r.requested} stored; {r.error}"
        for r in failed[:50]
    ]
    more = f"\n  ... and {len(failed) - 50} more (see the manifest)" if len(failed) > 50 else ""
    incomplete = (
        f"{len(failed)} of {len(record.prompts)} prompts are incomplete; the {record.images_stored} images that "
        f"were stored stay in S3 and in {manifest_uri(record)}, and a retry generates only what is missing.\n  "
        + "\n  ".join(lines)
        + more
    )
    if stop is None:
        return GrokIncompleteError(incomplete)
    return error_class(stop.error_type)(
        f"{stop.message}\nThe batch stopped there ({stop.reason}): {incomplete}", status=stop.status
    )


def cost_cap_exceeded(record: TaskRecord) -> GrokCostCapExceededError:
    """The error that ends a task the money cap stopped: the cap, the spend, what was not generated."""
    cap = record.cap
    missing = [r for r in record.prompts if r.missing]
    names = ", ".join(f"{r.prompt_index} ({r.prompt[:40]!r}, {r.missing} images)" for r in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    reason = cap.unenforceable or "the next request could have passed it"
    return GrokCostCapExceededError(
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
