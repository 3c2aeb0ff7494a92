"""GrokGenerateImagesTrigger: a deferred task's requests, awaited, stored and recorded in the triggerer.

The trigger is the asyncio executor of the batch driver (``record/driver.py``): each of its
``max_concurrency`` coroutines runs the driver's loop, and every request goes through the same durable
writes as in the worker (``record/lifecycle.py``). Hence:

- a triggerer restarted mid-batch (upgrade, crash) runs the trigger again from its kwargs, reads the
  receipts and skips every request whose answer had arrived: only the requests in flight at the restart
  are sent again (the gateway may have billed them; the manifest counts them);
- temporary image URLs are fetched seconds after they are issued, never after a long deferral;
- the event is a few counts whatever the batch size: never images, URLs or the key.

Generation waits on the async hook. S3 calls and downloads are short and run in threads
(``asyncio.to_thread``) through the same :class:`~airflow_provider_grok.storage.S3ImageStore` and ledger and
``fetch_image`` the worker uses, so the triggerer's event loop never blocks on them and the storing
rules exist once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_grok.exceptions import ERROR_TYPES, GrokError, GrokResponseError, GrokStorageError, error_class
from airflow_provider_grok.record.driver import BatchStop, StopReason


@dataclass(frozen=True)
class GenerationEvent:
    """
    The one event a :class:`GrokGenerateImagesTrigger` yields (``version`` guards against a trigger and a
    worker of different provider releases). The results themselves are in S3, not in the event.

    :param status: ``success`` (every request was sent: answered, failed on its own or filtered) or ``error``
        (the batch stopped: ``stop_reason`` says why, as ``record.BatchStop`` does in the worker).
    :param sent: requests this run of the trigger sent.
    :param skipped: requests already answered before a triggerer restart, not sent again.
    """

    VERSION: ClassVar[int] = 2

    status: str
    sent: int = 0
    skipped: int = 0
    stop_reason: str | None = None
    error_type: str | None = None
    message: str | None = None
    status_code: int | None = None

    @classmethod
    def stopped(cls, stop: BatchStop, *, sent: int = 0, skipped: int = 0) -> GenerationEvent:
        name = stop.error_type if stop.error_type in ERROR_TYPES else "GrokError"
        return cls("error", sent, skipped, str(stop.reason), name, stop.message, stop.status)

    @classmethod
    def failure(cls, err: GrokError, *, sent: int = 0, skipped: int = 0) -> GenerationEvent:
        """The trigger itself failed (a broken connection, an unexpected fault): the batch was stopped."""
        return cls.stopped(BatchStop.of(StopReason.KILLED, err), sent=sent, skipped=skipped)

    def to_payload(self) -> dict[str, Any]:
        return {"version": self.VERSION, **asdict(self)}

    @classmethod
    def from_payload(cls, payload: Any) -> GenerationEvent:
        """Read an event; anything malformed or of another version becomes an ``error`` event saying so."""
        if isinstance(payload, Mapping) and payload.get("version") == 1:
            payload = {**payload, "version": cls.VERSION, "stop_reason": _v1_stop_reason(payload)}
        if not isinstance(payload, Mapping) or payload.get("version") != cls.VERSION:
            found = payload.get("version") if isinstance(payload, Mapping) else type(payload).__name__
            return cls(
                "error",
                error_type="GrokResponseError",
                message=f"GrokGenerateImagesTrigger sent an event of version {found!r}, expected {cls.VERSION}: "
                "the triggerer and the worker run different releases of airflow-provider-grok. Clear the "
                "task once both run the same release; its stored images are kept.",
            )
        try:
            event = cls(**{k: v for k, v in payload.items() if k != "version"})
        except TypeError as err:
            return cls("error", error_type="GrokResponseError", message=f"Malformed trigger event: {err}")
        if event.status not in ("success", "error"):
            return cls("error", error_type="GrokResponseError", message=f"Unknown event status {event.status!r}.")
        return event

    @property
    def stop(self) -> BatchStop | None:
        """Why the batch stopped, as the worker's driver would say it; None for a successful batch."""
        if self.status == "success":
            return None
        try:
            reason = StopReason(str(self.stop_reason))
        except ValueError:
            reason = StopReason.KILLED
        return BatchStop(reason, str(self.error_type or "GrokError"), str(self.message), self.status_code)

    @property
    def error(self) -> GrokError | None:
        """The batch's error, rebuilt with its original type; None for a successful batch."""
        return (
            None
            if self.status == "success"
            else error_class(str(self.error_type))(str(self.message), status=self.status_code)
        )


def _v1_stop_reason(payload: Mapping[str, Any]) -> str | None:
    """A version-1 event (the previous release's trigger, during an upgrade) named no stop reason: infer it."""
    if payload.get("status") != "error":
        return None
    error_type = payload.get("error_type")
    if error_type == "GrokBudgetExceededError":
        return str(StopReason.COST_CAP)
    return str(StopReason.STORAGE_REFUSED if error_type == "GrokStorageError" else StopReason.FATAL_ERROR)


