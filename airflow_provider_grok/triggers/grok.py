"""GrokGenerateImagesTrigger: the generation requests of a deferred task, awaited in the triggerer.

One triggerer process awaits thousands of these without a worker slot each. The trigger only
generates: it asks for ``response_format="url"`` so its single event stays small (URLs and metadata,
never image bytes, never the key), and the worker then fetches and stores exactly like the sync path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_grok import api
from airflow_provider_grok.exceptions import GrokContentFilteredError, GrokError


class GrokGenerateImagesTrigger(BaseTrigger):
    """
    Run a batch of generation requests with bounded concurrency and yield exactly one event.

    The event is ``{"status": "success", "results": [...]}`` with one entry per job (``outcome`` ``ok``
    with the result, ``filtered``, or ``error`` with ``error_type`` and ``message``), or
    ``{"status": "error", "error_type": ..., "message": ...}`` when the batch failed as a whole
    (e.g. a rejected API key).

    :param grok_conn_id: the ``grok`` connection.
    :param jobs: ``{"prompt_index", "first_image_index", "fingerprint", "params"}`` per request, where
        ``params`` are :class:`~airflow_provider_grok.api.GenerationParams` fields (``n`` <= 10).
    :param max_concurrency: requests in flight at once.
    :param retry_backoff: first backoff between retries, seconds.
    """

    def __init__(
        self,
        *,
        grok_conn_id: str,
        jobs: list[dict[str, Any]],
        max_concurrency: int = 4,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.grok_conn_id = grok_conn_id
        self.jobs = jobs
        self.max_concurrency = max_concurrency
        self.retry_backoff = retry_backoff

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "grok_conn_id": self.grok_conn_id,
                "jobs": self.jobs,
                "max_concurrency": self.max_concurrency,
                "retry_backoff": self.retry_backoff,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_grok.hooks.grok import GrokAsyncHook

        hook = GrokAsyncHook(self.grok_conn_id, retry_backoff=self.retry_backoff)
        try:
            event = await self._generate_all(hook)
        except GrokError as err:
            event = error_event(err)
        finally:
            await hook.aclose()  # also when the task is killed or the trigger times out (cancellation)
        yield TriggerEvent(event)

    async def _generate_all(self, hook: Any) -> dict[str, Any]:
        await hook.load_settings()  # a broken connection fails the batch once, not per job
        slots = asyncio.Semaphore(self.max_concurrency)
        fatal: list[GrokError] = []

        async def one(job: dict[str, Any]) -> dict[str, Any]:
            head = {k: job[k] for k in ("prompt_index", "first_image_index", "fingerprint")}
            head["count"] = job["params"]["n"]
            async with slots:
                if fatal:
                    return {**head, "outcome": "error", "error_type": "NotAttempted",
                            "message": "not attempted: an earlier request failed for the whole batch"}  # fmt: skip
                try:
                    result = await hook.generate(api.GenerationParams(**job["params"]))
                except GrokContentFilteredError as err:
                    return {**head, "outcome": "filtered", "message": err.message, "request_id": err.request_id}
                except GrokError as err:
                    if isinstance(err, api.BATCH_FATAL_ERRORS):
                        fatal.append(err)
                    return {**head, "outcome": "error", "error_type": type(err).__name__, "message": err.message}
            return {**head, "outcome": "ok", "result": api.result_to_event(result)}

        results = await asyncio.gather(*(one(job) for job in self.jobs))
        if fatal and not any(r["outcome"] == "ok" for r in results):
            return error_event(fatal[0])
        return {"status": "success", "results": list(results)}


def error_event(err: GrokError) -> dict[str, Any]:
    return {"status": "error", "error_type": type(err).__name__, "message": err.message, "status_code": err.status}
