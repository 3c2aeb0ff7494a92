"""
The record of one task instance: what every try asked for, paid for and stored, folded from what S3 holds,
and what to send next. The drivers (the worker's pipeline, the trigger, the operator) read and write S3 and
hold the locks; this class decides.

A try starts by folding, in this order:

1. the manifest and every receipt under the prefix (:meth:`TaskRecord.fold`): a manifest or receipt that
   names another task instance is refused before anything is sent (:class:`GrokPrefixInUseError`);
2. the images (:meth:`TaskRecord.fold_images`): those the manifest and receipts list, plus every *orphan*
   (an image key no record lists: stored just before a crash, before its receipt said so), whose object
   metadata is its record. An image is reused only if it is still in S3 at its recorded size and was made
   by this task instance for today's prompt and parameters (the fingerprint).

Then :meth:`TaskRecord.pending_jobs` asks only for what is not stored; the batch driver (``driver.py``)
sends them, each request moving through ``lifecycle.py``; :meth:`TaskRecord.end_batch` takes why the batch
stopped, if it did; :meth:`TaskRecord.decide` gives each prompt its status; the manifest (``manifest.py``)
folds it all, and the receipts it holds are deleted once it is written (:attr:`TaskRecord.folded_keys`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_grok.exceptions import GrokPrefixInUseError
from airflow_provider_grok.protocol import split_n
from airflow_provider_grok.record.cap import CostCap
from airflow_provider_grok.record.driver import BatchStop
from airflow_provider_grok.record.keys import (
    Sender,
    is_bookkeeping_key,
    parse_image_key,
    receipt_key,
    request_id,
)
from airflow_provider_grok.record.lifecycle import FAILED, FILTERED, STORED
from airflow_provider_grok.record.manifest import Manifest
from airflow_provider_grok.record.plan import Job
from airflow_provider_grok.record.records import (
    PromptRecord,
    RequestRecord,
    StoredImage,
    TaskIdentity,
    image_from_metadata,
    newer,
)

# key -> (the fingerprint it was made for, the image, made by an earlier try)
Candidates = dict[str, tuple[str, StoredImage, bool]]


class TaskRecord:
    """
    :param identity: this task instance and try.
    :param prompts: (prompt, fingerprint, images wanted) of each prompt or edit.
    :param location: (bucket, prefix) of the task instance in S3.
    :param execution: six hex digits drawn by the driver once per execution (see ``keys.request_id``).
    :param allow_partial: moderation refusing every image of a prompt is not a failure.
    :param cap: the money cap (``max_cost_usd``), folded with the record.
    """

    def __init__(
        self,
        identity: TaskIdentity,
        prompts: Sequence[tuple[str, str, int]],
        location: tuple[str, str],
        execution: str,
        *,
        allow_partial: bool,
        cap: CostCap | None = None,
    ) -> None:
        self.identity = identity
        self.bucket, self.prefix = location
        self.execution = execution
        self.allow_partial = allow_partial
        self.cap = cap or CostCap(None)
        self.prompts = [PromptRecord(i, text, print_, n) for i, (text, print_, n) in enumerate(prompts)]
        self.requests: dict[str, RequestRecord] = {}
        self.reused = 0  # images adopted from earlier tries
        self.folded_keys: set[str] = set()  # receipts and plans the next manifest holds: delete once written
        self.stop: BatchStop | None = None  # why this try's batch stopped sending, if it did
        self._sequence = 0

    # --- folding what earlier tries (or the trigger) left ---

    def check_owner(self, document: Mapping[str, Any] | None, what: str) -> None:
        """Refuse a manifest or receipt of another task instance (another run above all)."""
        foreign = None if document is None else self.identity.foreign_owner(document)
        if foreign is None:
            return
        me = self.identity
        raise GrokPrefixInUseError(
            f"s3://{self.bucket}/{self.prefix}/ already holds the work of another task instance ({what} names "
            f"{foreign}); this one is dag_id {me.dag_id!r}, task_id {me.task_id!r}, run_id {me.run_id!r}, "
            f"map_index {me.map_index}. Nothing was generated. Give each run its own s3_key_prefix (leave it "
            "unset for grok/<dag>/<run>/<task>, or include {{ run_id }}), or delete that prefix to start over."
        )

    def fold(self, manifest: Manifest | None, receipts: Iterable[Mapping[str, Any]], keys: Iterable[str]) -> None:
        """
        Fold the manifest and the receipts (``keys``: every key under the prefix). Receipts may come one at
        a time; one of another task instance raises :class:`GrokPrefixInUseError` when it is reached, which
        is still before anything is sent or written (folding only changes this record in memory).
        """
        self.check_owner(None if manifest is None else manifest.raw, "its manifest")
        self.folded_keys.update(key for key in keys if is_bookkeeping_key(self.prefix, key))
        for data in manifest.requests() if manifest is not None else ():
            self._fold_request(data)
        for receipt in receipts:
            self.check_owner(receipt, "a request receipt")
            self._fold_request(receipt)
        for request in self._this_try_requests():
            # This try's own requests (the trigger's, on resume): errors and unstored images.
            record = self.prompts[request.prompt_index]
            if request.state in (FAILED, FILTERED):
                record.error = request.error
            record.not_stored.extend(request.not_stored)
        self.cap.fold(self.requests.values())

    def _fold_request(self, data: Mapping[str, Any]) -> None:
        request = RequestRecord.from_json(data)
        known = self.requests.get(request.id)
        self.requests[request.id] = request if known is None else newer(known, request)

    def _this_try_requests(self) -> list[RequestRecord]:
        return [
            r
            for r in self.requests.values()
            if r.prompt_index < len(self.prompts)
            and r.fingerprint == self.prompts[r.prompt_index].fingerprint
            and r.try_number == self.identity.try_number
        ]

    def _known_images(self, manifest: Manifest | None) -> Candidates:
        candidates: Candidates = {}
        for prompt in manifest.prompts if manifest is not None else ():
            for image in prompt.images:
                candidates[image.key] = (prompt.fingerprint, image, True)
        for request in self.requests.values():
            earlier = request.try_number != self.identity.try_number
            for image in request.images:
                candidates[image.key] = (request.fingerprint, image, earlier)
        return candidates

    def orphan_keys(self, manifest: Manifest | None, listing: Mapping[str, int]) -> list[str]:
        """Image keys under the prefix that no record lists: the driver reads their metadata (HEAD)."""
        known = self._known_images(manifest)
        return [key for key in listing if key not in known and parse_image_key(self.prefix, key) is not None]

    def fold_images(
        self,
        manifest: Manifest | None,
        listing: Mapping[str, int],
        orphans: Mapping[str, tuple[int, str, Mapping[str, str]]],
    ) -> None:
        """
        Adopt every image still in S3 that is this task instance's, for today's prompt: ``listing`` is
        key → size under the prefix, ``orphans`` the (size, content type, metadata) of :meth:`orphan_keys`.
        """
        candidates = self._known_images(manifest)
        for key, (size, content_type, metadata) in orphans.items():
            adopted = self._adopt_orphan(key, size, content_type, metadata)
            if adopted is not None:
                candidates[key] = adopted
        for key, (print_, image, earlier) in candidates.items():
            if image.prompt_index >= len(self.prompts) or listing.get(key) != image.size_bytes:
                continue  # gone, replaced, or beyond today's prompts
            record = self.prompts[image.prompt_index]
            if print_ == record.fingerprint:
                record.add_image(image)
                self.reused += earlier
        for record in self.prompts:
            filtered = sum(
                r.filtered
                for r in self.requests.values()
                if r.prompt_index == record.prompt_index
                and r.fingerprint == record.fingerprint
                and r.state in (STORED, FILTERED)
            )
            if record.images or self.allow_partial:
                record.filtered = min(filtered, record.requested - len(record.images))

    def _adopt_orphan(
        self, key: str, size: int, content_type: str, metadata: Mapping[str, str]
    ) -> tuple[str, StoredImage, bool] | None:
        """An image stored just before a crash, before its receipt said so: its metadata is its record."""
        found = image_from_metadata(metadata)
        if found is None or self.identity.foreign_owner(found.owner) is not None:
            return None  # not written by this provider, or another task instance's: leave it alone
        if found.prompt_index >= len(self.prompts):
            return None
        request = self.requests.get(found.request_id)
        image = StoredImage(
            s3_uri=f"s3://{self.bucket}/{key}",
            bucket=self.bucket,
            key=key,
            content_type=content_type,
            size_bytes=size,
            sha256=found.sha256,
            prompt=self.prompts[found.prompt_index].prompt,
            revised_prompt=request.revised_prompt(found.image_index) if request is not None else None,
            model=found.model,
            prompt_index=found.prompt_index,
            image_index=found.image_index,
        )
        return found.fingerprint, image, found.try_number != self.identity.try_number

    # --- planning ---

    def pending_jobs(self, sender: Sender) -> list[Job]:
        """
        The requests still needed: only the images not already stored (or removed by moderation), from
        ``sender`` (``keys.WORKER`` or ``keys.TRIGGER``). Under a money cap whose price is not known yet, the
        first request asks for one image only.
        """
        jobs: list[Job] = []
        for record in self.prompts:
            start = record.next_image_index()
            chunks = split_n(record.missing) if record.missing else []
            if chunks and chunks[0] > 1 and not jobs and self.cap.needs_probe:
                chunks = [1, chunks[0] - 1, *chunks[1:]]
            for chunk in chunks:
                self._sequence += 1
                job_id = request_id(self.identity.try_number, self.execution, sender, self._sequence)
                jobs.append(Job(job_id, record.prompt_index, start, chunk, record.fingerprint))
                start += chunk
        return jobs

    def lost_in_trigger(self, sender: Sender) -> list[Job]:
        """
        After a deferral: images still missing that no error explains were paid for in the triggerer but
        lost between an answer and its storing (a triggerer crash); the worker generates them.
        """
        return [
            job
            for job in self.pending_jobs(sender)
            if self.prompts[job.prompt_index].error is None and not self.prompts[job.prompt_index].not_stored
        ]

    # --- each request's outcome ---

    def track(self, request: RequestRecord) -> None:
        """A request whose ``sent`` receipt was written: it is in the record from now on."""
        self.requests[request.id] = request
        self.folded_keys.add(receipt_key(self.prefix, request.id))

    def apply(self, request: RequestRecord) -> None:
        """Bring a finished request's outcome into its prompt's record."""
        record = self.prompts[request.prompt_index]
        for image in request.images:
            record.add_image(image)
        record.not_stored.extend(request.not_stored)
        record.filtered += request.filtered
        if request.state in (FAILED, FILTERED):
            record.error = request.error  # a filtered prompt's record says why it has no images

    def end_batch(self, stop: BatchStop | None) -> None:
        """
        Why the batch stopped sending (None: it did not), from the driver (sync) or the trigger's event
        (deferred), so both read the same: every prompt still missing images without an error of its own
        names the stop.
        """
        self.stop = stop
        if stop is None:
            return
        for record in self.prompts:
            if record.missing and record.error is None:
                record.error = stop.unsent_reason()

    # --- the end of a try ---

    def decide(self) -> str:
        """Decide each prompt's status; the task instance's: ``complete``, ``partial`` or ``failed``."""
        for record in self.prompts:
            record.decide_status(allow_partial=self.allow_partial)
        statuses = {r.status for r in self.prompts}
        return "failed" if "failed" in statuses else "complete" if statuses == {"complete"} else "partial"

    @property
    def images_stored(self) -> int:
        return sum(len(r.images) for r in self.prompts)

    def stored_images(self) -> list[StoredImage]:
        return sorted((i for r in self.prompts for i in r.images), key=lambda i: (i.prompt_index, i.image_index))