class GrokGenerateImagesTrigger(BaseTrigger):
    """
    Run a deferred task's generation requests with bounded concurrency, store every answer's images in S3
    with its receipts, and yield one :class:`GenerationEvent`.

    :param grok_conn_id: the ``grok`` connection.
    :param aws_conn_id: the AWS connection for S3.
    :param bucket: the task instance's bucket.
    :param prefix: the task instance's key prefix.
    :param s3_extra_args: extra ``put_object`` arguments (validated by the operator).
    :param identity: the task instance (:class:`~airflow_provider_grok.record.TaskIdentity` fields).
    :param plan_key: the S3 key of the batch's plan (the requests to send, from ``storage.write_plan``), so
        these kwargs stay small in the metadata DB whatever the batch size.
    :param max_concurrency: requests in flight at once.
    :param retry_backoff: first backoff between retries, seconds.
    """

    def __init__(
        self,
        *,
        grok_conn_id: str,
        aws_conn_id: str | None,
        bucket: str,
        prefix: str,
        s3_extra_args: dict[str, Any],
        identity: dict[str, Any],
        plan_key: str,
        max_concurrency: int = 4,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.grok_conn_id = grok_conn_id
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix
        self.s3_extra_args = s3_extra_args
        self.identity = identity
        self.plan_key = plan_key
        self.max_concurrency = max_concurrency
        self.retry_backoff = retry_backoff

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "grok_conn_id": self.grok_conn_id,
                "aws_conn_id": self.aws_conn_id,
                "bucket": self.bucket,
                "prefix": self.prefix,
                "s3_extra_args": self.s3_extra_args,
                "identity": self.identity,
                "plan_key": self.plan_key,
                "max_concurrency": self.max_concurrency,
                "retry_backoff": self.retry_backoff,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            event = await self._run()
        except GrokError as err:
            event = GenerationEvent.failure(err)
        except Exception as err:  # whatever happens, the task resumes with a clear error, not a hang
            event = GenerationEvent.failure(
                GrokResponseError(f"GrokGenerateImagesTrigger failed unexpectedly: {type(err).__name__}: {err}")
            )
        yield TriggerEvent(event.to_payload())

    def _open(self) -> tuple[Any, list[tuple[Any, Any]], Any, list[dict[str, Any]]]:
        """
        In a thread (S3Hook and GrokHook read their connections synchronously): the worker's ledger, the
        plan and its money cap, and the receipts a previous run of this trigger left (none on a first run),
        already counted against the cap.
        """
        from airflow_provider_grok.hooks.grok import GrokHook
        from airflow_provider_grok.record import TaskIdentity, keys, plan
        from airflow_provider_grok.storage import RequestLedger, S3ImageStore, read_plan

        store = S3ImageStore(self.aws_conn_id, self.bucket, self.prefix, self.s3_extra_args)
        downloads = GrokHook(self.grok_conn_id, retry_backoff=self.retry_backoff, max_connections=self.max_concurrency)
        ledger = RequestLedger(store, TaskIdentity(**self.identity), downloads.fetch_image, self.log)
        receipts = store.read_json_many(key for key in store.list_prefix() if keys.is_receipt_key(store.prefix, key))
        jobs, cap = read_plan(store, self.plan_key)
        cap.fold(plan.receipts_of_plan(jobs, receipts))
        return ledger, jobs, cap, receipts

    async def _run(self) -> GenerationEvent:
        from airflow_provider_grok.hooks.grok import GrokAsyncHook
        from airflow_provider_grok.record import BatchDriver, plan

        ledger, jobs, cap, receipts = await asyncio.to_thread(self._open)
        hook = GrokAsyncHook(
            self.grok_conn_id,
            retry_backoff=self.retry_backoff,
            max_connections=self.max_concurrency,
            retry_unanswered=cap.max_cost_usd is None,  # under a cap, a maybe-billed retry is Airflow's
        )
        try:
            await hook.load_settings()  # a broken connection fails the batch once, not per request
            todo = plan.still_to_send(jobs, receipts)
            if receipts:
                self.log.warning(
                    "Resuming after a triggerer restart: %d of %d requests were already answered and are not "
                    "sent again; %d are sent now (those in flight at the restart may be billed twice).",
                    len(jobs) - len(todo),
                    len(jobs),
                    len(todo),
                )
            driver = BatchDriver(todo, cap, int(self.identity["try_number"]), self.log)
            slots = max(min(self.max_concurrency, len(todo)), 1)
            await asyncio.gather(*(self._slot(driver, hook, ledger) for _ in range(slots)))
            skipped = len(jobs) - len(todo)
            if driver.stop is not None:
                return GenerationEvent.stopped(driver.stop, sent=driver.sent_count, skipped=skipped)
            return GenerationEvent("success", sent=driver.sent_count, skipped=skipped)
        finally:
            await hook.aclose()  # also when the task is killed or the trigger times out (cancellation)

    async def _slot(self, driver: Any, hook: Any, ledger: Any) -> None:
        """One request slot: perform what the driver says until it says Finished (``record/driver.py``)."""
        from airflow_provider_grok.hooks.grok import log_label
        from airflow_provider_grok.record import WAIT_SECONDS, After, Finished, Send

        while (action := driver.next()) is not Finished:
            if not isinstance(action, Send):  # Wait: a request in flight will release cap room
                await asyncio.sleep(WAIT_SECONDS)
                continue
            request = action.request
            try:  # no receipt, no request
                await asyncio.to_thread(ledger.write_sent, request)
            except GrokStorageError as err:
                driver.receipt_refused(request, err)
                continue
            driver.sent(request)
            outcome: Any
            try:
                with log_label(f"Prompt {request.prompt_index}"):
                    outcome = await hook.generate(action.params)
            except GrokError as err:
                outcome = err
            if driver.answered(request, outcome, action.params.model) is After.STORE:
                # Stored inside the slot: at most max_concurrency answers are held in memory.
                await asyncio.to_thread(ledger.store_answer, request, outcome, action.params.prompt)
            else:
                await asyncio.to_thread(ledger.write_outcome, request)
            driver.finished(request)
