"""GrokGenerateImagesTrigger: a deferred task's requests, awaited, stored and recorded in the triggerer.

The trigger runs the same durable sequence as the worker for each request (receipt ``sent``, request,
receipt ``answered``, images to S3, receipt ``stored``; see ``record/sequence.py``). Hence:

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

from airflow_provider_grok import exceptions
from airflow_provider_grok.exceptions import GrokError, GrokResponseError, GrokStorageError

# Error types an event may name: an explicit map built once from exceptions.py (every GrokError it defines),
# never a name looked up in a module at the moment an event is read.
ERROR_TYPES: dict[str, type[GrokError]] = {
    cls.__name__: cls
    for cls in vars(exceptions).values()
    if isinstance(cls, type) and issubclass(cls, GrokError) and cls.__module__ == exceptions.__name__
}


@dataclass(frozen=True)
class GenerationEvent:
    """
    The one event a :class:`GrokGenerateImagesTrigger` yields (``version`` guards against a trigger and a
    worker of different provider releases). The results themselves are in S3, not in the event.

    :param status: ``success`` (every request was answered, failed on its own or was filtered) or ``error``
        (the batch stopped: a rejected key, an unknown model, S3 refusing writes, an unexpected fault).
    :param sent: requests this run of the trigger sent.
    :param skipped: requests already answered before a triggerer restart, not sent again.
    """

    VERSION: ClassVar[int] = 1

    status: str
    sent: int = 0
    skipped: int = 0
    error_type: str | None = None
    message: str | None = None
    status_code: int | None = None

    @classmethod
    def failure(cls, err: GrokError, *, sent: int = 0, skipped: int = 0) -> GenerationEvent:
        name = type(err).__name__ if type(err).__name__ in ERROR_TYPES else "GrokError"
        return cls("error", sent, skipped, name, err.message, err.status)

    def to_payload(self) -> dict[str, Any]:
        return {"version": self.VERSION, **asdict(self)}

    @classmethod
    def from_payload(cls, payload: Any) -> GenerationEvent:
        """Read an event; anything malformed or of another version becomes an ``error`` event saying so."""
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
    def error(self) -> GrokError | None:
        """The batch's error, rebuilt with its original type; None for a successful batch."""
        if self.status == "success":
            return None
        error_type = ERROR_TYPES.get(str(self.error_type), GrokError)
        return error_type(str(self.message), status=self.status_code)


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
        from airflow_provider_grok.record import TaskIdentity, keys, sequence
        from airflow_provider_grok.storage import RequestLedger, S3ImageStore, read_plan

        store = S3ImageStore(self.aws_conn_id, self.bucket, self.prefix, self.s3_extra_args)
        downloads = GrokHook(self.grok_conn_id, retry_backoff=self.retry_backoff, max_connections=self.max_concurrency)
        ledger = RequestLedger(store, TaskIdentity(**self.identity), downloads.fetch_image, self.log)
        receipts = store.read_json_many(key for key in store.list_prefix() if keys.is_receipt_key(store.prefix, key))
        plan, cap = read_plan(store, self.plan_key)
        cap.fold(sequence.receipts_of_plan(plan, receipts))
        return ledger, plan, cap, receipts

    async def _run(self) -> GenerationEvent:
        from airflow_provider_grok.exceptions import GrokBudgetExceededError
        from airflow_provider_grok.hooks.grok import GrokAsyncHook, log_label
        from airflow_provider_grok.record import Admission, Next, sequence
        from airflow_provider_grok.record.cap import WAIT_SECONDS

        ledger, plan, cap, receipts = await asyncio.to_thread(self._open)
        hook = GrokAsyncHook(
            self.grok_conn_id,
            retry_backoff=self.retry_backoff,
            max_connections=self.max_concurrency,
            retry_unanswered=cap.max_cost_usd is None,  # under a cap, a maybe-billed retry is Airflow's
        )
        try:
            await hook.load_settings()  # a broken connection fails the batch once, not per request
            todo = sequence.still_to_send(plan, receipts)
            if receipts:
                self.log.warning(
                    "Resuming after a triggerer restart: %d of %d requests were already answered and are not "
                    "sent again; %d are sent now (those in flight at the restart may be billed twice).",
                    len(plan) - len(todo),
                    len(plan),
                    len(todo),
                )
            slots = asyncio.Semaphore(self.max_concurrency)
            fatal: list[GrokError] = []
            capped: list[Any] = []

            def settle(request: Any) -> None:
                if why := cap.settle(request):
                    self.log.error("max_cost_usd: %s", why)

            async def one(job: Any, params: Any) -> bool:
                async with slots:
                    if fatal:
                        return False  # not sent: the worker records the batch's error for this prompt
                    while (decision := cap.admit(job.count)) is Admission.WAIT:
                        await asyncio.sleep(WAIT_SECONDS)
                    if decision is Admission.STOP:
                        capped.append(job)  # not sent: the worker names it in GrokBudgetExceededError
                        return False
                    try:
                        request = await asyncio.to_thread(ledger.sent, job)
                    except GrokStorageError as err:  # no receipt, no request: S3 refusing writes stops the batch
                        if not fatal:
                            self.log.error("S3 refuses writes (%s): no further generation request is sent.", err)
                        fatal.append(err)
                        return False
                    outcome: Any
                    try:
                        with log_label(f"Prompt {job.prompt_index}"):
                            outcome = await hook.generate(params)
                    except GrokError as err:
                        outcome = err
                    step = sequence.conclude(request, outcome, params.model)
                    settle(request)
                    if step is Next.STORE:
                        # Stored inside the slot: at most max_concurrency answers are held in memory.
                        await asyncio.to_thread(ledger.store_answer, request, outcome, params.prompt)
                        return True
                    await asyncio.to_thread(ledger.note, request)
                    if step is Next.STOP:
                        fatal.append(outcome)
                    return True

            sent = sum(await asyncio.gather(*(one(job, params) for job, params in todo)))
            skipped = len(plan) - len(todo)
            if fatal:
                return GenerationEvent.failure(fatal[0], sent=sent, skipped=skipped)
            if capped:
                self.log.warning("max_cost_usd: %d requests not sent (%s).", len(capped), cap.describe())
                stop = GrokBudgetExceededError(f"max_cost_usd reached: {cap.describe()}", cap_usd=cap.max_cost_usd)
                return GenerationEvent.failure(stop, sent=sent, skipped=skipped)
            return GenerationEvent("success", sent=sent, skipped=skipped)
        finally:
            await hook.aclose()  # also when the task is killed or the trigger times out (cancellation)
