"""
One batch of requests, sans-IO: which request goes next, when to wait, when and why the batch stops, and
what every outcome means for the rest, with the messages that say so. The worker's thread executor
(``operators/_pipeline.py``) and the trigger's asyncio executor (``triggers/grok.py``) each run this loop
in every one of their ``max_concurrency`` slots, and only perform what it says::

    while (action := driver.next()) is not Finished:
        if action is Wait:
            sleep(WAIT_SECONDS)                       # a request in flight will release cap room
            continue
        request = action.request                      # a record in state ``sent``
        try:
            write the ``sent`` receipt
        except GrokStorageError as err:
            driver.receipt_refused(request, err)      # nothing is sent, nor anything after it
            continue
        driver.sent(request)
        outcome = send(action.params)                 # the result, or the GrokError after the hook's retries
        if driver.answered(request, outcome) is After.STORE:
            store the answer                          # ``answered`` receipt, images, ``stored`` receipt
        else:
            write the receipt                         # ``filtered`` or ``failed``
        driver.finished(request)

The driver is not thread-safe: the thread executor holds a lock around each call, the asyncio executor
calls it from its event loop only. What the batch did is :attr:`BatchDriver.stop` (None: every request
was sent), which both executors hand to the record the same way (:meth:`TaskRecord.end_batch`), so a
fault reads the same whether the task ran in a worker or deferred.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from airflow_provider_grok.exceptions import (
    GrokCostCapExceededError,
    GrokError,
    GrokIncompleteError,
    GrokStorageError,
    error_class,
)
from airflow_provider_grok.protocol import ImageGenerationResult
from airflow_provider_grok.record.cap import Admission, CostCap
from airflow_provider_grok.record.lifecycle import FAILED, FILTERED, STORED, After, conclude, stops_the_batch
from airflow_provider_grok.record.plan import Job, Params
from airflow_provider_grok.record.records import RequestRecord

WAIT_SECONDS = 0.05  # how long a slot sleeps after Wait before asking again (requests take seconds)


class StopReason(enum.StrEnum):
    """Why a batch sent no further request."""

    COST_CAP = "cost_cap"  # the next request could have passed max_cost_usd, or its price cannot be known
    FATAL_ERROR = "fatal_error"  # an error no further request can escape (a rejected key, an unknown model)
    STORAGE_REFUSED = "storage_refused"  # a receipt could not be written: no receipt, no request
    KILLED = "killed"  # the task was stopped (on_kill), or the trigger failed unexpectedly


@dataclass(frozen=True)
class BatchStop:
    """Why a batch stopped, as plain values: it crosses from the trigger to the worker in the event."""

    reason: StopReason
    error_type: str
    message: str
    status: int | None = None

    @classmethod
    def of(cls, reason: StopReason, err: GrokError) -> BatchStop:
        return cls(reason, type(err).__name__, err.message, err.status)

    def unsent_reason(self) -> str:
        """What a prompt's record says of a request this stop kept from being sent."""
        if self.reason is StopReason.COST_CAP:
            return "not generated: max_cost_usd stopped the batch before this request"
        if self.reason is StopReason.STORAGE_REFUSED:
            return f"not generated: storage refused a receipt, so nothing more was sent ({self.message})"
        if self.reason is StopReason.KILLED:
            return f"not attempted: {self.message}"
        return f"not generated: an earlier request failed with {self.error_type}, which stops the batch"

    def error(self) -> GrokError:
        """The error this stop ended with, of its original type (a name this release does not know: GrokError)."""
        return error_class(self.error_type)(self.message, status=self.status)


@dataclass(frozen=True)
class Send:
    """Send this request: its record (state ``sent``) and its parameters."""

    job: Job
    params: Params
    request: RequestRecord


class _Signal(enum.Enum):
    WAIT = "wait"
    FINISHED = "finished"


Wait: Final = _Signal.WAIT  # ask again after WAIT_SECONDS: a request in flight will release cap room
Finished: Final = _Signal.FINISHED  # this slot is done: nothing left to send, or the batch stopped


class BatchDriver:
    """
    :param jobs: the requests to send, each with its parameters.
    :param cap: the money cap, already folded with every earlier request of the task instance.
    :param try_number: the try the records are written for.
    :param log: where the driver's messages go (a ``logging.Logger``).
    """

    def __init__(self, jobs: Sequence[tuple[Job, Params]], cap: CostCap, try_number: int, log: Any) -> None:
        self._queue = deque(jobs)
        self.cap = cap
        self.try_number = try_number
        self.log = log
        self.stop: BatchStop | None = None
        self.sent_count = 0  # requests whose receipt was written and that went out
        self.in_flight = 0

    def next(self) -> Send | _Signal:
        """What a free slot does now."""
        if self.stop is not None or not self._queue:
            return Finished
        job, params = self._queue[0]
        decision = self.cap.admit(job.count)
        if decision is Admission.WAIT:
            return Wait
        if decision is Admission.STOP:
            unsent = len(self._queue)
            self.log.warning(
                "max_cost_usd reached (%s): %d requests (%d images) are not sent.",
                self.cap.describe(),
                unsent,
                sum(j.count for j, _ in self._queue),
            )
            reason = self.cap.unenforceable or "the next request could have passed it"
            stop = GrokCostCapExceededError(f"max_cost_usd stopped the batch ({self.cap.describe()}): {reason}")
            self._stop(StopReason.COST_CAP, stop)
            return Finished
        self._queue.popleft()
        self.in_flight += 1
        return Send(job, params, job.record(self.try_number))

    def receipt_refused(self, request: RequestRecord, err: GrokStorageError) -> None:
        """The ``sent`` receipt could not be written: this request is not sent, nor any after it."""
        self.in_flight -= 1
        self.cap.withdraw(request.count)
        if self.stop is None:
            self.log.error(
                "Storage refuses writes (%s): no further generation request is sent, since its receipt cannot be "
                "written. Answers already paid for are still stored while storage allows it.",
                err.message,
            )
            self._stop(StopReason.STORAGE_REFUSED, err)

    def sent(self, request: RequestRecord) -> None:
        """The ``sent`` receipt is written: the request goes out now."""
        self.sent_count += 1

    def answered(self, request: RequestRecord, outcome: ImageGenerationResult | GrokError, model: str | None) -> After:
        """Record the answer (or the error after the hook's retries); say whether there is anything to store."""
        after = conclude(request, outcome, model)
        if why := self.cap.release(request):
            self.log.error("max_cost_usd: %s", why)
        if isinstance(outcome, GrokError) and stops_the_batch(outcome):
            if self.stop is None:
                self.log.error(
                    "Prompt %d: %s; no further request is sent (it would fail the same way).",
                    request.prompt_index,
                    request.error,
                )
            self._stop(StopReason.FATAL_ERROR, outcome)
        return after

    def finished(self, request: RequestRecord) -> None:
        """Its last receipt is written (or storage refused it): the slot is free."""
        self.in_flight -= 1
        if request.state is STORED and request.filtered:
            self.log.warning(
                "Prompt %d: content moderation removed %d of %d images.",
                request.prompt_index,
                request.filtered,
                request.count,
            )
        elif request.state is FILTERED:
            self.log.warning("Prompt %d: %s", request.prompt_index, request.error)
        elif request.state is FAILED:
            self.log.error("Prompt %d (%d images) failed: %s", request.prompt_index, request.count, request.error)

    def halt(self, why: str) -> None:
        """Send nothing more (the task is being stopped); requests in flight still end with their answer."""
        self._stop(StopReason.KILLED, GrokIncompleteError(why))

    @property
    def unsent(self) -> int:
        """Requests never sent (the batch stopped before them)."""
        return len(self._queue)

    def _stop(self, reason: StopReason, err: GrokError) -> None:
        if self.stop is None:
            self.stop = BatchStop.of(reason, err)
